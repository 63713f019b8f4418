"""fastxent.jax's host calls (_jax_host): XLA's buffers read and written in place where JAX has
jax.experimental.buffer_callback, and the same results through the copying jax.pure_callback
that older JAX versions get (forced here), for the fused, forward + backward, vmapped, BCE
and failing calls."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import fastxent.jax as fxj  # noqa: E402
from fastxent import _jax_host  # noqa: E402


def test_in_place_when_jax_has_buffer_callback():
    has = importlib.util.find_spec("jax.experimental.buffer_callback") is not None
    assert _jax_host.in_place() == has


def test_inputs_are_read_where_they_are():
    """In place: the host function sees the JAX array's own buffer, not a copy."""
    x = jnp.arange(12.0, dtype=jnp.float32).reshape(3, 4)
    seen = {}

    def fill(outs, a):
        seen["address"] = a.ctypes.data
        outs[0][...] = a.sum()

    (total,) = _jax_host.host_call(fill, (jax.ShapeDtypeStruct((), jnp.float32),), x)
    assert float(total) == 66.0
    if _jax_host.in_place():
        assert seen["address"] == x.unsafe_buffer_pointer()


def _results(seed):
    """Losses and gradients of every kind of host call fastxent.jax makes."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((2, 37, 11)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 11, (2, 37)).astype(np.int32))
    targets = jax.nn.softmax(jnp.asarray(rng.standard_normal((37, 11)).astype(np.float32)))
    out = {}
    # fused (float32 class indices), under jit
    out["fused"] = jax.jit(jax.value_and_grad(lambda x: fxj.cross_entropy(x, y)))(x)
    # forward + backward callbacks (bfloat16), per-row losses, vmapped
    xb = x.astype(jnp.bfloat16)
    per_row = jax.vmap(lambda a, b: fxj.cross_entropy(a, b, reduction="none", z_loss=1e-3))
    out["vmap_bf16"] = jax.value_and_grad(lambda a: per_row(a, y).astype(jnp.float32).sum())(xb)
    # probability targets: the lse residual and the backward callback
    out["soft"] = jax.value_and_grad(lambda a: fxj.cross_entropy(a, targets))(x[0])
    out["extras"] = fxj.cross_entropy(x[0], y[0], label_smoothing=0.1, return_z_loss=True,
                                      return_accuracy=True)
    out["bce"] = jax.value_and_grad(
        lambda a: fxj.binary_cross_entropy_with_logits(a, (y[0] % 2).astype(jnp.float32)[:, None]
                                                       * jnp.ones(11)))(x[0])
    return out


def test_copying_fallback_gives_the_same_results(monkeypatch):
    in_place = _results(0)
    monkeypatch.setattr(_jax_host, "_buffer_callback", None)
    assert not _jax_host.in_place()
    copied = _results(0)
    for name, want in in_place.items():
        for got_leaf, want_leaf in zip(jax.tree.leaves(copied[name]), jax.tree.leaves(want)):
            np.testing.assert_array_equal(np.asarray(got_leaf), np.asarray(want_leaf),
                                          err_msg=name)


@pytest.mark.parametrize("in_place", [True, False], ids=["in_place", "copying"])
def test_bad_label_raises_through_either_host_call(monkeypatch, in_place):
    if not in_place:
        monkeypatch.setattr(_jax_host, "_buffer_callback", None)
    x = jnp.zeros((6, 4), jnp.float32)
    y = jnp.array([0, 1, 2, 3, 9, 0])
    with pytest.raises(Exception, match=r"labels\[4\] = 9 is not a class index"):
        jax.block_until_ready(jax.jit(jax.grad(lambda a: fxj.cross_entropy(a, y)))(x))
