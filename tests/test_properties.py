"""Property tests (hypothesis): random shapes, dtypes, options and values; every backend equals
the NumPy reference, the loss is non-negative, gradient rows sum to zero, softmax rows to one."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastxent
from _helpers import (
    IMPLS,
    assert_grad_close,
    assert_loss_close,
    gradient_scale,
    np_rowop,
    using_impl,
)

SETTINGS = settings(deadline=None, max_examples=50,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SCALES = [1e-3, 1.0, 10.0, 300.0, 1e4]


@st.composite
def logits_arrays(draw, max_rows=50, max_classes=300):
    """(logits, dtype): N in 0..max_rows (sometimes as two leading dims), C in 1..max_classes,
    finite values within +-1e4, plus a few drawn special entries (extremes, -inf)."""
    n = draw(st.integers(0, max_rows))
    c = draw(st.integers(1, max_classes))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from(SCALES))
    rng = np.random.default_rng(seed)
    x = np.clip(rng.standard_normal((n, c)) * scale, -1e4, 1e4)
    if n:
        specials = draw(st.lists(
            st.tuples(st.integers(0, n - 1), st.integers(0, c - 1),
                      st.one_of(st.floats(-1e4, 1e4), st.just(-np.inf))),
            max_size=6))
        for i, j, v in specials:
            x[i, j] = v
    x = x.astype(dtype)
    if n and n % 2 == 0 and draw(st.booleans()):
        x = x.reshape(2, n // 2, c)
    return x


@st.composite
def problems(draw):
    x = draw(logits_arrays())
    lead, c = x.shape[:-1], x.shape[-1]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ignore_index = draw(st.sampled_from([-100, -1, 0, 3]))
    labels = rng.integers(0, c, size=lead)
    frac = draw(st.sampled_from([0.0, 0.2, 1.0]))
    labels = np.where(rng.random(lead) < frac, ignore_index, labels)
    label_dtype = draw(st.sampled_from([np.int64, np.int32, np.int16, np.uint16]))
    if np.dtype(label_dtype).kind == "u" and ignore_index < 0:
        label_dtype = np.int64  # ignore_index must be representable
    labels = labels.astype(label_dtype)
    opts = {
        "ignore_index": ignore_index,
        "label_smoothing": draw(st.one_of(st.sampled_from([0.0, 0.1, 1.0]), st.floats(0.0, 1.0))),
        "reduction": draw(st.sampled_from(["mean", "sum", "none"])),
    }
    if draw(st.booleans()):
        opts["weight"] = rng.uniform(0.1, 2.0, size=c)
    g = draw(st.sampled_from(["default", "scalar", "rows"]))
    if g == "scalar":
        # normal numbers only: a subnormal gradient has no relative precision to compare
        opts["grad_output"] = draw(st.one_of(st.just(0.0), st.floats(1e-30, 3.0), st.floats(-3.0, -1e-30)))
    elif g == "rows" and opts["reduction"] == "none":
        opts["grad_output"] = rng.uniform(-2, 2, size=lead)
    return x, labels, opts


def _finite_scale(x):
    finite = np.abs(x[np.isfinite(x)])
    return x[np.isfinite(x)] if finite.size else None


@pytest.mark.parametrize("impl", [name for name in IMPLS if name != "numpy"])
@SETTINGS
@given(case=problems())
def test_backends_equal_reference(impl, case):
    x, labels, opts = case
    dtype = x.dtype
    fwd = {k: v for k, v in opts.items() if k != "grad_output"}
    with warnings.catch_warnings():
        # The reference's own 0/0 RuntimeWarning is tested in test_edge_values; here it is
        # only the oracle for the other backends.
        warnings.simplefilter("ignore", RuntimeWarning)
        want_loss, want_grad = fastxent.cross_entropy_with_grad(x, labels, backend="numpy", **opts)
        _, want_lse = fastxent.cross_entropy_forward(x, labels, backend="numpy", **fwd)
    scale = gradient_scale(labels, x.shape[-1], **opts)
    with using_impl(impl) as backend:
        loss, grad = fastxent.cross_entropy_with_grad(x, labels, backend=backend, **opts)
        floss, lse = fastxent.cross_entropy_forward(x, labels, backend=backend, **fwd)
        loss_only = fastxent.cross_entropy(x, labels, backend=backend, **fwd)
    assert grad.dtype == dtype and grad.shape == x.shape
    assert np.asarray(loss).dtype == dtype
    for got in (loss, floss, loss_only):
        assert_loss_close(got, want_loss, dtype, _finite_scale(x))
    # lse of an all -inf row (-inf, as torch.logsumexp) is tested in test_edge_values.
    live = ~np.isneginf(x).all(axis=-1)
    assert_loss_close(lse[live], want_lse[live], dtype, _finite_scale(x))
    assert_grad_close(grad, want_grad, dtype, scale)


@pytest.mark.parametrize("impl", IMPLS)
@SETTINGS
@given(case=problems())
def test_loss_non_negative_and_gradient_rows_sum_to_zero(impl, case):
    """With non-negative weights every -log p term is >= 0, so the loss is >= 0; and
    sum_j grad_j = coef * (sum_j p_j - 1) + eps/C (W sum_j p_j - W) = 0 for every row."""
    x, labels, opts = case
    with using_impl(impl) as backend:
        loss, grad = fastxent.cross_entropy_with_grad(x, labels, backend=backend, **opts)
    loss = np.asarray(loss)
    assert not np.any(loss[~np.isnan(loss)] < 0), loss
    c = x.shape[-1]
    rows = grad.reshape(-1, c)
    xs = x.reshape(-1, c)
    ok_rows = np.isfinite(rows).all(axis=1) & ~np.isneginf(xs).all(axis=1)
    sums = rows[ok_rows].sum(axis=1, dtype=np.float64)
    # Rounding is relative to the row's coefficient (the label entry is coef * (p_y - 1)).
    mags = np.abs(rows[ok_rows]).astype(np.float64).sum(axis=1) + gradient_scale(labels, c, **opts)
    # Within the suite's tolerances (f32 1e-6, f64 1e-10 relative to the row's size) or a few
    # ulp per class, whichever is larger.
    rel = max(8 * c * float(np.finfo(x.dtype).eps), 1e-6 if x.dtype == np.float32 else 1e-10)
    assert np.all(np.abs(sums) <= rel * mags), (sums, mags)
    ignored = (labels.reshape(-1) == opts["ignore_index"])
    assert np.all(rows[ignored] == 0)


@pytest.mark.parametrize("impl", IMPLS)
@SETTINGS
@given(x=logits_arrays(), axis=st.sampled_from([-1, 0]))
def test_softmax_rows_sum_to_one(impl, x, axis):
    if x.shape[axis] == 0:
        return
    with using_impl(impl) as backend:
        p = fastxent.softmax(x, axis, backend=backend)
        logp = fastxent.log_softmax(x, axis, backend=backend)
        lse = fastxent.logsumexp(x, axis, backend=backend)
    assert p.shape == x.shape and p.dtype == x.dtype
    dead = np.isneginf(x).all(axis=axis)  # all -inf: no softmax (NaN), logsumexp -inf
    sums = p.sum(axis=axis, dtype=np.float64)
    eps = np.finfo(x.dtype).eps
    np.testing.assert_allclose(sums[~dead], 1.0, rtol=0,
                               atol=max(4 * x.shape[axis] * eps, 1e-10 if x.dtype == np.float64 else 0))
    assert np.all((p >= 0) | np.isnan(p)) and np.all((p <= 1) | np.isnan(p))
    assert np.all(lse[dead] == -np.inf)
    # log_softmax = x - logsumexp, and exp(log_softmax) = softmax.
    with np.errstate(invalid="ignore"):
        expected = x.astype(np.float64) - np.expand_dims(lse.astype(np.float64), axis)
    live = ~np.broadcast_to(np.expand_dims(dead, axis), x.shape) & np.isfinite(x)
    scale = max(1.0, float(np.max(np.abs(x[np.isfinite(x)]), initial=0.0)))
    np.testing.assert_allclose(logp[live], expected[live], rtol=0, atol=8 * eps * scale)
    np.testing.assert_allclose(np.exp(logp[live].astype(np.float64)), p[live], rtol=1e-4 if
                               x.dtype == np.float32 else 1e-10, atol=1e-30)


@pytest.mark.parametrize("impl", IMPLS)
@SETTINGS
@given(x=logits_arrays(max_rows=20), axis=st.sampled_from([-1, 0]),
       op=st.sampled_from(["softmax", "log_softmax", "logsumexp"]))
def test_rowops_equal_numpy(impl, x, axis, op):
    """Every backend against an independent float64 NumPy computation."""
    want = np_rowop(x, axis, op)
    with using_impl(impl) as backend:
        got = getattr(fastxent, op)(x, axis, backend=backend)
    assert got.dtype == x.dtype and got.shape == want.shape
    rtol = 1e-5 if x.dtype == np.float32 else 1e-11
    scale = max(1.0, float(np.max(np.abs(x[np.isfinite(x)]), initial=0.0)))
    atol = (1e-30 if op == "softmax" else rtol * 0.1 * scale)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)


@pytest.mark.parametrize("impl", IMPLS)
@SETTINGS
@given(case=problems(), shift=st.sampled_from([-50.0, 7.0, 1000.0]))
def test_shift_invariance(impl, case, shift):
    """Adding a constant to a row changes neither the loss nor the gradient (float64)."""
    x, labels, opts = case
    x = x.astype(np.float64)
    with using_impl(impl) as backend:
        loss, grad = fastxent.cross_entropy_with_grad(x, labels, backend=backend, **opts)
        loss2, grad2 = fastxent.cross_entropy_with_grad(x + shift, labels, backend=backend, **opts)
    scale = max(1.0, float(np.max(np.abs(x[np.isfinite(x)]), initial=0.0))) + abs(shift)
    np.testing.assert_allclose(loss2, loss, rtol=1e-9, atol=1e-12 * scale * x.shape[-1],
                               equal_nan=True)
    assert_grad_close(grad2, grad, np.float64, gradient_scale(labels, x.shape[-1], **opts) * scale)
