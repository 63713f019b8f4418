"""fastxent.jax: the custom_vjp cross-entropy against a jax.nn.log_softmax reference (always)
and optax (when installed), eagerly, under jit, grad and vmap."""

from __future__ import annotations

import functools
import itertools
import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import fastxent  # noqa: E402
import fastxent.jax as fxj  # noqa: E402

REDUCTIONS = ["mean", "sum", "none"]
DTYPES = ["float32", "float64"]


def reference(logits, labels, weight=None, ignore_index=-100, label_smoothing=0.0,
              reduction="mean"):
    """torch.nn.functional.cross_entropy's definition written with jax.nn.log_softmax."""
    classes = logits.shape[-1]
    logp = jax.nn.log_softmax(logits, axis=-1)
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0)
    w = jnp.ones(classes, logits.dtype) if weight is None else weight.astype(logits.dtype)
    w_y = jnp.where(valid, w[safe], 0)
    nll = -jnp.take_along_axis(logp, safe[..., None].astype(jnp.int32), axis=-1)[..., 0]
    smooth = jnp.where(valid, -(logp * w).sum(-1), 0)   # uniform part, class-weighted
    eps = label_smoothing
    if reduction == "none":
        return (1 - eps) * w_y * nll + eps / classes * smooth
    total = (1 - eps) * (w_y * nll).sum() + eps / classes * smooth.sum()
    return total / w_y.sum() if reduction == "mean" else total


@functools.partial(jax.jit, static_argnames=("fn", "ignore_index", "label_smoothing",
                                             "reduction"))
def _loss_and_grad(fn, logits, labels, cotangent, weight, ignore_index, label_smoothing,
                   reduction):
    opts = dict(weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
                reduction=reduction)
    grad = jax.grad(lambda x: (fn(x, labels, **opts) * cotangent).sum())(logits)
    return fn(logits, labels, **opts), grad


def loss_and_grad(fn, logits, labels, cotangent=None, *, weight=None, ignore_index=-100,
                  label_smoothing=0.0, reduction="mean"):
    """(loss, d sum(loss * cotangent) / d logits) under jit; one compilation per function,
    options and shapes (arguments, not closures, so the grids reuse them)."""
    if cotangent is None:
        cotangent = jnp.ones(labels.shape if reduction == "none" else (), logits.dtype)
    return _loss_and_grad(fn, logits, labels, cotangent, weight, ignore_index,
                          label_smoothing, reduction)


def make_case(seed, lead=(9,), classes=7, dtype="float32", weight=False, ignore=False,
              ignore_index=-100):
    rng = np.random.default_rng(seed)
    x = jnp.asarray((rng.standard_normal(lead + (classes,)) * 3).astype(dtype))
    y = rng.integers(0, classes, size=lead)
    if ignore:
        y.reshape(-1)[1::3] = ignore_index
    w = jnp.asarray(rng.uniform(0.2, 2.0, classes).astype(dtype)) if weight else None
    return x, jnp.asarray(y.astype(np.int32)), w


def assert_close(got, want, rtol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    finite = want[np.isfinite(want)]
    scale = float(np.abs(finite).max()) if finite.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(scale, 1e-30),
                               equal_nan=True)


# float32 results against a float32 reference: both round; float64 against float64.
RTOL = {"float32": 2e-6, "float64": 1e-12}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_log_softmax_reference_every_option(dtype, reduction):
    with jax.enable_x64(dtype == "float64"):
        for k, (weight, ignore, smoothing) in enumerate(
                itertools.product([False, True], [False, True], [0.0, 0.1])):
            x, y, w = make_case(k, dtype=dtype, weight=weight, ignore=ignore)
            cot = (jnp.asarray(np.random.default_rng(k).uniform(0.5, 1.5, y.shape), x.dtype)
                   if reduction == "none" else jnp.asarray(0.75, x.dtype))
            opts = dict(weight=w, reduction=reduction, label_smoothing=smoothing)
            for cotangent in (None, cot):
                got = loss_and_grad(fxj.cross_entropy, x, y, cotangent, **opts)
                want = loss_and_grad(reference, x, y, cotangent, **opts)
                assert got[0].dtype == x.dtype and got[1].dtype == x.dtype
                for a, b in zip(got, want):
                    assert_close(a, b, RTOL[dtype])


@pytest.mark.parametrize("classes", [7, 23])
def test_zero_weight_at_minus_inf_logit_with_smoothing(classes):
    """XLA's threads zero denormals: a class of weight 0 whose logit is -inf still adds 0 to the
    smoothing term (0 * -inf would be NaN), also on the rows' masked last vector."""
    x, y, w = make_case(30, lead=(5,), classes=classes, weight=True)
    w = w.at[2].set(0.0)
    x = x.at[:, 2].set(-jnp.inf)
    y = jnp.where(y == 2, 0, y)
    loss, grad = loss_and_grad(fxj.cross_entropy, x, y, weight=w, label_smoothing=0.1)
    assert np.isfinite(float(loss)) and np.isfinite(np.asarray(grad)).all()
    want = fastxent.cross_entropy(np.asarray(x), np.asarray(y), weight=np.asarray(w),
                                  label_smoothing=0.1, backend="numpy")
    assert_close(loss, want, 2e-6)


def test_eager_call_without_jit():
    x, y, w = make_case(20, weight=True, ignore=True)
    loss = fxj.cross_entropy(x, y, weight=w, label_smoothing=0.2)
    assert loss.shape == () and loss.dtype == jnp.float32
    assert_close(loss, reference(x, y, w, label_smoothing=0.2), 2e-6)
    grad = jax.grad(fxj.cross_entropy)(x, y)
    assert_close(grad, jax.grad(reference)(x, y), 2e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_optax(reduction):
    optax = pytest.importorskip("optax")
    x, y, _ = make_case(21, lead=(4, 6), classes=11)

    def optax_loss(logits, labels, weight, ignore_index, label_smoothing, reduction):
        per_row = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return {"mean": per_row.mean(), "sum": per_row.sum(), "none": per_row}[reduction]

    got = loss_and_grad(fxj.cross_entropy, x, y, reduction=reduction)
    want = loss_and_grad(optax_loss, x, y, reduction=reduction)
    for a, b in zip(got, want):
        assert_close(a, b, 2e-6)


def test_ignore_index_inside_class_range_and_all_ignored():
    x, y, _ = make_case(22)
    y = y.at[::2].set(3)
    for labels in (y, jnp.full_like(y, 3)):
        for reduction in REDUCTIONS:
            opts = dict(ignore_index=3, reduction=reduction, label_smoothing=0.2)
            got = loss_and_grad(fxj.cross_entropy, x, labels, **opts)
            if reduction == "mean" and bool((labels == 3).all()):
                # 0/0 loss as in PyTorch, whose gradient is then 0 (the reference's is NaN)
                assert np.isnan(got[0]) and not np.asarray(got[1]).any()
                continue
            want = loss_and_grad(reference, x, labels, **opts)
            for a, b in zip(got, want):
                assert_close(a, b, 2e-6)


@pytest.mark.parametrize("lead", [(), (3, 4), (2, 3, 2), (0,)])
def test_leading_dimensions(lead):
    x, y, w = make_case(23, lead=lead, weight=True)
    for reduction in REDUCTIONS:
        got = loss_and_grad(fxj.cross_entropy, x, y, weight=w, reduction=reduction)
        want = loss_and_grad(reference, x, y, weight=w, reduction=reduction)
        assert got[0].shape == (lead if reduction == "none" else ())
        assert got[1].shape == x.shape
        for a, b in zip(got, want):
            assert_close(a, b, 2e-6)


@pytest.mark.parametrize("label_dtype", ["int8", "int16", "int32", "uint8", "uint32"])
def test_any_integer_label_dtype(label_dtype):
    x, y, _ = make_case(24)
    got = loss_and_grad(fxj.cross_entropy, x, y.astype(label_dtype))
    want = loss_and_grad(reference, x, y)
    for a, b in zip(got, want):
        assert_close(a, b, 2e-6)


def test_int64_labels_with_x64():
    with jax.enable_x64(True):
        x, y, _ = make_case(25, dtype="float64")
        got = loss_and_grad(fxj.cross_entropy, x, y.astype(jnp.int64))
        want = loss_and_grad(reference, x, y)
        for a, b in zip(got, want):
            assert_close(a, b, 1e-12)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_half_precision_native(dtype, reduction):
    x, y, w = make_case(26, weight=True, ignore=True)
    x = x.astype(dtype)
    got = loss_and_grad(fxj.cross_entropy, x, y, weight=w, label_smoothing=0.1,
                        reduction=reduction)
    with jax.enable_x64(True):   # the exact answer for the (rounded) 16-bit inputs
        want = loss_and_grad(reference, jnp.asarray(np.asarray(x, np.float64)), y,
                             weight=jnp.asarray(np.asarray(w, np.float64)), label_smoothing=0.1,
                             reduction=reduction)
        want = [np.asarray(b) for b in want]
    assert got[0].dtype == x.dtype and got[1].dtype == x.dtype
    for a, b in zip(got, want):
        # computed in float32 inside the kernels, rounded once to the 16-bit type: within one
        # of its ulps of the float64 answer rounded to it
        assert_close(a, b.astype(dtype), float(jnp.finfo(dtype).eps))


def test_vmap_over_independent_problems():
    rng = np.random.default_rng(27)
    xs = jnp.asarray(rng.standard_normal((3, 5, 4)).astype("float32"))
    ys = jnp.asarray(rng.integers(0, 4, (3, 5)).astype("int32"))
    for reduction in REDUCTIONS:
        def one(x, y, reduction=reduction):
            return fxj.cross_entropy(x, y, reduction=reduction, label_smoothing=0.1)

        batched = jax.jit(jax.vmap(one))(xs, ys)
        grads = jax.jit(jax.vmap(jax.grad(lambda x, y: one(x, y).sum())))(xs, ys)
        for i in range(3):
            assert_close(batched[i], one(xs[i], ys[i]), 1e-7)
            assert_close(grads[i], jax.grad(lambda x: one(x, ys[i]).sum())(xs[i]), 1e-7)


def test_weight_gets_no_gradient():
    x, y, w = make_case(28, weight=True)
    assert not np.asarray(jax.grad(lambda w: fxj.cross_entropy(x, y, weight=w))(w)).any()


def test_training_an_mlp_under_jit_matches_reference():
    rng = np.random.default_rng(29)
    x = jnp.asarray(rng.standard_normal((64, 8)).astype("float32"))
    y = jnp.asarray((np.asarray(x)[:, :3].argmax(1)).astype("int32"))   # learnable labels
    params0 = {
        "w1": jnp.asarray(rng.standard_normal((8, 16)).astype("float32") * 0.3),
        "w2": jnp.asarray(rng.standard_normal((16, 3)).astype("float32") * 0.3),
    }

    def run(loss_fn):
        @jax.jit
        def step(params):
            def objective(p):
                return loss_fn(jnp.tanh(x @ p["w1"]) @ p["w2"], y, label_smoothing=0.05)
            loss, grads = jax.value_and_grad(objective)(params)
            return jax.tree.map(lambda p, g: p - 0.5 * g, params, grads), loss

        params, curve = params0, []
        for _ in range(40):
            params, loss = step(params)
            curve.append(float(loss))
        return np.array(curve)

    ours, ref = run(fxj.cross_entropy), run(reference)
    np.testing.assert_allclose(ours, ref, rtol=1e-5)
    assert ours[-1] < 0.5 * ours[0]


def test_options_are_static_and_retrace():
    x, y, _ = make_case(30)
    f = jax.jit(fxj.cross_entropy, static_argnames=("label_smoothing", "reduction"))
    assert_close(f(x, y, label_smoothing=0.3), reference(x, y, label_smoothing=0.3), 2e-6)
    assert_close(f(x, y, reduction="sum"), reference(x, y, reduction="sum"), 2e-6)
    with pytest.raises(TypeError, match="label_smoothing must be a static Python float"):
        jax.jit(lambda s: fxj.cross_entropy(x, y, label_smoothing=s))(0.1)
    with pytest.raises(TypeError, match="ignore_index must be a static Python int"):
        jax.jit(lambda i: fxj.cross_entropy(x, y, ignore_index=i))(3)


def test_clear_errors():
    x, y, w = make_case(31)
    with pytest.raises(ValueError, match=r"labels must have shape \(9,\)"):
        fxj.cross_entropy(x, y[:4])
    with pytest.raises(TypeError, match="labels must have an integer dtype"):
        fxj.cross_entropy(x, y.astype(jnp.float32))
    with pytest.raises(TypeError, match="logits must be a floating-point"):
        fxj.cross_entropy(y[:, None], y)
    with pytest.raises(ValueError, match="class axis"):
        fxj.cross_entropy(jnp.float32(1.0), y)
    with pytest.raises(ValueError, match="reduction"):
        fxj.cross_entropy(x, y, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        fxj.cross_entropy(x, y, label_smoothing=-0.1)
    with pytest.raises(ValueError, match=r"weight must have shape \(7,\)"):
        fxj.cross_entropy(x, y, weight=jnp.ones(3))


def test_bad_label_value_raises_with_its_row():
    # Values are only known when the callback runs; JAX re-raises fastxent's error.
    x, y, _ = make_case(32)
    with pytest.raises(Exception, match=r"labels\[4\] = 12 is not a class index"):
        jax.block_until_ready(jax.jit(fxj.cross_entropy)(x, y.at[4].set(12)))


def test_forward_mode_and_second_derivatives_raise():
    x, y, _ = make_case(33, lead=(3,), classes=4)
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda x: fxj.cross_entropy(x, y), (x,), (x,))
    with pytest.raises(ValueError, match="JVP"):
        jax.hessian(lambda x: fxj.cross_entropy(x, y))(x)
    with pytest.raises(ValueError, match="JVP"):
        jax.grad(lambda x: jax.grad(lambda z: fxj.cross_entropy(z, y))(x).sum())(x)


def test_import_error_without_jax():
    code = ("import sys; sys.modules['jax'] = None\n"
            "try:\n    import fastxent.jax\n"
            "except ImportError as e:\n    print('ImportError:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "ImportError: fastxent.jax needs JAX" in out
