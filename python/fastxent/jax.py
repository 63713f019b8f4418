"""JAX glue: ``cross_entropy`` as a ``jax.custom_vjp`` running fastxent's kernels on the host.

    import fastxent.jax as fxj
    loss = fxj.cross_entropy(logits, labels)                       # (..., C) and (...)
    grads = jax.grad(lambda p: fxj.cross_entropy(model(p, x), y))(params)

Same definition as ``torch.nn.functional.cross_entropy`` with class-index targets (weight,
ignore_index, label_smoothing, reduction) but with the class axis *last*, as in JAX / optax:
without options it equals ``optax.softmax_cross_entropy_with_integer_labels(...).mean()``.

How it runs: the forward and the backward are ``jax.pure_callback`` calls into
``fastxent.cross_entropy_forward`` / ``cross_entropy_backward`` (the arrays reach NumPy through
DLPack, no copy on CPU). The forward keeps the per-row log-sum-exp as the residual; the backward
turns it and the cotangent (a scalar for "mean"/"sum", one per row for "none") into the gradient
in one read of the logits. It works under ``jax.jit``, ``jax.grad``/``jax.vjp`` and ``jax.vmap``
(the callbacks then run once per batch element, ``vmap_method="sequential"``). On an accelerator
the arrays would be copied to the host and back: this is a CPU library.

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
from typing import NamedTuple

import numpy as np

import fastxent

from ._checks import check_reduction, check_smoothing

__all__ = ["cross_entropy"]


class _Options(NamedTuple):
    """The static options, hashable so custom_vjp can take them as a non-differentiable arg."""

    ignore_index: int
    label_smoothing: float
    reduction: str

    def kwargs(self):
        return self._asdict()


_NATIVE = (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)


def _lse_dtype(dtype):
    return jnp.float64 if dtype == jnp.float64 else jnp.float32


def _result_types(opts, logits, labels):
    loss_shape = labels.shape if opts.reduction == "none" else ()
    return (jax.ShapeDtypeStruct(loss_shape, logits.dtype),
            jax.ShapeDtypeStruct(labels.shape, _lse_dtype(logits.dtype)))


def _host_forward(opts, logits, labels, weight):
    loss, lse = fastxent.cross_entropy_forward(logits, labels, weight=weight, **opts.kwargs())
    # pure_callback insists on exactly the promised dtypes (and NumPy arrays, not scalars).
    return np.asarray(loss, dtype=logits.dtype), np.asarray(lse, dtype=_lse_dtype(logits.dtype))


def _host_backward(opts, logits, labels, weight, lse, cotangent):
    return fastxent.cross_entropy_backward(
        logits, labels, lse, weight=weight, grad_output=np.asarray(cotangent), **opts.kwargs()
    )


def _forward_call(opts, logits, labels, weight):
    return jax.pure_callback(
        lambda x, y, w: _host_forward(opts, x, y, w), _result_types(opts, logits, labels),
        logits, labels, weight, vmap_method="sequential",
    )


# opts (argument 0) selects the kernel: static, hashable, not differentiated.
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _cross_entropy(opts, logits, labels, weight):
    return _forward_call(opts, logits, labels, weight)[0]


def _fwd(opts, logits, labels, weight):
    loss, lse = _forward_call(opts, logits, labels, weight)
    return loss, (logits, labels, weight, lse)


def _bwd(opts, residuals, cotangent):
    logits, labels, weight, lse = residuals
    grad = jax.pure_callback(
        lambda x, y, w, s, g: _host_backward(opts, x, y, w, s, g),
        jax.ShapeDtypeStruct(logits.shape, logits.dtype),
        logits, labels, weight, lse, cotangent.astype(logits.dtype), vmap_method="sequential",
    )
    # No cotangent for the integer labels nor (as in PyTorch) for the class weights.
    return grad, None, None


_cross_entropy.defvjp(_fwd, _bwd)


def _static_options(ignore_index, label_smoothing, reduction):
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
    return _Options(ignore_index, check_smoothing(label_smoothing), check_reduction(reduction))


def cross_entropy(logits, labels, *, weight=None, ignore_index=-100, label_smoothing=0.0,
                  reduction="mean"):
    """Softmax cross-entropy of ``logits`` (..., C) against integer ``labels`` (...).

    As torch.nn.functional.cross_entropy (weight, ignore_index, label_smoothing, reduction, and
    "mean" divides by the summed weight of the non-ignored rows) with the class axis last.
    Returns a 0-d array for "mean"/"sum" and an array of shape (...) for "none", in the logits'
    dtype. Differentiable w.r.t. logits (reverse mode), usable inside jit and vmap.
    """
    opts = _static_options(ignore_index, label_smoothing, reduction)
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"logits must be a floating-point array, got dtype {logits.dtype}")
    if logits.ndim == 0:
        raise ValueError("logits must have a class axis: shape (..., classes), got a scalar")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels must have an integer dtype (class indices), got {labels.dtype}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels must have shape {logits.shape[:-1]} to match logits of shape "
                         f"{logits.shape}, got {labels.shape}")
    classes = logits.shape[-1]
    if classes == 0:
        raise ValueError(f"logits must have at least one class, got shape {logits.shape}")
    if weight is not None:
        weight = jax.lax.stop_gradient(jnp.asarray(weight))
        if weight.shape != (classes,):
            raise ValueError(f"weight must have shape ({classes},) (one per class), "
                             f"got {weight.shape}")
        if not jnp.issubdtype(weight.dtype, jnp.floating):
            weight = weight.astype(jnp.float32)

    dtype = logits.dtype
    x = logits if dtype in _NATIVE else logits.astype(jnp.float32)
    loss = _cross_entropy(opts, x, labels, weight)
    return loss if loss.dtype == dtype else loss.astype(dtype)


# ----------------------------------------------------------------------------------------------
# Binary cross-entropy with logits (issue 5): in its own module.

from ._jax_bce import binary_cross_entropy_with_logits  # noqa: E402

__all__ += ["binary_cross_entropy_with_logits"]
