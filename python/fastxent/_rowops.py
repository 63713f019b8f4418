"""softmax, log_softmax and logsumexp along one axis, on the same kernels."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from . import _backends
from ._checks import check_logits
from ._types import ArrayLike, Backend, NDArray


def _normalize_axis(axis, ndim: int) -> int:
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"axis must be an integer, got {axis!r}") from None
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for x with {ndim} dimensions")
    return axis % ndim


def _run(x, axis, backend, op):
    x = check_logits(x, "x")
    axis = _normalize_axis(axis, x.ndim)
    impl = _backends.get(backend)
    moved = np.moveaxis(x, axis, -1)
    classes, lead = moved.shape[-1], moved.shape[:-1]
    if classes == 0:  # log(sum of nothing) = -inf; softmax of nothing is empty
        return np.full(lead, -np.inf, x.dtype) if op == "logsumexp" else np.empty(x.shape, x.dtype)
    if classes > 1 and moved.strides[-1] != moved.itemsize:
        moved = np.ascontiguousarray(moved)  # the kernels need a contiguous class axis
    with np.errstate(over="ignore"):  # float32/64 results past a float16's range are +-inf
        result = np.asarray(impl.rowop(moved.reshape(-1, classes), op), dtype=x.dtype)
    if op == "logsumexp":
        return result.reshape(lead)
    return np.moveaxis(result.reshape(moved.shape), -1, axis)


def softmax(x: ArrayLike, axis: int = -1, *, backend: Backend = "auto") -> NDArray[Any]:
    """exp(x - logsumexp(x)) along `axis`, in x's dtype (float16/bfloat16 computed in float32)."""
    return _run(x, axis, backend, "softmax")


def log_softmax(x: ArrayLike, axis: int = -1, *, backend: Backend = "auto") -> NDArray[Any]:
    """x - logsumexp(x) along `axis`."""
    return _run(x, axis, backend, "log_softmax")


def logsumexp(x: ArrayLike, axis: int = -1, *, backend: Backend = "auto") -> NDArray[Any]:
    """log(sum(exp(x))) along `axis` (removed from the result's shape), without overflow."""
    return _run(x, axis, backend, "logsumexp")
