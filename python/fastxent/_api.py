"""The public cross-entropy functions: check arguments, run a backend, shape the results."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _backends
from ._types import ArrayLike, Backend, NDArray, Reduction, Results
from ._checks import as_array, check_grad_output, gradient_buffer, lse_dtype, make_problem


# The small-call fast path: a plain call (NumPy logits and integer labels, no options but
# reduction and a scalar grad_output, backend cpp) goes straight to _core.fast_cross_entropy,
# which reads the arrays' fields itself and checks the rest before any write (float32/float64
# rows with a contiguous class axis, one label per row and in range, grad's shape and overlap,
# backward's lse: one per row, contiguous, of the logits' dtype). All four entry points take it
# (cross_entropy, _with_grad, _forward, _backward: the last two had cost 5-6 us a call here).
# It returns None when the arrays do not qualify, and raises for bad values; either way the call
# falls back to the full path, whose message names the problem. This keeps a 1 x 10 call near
# two microseconds. (2-D logits only: "none"'s per-row losses then have the labels' shape.)
_FAST_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
_FORWARD, _FUSED, _BACKWARD, _FORWARD_WITH_LSE = 0, 1, 2, 3
_ndarray = np.ndarray


def _fast_call(mode, logits, labels, reduction, grad_output, out, backend, lse=None):
    """The fast path's answer, or None for the full path (the caller has checked the options)."""
    try:
        core = _backends.fast_core(backend)
        code = _FAST_REDUCTIONS.get(reduction)
        if core is None or code is None:
            return None
        return core.fast_cross_entropy(mode, logits, labels, code, grad_output, out, lse)
    except (ValueError, TypeError):
        return None  # the full path raises with the argument's name


def _plain(logits, labels, weight, ignore_index, label_smoothing, z_loss, softcap):
    """NumPy arrays and torch's default options: what the fast path may take."""
    return (type(logits) is _ndarray and type(labels) is _ndarray and weight is None
            and softcap is None and ignore_index == -100 and label_smoothing == 0.0
            and z_loss == 0.0)


def _plain_gradient(logits, grad_output, out, inplace):
    """A scalar grad_output, and inplace=True only as out=logits (its overlap check allows
    exactly that; other layouts, and out= beside inplace=True, take the full path, which
    explains them)."""
    return (type(grad_output) in (float, int)
            and (not inplace or (out is None and logits.flags.c_contiguous)))


# The largest float32 / float64: a loss past it is inf, as in PyTorch.
_FLOAT_MAX = {np.dtype(np.float32): float(np.finfo(np.float32).max),
              np.dtype(np.float64): float(np.finfo(np.float64).max)}


def _loss_result(problem, loss):
    dtype = problem.logits.dtype
    if problem.reduction != "none" and dtype in _FLOAT_MAX:
        # (np.errstate, below, costs 8 us a call: a scalar's range is checked here instead)
        if abs(loss) > _FLOAT_MAX[dtype]:
            return dtype.type(math.copysign(math.inf, loss))
        return dtype.type(loss)
    with np.errstate(over="ignore"):  # a float16 loss past 65504 is inf, as in PyTorch
        if problem.reduction == "none":
            return np.asarray(loss, dtype=dtype).reshape(problem.shape[:-1])
        return dtype.type(loss)


def _lse_result(problem, lse):
    return np.asarray(lse, dtype=lse_dtype(problem.logits.dtype)).reshape(problem.shape[:-1])


def _extras(problem, z_term, accuracy, return_z_loss, return_accuracy):
    """The optional results, in the documented order: z-loss term, then accuracy. A backend's
    z_term None means per-row zeros (no z-loss, reduction "none"), made only when asked for."""
    extra = ()
    if return_z_loss:
        if z_term is None:
            z_term = np.zeros(problem.rows)
        extra += (_loss_result(problem, z_term),)
    if return_accuracy:
        extra += (np.float64(accuracy),)
    return extra


def _check_accuracy_request(problem, return_accuracy):
    if return_accuracy and problem.soft:
        raise ValueError("return_accuracy needs class-index labels, not probability targets")


def cross_entropy(logits: ArrayLike, labels: ArrayLike, *, weight: ArrayLike | None = None,
                  ignore_index: int = -100, label_smoothing: float = 0.0,
                  reduction: Reduction = "mean", z_loss: float = 0.0, softcap: float | None = None,
                  return_z_loss: bool = False, return_accuracy: bool = False,
                  backend: Backend = "auto") -> Any:
    """Softmax cross-entropy of `logits` (..., C) against `labels`: class indices (...) of an
    integer dtype, or class probabilities (..., C) of a float dtype.

    Same definition and defaults as torch.nn.functional.cross_entropy, plus z_loss (adds
    z_loss * lse**2 per row) and softcap (logits pass through softcap * tanh(x / softcap)).
    Returns a NumPy scalar for "mean"/"sum" and an array of shape (...) for "none"; with
    return_z_loss / return_accuracy, a tuple (loss[, z_loss term][, accuracy]).
    """
    if (not return_z_loss and not return_accuracy
            and _plain(logits, labels, weight, ignore_index, label_smoothing, z_loss, softcap)):
        fast = _fast_call(_FORWARD, logits, labels, reduction, 1.0, None, backend)
        if fast is not None:
            return fast
    problem = make_problem(logits, labels, weight, ignore_index, label_smoothing, reduction,
                           z_loss, softcap)
    _check_accuracy_request(problem, return_accuracy)
    loss, _, z_term, accuracy = _backends.get(backend).forward(problem, return_accuracy,
                                                               want_lse=False)
    result = _loss_result(problem, loss)
    extra = _extras(problem, z_term, accuracy, return_z_loss, return_accuracy)
    return (result, *extra) if extra else result


def cross_entropy_forward(logits: ArrayLike, labels: ArrayLike, *, weight: ArrayLike | None = None,
                          ignore_index: int = -100, label_smoothing: float = 0.0,
                          reduction: Reduction = "mean", z_loss: float = 0.0,
                          softcap: float | None = None, return_z_loss: bool = False,
                          return_accuracy: bool = False, backend: Backend = "auto") -> Results:
    """(loss, lse[, z_loss term][, accuracy]): the loss as cross_entropy gives it and the per-row
    log-sum-exp (...) to pass to cross_entropy_backward. lse is float64 for float64 logits, else
    float32 (for float16 and bfloat16 logits too); it is 0 on ignored rows (not computed).
    With softcap it is the log-sum-exp of the capped logits."""
    if (not return_z_loss and not return_accuracy
            and _plain(logits, labels, weight, ignore_index, label_smoothing, z_loss, softcap)):
        fast = _fast_call(_FORWARD_WITH_LSE, logits, labels, reduction, 1.0, None, backend)
        if fast is not None:
            return fast
    problem = make_problem(logits, labels, weight, ignore_index, label_smoothing, reduction,
                           z_loss, softcap)
    _check_accuracy_request(problem, return_accuracy)
    loss, lse, z_term, accuracy = _backends.get(backend).forward(problem, return_accuracy)
    extra = _extras(problem, z_term, accuracy, return_z_loss, return_accuracy)
    return (_loss_result(problem, loss), _lse_result(problem, lse), *extra)


def _gradient_target(problem, out, inplace):
    target, view = gradient_buffer(problem, out, inplace)
    if target is None:
        target = np.empty(problem.shape, problem.logits.dtype)
        view = target.reshape(problem.logits.shape)
    return target, view


def _run_writing_gradient(impl, problem, view, inplace, run):
    """run(buffer) with the gradient going to view. Only the compiled kernels read and write each
    row in one pass; other backends need the logits intact until the gradient is complete, so
    with inplace=True they write a temporary first."""
    if inplace and impl.name != "cpp":
        scratch = np.empty_like(problem.logits)
        result = run(scratch)
        view[...] = scratch
        return result
    return run(view)


def cross_entropy_with_grad(logits: ArrayLike, labels: ArrayLike, *,
                            weight: ArrayLike | None = None, ignore_index: int = -100,
                            label_smoothing: float = 0.0, reduction: Reduction = "mean",
                            z_loss: float = 0.0, softcap: float | None = None,
                            grad_output: float | ArrayLike = 1.0, out: NDArray[Any] | None = None,
                            inplace: bool = False, return_z_loss: bool = False,
                            return_accuracy: bool = False, backend: Backend = "auto") -> Results:
    """(loss, grad[, z_loss term][, accuracy]) in one fused pass: grad = d(loss * grad_output) /
    d logits, in the logits' dtype and shape. out= writes grad into that array; inplace=True
    writes it over logits."""
    if (not return_z_loss and not return_accuracy
            and _plain(logits, labels, weight, ignore_index, label_smoothing, z_loss, softcap)
            and _plain_gradient(logits, grad_output, out, inplace)):
        fast = _fast_call(_FUSED, logits, labels, reduction, grad_output,
                          logits if inplace else out, backend)
        if fast is not None:
            return fast
    problem = make_problem(logits, labels, weight, ignore_index, label_smoothing, reduction,
                           z_loss, softcap)
    _check_accuracy_request(problem, return_accuracy)
    grad_scalar, grad_rows = check_grad_output(grad_output, problem)
    target, view = _gradient_target(problem, out, inplace)
    impl = _backends.get(backend)
    loss, z_term, accuracy = _run_writing_gradient(
        impl, problem, view, inplace,
        lambda buf: impl.fused(problem, grad_scalar, grad_rows, buf, return_accuracy),
    )
    extra = _extras(problem, z_term, accuracy, return_z_loss, return_accuracy)
    return (_loss_result(problem, loss), target, *extra)


def cross_entropy_backward(logits: ArrayLike, labels: ArrayLike, lse: ArrayLike, *,
                           weight: ArrayLike | None = None, ignore_index: int = -100,
                           label_smoothing: float = 0.0, reduction: Reduction = "mean",
                           z_loss: float = 0.0, softcap: float | None = None,
                           grad_output: float | ArrayLike = 1.0, out: NDArray[Any] | None = None,
                           inplace: bool = False, backend: Backend = "auto") -> NDArray[Any]:
    """The gradient from the lse that cross_entropy_forward returned (no max/sum recomputed).
    Pass the same options as to cross_entropy_forward."""
    if (type(lse) is _ndarray
            and _plain(logits, labels, weight, ignore_index, label_smoothing, z_loss, softcap)
            and _plain_gradient(logits, grad_output, out, inplace)):
        fast = _fast_call(_BACKWARD, logits, labels, reduction, grad_output,
                          logits if inplace else out, backend, lse)
        if fast is not None:
            return fast
    problem = make_problem(logits, labels, weight, ignore_index, label_smoothing, reduction,
                           z_loss, softcap)
    lse = as_array(lse, "lse")
    if lse.shape != problem.shape[:-1]:
        raise ValueError(f"lse must have shape {problem.shape[:-1]} (one per row), got {lse.shape}")
    if lse.dtype.kind != "f":
        raise TypeError(f"lse must be a float array, got dtype {lse.dtype}")
    lse = np.ascontiguousarray(lse, dtype=lse_dtype(problem.logits.dtype)).reshape(-1)
    grad_scalar, grad_rows = check_grad_output(grad_output, problem)
    target, view = _gradient_target(problem, out, inplace)
    impl = _backends.get(backend)
    _run_writing_gradient(
        impl, problem, view, inplace,
        lambda buf: impl.backward(problem, lse, grad_scalar, grad_rows, buf),
    )
    return target
