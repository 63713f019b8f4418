"""float16 and bfloat16 logits: computed in float32 inside, lse in float32, loss and gradient in
the logits' dtype, each rounded once.

The oracle is the float64 answer for the same (already rounded) 16-bit inputs: the NumPy
reference run on the inputs upcast to float64. A result computed in float32 and rounded once
to the 16-bit type is within one unit in its last place (ulp) of that answer (a correctly
rounded one within half an ulp; float32 rounding before can tip a near-tie the other way).
Every backend, every ISA this machine has, one and two threads.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastxent
from _helpers import gradient_scale, np_rowop, torch_cross_entropy, using_impl

ml_dtypes = pytest.importorskip("ml_dtypes")

F16 = np.dtype(np.float16)
BF16 = np.dtype(ml_dtypes.bfloat16)
HALF_DTYPES = [pytest.param(F16, id="float16"), pytest.param(BF16, id="bfloat16")]
# Shapes through every kernel path: empty, one element, few classes (rows per vector lane),
# cached rows, rows split across threads (N < 2 * threads, C >= 16384), rows too long to cache.
SHAPES = [(0, 5), (1, 1), (37, 3), (16, 5), (64, 1000), (3, 40000), (2, 70000)]
FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # exp below this is flushed to 0 in float32


def finfo(dtype):
    return np.finfo(dtype) if dtype == F16 else ml_dtypes.finfo(dtype)


def ulp(dtype, value):
    """The spacing of `dtype` at |value| (float64 array); its smallest spacing below the normal
    range; 0 where value is not finite."""
    info = finfo(dtype)
    a = np.abs(np.asarray(value, dtype=np.float64))
    finite = np.isfinite(a)
    _, e = np.frexp(np.where(finite, a, 1.0))       # a = m 2^e, m in [0.5, 1)
    e = np.maximum(e - 1, info.minexp)
    return np.where(finite, np.ldexp(1.0, e - info.nmant), 0.0)


def assert_ulps(got, want, dtype, ulps=1.0, atol=0.0, what=""):
    """got (16-bit) within `ulps` of the float64 `want` (+ atol); NaN where want is NaN; where
    `want` rounds to +-inf in the 16-bit type (or is inf), got is exactly that."""
    got = np.asarray(got)
    assert got.dtype == dtype, f"{what}: dtype {got.dtype}, want {dtype}"
    got = got.astype(np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, what
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan, err_msg=f"{what}: NaN positions")
    with np.errstate(over="ignore"):
        rounded = want.astype(dtype).astype(np.float64)
    inf = np.isinf(rounded)
    np.testing.assert_array_equal(got[inf], rounded[inf], err_msg=f"{what}: infinities")
    check = ~nan & ~inf
    err = np.abs(got[check] - want[check])
    tol = ulps * ulp(dtype, want[check]) + atol
    bad = err > tol
    if bad.any():
        i = np.flatnonzero(bad)[0]
        raise AssertionError(
            f"{what}: {bad.sum()} of {bad.size} beyond {ulps} ulp; first: got {got[check][i]!r}, "
            f"want {want[check][i]!r} ({err[i] / ulp(dtype, want[check][i]):.3g} ulp)")


def assert_lse(got, want, labels, ignore_index, what="lse"):
    """lse in float32, within float32 rounding of the float64 one (rows not ignored)."""
    assert got.dtype == np.float32, what
    keep = np.asarray(labels).reshape(-1) != ignore_index
    g = got.reshape(-1)[keep].astype(np.float64)
    w = np.asarray(want, np.float64).reshape(-1)[keep]
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6, equal_nan=True, err_msg=what)


def reference64(x16, labels, **opts):
    """(loss, grad, lse) in float64 for the 16-bit inputs, from the NumPy reference."""
    x = x16.astype(np.float64)
    loss, grad = fastxent.cross_entropy_with_grad(x, labels, backend="numpy", **opts)
    fwd = {k: v for k, v in opts.items() if k != "grad_output"}
    _, lse = fastxent.cross_entropy_forward(x, labels, backend="numpy", **fwd)
    return loss, grad, lse


def grad_atol(labels, classes, **opts):
    """Absolute slack for gradients: float32's flush of exp below its normal range, and, with
    label smoothing, float32 rounding of p_j * coef - eps/C * w_j (which cancels)."""
    atol = 2 * FLOAT32_TINY
    if opts.get("label_smoothing", 0.0):
        atol += 2.0**-23 * gradient_scale(labels, classes, **opts)
    return atol


def option_sets(rng, n, c):
    """A few option combinations covering weight, ignore_index, smoothing, every reduction,
    scalar and per-row grad_output."""
    labels = rng.integers(0, c, n)
    ignored = labels.copy()
    if n > 2:
        ignored[1::3] = -100
    custom = labels.copy()
    if n > 1:
        custom[0] = 7 if c <= 7 else c + 3  # a custom ignore_index outside [0, C)
    ignore_custom = 7 if c <= 7 else c + 3
    weight = rng.uniform(0.2, 2.0, c)
    return [
        ("plain-mean", labels, {}),
        ("w-smooth-sum-gout", labels, dict(weight=weight, label_smoothing=0.1, reduction="sum",
                                           grad_output=-1.5)),
        ("ignore-none-rows", ignored, dict(reduction="none", grad_output=rng.uniform(-2, 2, n))),
        ("custom-ignore-smooth1-w-mean", custom, dict(weight=weight, label_smoothing=1.0,
                                                      ignore_index=ignore_custom)),
        ("smooth-none", ignored, dict(label_smoothing=0.3, reduction="none")),
    ]


# ----------------------------------------------------------------------------------------------
# Against the float64 answer


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_matches_float64(backend, threads, dtype, shape, rng):
    n, c = shape
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    before = x.copy()
    for name, labels, opts in option_sets(rng, n, c):
        what = f"{name} {backend}"
        want_loss, want_grad, want_lse = reference64(x, labels, **opts)
        atol = grad_atol(labels, c, **opts)
        loss, grad = fastxent.cross_entropy_with_grad(x, labels, backend=backend, **opts)
        assert_ulps(loss, want_loss, dtype, what=f"{what}: fused loss")
        assert_ulps(grad, want_grad, dtype, atol=atol, what=f"{what}: fused grad")
        fwd = {k: v for k, v in opts.items() if k != "grad_output"}
        assert_ulps(fastxent.cross_entropy(x, labels, backend=backend, **fwd), want_loss, dtype,
                    what=f"{what}: loss")
        floss, lse = fastxent.cross_entropy_forward(x, labels, backend=backend, **fwd)
        assert_ulps(floss, want_loss, dtype, what=f"{what}: forward loss")
        assert_lse(lse, want_lse, labels, fwd.get("ignore_index", -100), what=f"{what}: lse")
        bgrad = fastxent.cross_entropy_backward(x, labels, lse, backend=backend, **opts)
        assert_ulps(bgrad, want_grad, dtype, atol=atol, what=f"{what}: backward grad")
    np.testing.assert_array_equal(x.view(np.uint16), before.view(np.uint16))


@pytest.mark.parametrize("c,n", [(5, 20), (24, 6), (50, 6), (40000, 3)],
                         ids=["small-rows", "mid-rows", "rows", "split-rows"])
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_label_entry_does_not_cancel(backend, threads, dtype, c, n):
    """Confident rows, p_y = 1 - d: the label's gradient p_y - 1 = -d to the 16-bit type's own
    relative precision (computing p_y in float32 and subtracting 1 would leave d with
    float32's absolute error, 6e-8: 6% of d = 1e-6). Through each kernel path: rows of few
    classes (one per vector lane; numba's column batches up to 32), plain rows, and few long
    rows split across threads."""
    ds = ([1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7] * 4)[:n] if n != 3 else [1e-4, 1e-6, 1e-7]
    x = np.zeros((len(ds), c))
    labels = (np.arange(len(ds)) * 7) % c
    for i, d in enumerate(ds):
        x[i] = np.log(d / (c - 1))
        x[i, labels[i]] = 0.0
    x = x.astype(dtype)
    # The numba backend runs 16-bit rows through its float32 kernels: its 1 - p_y carries the
    # float32 rounding of the sum of exp (a few 2^-24, absolute) like float32 rows do.
    label_atol = 2.0**-21 if backend == "numba" else 0.0
    for reduction in ("sum", "mean"):
        want_loss, want_grad, _ = reference64(x, labels, reduction=reduction)
        loss, grad = fastxent.cross_entropy_with_grad(x, labels, backend=backend,
                                                      reduction=reduction)
        rows = np.arange(len(ds))
        assert_ulps(grad[rows, labels], want_grad[rows, labels], dtype, atol=label_atol,
                    what=f"{reduction}: label entries")
        assert_ulps(grad, want_grad, dtype, atol=2 * FLOAT32_TINY + label_atol,
                    what=f"{reduction}: grad")
        assert_ulps(loss, want_loss, dtype, atol=label_atol * len(ds), what=f"{reduction}: loss")
        # Backward from the float32 lse: each row renormalised, so as exact (not for numba).
        _, lse = fastxent.cross_entropy_forward(x, labels, backend=backend, reduction=reduction)
        bgrad = fastxent.cross_entropy_backward(x, labels, lse, backend=backend,
                                                reduction=reduction)
        assert_ulps(bgrad[rows, labels], want_grad[rows, labels], dtype,
                    atol=label_atol if backend != "numba" else 2.0**-18,
                    what=f"{reduction}: backward label entries")
        # and per row -log p_y = log1p(rest / e_y), not lse - z_y (which cancels)
        nll = fastxent.cross_entropy(x, labels, backend=backend, reduction="none")
        want_nll = reference64(x, labels, reduction="none")[0]
        assert_ulps(nll, want_nll, dtype, atol=label_atol, what="per-row loss")
        if reduction == "sum" and c > 5:
            # and that is close to -d itself (the inputs were rounded, so not exactly)
            np.testing.assert_allclose(-want_grad[rows, labels], ds, rtol=0.15)


# ----------------------------------------------------------------------------------------------
# Special values


def special_rows(dtype, rng):
    """Rows with -inf blocks, masked classes, one class left, huge values, NaN, all -inf."""
    c = 2100  # three blocks of the online max/sum
    big = 6.0e4 if dtype == F16 else 3.0e38
    x = rng.standard_normal((8, c)) * 3
    labels = rng.integers(2048, c, 8)
    x[0, :2048] = -np.inf                         # a leading run of -inf blocks
    x[1, rng.choice(c, 300, replace=False)] = -np.inf
    x[1, labels[1]] = 0.5                         # masked classes, not the label
    x[2, :] = -np.inf
    x[2, labels[2]] = 1.0                         # only the label left: loss 0, grad 0
    x[3, 5] = big                                 # one huge logit
    x[4, ::2] = big
    x[4, 1::2] = -big                             # huge both ways (loss overflows float16)
    x[5, 17] = np.nan                             # NaN: this row only
    x[6, :] = -np.inf                             # all -inf
    x[7] = x[7] * 1e-6                            # tiny: subnormal float16
    return x.astype(dtype), labels


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_special_values(backend, threads, dtype, rng):
    x, labels = special_rows(dtype, rng)
    want_loss, want_grad, want_lse = reference64(x, labels, reduction="none")
    loss, grad = fastxent.cross_entropy_with_grad(x, labels, backend=backend, reduction="none")
    assert_ulps(loss, want_loss, dtype, what="loss")
    assert_ulps(grad, want_grad, dtype, atol=2 * FLOAT32_TINY, what="grad")
    assert np.all(loss[[0, 1, 3, 7]] >= 0) and loss[2] == 0 and np.all(grad[2] == 0)
    assert np.isnan(loss[5]) and np.isnan(grad[5]).all()
    assert np.isfinite(grad[[0, 1, 2, 3, 7]].astype(np.float64)).all()
    floss, lse = fastxent.cross_entropy_forward(x, labels, backend=backend, reduction="none")
    assert_ulps(floss, want_loss, dtype, what="forward loss")
    assert_lse(lse, want_lse, labels, -100)
    bgrad = fastxent.cross_entropy_backward(x, labels, lse, backend=backend, reduction="none")
    # From a float32 lse: rows whose lse is huge lose relative precision in p = exp(z - lse)
    # (lse's rounding is |lse| * 2^-24); the others are as exact as the fused pass.
    ok = [0, 1, 2, 7]
    assert_ulps(bgrad[ok], want_grad[ok], dtype, atol=2 * FLOAT32_TINY, what="backward grad")
    np.testing.assert_array_equal(np.isnan(bgrad.astype(np.float64)), np.isnan(want_grad))


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_ignored_and_empty(backend, dtype):
    x = np.full((4, 6), np.nan).astype(dtype)  # ignored rows are never read
    labels = np.full(4, -100)
    loss, grad = fastxent.cross_entropy_with_grad(x, labels, backend=backend, reduction="sum")
    assert loss.dtype == dtype and loss == 0
    assert grad.dtype == dtype and np.all(grad.view(np.uint16) == 0)  # +0.0
    loss = fastxent.cross_entropy(x, labels, backend=backend)
    assert loss.dtype == dtype and np.isnan(loss)  # mean over no rows, as PyTorch
    loss, lse = fastxent.cross_entropy_forward(x[:0], labels[:0], backend=backend,
                                               reduction="none")
    assert loss.dtype == dtype and lse.dtype == np.float32 and loss.shape == lse.shape == (0,)


# ----------------------------------------------------------------------------------------------
# Conversions: exact where the arithmetic is exact


def all_finite_values(dtype):
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    expo = np.uint16(0x7C00 if dtype == F16 else 0x7F80)  # all ones: inf or NaN
    return bits[(bits & expo) != expo].view(dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_every_value_loads_exactly(cpp_isa, threads, dtype):
    """logsumexp of [v, -inf, ..., -inf] is v + log 1 = v: every finite value (subnormals,
    both zeros, the largest) read through the vector loads comes back bit for bit."""
    v = all_finite_values(dtype)
    x = np.full((v.size, 40), -np.inf).astype(dtype)
    x[:, 0] = v
    x[::2] = x[::2, ::-1]                      # the value last too: in the row's tail
    got = fastxent.logsumexp(x)
    assert got.dtype == dtype
    zero = v.astype(np.float64) == 0
    np.testing.assert_array_equal(got.view(np.uint16)[~zero], v.view(np.uint16)[~zero])
    assert np.all(got.astype(np.float64)[zero] == 0)  # the sign of zero: m + log 1 = +0


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_log_softmax_with_one_huge_element_rounds_once(backend, threads, dtype):
    """log_softmax of [H, v_1, ...] with every v_j <= H - 32: the sum of exp is 1 in float32, so
    log p_j = v_j - H, rounded once to the 16-bit type (overflowing to -inf). Every finite value
    goes through the loads, and the stores round to nearest even and overflow to -inf."""
    h = float(finfo(dtype).max) if dtype == BF16 else 6.0e4
    v = all_finite_values(dtype)
    vf = v.astype(np.float64)
    v = v[(vf <= h - 32) & (vf < h)]
    c = 1003                                   # one block; a tail after the vectors
    rows = -(-v.size // (c - 1))
    flat = np.full(rows * (c - 1), -np.inf)
    flat[:v.size] = v.astype(np.float64)
    x = np.concatenate([np.full((rows, 1), h), flat.reshape(rows, c - 1)], axis=1).astype(dtype)
    got = fastxent.log_softmax(x, backend=backend)
    assert got.dtype == dtype
    with np.errstate(over="ignore"):
        want = (x.astype(np.float64) - h).astype(dtype)   # v - H rounded once
    np.testing.assert_array_equal(got[:, 1:].view(np.uint16), want[:, 1:].view(np.uint16))
    assert np.all(got[:, 0].astype(np.float64) == 0)  # log(1 + tiny): +-0


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("shape", [(5, 3), (33, 1000), (2, 70000)], ids=str)
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_rowops(backend, threads, dtype, shape, op, rng):
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    x[0, 1] = -np.inf
    got = getattr(fastxent, op)(x, backend=backend)
    want = np_rowop(x, -1, op)
    atol = 2 * FLOAT32_TINY
    if op == "log_softmax":
        atol = 2.0**-23 * np.abs(want[np.isfinite(want)]).max()  # (z - m) - log s cancels
    assert_ulps(got, want, dtype, atol=atol, what=op)
    axis0 = getattr(fastxent, op)(np.ascontiguousarray(x.T), axis=0, backend=backend)
    np.testing.assert_array_equal(np.asarray(axis0).view(np.uint16).T if op != "logsumexp"
                                  else np.asarray(axis0).view(np.uint16),
                                  np.asarray(got).view(np.uint16))


# ----------------------------------------------------------------------------------------------
# out=, inplace=True, strided rows, errors


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_out_and_inplace(backend, dtype, rng):
    x = (rng.standard_normal((40, 300)) * 3).astype(dtype)
    labels = rng.integers(0, 300, 40)
    opts = dict(label_smoothing=0.1, weight=rng.uniform(0.5, 2, 300))
    loss, grad = fastxent.cross_entropy_with_grad(x, labels, backend=backend, **opts)

    buf = np.full_like(x, np.nan)
    loss2, got = fastxent.cross_entropy_with_grad(x, labels, backend=backend, out=buf, **opts)
    assert got is buf and loss2 == loss
    np.testing.assert_array_equal(buf.view(np.uint16), grad.view(np.uint16))

    mine = x.copy()
    loss3, got = fastxent.cross_entropy_with_grad(mine, labels, backend=backend, inplace=True,
                                                  **opts)
    assert got is mine and loss3 == loss
    np.testing.assert_array_equal(mine.view(np.uint16), grad.view(np.uint16))

    _, lse = fastxent.cross_entropy_forward(x, labels, backend=backend, **opts)
    mine = x.copy()
    got = fastxent.cross_entropy_backward(mine, labels, lse, backend=backend, inplace=True, **opts)
    assert got is mine
    assert_ulps(mine, reference64(x, labels, **opts)[1], dtype,
                atol=grad_atol(labels, 300, **opts), what="backward inplace")

    # Rows of a wider array (strided rows), gradient into rows of another.
    wide = np.zeros((40, 350), dtype)
    wide[:, :300] = x
    out_wide = np.full((40, 320), np.nan).astype(dtype)
    loss4, got = fastxent.cross_entropy_with_grad(wide[:, :300], labels, backend=backend,
                                                  out=out_wide[:, 10:310], **opts)
    assert loss4 == loss
    np.testing.assert_array_equal(out_wide[:, 10:310].view(np.uint16), grad.view(np.uint16))
    assert np.isnan(out_wide[:, :10].astype(np.float64)).all()


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_errors_leave_arrays_unchanged(backend, dtype, rng):
    x = (rng.standard_normal((6, 5)) * 3).astype(dtype)
    labels = np.array([0, 1, 2, 9, 3, 4])             # labels[3] is not a class
    buf = np.full_like(x, 7.0)
    keep_x, keep_buf = x.copy(), buf.copy()
    with pytest.raises(ValueError, match=r"labels\[3\] = 9"):
        fastxent.cross_entropy_with_grad(x, labels, backend=backend, out=buf)
    with pytest.raises(ValueError, match=r"labels\[3\] = 9"):
        fastxent.cross_entropy_with_grad(x, labels, backend=backend, inplace=True)
    with pytest.raises(ValueError, match=r"labels\[3\] = 9"):
        fastxent.cross_entropy_backward(x, labels, np.zeros(6, np.float32), backend=backend,
                                        inplace=True)
    np.testing.assert_array_equal(x.view(np.uint16), keep_x.view(np.uint16))
    np.testing.assert_array_equal(buf.view(np.uint16), keep_buf.view(np.uint16))
    good = labels.copy()
    good[3] = 0
    other = BF16 if dtype == F16 else F16             # same item size, another type
    for wrong in (np.zeros((6, 5), other), np.zeros((6, 5), np.float32),
                  np.zeros((6, 5), np.uint16)):
        with pytest.raises(TypeError, match="out"):
            fastxent.cross_entropy_with_grad(x, good, backend=backend, out=wrong)
    np.testing.assert_array_equal(x.view(np.uint16), keep_x.view(np.uint16))


def test_core_checks_item_sizes():
    """_core reads 16-bit arrays as uint16 views plus a dtype code: it checks what it can."""
    core = pytest.importorskip("fastxent._core")
    x = np.zeros((2, 3), np.uint16)
    labels = np.zeros(2, np.int64)
    lse = np.zeros(2, np.float32)
    for code, grad, lse_, message in [
            (2, np.zeros((2, 3), np.float32), lse, "grad does not have the dtype"),  # too wide
            (3, np.zeros((2, 3), np.uint16), np.zeros(2), "lse does not have the dtype"),
            (0, np.zeros((2, 3), np.uint16), lse, "logits: item size does not match")]:
        with pytest.raises(TypeError, match=message):  # (all 18 arguments: else nanobind's)
            core.cross_entropy(1, x, labels, None, -100, 0.0, 1, 1.0, None, lse_, None, grad,
                               code, None, 0.0, 0.0, None, None)
    with pytest.raises(TypeError):   # uint16 without a dtype code is not a float array
        core.rowop(1, x, np.zeros((2, 3), np.uint16), -1)


# ----------------------------------------------------------------------------------------------
# Through the frameworks


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_torch_half_tensors(dtype_name, reduction):
    """fastxent.torch with torch.half / torch.bfloat16 inputs: within one ulp of the float64
    answer, and at least as close to it as PyTorch's own CPU kernels (which round the
    log-softmax to the 16-bit type before the loss and the gradient)."""
    torch = pytest.importorskip("torch")
    import fastxent.torch as fxt

    dtype = getattr(torch, dtype_name)
    npdtype = F16 if dtype_name == "float16" else BF16
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(64, 500, generator=g) * 3).to(dtype)
    y = torch.randint(0, 500, (64,), generator=g)
    y[::7] = -100
    w = (torch.rand(500, generator=g) + 0.5).to(dtype)  # PyTorch wants it in the input's dtype

    def run(fn, **kw):
        leaf = x.clone().requires_grad_(True)
        loss = fn(leaf.clone(), y, w, reduction=reduction, label_smoothing=0.1, **kw)
        loss.sum().backward()
        return loss.detach(), leaf.grad

    def as_np(t):
        return t.float().numpy().astype(np.float64)

    x64 = x.float().numpy().astype(np.float64)
    want_loss, want_grad = torch_cross_entropy(x64, y.numpy(), weight=w.double().numpy(),
                                               reduction=reduction, label_smoothing=0.1)
    theirs = run(torch.nn.functional.cross_entropy)
    for kw in ({}, {"grad_in_forward": True}, {"inplace": True}):
        loss, grad = run(fxt.cross_entropy, **kw)
        assert loss.dtype == dtype and grad.dtype == dtype
        atol = grad_atol(y.numpy(), 500, weight=w.double().numpy(), label_smoothing=0.1,
                         reduction=reduction)
        assert_ulps(as_np(loss).astype(npdtype), want_loss, npdtype, what=f"{kw} loss")
        assert_ulps(as_np(grad).astype(npdtype), want_grad, npdtype, atol=atol,
                    what=f"{kw} grad")
        for ours, torchs, want in ((loss, theirs[0], want_loss), (grad, theirs[1], want_grad)):
            err_ours = np.abs(as_np(ours) - want).max()
            err_torch = np.abs(as_np(torchs) - want).max()
            assert err_ours <= err_torch + 1e-12, (kw, err_ours, err_torch)


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_jax_half_arrays(dtype_name):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    import fastxent.jax as fxj

    npdtype = F16 if dtype_name == "float16" else BF16
    rng = np.random.default_rng(3)
    x = jnp.asarray((rng.standard_normal((32, 300)) * 3).astype(npdtype))
    y = jnp.asarray(rng.integers(0, 300, 32).astype(np.int32))
    loss, grad = jax.jit(jax.value_and_grad(lambda a: fxj.cross_entropy(a, y)))(x)
    assert loss.dtype == x.dtype and grad.dtype == x.dtype
    want_loss, want_grad, _ = reference64(np.asarray(x), np.asarray(y))
    assert_ulps(np.asarray(loss), want_loss, npdtype, what="loss")
    assert_ulps(np.asarray(grad), want_grad, npdtype, atol=2 * FLOAT32_TINY, what="grad")


def test_without_ml_dtypes_bfloat16_is_recognised_by_name():
    """_checks recognises bfloat16 by its dtype name, so fastxent needs ml_dtypes only to make
    such arrays, not to take them; and fastxent imports without it."""
    from fastxent._checks import is_half, lse_dtype

    assert is_half(F16) and is_half(BF16) and not is_half(np.dtype(np.uint16))
    assert lse_dtype(BF16) == np.float32 and lse_dtype(np.dtype(np.float64)) == np.float64
    import subprocess
    import sys

    code = ("import sys; sys.modules['ml_dtypes'] = None; import numpy as np, fastxent; "
            "x = np.zeros((2, 3), np.float16); print(fastxent.cross_entropy(x, np.zeros(2, int)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(np.float16(np.log(3)))


def test_each_isa_agrees_closely(rng):
    """Every ISA's float16 results within one ulp of each other (their float32 sums run in
    different orders, so not always bit for bit)."""
    from _helpers import ISAS

    x = (rng.standard_normal((50, 777)) * 3).astype(F16)
    labels = rng.integers(0, 777, 50)
    results = {}
    for isa in ISAS:
        with using_impl(f"cpp-{isa}"):
            results[isa] = fastxent.cross_entropy_with_grad(x, labels, label_smoothing=0.1)
    first = results[ISAS[0]]
    for isa, (loss, grad) in results.items():
        assert_ulps(loss, np.float64(first[0]), F16, what=isa)
        assert_ulps(grad, first[1].astype(np.float64), F16, atol=1e-9, what=isa)
