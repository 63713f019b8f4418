"""JAX glue: ``cross_entropy`` as a ``jax.custom_vjp`` running fastxent's kernels on the host.

    import fastxent.jax as fxj
    loss = fxj.cross_entropy(logits, labels)                       # (..., C) and (...)
    grads = jax.grad(lambda p: fxj.cross_entropy(model(p, x), y))(params)

Same definition as ``torch.nn.functional.cross_entropy`` (weight, ignore_index, label_smoothing,
reduction; class indices or class probabilities; plus fastxent's z_loss, softcap,
return_z_loss and return_accuracy) but with the class axis *last*, as in JAX / optax:
without options it equals ``optax.softmax_cross_entropy_with_integer_labels(...).mean()``.

How it runs: the forward and the backward are host calls (``_jax_host.host_call``: JAX's
``buffer_callback``, which reads and writes XLA's buffers in place, or ``jax.pure_callback``
on older JAX, which copies) into ``fastxent.cross_entropy_forward`` /
``cross_entropy_backward``. Under differentiation, for class indices and float32/float64
logits, the forward is instead one fused call (``cross_entropy_with_grad``, the gradient written
straight into XLA's output buffer) whose gradient is the residual, and the backward multiplies
it by the cotangent (a scalar for "mean"/"sum", one per row for "none"): one pass over the
logits instead of two. Otherwise the forward keeps the per-row log-sum-exp as the residual and
the backward turns it and the cotangent into the gradient in one read of the logits. It works
under ``jax.jit``, ``jax.grad``/``jax.vjp`` and ``jax.vmap`` (the host calls then run once per
batch element, ``vmap_method="sequential"``). On an accelerator the arrays would be copied to
the host and back: this is a CPU library.

float32, float16 and bfloat16, and float64 when ``jax_enable_x64`` is on, run natively (16-bit
logits are computed in float32 inside the kernels; the loss and the gradient come back in the
logits' dtype, each rounded once, and the saved lse is float32). Other float dtypes are computed
in float32 and the loss cast back. Labels: any integer dtype. ``weight`` gets no
gradient (a zero cotangent). Options are static Python values (they select the kernel), so
changing them retraces under jit. Label values are checked when the callback runs: a bad label
makes the jitted call raise (JAX wraps fastxent's ValueError, whose text names the row).
Not supported: forward-mode autodiff (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``) and second
derivatives, which need derivatives of the callbacks; JAX raises when asked for them.
"""

from __future__ import annotations

try:
    import jax
    import jax.numpy as jnp
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "fastxent.jax needs JAX, which is not installed: pip install jax "
        "(the CPU build is enough; fastxent's kernels run on CPU)"
    ) from exc

import functools
import operator
from typing import Any, NamedTuple

import numpy as np

import fastxent

from ._checks import check_reduction, check_smoothing, check_softcap, check_z_loss
from ._jax_host import host_call
from ._types import Reduction

__all__ = ["cross_entropy"]


class _Options(NamedTuple):
    """The static options, hashable so custom_vjp can take them as a non-differentiable arg."""

    ignore_index: int
    label_smoothing: float
    reduction: str
    z_loss: float
    softcap: float | None
    want_accuracy: bool

    def kwargs(self):
        options = self._asdict()
        del options["want_accuracy"]
        return options


_NATIVE = (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)


def _lse_dtype(dtype):
    return jnp.float64 if dtype == jnp.float64 else jnp.float32


def _result_types(opts, logits, labels):
    rows = logits.shape[:-1]
    loss_shape = rows if opts.reduction == "none" else ()
    return (jax.ShapeDtypeStruct(loss_shape, logits.dtype),
            jax.ShapeDtypeStruct(rows, _lse_dtype(logits.dtype)),
            jax.ShapeDtypeStruct(loss_shape, logits.dtype),
            jax.ShapeDtypeStruct((), jnp.float32))


def _store_results(opts, outs, result, extra_at):
    """Writes the loss, the z-loss term and the accuracy of a fastxent result tuple whose z-loss
    term is at extra_at into outs[0], outs[-2] and outs[-1] (of the promised dtypes)."""
    outs[0][...] = result[0]
    outs[-2][...] = result[extra_at]
    outs[-1][...] = result[extra_at + 1] if opts.want_accuracy else 0.0


def _host_forward(opts, outs, logits, labels, weight):
    result = fastxent.cross_entropy_forward(logits, labels, weight=weight, return_z_loss=True,
                                            return_accuracy=opts.want_accuracy, **opts.kwargs())
    _store_results(opts, outs, result, 2)
    outs[1][...] = result[1]  # lse


def _host_backward(opts, outs, logits, labels, weight, lse, cotangent):
    fastxent.cross_entropy_backward(logits, labels, lse, weight=weight, out=outs[0],
                                    grad_output=np.asarray(cotangent), **opts.kwargs())


def _host_fused(opts, outs, logits, labels, weight):
    """(loss, z-loss term, accuracy, gradient): the gradient written into outs[1]."""
    result = fastxent.cross_entropy_with_grad(
        logits, labels, weight=weight, out=outs[1], return_z_loss=True,
        return_accuracy=opts.want_accuracy, **opts.kwargs())
    _store_results(opts, outs, result, 2)


def _fuses(logits, labels):
    """Under differentiation, the forward computes the gradient too (for a unit cotangent) and
    the backward only scales it: one host call and one pass over the logits instead of two of
    each (and with JAX's copying pure_callback, fewer copies). Class indices and float32/float64
    logits only: probability targets need lse for their own cotangent, and 16-bit gradients
    would be rounded twice (once here, once when scaled)."""
    return (jnp.issubdtype(labels.dtype, jnp.integer)
            and logits.dtype in (jnp.float32, jnp.float64))


def _fused_call(opts, logits, labels, weight):
    loss, _, z_term, accuracy = _result_types(opts, logits, labels)
    types = (loss, jax.ShapeDtypeStruct(logits.shape, logits.dtype), z_term, accuracy)
    loss, grad, z_term, accuracy = host_call(functools.partial(_host_fused, opts), types,
                                             logits, labels, weight)
    return loss, z_term, accuracy, grad


def _forward_call(opts, logits, labels, weight):
    return host_call(functools.partial(_host_forward, opts), _result_types(opts, logits, labels),
                     logits, labels, weight)


# opts (argument 0) selects the kernel: static, hashable, not differentiated.
# Returns (loss, z-loss term, accuracy); the caller stops the gradient of the last two.
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _cross_entropy(opts, logits, labels, weight):
    loss, _, z_term, accuracy = _forward_call(opts, logits, labels, weight)
    return loss, z_term, accuracy


def _fwd(opts, logits, labels, weight):
    if _fuses(logits, labels):
        loss, z_term, accuracy, grad = _fused_call(opts, logits, labels, weight)
        return (loss, z_term, accuracy), (grad,)
    loss, lse, z_term, accuracy = _forward_call(opts, logits, labels, weight)
    return (loss, z_term, accuracy), (logits, labels, weight, lse)


def _target_cotangent(opts, logits, labels, weight, lse, cotangent):
    """d loss / d t_j = w_j (1 - eps) (lse - z_j) per row, times the row's cotangent ("mean"
    divides by the number of rows), z the capped logits; a 0 where z_j = -inf and t_j = 0 is
    not defined, so it is given as 0 there rather than inf."""
    z = logits.astype(lse.dtype)
    if opts.softcap is not None:
        z = opts.softcap * jnp.tanh(z / opts.softcap)
    per_row = cotangent.astype(lse.dtype)
    if opts.reduction == "mean":
        per_row = per_row / max(lse.size, 1)
    if opts.reduction != "none" or per_row.ndim == 0:
        per_row = jnp.broadcast_to(per_row, lse.shape)
    w = 1.0 if weight is None else weight.astype(lse.dtype)
    neg_logp = lse[..., None] - z
    grad = per_row[..., None] * (1.0 - opts.label_smoothing) * w * neg_logp
    return jnp.where(jnp.isfinite(neg_logp) | (labels != 0), grad, 0.0).astype(labels.dtype)


def _bwd(opts, residuals, cotangents):
    cotangent = cotangents[0]  # the z-loss term and accuracy are returned under stop_gradient
    if len(residuals) == 1:  # the fused forward's gradient, for a unit cotangent
        (grad,) = residuals
        scale = cotangent.astype(grad.dtype)
        return grad * (scale if scale.ndim == 0 else scale[..., None]), None, None
    logits, labels, weight, lse = residuals
    (grad,) = host_call(functools.partial(_host_backward, opts),
                        (jax.ShapeDtypeStruct(logits.shape, logits.dtype),),
                        logits, labels, weight, lse, cotangent.astype(logits.dtype))
    # No cotangent for integer labels nor (as in PyTorch) for the class weights; probability
    # targets get theirs (distillation differentiates through them).
    target_grad = None
    if jnp.issubdtype(labels.dtype, jnp.floating):
        target_grad = _target_cotangent(opts, logits, labels, weight, lse, cotangent)
    return grad, target_grad, None


_cross_entropy.defvjp(_fwd, _bwd)


def _static_options(ignore_index, label_smoothing, reduction, z_loss, softcap, want_accuracy):
    try:
        ignore_index = operator.index(ignore_index)
    except TypeError:
        raise TypeError(f"ignore_index must be a static Python int, got {ignore_index!r}") from None
    try:
        label_smoothing = float(label_smoothing)
    except (TypeError, jax.errors.ConcretizationTypeError):
        raise TypeError(
            f"label_smoothing must be a static Python float, got {label_smoothing!r}"
        ) from None
    try:
        z_loss = check_z_loss(z_loss)
        softcap = check_softcap(softcap)
    except jax.errors.ConcretizationTypeError:
        raise TypeError("z_loss and softcap must be static Python floats") from None
    return _Options(ignore_index, check_smoothing(label_smoothing), check_reduction(reduction),
                    z_loss, softcap, bool(want_accuracy))


def cross_entropy(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *,
                  weight: jax.typing.ArrayLike | None = None, ignore_index: int = -100,
                  label_smoothing: float = 0.0, reduction: Reduction = "mean", z_loss: float = 0.0,
                  softcap: float | None = None, return_z_loss: bool = False,
                  return_accuracy: bool = False) -> Any:
    """Softmax cross-entropy of ``logits`` (..., C) against integer ``labels`` (...) or class
    probabilities (..., C) of a float dtype.

    As torch.nn.functional.cross_entropy (weight, ignore_index, label_smoothing, reduction, and
    "mean" divides by the summed weight of the non-ignored rows) with the class axis last, plus
    z_loss (z_loss * logsumexp**2 per row) and softcap (softcap * tanh(logits / softcap) first).
    Returns a 0-d array for "mean"/"sum" and an array of shape (...) for "none", in the logits'
    dtype; with return_z_loss / return_accuracy a tuple (loss[, z_loss term][, accuracy]) whose
    extra entries are under stop_gradient (for logging). Differentiable w.r.t. logits (and
    probability targets) in reverse mode, usable inside jit and vmap.
    """
    opts = _static_options(ignore_index, label_smoothing, reduction, z_loss, softcap,
                           return_accuracy)
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"logits must be a floating-point array, got dtype {logits.dtype}")
    if logits.ndim == 0:
        raise ValueError("logits must have a class axis: shape (..., classes), got a scalar")
    soft = jnp.issubdtype(labels.dtype, jnp.floating)
    if not soft and not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels must have an integer dtype (class indices) or a float dtype "
                        f"(class probabilities), got {labels.dtype}")
    if soft and labels.shape == logits.shape[:-1]:
        raise TypeError(f"labels must have an integer dtype for class indices of shape "
                        f"{labels.shape}, got {labels.dtype} (class probabilities need the "
                        f"logits' shape {logits.shape})")
    want = logits.shape if soft else logits.shape[:-1]
    if labels.shape != want:
        kind = "class probabilities" if soft else "class indices"
        raise ValueError(f"labels must have shape {want} to match logits of shape "
                         f"{logits.shape} ({kind}), got {labels.shape}")
    classes = logits.shape[-1]
    if classes == 0:
        raise ValueError(f"logits must have at least one class, got shape {logits.shape}")
    if soft and return_accuracy:
        raise ValueError("return_accuracy needs class-index labels, not probability targets")
    if weight is not None:
        weight = jax.lax.stop_gradient(jnp.asarray(weight))
        if weight.shape != (classes,):
            raise ValueError(f"weight must have shape ({classes},) (one per class), "
                             f"got {weight.shape}")
        if not jnp.issubdtype(weight.dtype, jnp.floating):
            weight = weight.astype(jnp.float32)

    dtype = logits.dtype
    x = logits if dtype in _NATIVE else logits.astype(jnp.float32)
    if soft and labels.dtype != x.dtype:
        labels = labels.astype(x.dtype)
    loss, z_term, accuracy = _cross_entropy(opts, x, labels, weight)
    if loss.dtype != dtype:
        loss, z_term = loss.astype(dtype), z_term.astype(dtype)
    extra: tuple[Any, ...] = ()
    if return_z_loss:
        extra += (jax.lax.stop_gradient(z_term),)
    if return_accuracy:
        extra += (jax.lax.stop_gradient(accuracy),)
    return (loss, *extra) if extra else loss


# ----------------------------------------------------------------------------------------------
# Binary cross-entropy with logits (issue 5): in its own module.

from ._jax_bce import binary_cross_entropy_with_logits  # noqa: E402

__all__ += ["binary_cross_entropy_with_logits"]
