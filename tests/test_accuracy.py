"""Accuracy of the compiled kernels, per ISA: the vectorised exp (through softmax) within a few
ulp of float64, and the float32 loss of very long rows within 1e-6 relative."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastxent


def ulp_error(got, want64, dtype):
    """|got - want| in units of the spacing of `dtype` at want (flushing results below the
    smallest normal to 0 counts as within tolerance)."""
    want = np.asarray(want64, dtype=np.float64)
    spacing = np.spacing(np.abs(want).astype(dtype)).astype(np.float64)
    tiny = float(np.finfo(dtype).tiny)
    err = np.abs(np.asarray(got, dtype=np.float64) - want)
    return np.where(err <= tiny, 0.0, err / spacing)


def softmax64(x):
    """The reference, with each row's sum correctly rounded (math.fsum): NumPy's sum along a
    short axis adds one term at a time, 9 ulp off for [0, t x 14] in float64."""
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    e = np.exp(x - m)
    sums = np.array([math.fsum(row) for row in e.reshape(-1, e.shape[-1])]).reshape(m.shape)
    return e / sums


SWEEP = np.linspace(-110.0, 0.0, 20001)


def sweep_rows(width, dtype):
    """Rows [0, t, t, ...] for t in SWEEP: every lane position of the vector code sees every t."""
    x = np.empty((SWEEP.size, width))
    x[:, 0] = 0.0
    x[:, 1:] = SWEEP[:, None]
    return x.astype(dtype)


# 7 and 15: rows that are all scalar tail (below one AVX2 / AVX-512 vector), summed one term
# at a time.
@pytest.mark.parametrize("width", [2, 7, 8, 15], ids=lambda w: f"C{w}")
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda t: np.dtype(t).name)
def test_softmax_sweep_ulp(cpp_isa, dtype, width):
    """softmax of [0, t, ...] = 1/(1 + k e^t) and e^t/(1 + k e^t) within a few ulp of float64."""
    x = sweep_rows(width, dtype)
    got = fastxent.softmax(x, backend="cpp")
    want = softmax64(x)
    err = ulp_error(got, want, dtype)
    limit = 4
    worst = np.unravel_index(np.argmax(err), err.shape)
    assert err.max() <= limit, (
        f"{err.max():.1f} ulp at t={x[worst[0], 1]!r}: got {got[worst]!r}, want {want[worst]!r}")


@pytest.mark.parametrize("width", [2, 8, 37], ids=lambda w: f"C{w}")
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda t: np.dtype(t).name)
def test_exp_sweep_through_softmax(cpp_isa, dtype, width):
    """The exp alone: softmax_j / softmax_0 = e^(t) up to two roundings (the common 1/sum
    cancels), so the ratio is within a few ulp of exp(t) for every t and lane."""
    x = sweep_rows(width, dtype)
    got = fastxent.softmax(x, backend="cpp").astype(np.float64)
    ratio = got[:, 1:] / got[:, :1]
    want = np.exp(x[:, 1:].astype(np.float64))
    err = ulp_error(ratio, want, dtype)
    limit = 4
    worst = np.unravel_index(np.argmax(err), err.shape)
    assert err.max() <= limit, (
        f"exp({x[worst[0], 1]!r}): {err.max():.1f} ulp, got {ratio[worst]!r}, want {want[worst]!r}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda t: np.dtype(t).name)
def test_exp_sweep_dense(cpp_isa, dtype):
    """One long row of increasing logits (0 last): softmax_j = e^(x_j) / sum; every exp input in
    [-100, 0] in steps small enough to hit many reduction intervals, across vector lanes."""
    x = np.linspace(-100.0, 0.0, 100003).astype(dtype)[None, :]
    got = fastxent.softmax(x, backend="cpp")
    want = softmax64(x)
    err = ulp_error(got, want, dtype)
    limit = 6 if dtype == np.float32 else 8
    assert err.max() <= limit, f"{err.max():.1f} ulp"


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda t: np.dtype(t).name)
def test_log_softmax_and_logsumexp_accuracy(cpp_isa, dtype, rng):
    x = (rng.standard_normal((50, 333)) * 10).astype(dtype)
    x64 = x.astype(np.float64)
    m = x64.max(axis=-1, keepdims=True)
    lse = m + np.log(np.exp(x64 - m).sum(axis=-1, keepdims=True))
    eps = np.finfo(dtype).eps
    got = fastxent.log_softmax(x, backend="cpp")
    np.testing.assert_allclose(got, x64 - lse, rtol=8 * eps, atol=8 * eps * np.abs(x64 - m).max())
    got = fastxent.logsumexp(x, backend="cpp")
    np.testing.assert_allclose(got, lse[:, 0], rtol=4 * eps, atol=4 * eps)


@pytest.mark.parametrize("classes", [2, 3, 8, 16])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda t: np.dtype(t).name)
def test_small_rows_log_sweep(cpp_isa, dtype, classes):
    """Rows [0, t, ..., t] of a few classes (the row-per-lane kernels, their vector log): the sum
    s = 1 + (C - 1) e^t sweeps (1, C] through every exponent and every interval of the log's
    table (C = 3 already meets every entry); lse = log s and the loss within 2 eps of the float64
    answer, plus (C - 1) / 2 eps for the C - 1 roundings of the sum s itself (each within half an
    ulp of s; all in one direction in these rows). Labels alternate between class 0 (the max: the
    log1p path) and C - 1 (log s less t)."""
    t = np.linspace(-9.0, 0.0, 20001)
    x = np.zeros((t.size, classes))
    x[:, 1:] = t[:, None]
    x = x.astype(dtype)
    labels = np.where(np.arange(t.size) % 2 == 0, 0, classes - 1)
    loss, lse = fastxent.cross_entropy_forward(x, labels, reduction="none", backend="cpp")
    t64 = x[:, -1].astype(np.float64)
    rest = (classes - 1) * np.exp(t64)
    want_lse = np.log1p(rest)
    want_loss = np.where(labels == 0, want_lse, want_lse - t64)
    eps = np.finfo(dtype).eps
    for name, got, want in (("lse", lse, want_lse), ("loss", loss, want_loss)):
        err = np.abs(got.astype(np.float64) - want) / np.maximum(1.0, np.abs(want))
        worst = int(np.argmax(err))
        assert err[worst] <= (2 + (classes - 1) / 2) * eps, (
            f"{name} off by {err[worst] / eps:.1f} eps at t={t64[worst]!r}: got {got[worst]!r}, "
            f"want {want[worst]!r}")


@pytest.mark.parametrize("c", [32000, 128256])
@pytest.mark.parametrize("mode", ["fused", "forward"])
def test_float32_long_row_loss(cpp_isa, threads, c, mode, rng):
    """float32 rows of 32k and 128k classes: loss within 1e-6 relative of the float64 answer
    (the block/compensated sum keeps a long float32 sum accurate), also split across threads."""
    n = 2
    x = (rng.standard_normal((n, c)) * 4).astype(np.float32)
    labels = np.array([7, c - 1])
    x64 = x.astype(np.float64)
    m = x64.max(axis=-1, keepdims=True)
    lse = (m + np.log(np.exp(x64 - m).sum(axis=-1, keepdims=True)))[:, 0]
    want = lse - x64[np.arange(n), labels]
    for eps in (0.0, 0.1):
        if mode == "fused":
            loss, grad = fastxent.cross_entropy_with_grad(x, labels, reduction="none",
                                                          label_smoothing=eps, backend="cpp")
            p = np.exp(x64 - lse[:, None])
            onehot = np.zeros_like(p)
            onehot[np.arange(n), labels] = 1
            want_grad = (1 - eps) * (p - onehot) + eps / c * (c * p - 1)
            np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-9)
        else:
            loss, got_lse = fastxent.cross_entropy_forward(x, labels, reduction="none",
                                                           label_smoothing=eps, backend="cpp")
            np.testing.assert_allclose(got_lse, lse, rtol=1e-6)
        smooth = (lse[:, None] - x64).mean(axis=-1)
        expected = (1 - eps) * want + eps * smooth
        np.testing.assert_allclose(loss, expected, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda t: np.dtype(t).name)
def test_isas_agree(dtype, rng):
    """Every compiled ISA gives the same answer to within a few ulp."""
    isas = fastxent.info()["isas"]
    if "cpp" not in fastxent.info()["backends"] or len(isas) < 2:
        pytest.skip("one ISA only")
    from fastxent import _core

    x = (rng.standard_normal((70, 1500)) * 5).astype(dtype)
    labels = rng.integers(0, 1500, size=70)
    old = _core.isa()
    results = {}
    try:
        for isa in isas:
            _core.set_isa(isa)
            assert fastxent.info()["isa"] == isa
            results[isa] = fastxent.cross_entropy_with_grad(x, labels, label_smoothing=0.1,
                                                            reduction="none", backend="cpp")
    finally:
        _core.set_isa(old)
    base_loss, base_grad = results["scalar"]
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for isa, (loss, grad) in results.items():
        np.testing.assert_allclose(loss, base_loss, rtol=rtol, err_msg=isa)
        np.testing.assert_allclose(grad, base_grad, rtol=rtol, atol=rtol * 1e-3, err_msg=isa)
