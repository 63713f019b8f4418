"""The public binary cross-entropy functions: check arguments, run a backend, shape results.

Every element is independent, so the forward/backward pair needs nothing saved: the backward
recomputes sigmoid(x) from the logits (one read of logits and targets, one write)."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from . import _backends
from ._checks import bce_gradient_buffer, check_bce_grad_output, make_bce_problem
from ._types import ArrayLike, Backend, Loss, NDArray, Reduction

_MODULES = {"cpp": "._bce_cpp", "numba": "._bce_numba", "numpy": "._bce_reference"}


def _impl(backend):
    """The BCE module of the backend that `backend` names (checked and resolved as for CE)."""
    return importlib.import_module(_MODULES[_backends.get(backend).name], __package__)


def _mean_divisor(problem) -> float:
    return float(problem.size) if problem.reduction == "mean" else 1.0


def _loss_result(problem, total, loss_out):
    dtype = problem.logits.dtype
    with np.errstate(over="ignore"):  # a float16 loss past 65504 is inf, as in PyTorch
        if problem.reduction == "none":
            return loss_out.reshape(problem.shape)
        if problem.reduction == "mean":
            total = total / problem.size if problem.size else float("nan")  # torch: NaN
        return dtype.type(total)


def _run(problem, backend, want_loss, grad_output, out, inplace):
    """(loss or None, gradient array or None)."""
    impl = _impl(backend)
    loss_out = None
    if want_loss and problem.reduction == "none":
        loss_out = np.empty(problem.size, problem.logits.dtype)
    if grad_output is None:
        total = impl.compute(problem, loss_out, None, 0.0, None, want_loss)
        return _loss_result(problem, total, loss_out), None
    scalar, elems = check_bce_grad_output(grad_output, problem)
    target, flat = bce_gradient_buffer(problem, out, inplace, ((elems, "grad_output"),))
    if target is None:
        target = np.empty(problem.shape, problem.logits.dtype)
        flat = target.reshape(-1)
    n = problem.size
    scale = scalar / _mean_divisor(problem) if n else 0.0
    total = impl.compute(problem, loss_out, flat, scale, elems, want_loss)
    if not np.shares_memory(flat, target) and n:
        target[...] = flat.reshape(problem.shape)  # out= that is not C-contiguous
    loss = _loss_result(problem, total, loss_out) if want_loss else None
    return loss, target


def binary_cross_entropy_with_logits(logits: ArrayLike, targets: ArrayLike, *,
                                     weight: ArrayLike | None = None,
                                     pos_weight: ArrayLike | None = None,
                                     reduction: Reduction = "mean", backend: Backend = "auto") -> Loss:
    """Sigmoid binary cross-entropy of `logits` against `targets` (same shape, probabilities).

    Same definition as torch.nn.functional.binary_cross_entropy_with_logits: `weight` and
    `pos_weight` broadcast to the logits' shape; "mean" averages over all elements. Targets are
    cast to the logits' dtype and not range-checked. Infinite logits give the limit (PyTorch
    gives NaN for some). Returns a NumPy scalar for "mean"/"sum", an array for "none".
    """
    problem = make_bce_problem(logits, targets, weight, pos_weight, reduction)
    return _run(problem, backend, True, None, None, False)[0]


def binary_cross_entropy_with_logits_with_grad(logits: ArrayLike, targets: ArrayLike, *,
                                               weight: ArrayLike | None = None, pos_weight: ArrayLike | None = None,
                                               reduction: Reduction = "mean", grad_output: float = 1.0,
                                               out: NDArray[Any] | None = None, inplace: bool = False,
                                               backend: Backend = "auto") -> tuple[Loss, NDArray[Any]]:
    """(loss, grad) in one pass: grad = d(loss * grad_output) / d logits, in the logits' dtype
    and shape. out= writes grad into that array; inplace=True writes it over logits."""
    problem = make_bce_problem(logits, targets, weight, pos_weight, reduction)
    return _run(problem, backend, True, grad_output, out, inplace)


def binary_cross_entropy_with_logits_backward(logits: ArrayLike, targets: ArrayLike, *,
                                              weight: ArrayLike | None = None, pos_weight: ArrayLike | None = None,
                                              reduction: Reduction = "mean", grad_output: float = 1.0,
                                              out: NDArray[Any] | None = None, inplace: bool = False,
                                              backend: Backend = "auto") -> NDArray[Any]:
    """The gradient alone (the backward of binary_cross_entropy_with_logits; nothing saved)."""
    problem = make_bce_problem(logits, targets, weight, pos_weight, reduction)
    return _run(problem, backend, False, grad_output, out, inplace)[1]
