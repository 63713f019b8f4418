"""fastxent against JAX: jax.value_and_grad (and jax.vjp for reduction="none") of a JAX
reference built on jax.nn.log_softmax; JAX arrays as inputs (read through DLPack)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import fastxent
from _helpers import assert_grad_close, assert_loss_close, gradient_scale, make_labels, make_logits, make_weight

jax = pytest.importorskip("jax")
jnp = jax.numpy


def jax_cross_entropy(logits, labels, weight, ignore_index, eps, reduction):
    """torch.nn.functional.cross_entropy's definition written with jax.nn.log_softmax."""
    c = logits.shape[-1]
    logp = jax.nn.log_softmax(logits, axis=-1)
    keep = labels != ignore_index
    safe = jnp.where(keep, labels, 0)
    w = jnp.ones(c, logits.dtype) if weight is None else weight
    wy = w[safe]
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0] * wy
    smooth = -(logp * w).sum(axis=-1) / c
    rows = jnp.where(keep, (1 - eps) * nll + eps * smooth, 0.0)
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / jnp.where(keep, wy, 0.0).sum()


def jax_loss_and_grad(logits, labels, weight=None, ignore_index=-100, label_smoothing=0.0,
                      reduction="mean", grad_output=1.0):
    x = jnp.asarray(logits)
    y = jnp.asarray(labels)
    w = None if weight is None else jnp.asarray(weight, dtype=x.dtype)

    def f(z):
        return jax_cross_entropy(z, y, w, ignore_index, label_smoothing, reduction)

    if reduction == "none":
        g = jnp.broadcast_to(jnp.asarray(grad_output, dtype=x.dtype), x.shape[:-1])
        # One compiled function (op-by-op eager JAX compiles every primitive separately).
        loss, grad = jax.jit(lambda z, g: (f(z), jax.vjp(f, z)[1](g)[0]))(x, g)
    else:
        loss, grad = jax.jit(jax.value_and_grad(f))(x)
        grad = grad * grad_output
    return np.asarray(loss), np.asarray(grad)


CASES = [
    pytest.param((8, 10), {}, id="8x10-plain"),
    pytest.param((8, 10), {"reduction": "sum", "grad_output": 0.5}, id="8x10-sum"),
    pytest.param((37, 100), {"weight": True, "label_smoothing": 0.1, "ignore": True}, id="37x100-rich"),
    pytest.param((2, 3, 50), {"reduction": "none", "grad_output": "rows", "label_smoothing": 0.2},
                 id="2x3x50-none"),
    pytest.param((3, 1000), {"ignore_index": 2, "ignore": True, "weight": True}, id="3x1000-ignore2"),
    pytest.param((1, 32000), {"label_smoothing": 0.05}, id="1x32000"),
    pytest.param((64, 1000), {"reduction": "none"}, id="64x1000-none"),
]


def build(rng, shape, spec, dtype):
    spec = dict(spec)
    c = shape[-1]
    lead = shape[:-1]
    ignore_index = spec.pop("ignore_index", -100)
    ignore = spec.pop("ignore", False)
    logits = make_logits(rng, shape, dtype)
    labels = make_labels(rng, lead, c, ignore_index=ignore_index, ignore_frac=0.3 if ignore else 0)
    opts = {"ignore_index": ignore_index}
    if spec.pop("weight", False):
        opts["weight"] = make_weight(rng, c).astype(dtype)
    g = spec.pop("grad_output", None)
    if g == "rows":
        opts["grad_output"] = rng.uniform(-2, 2, size=lead).astype(dtype)
    elif g is not None:
        opts["grad_output"] = g
    opts.update(spec)
    return logits, labels, opts


_CASES: dict = {}


def shared_case(key, shape, spec, dtype):
    """The case and JAX's answer, computed once per key and shared by every backend."""
    if key not in _CASES:
        rng = np.random.default_rng(zlib.crc32(key.encode()))
        logits, labels, opts = build(rng, shape, spec, dtype)
        if dtype == np.float64:
            with jax.enable_x64(True):  # only inside this block
                want = jax_loss_and_grad(logits, labels, **opts)
        else:
            want = jax_loss_and_grad(logits, labels, **opts)
        assert want[1].dtype == dtype
        _CASES[key] = (logits, labels, opts, want)
    return _CASES[key]


@pytest.mark.parametrize(("shape", "spec"), CASES)
def test_float32_against_jax(backend, shape, spec):
    key = f"f32-{shape}-{spec}"
    logits, labels, opts, (want_loss, want_grad) = shared_case(key, shape, spec, np.float32)
    loss, grad = fastxent.cross_entropy_with_grad(logits, labels, backend=backend, **opts)
    assert grad.dtype == np.float32
    # JAX computes in float32 too: both carry float32 rounding.
    assert_loss_close(loss, want_loss, np.float32, logits)
    scale = gradient_scale(labels, shape[-1], **opts)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=2e-6 * scale)


@pytest.mark.parametrize(("shape", "spec"), CASES[:4])
def test_float64_against_jax(backend, shape, spec):
    """The same in float64 with x64 enabled only while JAX computes its answer."""
    logits, labels, opts, (want_loss, want_grad) = shared_case(f"f64-{shape}-{spec}", shape, spec,
                                                               np.float64)
    loss, grad = fastxent.cross_entropy_with_grad(logits, labels, backend=backend, **opts)
    assert_loss_close(loss, want_loss, np.float64, logits)
    assert_grad_close(grad, want_grad, np.float64, gradient_scale(labels, shape[-1], **opts))


def test_x64_not_left_enabled():
    assert jnp.ones(2).dtype == jnp.float32


def test_jax_arrays_as_input(backend, rng):
    logits = make_logits(rng, (16, 40), np.float32)
    labels = make_labels(rng, (16,), 40).astype(np.int32)
    weight = make_weight(rng, 40).astype(np.float32)
    xj, yj, wj = jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weight)
    loss, grad = fastxent.cross_entropy_with_grad(xj, yj, weight=wj, label_smoothing=0.1, backend=backend)
    want_loss, want_grad = fastxent.cross_entropy_with_grad(logits, labels, weight=weight,
                                                            label_smoothing=0.1, backend=backend)
    np.testing.assert_array_equal(loss, want_loss)
    np.testing.assert_array_equal(grad, want_grad)
    np.testing.assert_array_equal(np.asarray(xj), logits)  # the JAX array is untouched
    p = fastxent.softmax(xj, backend=backend)
    np.testing.assert_allclose(p, np.asarray(jax.nn.softmax(xj, axis=-1)), rtol=1e-5, atol=1e-7)
    lse = fastxent.logsumexp(xj, backend=backend)
    np.testing.assert_allclose(lse, np.asarray(jax.nn.logsumexp(xj, axis=-1)), rtol=1e-6)
