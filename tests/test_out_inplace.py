"""out= and inplace=True give the allocating call's gradient; forward + backward equals fused."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent
from _helpers import (
    case,
    FLOAT_DTYPES,
    assert_grad_close,
    assert_loss_close,
    gradient_scale,
    make_labels,
    make_logits,
    make_weight,
)

SHAPES = [
    pytest.param((1, 1), id="1x1"),
    pytest.param((6, 7), id="6x7"),
    pytest.param((2, 3, 40), id="2x3x40"),
    pytest.param((64, 1000), id="64x1000"),
    pytest.param((1, 50000), id="1x50000"),
    pytest.param((3, 20000), id="3x20000"),
]

OPTIONS = {
    "plain": {},
    "rich": {"weight": True, "label_smoothing": 0.1, "ignore": True},
    "none-rows": {"reduction": "none", "grad_output": "rows", "ignore": True},
    "sum-smooth": {"reduction": "sum", "label_smoothing": 0.2, "grad_output": 0.5},
}


def build(rng, shape, dtype, spec):
    logits = make_logits(rng, shape, dtype)
    c = shape[-1]
    lead = shape[:-1]
    spec = dict(spec)
    labels = make_labels(rng, lead, c, ignore_index=-100, ignore_frac=0.3 if spec.pop("ignore", False) else 0)
    opts = {}
    if spec.pop("weight", False):
        opts["weight"] = make_weight(rng, c)
    g = spec.pop("grad_output", None)
    if g == "rows":
        opts["grad_output"] = rng.uniform(-2, 2, size=lead)
    elif g is not None:
        opts["grad_output"] = g
    opts.update(spec)
    return logits, labels, opts


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES)
def test_out_and_inplace_match_allocating(backend, threads, shape, dtype, rng):
    for options, spec in OPTIONS.items():
        with case(options):
            check_out_and_inplace(backend, shape, dtype, *build(rng, shape, dtype, spec))


def check_out_and_inplace(backend, shape, dtype, logits, labels, opts):
    keep = logits.copy()
    loss, grad = fastxent.cross_entropy_with_grad(logits, labels, backend=backend, **opts)
    np.testing.assert_array_equal(logits, keep)  # the allocating call leaves logits alone
    assert grad is not logits

    out = np.full_like(logits, 123.0)
    loss_out, grad_out = fastxent.cross_entropy_with_grad(logits, labels, out=out, backend=backend, **opts)
    assert grad_out is out
    np.testing.assert_array_equal(out, grad)
    np.testing.assert_array_equal(loss_out, loss)
    np.testing.assert_array_equal(logits, keep)

    work = logits.copy()
    loss_in, grad_in = fastxent.cross_entropy_with_grad(work, labels, inplace=True, backend=backend, **opts)
    assert grad_in is work
    np.testing.assert_array_equal(work, grad)
    np.testing.assert_array_equal(loss_in, loss)

    # forward + backward (allocating, out=, inplace) equals the fused call.
    fwd = {k: v for k, v in opts.items() if k != "grad_output"}
    floss, lse = fastxent.cross_entropy_forward(logits, labels, backend=backend, **fwd)
    assert_loss_close(floss, loss, dtype, logits)
    scale = gradient_scale(labels, shape[-1], **opts)
    bgrad = fastxent.cross_entropy_backward(logits, labels, lse, backend=backend, **opts)
    _assert_backward_close(bgrad, grad, dtype, lse, scale)
    out2 = np.full_like(logits, -7.0)
    assert fastxent.cross_entropy_backward(logits, labels, lse, out=out2, backend=backend, **opts) is out2
    np.testing.assert_array_equal(out2, bgrad)
    work2 = logits.copy()
    res = fastxent.cross_entropy_backward(work2, labels, lse, inplace=True, backend=backend, **opts)
    assert res is work2
    np.testing.assert_array_equal(work2, bgrad)


def _assert_backward_close(bgrad, grad, dtype, lse, scale):
    """Backward from the saved lse differs from fused only by lse's rounding to `dtype`."""
    lse_max = float(np.max(np.abs(lse), initial=1.0))
    if np.dtype(dtype) == np.float32:
        atol = (1e-6 + 4 * np.finfo(np.float32).eps * lse_max) * scale
        rtol = 1e-5
    else:
        atol = 1e-12 * scale * lse_max
        rtol = 1e-10
    np.testing.assert_allclose(bgrad, grad, rtol=rtol, atol=atol, equal_nan=True)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("c", [1, 9, 300, 20000])
def test_strided_out_and_inplace(backend, threads, dtype, c, rng):
    """Into a column slice or every other row of a bigger buffer: only the view is written."""
    n = 3
    logits = make_logits(rng, (n, c), dtype)
    labels = make_labels(rng, (n,), c, ignore_index=-100, ignore_frac=0.4)
    opts = {"weight": make_weight(rng, c), "label_smoothing": 0.1}
    loss, grad = fastxent.cross_entropy_with_grad(logits, labels, backend=backend, **opts)

    big = np.full((n, c + 5), 9.0, dtype)
    out = big[:, :c]
    res = fastxent.cross_entropy_with_grad(logits, labels, out=out, backend=backend, **opts)[1]
    assert res is out
    np.testing.assert_array_equal(big[:, :c], grad)
    assert np.all(big[:, c:] == 9.0)

    rows = np.full((2 * n, c), 9.0, dtype)
    res = fastxent.cross_entropy_with_grad(logits, labels, out=rows[::2], backend=backend, **opts)[1]
    np.testing.assert_array_equal(rows[::2], grad)
    assert np.all(rows[1::2] == 9.0)

    big = np.full((n, c + 5), 9.0, dtype)
    big[:, :c] = logits
    view = big[:, :c]
    loss_in, res = fastxent.cross_entropy_with_grad(view, labels, inplace=True, backend=backend, **opts)
    assert res is view
    np.testing.assert_array_equal(big[:, :c], grad)
    assert np.all(big[:, c:] == 9.0)
    np.testing.assert_array_equal(loss_in, loss)

    rows = np.full((2 * n, c), 9.0, dtype)
    rows[::2] = logits
    view = rows[::2]
    fastxent.cross_entropy_with_grad(view, labels, inplace=True, backend=backend, **opts)
    np.testing.assert_array_equal(rows[::2], grad)
    assert np.all(rows[1::2] == 9.0)

    rev = np.ascontiguousarray(logits[::-1])[::-1]
    fastxent.cross_entropy_with_grad(rev, labels, inplace=True, backend=backend, **opts)
    np.testing.assert_array_equal(rev, grad)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_inplace_row_tails(backend, dtype, rng):
    """Rows of 65-80 classes (one row at a time, every length of a row's last partial vector)
    written over the logits, contiguous and inside a wider buffer: the same gradient and loss
    as out=, and nothing written past a row (its last lanes are stored in pieces inside it)."""
    n = 5
    for c in range(65, 81):
        with case(f"C={c}"):
            logits = make_logits(rng, (n, c), dtype)
            labels = make_labels(rng, (n,), c)
            labels[0], labels[-1] = 0, c - 1
            loss, grad = fastxent.cross_entropy_with_grad(logits, labels, backend=backend)
            work = logits.copy()
            loss_in, res = fastxent.cross_entropy_with_grad(work, labels, inplace=True, backend=backend)
            assert res is work
            np.testing.assert_array_equal(work, grad)
            np.testing.assert_array_equal(loss_in, loss)
            big = np.full((n, c + 3), 9.0, dtype)
            big[:, :c] = logits
            fastxent.cross_entropy_with_grad(big[:, :c], labels, inplace=True, backend=backend)
            np.testing.assert_array_equal(big[:, :c], grad)
            assert np.all(big[:, c:] == 9.0)


def test_out_same_as_logits_is_inplace(backend, rng):
    """out=logits (the very same array) is allowed and equals inplace=True."""
    logits = make_logits(rng, (5, 33), np.float32)
    labels = make_labels(rng, (5,), 33)
    _, grad = fastxent.cross_entropy_with_grad(logits, labels, backend=backend)
    res = fastxent.cross_entropy_with_grad(logits, labels, out=logits, backend=backend)[1]
    assert res is logits
    np.testing.assert_array_equal(logits, grad)


def test_inplace_ignored_rows_zeroed(backend, rng):
    logits = make_logits(rng, (4, 10), np.float64)
    logits[2] = np.nan  # ignored: its NaNs must not leak into the gradient
    labels = np.array([1, 2, -100, 9])
    work = logits.copy()
    fastxent.cross_entropy_with_grad(work, labels, inplace=True, backend=backend)
    assert np.all(work[2] == 0)
    assert np.isfinite(work).all()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batch_out_and_inplace(backend, reduction):
    """N = 0: out= (an empty array as np.empty makes it) and inplace=True work and return them."""
    for dtype in FLOAT_DTYPES:
        logits = np.empty((0, 5), dtype)
        labels = np.empty(0, np.int64)
        out = np.empty((0, 5), dtype)
        loss, grad = fastxent.cross_entropy_with_grad(logits, labels, out=out, reduction=reduction,
                                                      backend=backend)
        assert grad is out
        loss2, grad2 = fastxent.cross_entropy_with_grad(logits, labels, inplace=True,
                                                        reduction=reduction, backend=backend)
        assert grad2 is logits
        np.testing.assert_array_equal(loss, loss2)
        _, lse = fastxent.cross_entropy_forward(logits, labels, reduction=reduction, backend=backend)
        assert lse.shape == (0,)
        out = np.empty((0, 5), dtype)
        assert fastxent.cross_entropy_backward(logits, labels, lse, out=out, reduction=reduction,
                                               backend=backend) is out
