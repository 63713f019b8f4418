"""fastxent.jax's binary cross-entropy: a jax.custom_vjp over fastxent's BCE kernels.

The forward and the backward are host calls (_jax_host.host_call: XLA's buffers read and written
in place where JAX has buffer_callback). Nothing but the inputs is kept as residuals: the
backward recomputes sigmoid in its one pass.
weight / pos_weight get no gradient (zero cotangents). reduction is static."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import fastxent

from ._checks import check_reduction
from ._jax_host import host_call
from ._types import Reduction

_NATIVE = (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)


def _loss_type(reduction, logits):
    return jax.ShapeDtypeStruct(logits.shape if reduction == "none" else (), logits.dtype)


def _host_loss(reduction, outs, x, t, w, pw):
    outs[0][...] = fastxent.binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=pw,
                                                             reduction=reduction)


def _host_grad(reduction, outs, x, t, w, pw, g):
    fastxent.binary_cross_entropy_with_logits_backward(
        x, t, weight=w, pos_weight=pw, reduction=reduction, grad_output=np.asarray(g),
        out=outs[0])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _bce(reduction, logits, targets, weight, pos_weight):
    (loss,) = host_call(functools.partial(_host_loss, reduction), (_loss_type(reduction, logits),),
                        logits, targets, weight, pos_weight)
    return loss


def _fwd(reduction, logits, targets, weight, pos_weight):
    return _bce(reduction, logits, targets, weight, pos_weight), (logits, targets, weight, pos_weight)


def _bwd(reduction, residuals, cotangent):
    logits, targets, weight, pos_weight = residuals
    (grad,) = host_call(
        functools.partial(_host_grad, reduction), (jax.ShapeDtypeStruct(logits.shape, logits.dtype),),
        logits, targets, weight, pos_weight,
        cotangent.astype(jnp.float64 if logits.dtype == jnp.float64 else jnp.float32))
    zero = (lambda a: None if a is None else jnp.zeros_like(a))
    return grad, jnp.zeros_like(targets), zero(weight), zero(pos_weight)


_bce.defvjp(_fwd, _bwd)


def binary_cross_entropy_with_logits(logits: jax.typing.ArrayLike, targets: jax.typing.ArrayLike, *,
                                     weight: jax.typing.ArrayLike | None = None,
                                     pos_weight: jax.typing.ArrayLike | None = None,
                                     reduction: Reduction = "mean") -> jax.Array:
    """As torch.nn.functional.binary_cross_entropy_with_logits (weight and pos_weight broadcast
    to the logits' shape; "mean" over all elements), in the logits' dtype. Differentiable
    w.r.t. logits (reverse mode), usable inside jit and vmap; targets, weight and pos_weight get
    zero gradients. Infinite logits give the limit (PyTorch gives NaN for some)."""
    check_reduction(reduction)
    logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"logits must be a floating-point array, got dtype {logits.dtype}")
    dtype = logits.dtype
    x = logits if dtype in _NATIVE else logits.astype(jnp.float32)
    targets = jnp.asarray(targets)
    if targets.shape != x.shape:
        raise ValueError(f"targets must have the logits' shape {x.shape}, got {targets.shape}")
    targets = jax.lax.stop_gradient(targets.astype(x.dtype))
    aux = []
    for name, a in (("weight", weight), ("pos_weight", pos_weight)):
        if a is not None:
            a = jax.lax.stop_gradient(jnp.asarray(a))
            try:
                ok = jnp.broadcast_shapes(a.shape, x.shape) == x.shape
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"{name} of shape {a.shape} does not broadcast to the logits' "
                                 f"shape {x.shape}")
            if not jnp.issubdtype(a.dtype, jnp.floating):
                a = a.astype(jnp.float32)
        aux.append(a)
    loss = _bce(reduction, x, targets, *aux)
    return loss if loss.dtype == dtype else loss.astype(dtype)
