"""fastxent.binary_cross_entropy_with_logits (+ _with_grad, _backward) on every backend and ISA:
against the float64 reference and PyTorch, finite differences, edge values, 16-bit logits,
errors, out= and inplace=."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent
from _helpers import num_threads

bce = fastxent.binary_cross_entropy_with_logits
bce_with_grad = fastxent.binary_cross_entropy_with_logits_with_grad
bce_backward = fastxent.binary_cross_entropy_with_logits_backward

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
REDUCTIONS = ["mean", "sum", "none"]
# Shapes and the weight / pos_weight layouts they are tried with: None, a scalar, one per
# class (last axis), one per row (broadcast over the last axis) and one per element.
SHAPES = [(), (7,), (5, 3), (2, 3, 4), (9, 1), (33, 70), (3, 2049)]
LAYOUTS = ["none", "scalar", "class", "row", "full"]


def make_case(rng, shape, dtype, targets="prob"):
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    if targets == "prob":
        t = rng.random(shape)
    else:
        t = (rng.random(shape) < 0.5).astype(np.float64)
    if np.ndim(t):
        t.flat[:: 5] = 1.0  # hard targets among the soft ones
        t.flat[1:: 7] = 0.0
    return np.asarray(x), np.asarray(t).astype(dtype)


def make_aux(rng, shape, layout, low=0.2, high=3.0):
    if layout == "none":
        return None
    if layout == "scalar":
        return np.float64(rng.uniform(low, high))
    if layout == "class":
        return rng.uniform(low, high, shape[-1:] if shape else ())
    if layout == "row":
        return rng.uniform(low, high, shape[:-1] + (1,)) if shape else rng.uniform(low, high, ())
    return rng.uniform(low, high, shape)


def reference(x, t, **opts):
    """(loss, grad) of the float64 reference on float64 copies of the inputs."""
    return bce_with_grad(np.asarray(x, np.float64), np.asarray(t, np.float64), backend="numpy",
                         **opts)


def tol(dtype):
    return dict(rtol=2e-13, atol=1e-13) if dtype == F64 else dict(rtol=3e-6, atol=3e-6)


def scale_of(reduction, n):
    return 1.0 / n if reduction == "mean" and n else 1.0


# ----------------------------------------------------------------------------------------------
# Against the reference


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_reference(backend, rng, shape, dtype, reduction):
    x, t = make_case(rng, shape, dtype)
    n = max(x.size, 1)
    for wl, pl in [("none", "none"), ("class", "scalar"), ("row", "class"), ("full", "full"),
                   ("scalar", "row")]:
        opts = dict(weight=make_aux(rng, shape, wl), pos_weight=make_aux(rng, shape, pl),
                    reduction=reduction)
        want_loss, want_grad = reference(x, t, **opts)
        k = tol(dtype)
        loss = bce(x, t, backend=backend, **opts)
        np.testing.assert_allclose(np.float64(loss), want_loss, rtol=k["rtol"], atol=k["atol"] / n)
        assert np.asarray(loss).dtype == dtype and np.shape(loss) == (shape if reduction == "none" else ())
        loss2, grad = bce_with_grad(x, t, backend=backend, **opts)
        # The loss-only and fused kernels may contract multiply-adds differently: 1-2 ulp.
        np.testing.assert_allclose(loss2, loss, rtol=4 * np.finfo(dtype).eps, atol=0)
        assert grad.dtype == dtype and grad.shape == shape
        gs = scale_of(reduction, x.size)
        np.testing.assert_allclose(grad, want_grad, rtol=k["rtol"], atol=k["atol"] * gs * 10)
        np.testing.assert_allclose(bce_backward(x, t, backend=backend, **opts), grad,
                                   rtol=k["rtol"], atol=k["atol"] * gs * 10)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_grad_output_scales(backend, rng, reduction):
    x, t = make_case(rng, (6, 40), F64)
    _, g1 = bce_with_grad(x, t, reduction=reduction, backend=backend)
    _, g3 = bce_with_grad(x, t, reduction=reduction, grad_output=-2.5, backend=backend)
    np.testing.assert_allclose(g3, -2.5 * g1, rtol=1e-15, atol=0)


def test_grad_output_per_element(backend, rng):
    x, t = make_case(rng, (6, 40), F64)
    go = rng.standard_normal((6, 40))
    pw = rng.uniform(0.5, 2, 40)
    _, g1 = bce_with_grad(x, t, pos_weight=pw, reduction="none", backend=backend)
    g = bce_backward(x, t, pos_weight=pw, reduction="none", grad_output=go, backend=backend)
    np.testing.assert_allclose(g, go * g1, rtol=1e-14, atol=1e-300)


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_threads_give_the_same_answer(backend, rng, dtype, threads):
    """Large enough to run threaded; the summed loss does not depend on the thread count."""
    x, t = make_case(rng, (300, 1000), dtype)
    pw = rng.uniform(0.5, 2, 1000)
    with num_threads(1):
        l1, g1 = bce_with_grad(x, t, pos_weight=pw, backend=backend)
    l2, g2 = bce_with_grad(x, t, pos_weight=pw, backend=backend)
    np.testing.assert_array_equal(g1, g2)
    assert l1 == l2
    want, _ = reference(x, t, pos_weight=pw)
    np.testing.assert_allclose(np.float64(l2), want, rtol=1e-12 if dtype == F64 else 1e-6)


def test_strided_and_transposed_inputs(backend, rng):
    x, t = make_case(rng, (40, 30), F32)
    xs, ts = x[::2, ::3], t.T[::3, ::2].T  # non-contiguous views
    w = rng.uniform(0.5, 2, (20, 10))[:, ::1]
    l, g = bce_with_grad(xs, ts, weight=w, reduction="none", backend=backend)
    lc, gc = bce_with_grad(xs.copy(), ts.copy(), weight=w, reduction="none", backend=backend)
    np.testing.assert_array_equal(l, lc)
    np.testing.assert_array_equal(g, gc)


# ----------------------------------------------------------------------------------------------
# Against PyTorch, float64


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("layouts", [("none", "none"), ("class", "class"), ("full", "row"),
                                     ("scalar", "full")], ids=str)
def test_matches_torch_float64(backend, rng, reduction, layouts):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    shape = (17, 6)
    x, t = make_case(rng, shape, F64)
    w, pw = make_aux(rng, shape, layouts[0]), make_aux(rng, shape, layouts[1])
    go = rng.standard_normal(shape) if reduction == "none" else 1.7
    X = torch.tensor(x, requires_grad=True)
    as_t = (lambda a: None if a is None else torch.tensor(a))
    L = F.binary_cross_entropy_with_logits(X, torch.tensor(t), weight=as_t(w), pos_weight=as_t(pw),
                                           reduction=reduction)
    L.backward(torch.as_tensor(go, dtype=torch.float64))
    loss, grad = bce_with_grad(x, t, weight=w, pos_weight=pw, reduction=reduction,
                               grad_output=go, backend=backend)
    np.testing.assert_allclose(loss, L.detach().numpy(), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(grad, X.grad.numpy(), rtol=1e-11, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Finite differences, float64


@pytest.mark.parametrize("targets", ["prob", "hard"])
def test_gradient_by_finite_differences(backend, rng, targets):
    shape = (4, 5)
    x, t = make_case(rng, shape, F64, targets)
    x[0, :] = [-30.0, -3.0, 0.0, 3.0, 30.0]
    w, pw = make_aux(rng, shape, "row"), make_aux(rng, shape, "class")
    opts = dict(weight=w, pos_weight=pw, reduction="sum", backend=backend)
    _, grad = bce_with_grad(x, t, **opts)
    h = 1e-6
    fd = np.empty(shape)
    for i in np.ndindex(shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        fd[i] = (float(bce(xp, t, **opts)) - float(bce(xm, t, **opts))) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------------------------
# Edge values

INF = np.inf
# (x, t, pos_weight, loss, d loss / d x), unweighted, in float64; the limits at infinite x.
EDGE = [
    (INF, 1.0, 1.0, 0.0, 0.0),
    (INF, 0.0, 1.0, INF, 1.0),
    (INF, 0.3, 2.0, INF, 0.7),
    (-INF, 0.0, 1.0, 0.0, 0.0),
    (-INF, 1.0, 1.0, INF, -1.0),
    (-INF, 0.3, 2.0, INF, -0.6),
    (1e30, 1.0, 1.0, 0.0, 0.0),
    (1e30, 0.0, 1.0, 1e30, 1.0),
    (1e30, 0.3, 1.0, 0.7e30, 0.7),
    (-1e30, 0.0, 1.0, 0.0, 0.0),
    (-1e30, 1.0, 3.0, 3e30, -3.0),
    (-1e30, 0.3, 1.0, 0.3e30, -0.3),
    (0.0, 0.3, 1.0, np.log(2.0), 0.2),
    (0.0, 1.0, 2.0, 2 * np.log(2.0), -1.0),
    (40.0, 1.0, 1.0, np.exp(-40.0), -np.exp(-40.0)),  # no rounding of 1 - sigmoid to 0
    (-40.0, 0.0, 1.0, np.exp(-40.0), np.exp(-40.0)),
    (-20.0, 0.0, 1.0, np.log1p(np.exp(-20.0)), np.exp(-20.0) / (1 + np.exp(-20.0))),
    (20.0, 0.0, 1.0, 20.0 + np.log1p(np.exp(-20.0)), 1 / (1 + np.exp(-20.0))),
]


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_edge_values(backend, dtype):
    # Repeated so the vector loops see them, not only the scalar tail.
    reps = 19
    x = np.repeat([e[0] for e in EDGE], reps).astype(dtype)
    t = np.repeat([e[1] for e in EDGE], reps).astype(dtype)
    pw = np.repeat([e[2] for e in EDGE], reps)
    want_loss = np.repeat([e[3] for e in EDGE], reps).astype(dtype)
    want_grad = np.repeat([e[4] for e in EDGE], reps).astype(dtype)
    # pos_weight per element: a 2-D (1, n) array broadcast over one row.
    loss, grad = bce_with_grad(x, t, pos_weight=pw, reduction="none", backend=backend)
    rtol = 1e-14 if dtype == F64 else 2e-6
    np.testing.assert_allclose(loss, want_loss, rtol=rtol, atol=0)
    np.testing.assert_allclose(grad, want_grad, rtol=rtol, atol=0)
    weight = np.zeros_like(pw)  # weight 0 masks an element, infinite logits too
    loss, grad = bce_with_grad(x, t, weight=weight, pos_weight=pw, reduction="sum", backend=backend)
    assert loss == 0 and not grad.any()


def test_nan_propagates(backend):
    x = np.array([np.nan, 0.0, 1.0] * 11, np.float32)
    t = np.array([0.5, np.nan, 1.0] * 11, np.float32)
    loss, grad = bce_with_grad(x, t, reduction="none", backend=backend)
    assert np.isnan(loss[0::3]).all() and np.isnan(loss[1::3]).all() and np.isfinite(loss[2::3]).all()
    assert np.isnan(grad[0::3]).all() and np.isnan(grad[1::3]).all()
    assert np.isnan(bce(x, t, backend=backend))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty(backend, reduction):
    x = np.zeros((0, 4), np.float32)
    loss, grad = bce_with_grad(x, x, reduction=reduction, backend=backend)
    assert grad.shape == (0, 4) and grad.dtype == F32
    if reduction == "mean":
        assert np.isnan(loss)  # as PyTorch
    elif reduction == "sum":
        assert loss == 0
    else:
        assert loss.shape == (0, 4)


def test_targets_of_other_dtypes(backend, rng):
    x, t = make_case(rng, (8, 9), F32, targets="hard")
    want = bce(x, t, backend=backend)
    for other in (np.float64, np.int64, np.uint8, np.float16):
        assert bce(x, t.astype(other), backend=backend) == want
    assert bce(x, t.astype(bool), backend=backend) == want


# ----------------------------------------------------------------------------------------------
# 16-bit logits: computed in float32, one rounding on output


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_half_precision(backend, rng, name, reduction):
    if name == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        dtype = np.dtype(ml_dtypes.bfloat16)
        info = ml_dtypes.finfo(dtype)
    else:
        dtype = np.dtype(np.float16)
        info = np.finfo(dtype)
    shape = (13, 77)
    x, t = make_case(rng, shape, dtype)
    x.flat[:4] = np.array([np.inf, -np.inf, 60000.0 if name == "float16" else 1e30, -30.0], dtype)
    pw = rng.uniform(0.5, 2, 77)
    loss, grad = bce_with_grad(x, t, pos_weight=pw, reduction=reduction, backend=backend)
    assert grad.dtype == dtype and np.asarray(loss).dtype == dtype
    want_loss, want_grad = reference(x, t, pos_weight=pw, reduction=reduction)
    eps, tiny = float(info.eps), float(info.smallest_subnormal)
    # One rounding of a float32 result: within one 16-bit ulp (relative eps, or the subnormal
    # spacing) of the float64 answer.
    np.testing.assert_allclose(grad.astype(np.float64), want_grad, rtol=eps, atol=tiny)
    if reduction == "none":
        np.testing.assert_allclose(loss.astype(np.float64), want_loss, rtol=eps, atol=tiny)
    else:
        np.testing.assert_allclose(float(loss), want_loss, rtol=eps)


# ----------------------------------------------------------------------------------------------
# out= and inplace=


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_out_and_inplace(backend, rng, dtype):
    x, t = make_case(rng, (20, 33), dtype)
    want_loss, want = bce_with_grad(x, t, backend=backend)
    out = np.full(x.shape, 7, dtype)
    loss, got = bce_with_grad(x, t, out=out, backend=backend)
    assert got is out and loss == want_loss
    np.testing.assert_array_equal(out, want)
    strided = np.zeros((20, 66), dtype)[:, ::2]
    assert bce_with_grad(x, t, out=strided, backend=backend)[1] is strided
    np.testing.assert_array_equal(strided, want)
    xi = x.copy()
    loss, got = bce_with_grad(xi, t, inplace=True, backend=backend)
    assert got is xi and loss == want_loss
    np.testing.assert_array_equal(xi, want)
    xi = x.copy()
    assert bce_with_grad(xi, t, out=xi, backend=backend)[1] is xi
    np.testing.assert_array_equal(xi, want)


def test_inplace_into_torch_tensor(backend, rng):
    torch = pytest.importorskip("torch")
    x, t = make_case(rng, (4, 50), F32)
    want = bce_backward(x, t, backend=backend)
    tx = torch.tensor(x)  # the same kernel as `want`: equal bits
    bce_backward(tx, torch.tensor(t), inplace=True, backend=backend)
    np.testing.assert_array_equal(tx.numpy(), want)


# ----------------------------------------------------------------------------------------------
# Errors: clear messages, caller buffers untouched


def _raises(exc, match, fn, *args, **kwargs):
    with pytest.raises(exc, match=match):
        fn(*args, **kwargs)


def test_errors(backend):
    x = np.zeros((3, 4), np.float32)
    t = np.ones((3, 4), np.float32)
    keep_x, keep_t = x.copy(), t.copy()
    _raises(TypeError, "logits must be float16", bce, x.astype(np.int32), t, backend=backend)
    _raises(ValueError, "targets must have the logits' shape", bce, x, t[:2], backend=backend)
    _raises(TypeError, "targets must be real numbers", bce, x, t.astype(complex), backend=backend)
    _raises(ValueError, r"weight of shape \(3,\) does not broadcast", bce, x, t,
            weight=np.ones(3), backend=backend)
    _raises(ValueError, r"pos_weight of shape \(2, 3, 4\) does not broadcast", bce, x, t,
            pos_weight=np.ones((2, 3, 4)), backend=backend)
    _raises(ValueError, "pos_weight must be finite", bce, x, t, pos_weight=np.full(4, np.nan),
            backend=backend)
    _raises(TypeError, "weight must be real numbers", bce, x, t, weight="a", backend=backend)
    _raises(ValueError, "reduction must be", bce, x, t, reduction="avg", backend=backend)
    _raises(ValueError, "backend must be", bce, x, t, backend="fortran")
    _raises(TypeError, "grad_output must be a real number", bce_with_grad, x, t,
            grad_output=np.ones(3), backend=backend)
    _raises(ValueError, "grad_output must be a scalar or have the logits' shape", bce_with_grad,
            x, t, reduction="none", grad_output=np.ones(3), backend=backend)
    _raises(ValueError, "out must have the logits' shape", bce_with_grad, x, t,
            out=np.zeros((4, 3), np.float32), backend=backend)
    _raises(TypeError, "out must have the logits' dtype", bce_backward, x, t,
            out=np.zeros((3, 4)), backend=backend)
    _raises(ValueError, "either out= or inplace=True", bce_with_grad, x, t, out=x, inplace=True,
            backend=backend)
    base = np.zeros(13, np.float32)
    _raises(ValueError, "out overlaps logits", bce_with_grad, base[:12].reshape(3, 4), t,
            out=base[1:].reshape(3, 4), backend=backend)
    _raises(ValueError, "out overlaps targets", bce_with_grad, x, base[:12].reshape(3, 4),
            out=base[1:].reshape(3, 4), backend=backend)
    big = np.zeros((3, 8), np.float32)
    _raises(ValueError, "inplace=True needs C-contiguous logits", bce_with_grad, big[:, ::2], t,
            inplace=True, backend=backend)
    _raises(ValueError, "inplace=True needs logits that are a writable array", bce_with_grad,
            x.tolist(), t, inplace=True, backend=backend)
    frozen = x.copy()
    frozen.flags.writeable = False
    _raises(ValueError, "writable", bce_with_grad, frozen, t, inplace=True, backend=backend)
    np.testing.assert_array_equal(x, keep_x)
    np.testing.assert_array_equal(t, keep_t)
    assert not big.any() and not base.any()


def test_bad_out_leaves_it_unchanged(backend):
    x = np.zeros((3, 4), np.float32)
    out = np.full((3, 4), 5, np.float32)
    with pytest.raises(ValueError, match="targets"):
        bce_with_grad(x, np.ones((3, 5)), out=out, backend=backend)
    assert (out == 5).all()


def test_tensor_requiring_grad_is_named():
    torch = pytest.importorskip("torch")
    x = torch.zeros(3, requires_grad=True)
    with pytest.raises(TypeError, match="logits is a tensor that requires grad"):
        bce(x, torch.zeros(3))


# ----------------------------------------------------------------------------------------------
# fastxent.torch and fastxent.jax


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_torch_function_gradcheck_and_module(rng, reduction):
    torch = pytest.importorskip("torch")
    import fastxent.torch as ft

    F = torch.nn.functional
    x = torch.tensor(rng.standard_normal((5, 4)) * 3, requires_grad=True)
    t = torch.tensor(rng.random((5, 4)))
    w, pw = torch.tensor(rng.uniform(0.5, 2, (5, 1))), torch.tensor(rng.uniform(0.5, 2, 4))
    fn = (lambda x: ft.binary_cross_entropy_with_logits(x, t, w, pw, reduction=reduction))
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-8, rtol=1e-6)
    want = F.binary_cross_entropy_with_logits(x, t, w, pos_weight=pw, reduction=reduction)
    got = ft.BCEWithLogitsLoss(w, reduction, pw)(x, t)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_torch_bfloat16_and_errors(rng):
    torch = pytest.importorskip("torch")
    import fastxent.torch as ft

    x = torch.randn(3, 8, dtype=torch.bfloat16, requires_grad=True)
    t = torch.rand(3, 8).to(torch.bfloat16)
    loss = ft.binary_cross_entropy_with_logits(x, t)
    loss.backward()
    assert loss.dtype == x.grad.dtype == torch.bfloat16
    xr = x.detach().double().requires_grad_()
    torch.nn.functional.binary_cross_entropy_with_logits(xr, t.double()).backward()
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=2 ** -7, atol=1e-6)
    with pytest.raises(ValueError, match="target must have the input's shape"):
        ft.binary_cross_entropy_with_logits(x, t[:2])
    with pytest.raises(ValueError, match="reduction must be"):
        ft.BCEWithLogitsLoss(reduction="avg")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_jax_grad_under_jit(rng, reduction):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    import fastxent.jax as fj

    x = jnp.asarray((rng.standard_normal((6, 5)) * 3).astype(np.float32))
    t = jnp.asarray(rng.random((6, 5)).astype(np.float32))
    pw = jnp.asarray(rng.uniform(0.5, 2, 5).astype(np.float32))
    co = jnp.asarray(rng.standard_normal((6, 5)).astype(np.float32))

    def ours(x):
        loss = fj.binary_cross_entropy_with_logits(x, t, pos_weight=pw, reduction=reduction)
        return (loss * co).sum() if reduction == "none" else loss

    loss, grad = jax.jit(jax.value_and_grad(ours))(x)
    want_loss, want_grad = reference(np.asarray(x), np.asarray(t), pos_weight=np.asarray(pw),
                                     reduction=reduction,
                                     grad_output=np.asarray(co) if reduction == "none" else 1.0)
    if reduction == "none":
        want_loss = (want_loss * np.asarray(co, np.float64)).sum()
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="does not broadcast"):
        fj.binary_cross_entropy_with_logits(x, t, weight=jnp.ones(6))
