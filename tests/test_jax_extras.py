"""fastxent.jax with probability targets, z-loss, softcap and accuracy, against the same loss
written in jax.numpy and differentiated by JAX, under jit and vmap."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import fastxent.jax as fxj  # noqa: E402


def jnp_loss(x, y, *, reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
             weight=None):
    """The definition in jax.numpy (class probabilities y, or class indices without ignores)."""
    z = x if softcap is None else softcap * jnp.tanh(x / softcap)
    c = x.shape[-1]
    t = y if jnp.issubdtype(y.dtype, jnp.floating) else jax.nn.one_hot(y, c, dtype=x.dtype)
    w = jnp.ones(c, x.dtype) if weight is None else weight
    q = w * ((1 - label_smoothing) * t + label_smoothing / c)
    logp = jax.nn.log_softmax(z, axis=-1)
    rows = -(q * logp).sum(-1) + z_loss * jax.nn.logsumexp(z, axis=-1) ** 2
    if reduction == "none":
        return rows
    return rows.mean() if reduction == "mean" else rows.sum()


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def case(seed, n=8, c=5, soft=True):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((n, c)) * 3)
    if soft:
        t = rng.random((n, c))
        y = jnp.asarray(t / t.sum(1, keepdims=True))
    else:
        y = jnp.asarray(rng.integers(0, c, n))
    return x, y


@pytest.mark.parametrize("soft", [True, False], ids=["probabilities", "labels"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("opts", [dict(z_loss=0.01), dict(softcap=2.0),
                                  dict(z_loss=0.02, softcap=3.0, label_smoothing=0.1)],
                         ids=["z", "cap", "all"])
def test_value_and_grad_match_jnp_under_jit(soft, reduction, opts):
    x, y = case(1, soft=soft)
    mine = jax.jit(jax.value_and_grad(lambda a: fxj.cross_entropy(a, y, reduction=reduction, **opts)))
    want = jax.value_and_grad(lambda a: jnp_loss(a, y, reduction=reduction, **opts))
    (v1, g1), (v2, g2) = mine(x), want(x)
    np.testing.assert_allclose(v1, v2, rtol=1e-10)
    np.testing.assert_allclose(g1, g2, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradient_with_respect_to_probability_targets(reduction):
    x, t = case(2)
    w = jnp.linspace(0.5, 2.0, 5)
    opts = dict(reduction=reduction, label_smoothing=0.2, softcap=4.0, weight=w)
    mine = jax.grad(lambda b: fxj.cross_entropy(x, b, **opts).sum(), argnums=0)(t)
    want = jax.grad(lambda b: jnp_loss(x, b, **opts).sum(), argnums=0)(t)
    np.testing.assert_allclose(mine, want, rtol=1e-8, atol=1e-12)


def test_extras_are_returned_and_stop_gradient():
    x, y = case(3, soft=False)
    loss, z, acc = jax.jit(lambda a: fxj.cross_entropy(a, y, z_loss=0.1, return_z_loss=True,
                                                       return_accuracy=True))(x)
    np.testing.assert_allclose(z, 0.1 * np.mean(jax.nn.logsumexp(x, axis=-1) ** 2), rtol=1e-10)
    assert float(acc) == pytest.approx(float(np.mean(np.argmax(x, -1) == y)))
    g = jax.grad(lambda a: fxj.cross_entropy(a, y, z_loss=0.1, return_z_loss=True)[1])(x)
    assert not np.any(np.asarray(g))


def test_vmap_over_probability_targets():
    x, t = case(4, n=6)
    batched = jax.vmap(lambda a, b: fxj.cross_entropy(a, b, z_loss=0.01))(x[:, None], t[:, None])
    want = jax.vmap(lambda a, b: jnp_loss(a, b, z_loss=0.01))(x[:, None], t[:, None])
    np.testing.assert_allclose(batched, want, rtol=1e-10)


def test_bad_options():
    x, t = case(5)
    with pytest.raises(ValueError, match="return_accuracy"):
        fxj.cross_entropy(x, t, return_accuracy=True)
    with pytest.raises(ValueError, match="softcap"):
        fxj.cross_entropy(x, t, softcap=-1.0)
    with pytest.raises(ValueError, match="labels must have shape"):
        fxj.cross_entropy(x, t[:, :3])
