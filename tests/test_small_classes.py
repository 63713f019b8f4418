"""Rows of few classes (C <= 16, and up to 4 vectors of classes: 32 with AVX2, 64 with AVX-512, in
forward and fused passes), which the C++ kernels process one row per vector lane: whole
groups of rows, ragged tails (N not a multiple of the lane count, batches of 64 rows), class
counts around the vector width, strided and reversed rows, out= and inplace views, ignored
rows, weights, smoothing and special values inside a group of rows, 16-bit logits."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent
from _helpers import (
    FLOAT_DTYPES,
    assert_grad_close,
    assert_loss_close,
    gradient_scale,
    make_labels,
    make_logits,
    make_weight,
)
from test_against_reference import check_all_modes
from test_extras import check_against_reference

# Every count: float32 rows have one kernel instantiation per class count. 1 and 2: degenerate;
# 3, 5, 7: under a vector (odd: contiguous rows move by blends and lane permutes, not
# transposes); 8, 16: whole vectors of float32 lanes; 9-15: a partial second column block;
# 17-64: two to four column blocks (AVX2 to 32, AVX-512 to 64) with ragged last blocks, and 65:
# past them (rows with a masked last vector).
CLASSES = list(range(1, 18)) + [20, 24, 31, 32, 33, 40, 47, 48, 63, 64, 65]
# Whole groups of 4, 8 or 16 rows (a vector of lanes), ragged tails, several batches of 64 rows.
ROWS = [8, 29, 523]


def rich_options(rng, n, c):
    """Every option at once: weight, ignored rows (a quarter), smoothing, per-row grad_output."""
    labels = make_labels(rng, (n,), c, ignore_index=-100, ignore_frac=0.25)
    return labels, {"weight": make_weight(rng, c), "label_smoothing": 0.1, "reduction": "none",
                    "grad_output": rng.uniform(-2, 2, n)}


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("n", ROWS)
@pytest.mark.parametrize("c", CLASSES)
def test_against_reference(fast_backend, threads, c, n, dtype, rng):
    logits = make_logits(rng, (n, c), dtype)
    check_all_modes(logits, make_labels(rng, (n,), c), fast_backend)
    labels, opts = rich_options(rng, n, c)
    check_all_modes(logits, labels, fast_backend, **opts)
    weighted = {"weight": make_weight(rng, c), "reduction": "mean", "grad_output": 0.5}
    check_all_modes(logits, labels, fast_backend, **weighted)
    check_all_modes(logits, labels, fast_backend, label_smoothing=0.3, reduction="sum")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("c", [3, 9, 16, 24, 40])
def test_strided_views(fast_backend, threads, c, dtype, rng):
    """Column slices, every other row and reversed rows, for the logits, out= and inplace:
    the same bits as contiguous arrays, and nothing outside the views written."""
    n = 45
    logits = make_logits(rng, (n, c), dtype)
    labels, opts = rich_options(rng, n, c)
    want_loss, want = fastxent.cross_entropy_with_grad(logits, labels, backend=fast_backend, **opts)
    check_all_modes(logits, labels, fast_backend, **opts)

    wide = np.full((n, c + 5), 9.0, dtype)
    wide[:, :c] = logits
    every_other = np.full((2 * n, c), 9.0, dtype)
    every_other[::2] = logits
    reversed_rows = np.ascontiguousarray(logits[::-1])[::-1]
    for name, view in [("columns", wide[:, :c]), ("rows", every_other[::2]),
                       ("reversed", reversed_rows)]:
        loss, grad = fastxent.cross_entropy_with_grad(view, labels, backend=fast_backend, **opts)
        np.testing.assert_array_equal(grad, want, err_msg=name)
        np.testing.assert_array_equal(loss, want_loss, err_msg=name)
        check_all_modes(view, labels, fast_backend, **opts)

    big = np.full((n, c + 5), 9.0, dtype)
    fastxent.cross_entropy_with_grad(logits, labels, out=big[:, :c], backend=fast_backend, **opts)
    np.testing.assert_array_equal(big[:, :c], want)
    assert np.all(big[:, c:] == 9.0)
    rows = np.full((2 * n, c), 9.0, dtype)
    fastxent.cross_entropy_with_grad(logits, labels, out=rows[::2], backend=fast_backend, **opts)
    np.testing.assert_array_equal(rows[::2], want)
    assert np.all(rows[1::2] == 9.0)

    fastxent.cross_entropy_with_grad(wide[:, :c], labels, inplace=True, backend=fast_backend, **opts)
    np.testing.assert_array_equal(wide[:, :c], want)
    assert np.all(wide[:, c:] == 9.0)
    fastxent.cross_entropy_with_grad(every_other[::2], labels, inplace=True, backend=fast_backend,
                                     **opts)
    np.testing.assert_array_equal(every_other[::2], want)
    assert np.all(every_other[1::2] == 9.0)
    fastxent.cross_entropy_with_grad(reversed_rows, labels, inplace=True, backend=fast_backend, **opts)
    np.testing.assert_array_equal(reversed_rows, want)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("c", [3, 4, 12, 24, 40, 64])
def test_special_rows_in_a_group(fast_backend, threads, c, dtype, rng):
    """-inf entries, a lone finite class, huge logits, an all -inf row, a NaN row, an ignored
    NaN row: each row's result is its own, whatever shares its group of lanes."""
    torch = pytest.importorskip("torch")
    big = float(np.finfo(np.float32).max) / 2
    n = 20
    x = make_logits(rng, (n, c), dtype)
    x[1, ::2] = -np.inf                    # masked classes
    x[2, 1:] = -np.inf                     # one class left
    x[3] = [big if j % 3 == 0 else -big for j in range(c)]
    x[4] = 1e30
    x[5] = -np.inf                         # all -inf: NaN loss and gradient, lse = -inf
    x[6, 2] = np.nan                       # NaN: NaN loss and gradient in this row only
    x[7, 0] = np.nan                       # NaN in an ignored row: zeros there
    x[9] = -big
    x[10, 0] = 40.0                        # confident rows: p_y = 1 - 1e-17 ...
    x[11, 0] = -40.0                       # ... and p_y = 1e-17
    labels = rng.integers(0, c, n)
    labels[[1, 2, 3, 10, 11]] = [1, 0, 0, 0, 0]
    labels[7] = -100
    opts = {"weight": make_weight(rng, c), "label_smoothing": 0.05, "reduction": "none"}

    loss, grad = fastxent.cross_entropy_with_grad(x, labels, backend=fast_backend, **opts)
    want_loss, want_grad = fastxent.cross_entropy_with_grad(x, labels, backend="numpy", **opts)
    finite = np.isfinite(want_loss)
    assert not finite[[5, 6]].any() and np.isnan(loss[[5, 6]]).all()
    assert np.isnan(grad[[5, 6]]).all()
    assert loss[7] == 0 and np.all(grad[7] == 0)
    scale = gradient_scale(labels, c, **opts)
    ok = np.setdiff1d(np.arange(n), [5, 6])
    assert_loss_close(loss[ok], want_loss[ok], dtype, x[ok][np.isfinite(x[ok])])
    assert_grad_close(grad[ok], want_grad[ok], dtype, scale)

    # Confident rows keep their precision: -log p_y and p_y - 1 relative to their size.
    np.testing.assert_allclose(loss[10], want_loss[10], rtol=1e-5)
    _, lse = fastxent.cross_entropy_forward(x, labels, backend=fast_backend, **opts)
    assert lse[5] == -np.inf and np.isnan(lse[6]) and lse[7] == 0
    kept = np.setdiff1d(ok, [7])  # an ignored row's lse is 0
    want_lse = torch.logsumexp(torch.tensor(x[kept].astype(np.float64)), -1).numpy()
    assert_loss_close(lse[kept], want_lse, dtype, x[kept][np.isfinite(x[kept])])
    bgrad = fastxent.cross_entropy_backward(x, labels, lse, backend=fast_backend, **opts)
    assert np.all(bgrad[7] == 0) and np.isnan(bgrad[[5, 6]]).all()
    # (not the huge rows: exp(z - lse) from an lse rounded at 1e38 is not the softmax)
    modest = np.setdiff1d(ok, [3, 4, 9])
    assert_grad_close(bgrad[modest], want_grad[modest], dtype, scale)


@pytest.mark.parametrize("c", [1, 3, 9, 16, 24, 40])
def test_half_precision_groups(fast_backend, threads, c, rng):
    """float16 and bfloat16 rows through the small-row path (whole groups and a ragged tail),
    within an ulp or so of the float64 answer for the 16-bit inputs."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    n = 45
    for dtype in (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)):
        x = make_logits(rng, (n, c), np.float32).astype(dtype)
        labels, opts = rich_options(rng, n, c)
        x64 = x.astype(np.float64)
        want_loss, want_grad = fastxent.cross_entropy_with_grad(x64, labels, backend="numpy", **opts)
        loss, grad = fastxent.cross_entropy_with_grad(x, labels, backend=fast_backend, **opts)
        assert grad.dtype == dtype
        eps = float(np.finfo(np.float16).eps if dtype == np.float16 else 2.0**-7)
        scale = gradient_scale(labels, c, **opts)
        np.testing.assert_allclose(np.asarray(loss, np.float64), want_loss, rtol=eps, atol=eps * 1e-3)
        np.testing.assert_allclose(grad.astype(np.float64), want_grad, rtol=eps, atol=1e-6 * scale)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("n", [5, 64])
@pytest.mark.parametrize("c", [7, 23, 40, 64, 100])
def test_zero_weight_class_at_minus_inf_with_smoothing(fast_backend, c, n, dtype, rng):
    """A class of weight 0 adds 0 to the smoothing term even where its logit is -inf (PyTorch
    gives NaN: 0 * -inf), on the row path (5 rows) and a row per lane (64 rows)."""
    x = make_logits(rng, (n, c), dtype)
    x[:, 2] = -np.inf
    labels = make_labels(rng, (n,), c)
    labels[labels == 2] = 0
    w = make_weight(rng, c)
    w[2] = 0.0
    opts = {"weight": w, "label_smoothing": 0.1}
    for reduction in ("mean", "none"):
        loss, grad = fastxent.cross_entropy_with_grad(x, labels, backend=fast_backend,
                                                      reduction=reduction, **opts)
        want_loss, want_grad = fastxent.cross_entropy_with_grad(x, labels, backend="numpy",
                                                                reduction=reduction, **opts)
        assert np.isfinite(loss).all() and np.isfinite(grad).all()
        assert_loss_close(loss, want_loss, dtype, x[np.isfinite(x)])
        assert_grad_close(grad, want_grad, dtype, gradient_scale(labels, c, reduction=reduction, **opts))


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
def test_long_call_with_ignored_rows(fast_backend, threads, label_dtype, rng):
    """A call long enough that its labels are checked and counted in parts (one per thread) and
    its rows run as several tasks: the mean divides by the kept rows of all the parts."""
    n, c = 70001, 3
    logits = make_logits(rng, (n, c), np.float32)
    labels = make_labels(rng, (n,), c, dtype=label_dtype, ignore_index=-100, ignore_frac=0.3)
    check_all_modes(logits, labels, fast_backend)
    # (the weighted mean's divisor, the kept rows' weights, is summed after a forward call's
    # tasks have checked the labels)
    check_all_modes(logits, labels, fast_backend, weight=np.array([0.5, 2.0, 3.0]))


def special_accuracy_rows(rng, n, c, dtype):
    """Rows whose argmax is the question: ties, +inf logits, NaN, all -inf, ignored rows."""
    x = make_logits(rng, (n, c), dtype)
    labels = rng.integers(0, c, n)
    labels[::5] = -100
    last = c - 1
    x[1], labels[1] = 0.0, 0                 # all tied: the first class is the argmax
    x[2], labels[2] = 0.0, last              # all tied: a later label is not
    x[3, last], labels[3] = np.inf, last     # +inf at the label: correct
    x[4, 0], labels[4] = np.inf, last        # +inf elsewhere
    x[6], labels[6] = -np.inf, 0             # all -inf: argmax 0
    x[7], labels[7] = -np.inf, last
    x[8, 0], labels[8] = np.nan, last        # NaN: always wrong
    x[9, last], x[9, 0], labels[9] = np.nan, 50.0, 0
    x[11, :], labels[11] = -3.0, last        # tied below 0
    x[11, last] = -2.0
    return x, labels


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("c", [1, 2, 3, 8, 12, 16, 20])
def test_accuracy_and_z_loss(fast_backend, threads, c, dtype, rng):
    """return_accuracy and z_loss on the rows-per-lane path (C <= 16, groups of lanes and a
    ragged tail) and the row path (C = 20): per-row accuracy of special rows, the z-loss term
    and the gradient with it, against the reference."""
    n = 45
    x, labels = special_accuracy_rows(rng, n, c, dtype)
    for row in range(n):  # the accuracy of each row alone: which rows count is the question
        one_x, one_y = x[row:row + 1], labels[row:row + 1]
        got = fastxent.cross_entropy(one_x, one_y, backend=fast_backend, return_accuracy=True,
                                     reduction="sum")[1]
        want = fastxent.cross_entropy(one_x, one_y, backend="numpy", return_accuracy=True,
                                      reduction="sum")[1]
        assert got == want or (np.isnan(got) and np.isnan(want)), f"row {row}: {got} vs {want}"
    got_acc = fastxent.cross_entropy(x, labels, backend=fast_backend, return_accuracy=True)[1]
    want_acc = fastxent.cross_entropy(x, labels, backend="numpy", return_accuracy=True)[1]
    assert got_acc == want_acc
    # z-loss on finite rows, with per-row upstream gradients and weights.
    finite = make_logits(rng, (n, c), dtype)
    labels = make_labels(rng, (n,), c, ignore_index=-100, ignore_frac=0.2)
    flags = {"return_accuracy": True, "return_z_loss": True}
    for opts in ({"z_loss": 0.02, "reduction": "none", "grad_output": rng.uniform(-2, 2, n),
                  "weight": make_weight(rng, c)},
                 {"z_loss": 0.1, "label_smoothing": 0.1}):
        check_against_reference(fast_backend, finite, labels, opts, flags)
