"""The compiled backend: hands normalised arrays to fastxent._core (C++ SIMD kernels)."""

from __future__ import annotations

import numpy as np

from . import _core
from ._checks import Problem, is_half
from ._checks import lse_dtype as _lse_dtype

name = "cpp"
_REDUCTION = {"none": 0, "mean": 1, "sum": 2}
_FORWARD, _FUSED, _BACKWARD = 0, 1, 2
# cpp/problem.h's DType. 16-bit arrays reach _core as uint16 views with their code: NumPy has
# no bfloat16 of its own, and ml_dtypes' arrays may not pass through the buffer protocol.
_F16, _BF16 = 2, 3
_INFER = -1  # float32 / float64: _core reads the dtype from the array


def _kernel_view(a):
    """(array as _core takes it, dtype code)."""
    if a is None or not is_half(a.dtype):
        return a, _INFER
    return a.view(np.uint16), (_F16 if a.dtype == np.float16 else _BF16)


def _call(problem: Problem, mode, grad_scalar, grad_rows, lse, row_loss, grad):
    logits, code = _kernel_view(problem.logits)
    grad, _ = _kernel_view(grad)
    try:
        return _core.cross_entropy(
            mode, logits, problem.labels, problem.weight, problem.ignore_index,
            problem.smoothing, _REDUCTION[problem.reduction], grad_scalar, grad_rows, lse,
            row_loss, grad, code,
        )
    except ValueError:
        problem.labels64()  # re-raises a bad label with its position in the caller's shape
        raise


def lse_dtype(problem: Problem):
    return _lse_dtype(problem.logits.dtype)


def forward(problem: Problem):
    n = problem.rows
    lse = np.empty(n, lse_dtype(problem))
    row_loss = np.empty(n) if problem.reduction == "none" else None
    loss = _call(problem, _FORWARD, 1.0, None, lse, row_loss, None)
    return (row_loss if row_loss is not None else loss), lse


def fused(problem: Problem, grad_scalar, grad_rows, grad_out):
    n = problem.rows
    lse = np.empty(n, lse_dtype(problem))
    row_loss = np.empty(n) if problem.reduction == "none" else None
    loss = _call(problem, _FUSED, grad_scalar, grad_rows, lse, row_loss, grad_out)
    return row_loss if row_loss is not None else loss


def backward(problem: Problem, lse, grad_scalar, grad_rows, grad_out):
    _call(problem, _BACKWARD, grad_scalar, grad_rows, lse, None, grad_out)


_ROWOP = {"logsumexp": 0, "softmax": 1, "log_softmax": 2}


def rowop(x: np.ndarray, op: str) -> np.ndarray:
    n, c = x.shape
    xv, code = _kernel_view(x)
    out = np.empty((n, 1) if op == "logsumexp" else (n, c), x.dtype)
    _core.rowop(_ROWOP[op], xv, _kernel_view(out)[0], code)
    return out[:, 0] if op == "logsumexp" else out
