"""The compiled backend: hands normalised arrays to fastxent._core (C++ SIMD kernels)."""

from __future__ import annotations

import numpy as np

from . import _core
from ._checks import Problem, is_half
from ._checks import lse_dtype as _lse_dtype

name = "cpp"
core = _core  # (the small-call fast path in _api calls it directly)
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


def _call(problem: Problem, mode, grad_scalar, grad_rows, lse, row_loss, grad, row_z=None,
          correct=None):
    """(reduced loss, or NaN for "none" and backward; rows not ignored; z-loss terms summed)."""
    logits, code = _kernel_view(problem.logits)
    grad, _ = _kernel_view(grad)
    row_loss, _ = _kernel_view(row_loss)
    labels = problem.labels if problem.labels is not None else _NO_LABELS
    try:
        return _core.cross_entropy(
            mode, logits, labels, problem.weight, problem.ignore_index, problem.smoothing,
            _REDUCTION[problem.reduction], grad_scalar, grad_rows, lse, row_loss, grad, code,
            problem.targets, problem.z_loss, problem.softcap or 0.0, row_z, correct,
        )
    except ValueError:
        if problem.labels is not None:
            problem.labels64()  # re-raises a bad label with its position in the caller's shape
        raise


_NO_LABELS = np.empty(0, np.int64)


def lse_dtype(problem: Problem):
    return _lse_dtype(problem.logits.dtype)


def _divide(total, kept):
    return total / kept if kept else float("nan")


def _z_term(problem: Problem, row_z, kept, z_sum):
    """The z-loss term reduced as the loss is ("mean": over the rows not ignored); None for
    "none" without a z-loss (the caller makes the zeros only if they are asked for)."""
    if problem.reduction == "none":
        return row_z
    return z_sum if problem.reduction == "sum" else _divide(z_sum, kept)


def _accuracy(correct, kept):
    return None if correct is None else _divide(float(np.count_nonzero(correct)), kept)


def _outputs(problem: Problem, want_accuracy, want_lse):
    """The arrays the kernels fill; lse and the per-row z-loss terms only when the caller returns
    them (else the kernels' own scratch, with no allocation). Per-row losses come in the logits'
    dtype, rounded once."""
    n = problem.rows
    lse = np.empty(n, lse_dtype(problem)) if want_lse else None
    per_row = problem.reduction == "none"
    row_loss = np.empty(n, problem.logits.dtype) if per_row else None
    row_z = np.empty(n) if problem.z_loss and per_row else None
    correct = np.empty(n, np.uint8) if want_accuracy else None
    return lse, row_loss, row_z, correct


def forward(problem: Problem, want_accuracy=False, want_lse=True):
    lse, row_loss, row_z, correct = _outputs(problem, want_accuracy, want_lse)
    loss, kept, z_sum = _call(problem, _FORWARD, 1.0, None, lse, row_loss, None, row_z, correct)
    loss = row_loss if row_loss is not None else loss
    return loss, lse, _z_term(problem, row_z, kept, z_sum), _accuracy(correct, kept)


def fused(problem: Problem, grad_scalar, grad_rows, grad_out, want_accuracy=False):
    _, row_loss, row_z, correct = _outputs(problem, want_accuracy, want_lse=False)
    loss, kept, z_sum = _call(problem, _FUSED, grad_scalar, grad_rows, None, row_loss, grad_out,
                              row_z, correct)
    loss = row_loss if row_loss is not None else loss
    return loss, _z_term(problem, row_z, kept, z_sum), _accuracy(correct, kept)


def backward(problem: Problem, lse, grad_scalar, grad_rows, grad_out):
    _call(problem, _BACKWARD, grad_scalar, grad_rows, lse, None, grad_out)


_ROWOP = {"logsumexp": 0, "softmax": 1, "log_softmax": 2}


def rowop(x: np.ndarray, op: str) -> np.ndarray:
    n, c = x.shape
    xv, code = _kernel_view(x)
    out = np.empty((n, 1) if op == "logsumexp" else (n, c), x.dtype)
    _core.rowop(_ROWOP[op], xv, _kernel_view(out)[0], code)
    return out[:, 0] if op == "logsumexp" else out
