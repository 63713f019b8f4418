"""The public cross-entropy functions: check arguments, run a backend, shape the results."""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from . import _backends
from ._types import ArrayLike, Backend, NDArray, Reduction, Results
from ._checks import as_array, check_grad_output, gradient_buffer, lse_dtype, make_problem


# The small-call fast path: a plain call (float32/float64 NumPy logits, NumPy integer labels,
# no options but reduction and grad_output, backend cpp) goes straight to the kernels. _core
# checks the rest itself before any write (2-D logits with a contiguous class axis, 1-D integer
# labels of one per row and in range, grad's shape and overlap); on any error the call falls
# back to the full path, whose message names the problem. This keeps a 1 x 10 call at a few
# microseconds.
_FAST_SCALARS = {np.dtype(np.float32): np.float32, np.dtype(np.float64): np.float64}
_FAST_REDUCTIONS = {"mean": 1, "sum": 2}
_F32_MAX = float(np.finfo(np.float32).max)
_FORWARD, _FUSED = 0, 1
_ndarray = np.ndarray
_float32 = np.float32


def _fast_core(logits, labels, backend):
    """fastxent._core when the arrays and backend qualify for the fast path (the caller has
    checked the types, the options and the reduction)."""
    if logits.ndim != 2 or labels.ndim != 1:  # (N-D inputs: the full path, not an error)
        return None
    impl = _backends.loaded(backend)
    return impl.core if impl.name == "cpp" else None


def _fast_loss(scalar, loss):
    if scalar is not _float32 or -_F32_MAX <= loss <= _F32_MAX:
        return scalar(loss)
    with np.errstate(over="ignore"):  # a float32 loss past its range is inf, as in PyTorch
        return scalar(loss)


def _loss_result(problem, loss):
    dtype = problem.logits.dtype
    with np.errstate(over="ignore"):  # a float16 loss past 65504 is inf, as in PyTorch
        if problem.reduction == "none":
            return np.asarray(loss, dtype=dtype).reshape(problem.shape[:-1])
        return dtype.type(loss)


def _lse_result(problem, lse):
    return np.asarray(lse, dtype=lse_dtype(problem.logits.dtype)).reshape(problem.shape[:-1])


def _extras(problem, z_term, accuracy, return_z_loss, return_accuracy):
    """The optional results, in the documented order: z-loss term, then accuracy."""
    extra = ()
    if return_z_loss:
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
    if (type(logits) is _ndarray and type(labels) is _ndarray and weight is None
            and softcap is None and not return_z_loss and not return_accuracy
            and ignore_index == -100 and label_smoothing == 0.0 and z_loss == 0.0):
        scalar = _FAST_SCALARS.get(cast(np.ndarray, logits).dtype)
        code = _FAST_REDUCTIONS.get(reduction)
        core = _fast_core(logits, labels, backend) if scalar and code else None
        if core is not None:
            try:
                return _fast_loss(scalar, core.plain_cross_entropy(_FORWARD, logits, labels, code,
                                                                   1.0, None))
            except (ValueError, TypeError):
                pass  # the full path below raises with the argument's name
    problem = make_problem(logits, labels, weight, ignore_index, label_smoothing, reduction,
                           z_loss, softcap)
    _check_accuracy_request(problem, return_accuracy)
    loss, _, z_term, accuracy = _backends.get(backend).forward(problem, return_accuracy)
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
    if (type(logits) is _ndarray and type(labels) is _ndarray and weight is None
            and softcap is None and not inplace and not return_z_loss and not return_accuracy
            and ignore_index == -100 and label_smoothing == 0.0 and z_loss == 0.0
            and type(grad_output) in (float, int)):
        x = cast(np.ndarray, logits)
        scalar = _FAST_SCALARS.get(x.dtype)
        code = _FAST_REDUCTIONS.get(reduction)
        core = _fast_core(x, labels, backend) if scalar and code else None
        if core is not None:
            if out is None:
                grad = np.empty(x.shape, x.dtype)
            elif type(out) is _ndarray and out.dtype == x.dtype and out.flags.writeable:
                grad = out
            else:
                grad = None  # the full path checks and explains
            if grad is not None:
                try:
                    loss = core.plain_cross_entropy(_FUSED, x, labels, code, grad_output, grad)
                    return _fast_loss(scalar, loss), grad
                except (ValueError, TypeError):
                    pass  # the full path below raises with the argument's name
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
