"""The public cross-entropy functions: check arguments, run a backend, shape the results."""

from __future__ import annotations

import numpy as np

from . import _backends
from ._checks import as_array, check_grad_output, gradient_buffer, lse_dtype, make_problem


def _loss_result(problem, loss):
    dtype = problem.logits.dtype
    with np.errstate(over="ignore"):  # a float16 loss past 65504 is inf, as in PyTorch
        if problem.reduction == "none":
            return np.asarray(loss, dtype=dtype).reshape(problem.shape[:-1])
        return dtype.type(loss)


def _lse_result(problem, lse):
    return np.asarray(lse, dtype=lse_dtype(problem.logits.dtype)).reshape(problem.shape[:-1])


def cross_entropy(logits, labels, *, weight=None, ignore_index=-100, label_smoothing=0.0,
                  reduction="mean", backend="auto"):
    """Softmax cross-entropy of `logits` (..., C) against integer `labels` (...).

    Same definition and defaults as torch.nn.functional.cross_entropy with class-index
    targets. Returns a NumPy scalar for "mean"/"sum" and an array of shape (...) for "none".
    """
    problem = make_problem(logits, labels, weight, ignore_index, label_smoothing, reduction)
    loss, _ = _backends.get(backend).forward(problem)
    return _loss_result(problem, loss)


def cross_entropy_forward(logits, labels, *, weight=None, ignore_index=-100, label_smoothing=0.0,
                          reduction="mean", backend="auto"):
    """(loss, lse): the loss as cross_entropy gives it and the per-row log-sum-exp (...) to pass
    to cross_entropy_backward. lse is float64 for float64 logits, else float32 (for float16
    and bfloat16 logits too); it is 0 on ignored rows (not computed)."""
    problem = make_problem(logits, labels, weight, ignore_index, label_smoothing, reduction)
    loss, lse = _backends.get(backend).forward(problem)
    return _loss_result(problem, loss), _lse_result(problem, lse)


def _gradient_target(problem, out, inplace):
    target, view = gradient_buffer(problem, out, inplace)
    if target is None:
        target = np.empty(problem.shape, problem.logits.dtype)
        view = target.reshape(problem.logits.shape)
    return target, view


def cross_entropy_with_grad(logits, labels, *, weight=None, ignore_index=-100, label_smoothing=0.0,
                            reduction="mean", grad_output=1.0, out=None, inplace=False,
                            backend="auto"):
    """(loss, grad) in one fused pass: grad = d(loss * grad_output) / d logits, in the logits'
    dtype and shape. out= writes grad into that array; inplace=True writes it over logits."""
    problem = make_problem(logits, labels, weight, ignore_index, label_smoothing, reduction)
    grad_scalar, grad_rows = check_grad_output(grad_output, problem)
    target, view = _gradient_target(problem, out, inplace)
    impl = _backends.get(backend)
    if inplace and impl.name != "cpp":
        # Only the compiled kernels read and write each row in one pass; others need the
        # logits intact until the gradient is complete, so they write a temporary first.
        scratch = np.empty_like(problem.logits)
        loss = impl.fused(problem, grad_scalar, grad_rows, scratch)
        view[...] = scratch
    else:
        loss = impl.fused(problem, grad_scalar, grad_rows, view)
    return _loss_result(problem, loss), target


def cross_entropy_backward(logits, labels, lse, *, weight=None, ignore_index=-100,
                           label_smoothing=0.0, reduction="mean", grad_output=1.0, out=None,
                           inplace=False, backend="auto"):
    """The gradient from the lse that cross_entropy_forward returned (no max/sum recomputed)."""
    problem = make_problem(logits, labels, weight, ignore_index, label_smoothing, reduction)
    lse = as_array(lse, "lse")
    if lse.shape != problem.shape[:-1]:
        raise ValueError(f"lse must have shape {problem.shape[:-1]} (one per row), got {lse.shape}")
    if lse.dtype.kind != "f":
        raise TypeError(f"lse must be a float array, got dtype {lse.dtype}")
    lse = np.ascontiguousarray(lse, dtype=lse_dtype(problem.logits.dtype)).reshape(-1)
    grad_scalar, grad_rows = check_grad_output(grad_output, problem)
    target, view = _gradient_target(problem, out, inplace)
    impl = _backends.get(backend)
    if inplace and impl.name != "cpp":
        scratch = np.empty_like(problem.logits)
        impl.backward(problem, lse, grad_scalar, grad_rows, scratch)
        view[...] = scratch
    else:
        impl.backward(problem, lse, grad_scalar, grad_rows, view)
    return target
