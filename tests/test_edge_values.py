"""Edge values: one class, one row, empty batch, -inf logits (masked classes, a leading block of a
long row, everything but the label, whole rows), huge logits, NaN, ignored rows, all rows
ignored. Where PyTorch gives a number fastxent gives the same number."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent
from _helpers import (
    FLOAT_DTYPES,
    assert_grad_close,
    assert_loss_close,
    check_result_types,
    gradient_scale,
    make_labels,
    make_logits,
    make_weight,
)

REDUCTIONS = ["mean", "sum", "none"]


def check_like_torch(logits, labels, backend, torch_ce, exact_loss=False, **opts):
    """fastxent's loss and gradient equal PyTorch's (float64 autograd) including where torch
    gives inf or NaN; and where torch gives a finite number fastxent must too.

    The loss's absolute tolerance scales with the largest finite |logit| (the loss is a
    difference of logit-sized numbers) unless `exact_loss`: then only rtol and a tiny atol
    (torch's log_softmax subtracts the max first, so -log p is exact even for huge logits)."""
    dtype = logits.dtype
    scale_src = None if exact_loss or not logits.size else logits[np.isfinite(logits)]
    want_loss, want_grad = torch_ce(logits, labels, **opts)
    loss, grad = fastxent.cross_entropy_with_grad(logits, labels, backend=backend, **opts)
    check_result_types(loss, grad, logits.shape, dtype, opts.get("reduction", "mean"))
    fin_loss = np.isfinite(want_loss)
    assert np.all(np.isfinite(loss)[fin_loss]), f"non-finite loss where torch gives {want_loss}: {loss}"
    fin_grad = np.isfinite(want_grad)
    assert np.all(np.isfinite(grad)[fin_grad]), "non-finite gradient where torch's is finite"
    assert_loss_close(loss, want_loss, dtype, scale_src)
    assert_grad_close(grad, want_grad, dtype, gradient_scale(labels, logits.shape[-1], **opts))
    fwd = {k: v for k, v in opts.items() if k != "grad_output"}
    loss_only = fastxent.cross_entropy(logits, labels, backend=backend, **fwd)
    assert_loss_close(loss_only, want_loss, dtype, scale_src)
    floss, lse = fastxent.cross_entropy_forward(logits, labels, backend=backend, **fwd)
    assert_loss_close(floss, want_loss, dtype, scale_src)
    bgrad = fastxent.cross_entropy_backward(logits, labels, lse, backend=backend, **opts)
    assert np.all(np.isfinite(bgrad)[fin_grad]), "backward: non-finite gradient where torch's is finite"
    assert np.array_equal(np.isnan(bgrad), np.isnan(want_grad)), "backward: NaN where torch has none"
    return loss, grad


SMOOTH_OPTS = [
    pytest.param({}, id="plain"),
    pytest.param({"label_smoothing": 0.1}, id="smooth"),
    pytest.param({"label_smoothing": 0.1, "weight": "w", "reduction": "none"}, id="smooth-w-none"),
    pytest.param({"reduction": "sum", "grad_output": 2.0}, id="sum"),
]


def _opts(spec, rng, classes):
    opts = dict(spec)
    if opts.get("weight") == "w":
        opts["weight"] = make_weight(rng, classes)
    return opts


# ----------------------------------------------------------------------------------------------
# Sizes


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_one_class(backend, dtype, reduction, torch_ce):
    logits = np.array([[3.0], [-1e4], [0.0]], dtype)
    labels = np.array([0, 0, -100])
    for eps in (0.0, 0.5):
        loss, grad = check_like_torch(logits, labels, backend, torch_ce, reduction=reduction,
                                      label_smoothing=eps)
        assert np.all(np.asarray(loss) == 0)
        assert np.all(grad == 0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_one_row(backend, dtype, reduction, rng, torch_ce):
    logits = make_logits(rng, (1, 37), dtype)
    check_like_torch(logits, np.array([36]), backend, torch_ce, reduction=reduction,
                     label_smoothing=0.2, weight=make_weight(rng, 37))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_empty_batch(backend, dtype, reduction, torch_ce):
    """N = 0: mean is NaN (0/0, as torch), sum is 0, none is an empty array; grad is empty."""
    for shape in [(0, 4), (2, 0, 4)]:
        logits = np.zeros(shape, dtype)
        labels = np.zeros(shape[:-1], np.int64)
        loss, grad = check_like_torch(logits, labels, backend, torch_ce, reduction=reduction,
                                      weight=np.ones(4))
        if reduction == "mean":
            assert np.isnan(loss)
        elif reduction == "sum":
            assert loss == 0
        else:
            assert loss.shape == shape[:-1]
        assert grad.shape == shape
        floss, lse = fastxent.cross_entropy_forward(logits, labels, reduction=reduction, backend=backend)
        assert lse.shape == shape[:-1]


# ----------------------------------------------------------------------------------------------
# -inf logits


@pytest.mark.parametrize("opts", SMOOTH_OPTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_masked_classes(backend, dtype, opts, rng, torch_ce):
    """Some classes -inf (not the label): probability 0, finite loss and gradient (the smoothed
    loss is +inf as in torch, since it includes -log p of the masked classes)."""
    c = 40
    logits = make_logits(rng, (6, c), dtype)
    labels = make_labels(rng, (6,), c)
    mask = rng.random((6, c)) < 0.3
    mask[np.arange(6), labels] = False
    logits[mask] = -np.inf
    loss, grad = check_like_torch(logits, labels, backend, torch_ce, **_opts(opts, rng, c))
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("opts", SMOOTH_OPTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_all_but_label_masked(backend, dtype, opts, rng, torch_ce):
    """Only the label is finite: p_y = 1, loss 0 and gradient 0 (without smoothing)."""
    c = 50
    labels = np.array([0, 17, 49, 3])
    logits = np.full((4, c), -np.inf, dtype)
    logits[np.arange(4), labels] = [0.0, 5.0, -3.0, 1e4]
    loss, grad = check_like_torch(logits, labels, backend, torch_ce, **_opts(opts, rng, c))
    if not opts:
        assert loss == 0
        assert np.all(grad == 0)


@pytest.mark.parametrize("opts", SMOOTH_OPTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_label_masked(backend, dtype, opts, rng, torch_ce):
    """The label's logit is -inf: loss +inf (as torch), gradient finite (p - one_hot)."""
    c = 20
    logits = make_logits(rng, (3, c), dtype)
    labels = np.array([4, 0, 19])
    logits[0, 4] = -np.inf
    loss, grad = check_like_torch(logits, labels, backend, torch_ce, **_opts(opts, rng, c))
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("block", [1, 1024, 3 * 1024 + 5, 25000, 49999])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_long_row_leading_block_masked(fast_backend, threads, dtype, block, rng, torch_ce):
    """A long row (50000 classes) whose first `block` logits are -inf: no NaN from -inf - -inf
    in the online max/sum, in every thread path."""
    c = 50000
    logits = make_logits(rng, (2, c), dtype)
    logits[:, :block] = -np.inf
    labels = np.array([c - 1, block if block < c else c - 1])
    loss, grad = check_like_torch(logits, labels, fast_backend, torch_ce)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    check_like_torch(logits, labels, fast_backend, torch_ce, reduction="none")
    check_like_torch(logits, labels, fast_backend, torch_ce, label_smoothing=0.1)


@pytest.mark.parametrize("c", [1, 5, 1000, 50000])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_all_inf_row_is_nan(backend, threads, dtype, c, rng, torch_ce):
    """A row of all -inf has no softmax: NaN loss and gradient for that row (torch does the
    same); the other rows are unaffected."""
    logits = make_logits(rng, (3, c), dtype)
    logits[1] = -np.inf
    labels = np.array([0, min(1, c - 1), c - 1])
    loss, grad = check_like_torch(logits, labels, backend, torch_ce, reduction="none")
    assert np.isnan(loss[1]) and np.isfinite(loss[[0, 2]]).all()
    assert np.isnan(grad[1]).all() and np.isfinite(grad[[0, 2]]).all()
    check_like_torch(logits, labels, backend, torch_ce, reduction="mean")
    # Ignored, the row gives no NaN anywhere: the result is torch's for the batch with that row
    # cleaned (torch's autograd itself puts 0 * NaN = NaN into the ignored row's gradient).
    labels[1] = -100
    clean = logits.copy()
    clean[1] = 0
    want_loss, want_grad = torch_ce(clean, labels, reduction="sum")
    loss, grad = fastxent.cross_entropy_with_grad(logits, labels, reduction="sum", backend=backend)
    assert np.isfinite(loss) and np.all(grad[1] == 0)
    assert_loss_close(loss, want_loss, dtype, clean)
    assert_grad_close(grad, want_grad, dtype, gradient_scale(labels, c, reduction="sum"))


@pytest.mark.parametrize("c", [1, 3, 12, 40, 5000])
@pytest.mark.parametrize("smoothing", [0.5, 1.0])
def test_all_inf_row_with_smoothing(backend, threads, smoothing, c, rng, torch_ce):
    """With label smoothing an all -inf row's loss is still NaN (at smoothing = 1 too, where the
    label term has weight 0: found by hypothesis, cpp and numba gave -inf), and 0 when no class
    has weight (the reference's 0 * NaN counts 0; NaN there before)."""
    logits = make_logits(rng, (9, c), np.float32)
    logits[4] = -np.inf
    labels = np.arange(9) % c
    loss, _ = check_like_torch(logits, labels, backend, torch_ce, reduction="none",
                               label_smoothing=smoothing)
    assert np.isnan(loss[4]) and np.isfinite(np.delete(loss, 4)).all()
    for fn in (fastxent.cross_entropy, lambda *a, **k: fastxent.cross_entropy_with_grad(*a, **k)[0]):
        zero = fn(logits[4:5], labels[4:5], weight=np.zeros(c, np.float32), reduction="sum",
                  label_smoothing=smoothing, backend=backend)
        assert zero == 0
    # Probability targets: the same rule, sum_j q_j (lse - z_j) with q_j = 0 counting 0.
    targets = np.full((9, c), 1.0 / c, np.float32)
    soft = fastxent.cross_entropy(logits, targets, reduction="none", label_smoothing=smoothing,
                                  backend=backend)
    assert np.isnan(soft[4]) and np.isfinite(np.delete(soft, 4)).all()
    none = fastxent.cross_entropy(logits[4:5], np.zeros((1, c), np.float32), reduction="sum",
                                  backend=backend)
    assert none == 0


@pytest.mark.parametrize("c", [1, 5, 50000])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_all_inf_row_lse(backend, threads, dtype, c, rng):
    """cross_entropy_forward's lse of an all -inf row is log(0) = -inf, as torch.logsumexp and
    fastxent.logsumexp give (the loss is NaN)."""
    torch = pytest.importorskip("torch")
    logits = make_logits(rng, (3, c), dtype)
    logits[1] = -np.inf
    labels = np.array([0, 0, c - 1])
    _, lse = fastxent.cross_entropy_forward(logits, labels, reduction="none", backend=backend)
    want = torch.logsumexp(torch.tensor(logits.astype(np.float64)), -1).numpy()
    assert lse[1] == -np.inf
    assert_loss_close(lse, want, dtype, logits[np.isfinite(logits)])
    np.testing.assert_array_equal(fastxent.logsumexp(logits, backend=backend)[1], -np.inf)


# ----------------------------------------------------------------------------------------------
# Huge logits


def _huge_rows(dtype):
    big = float(np.finfo(np.float32).max) / 2
    rows = [
        [1e30, -1e30, 0.0, 1.0],
        [-1e30, 1e30, 1e30, -1e30],
        [big, -big, 0.0, big],
        [-big, -big, -big, -big],
        [big, big, big, big],
        [1e30, 1e30 * (1 + 1e-6), -5.0, 2.0],
    ]
    if np.dtype(dtype) == np.float64:
        rows += [[1e300, -1e300, 0.0, 1.0], [1.7e308, 1.7e308, 0.0, -1.7e308]]
    return np.array(rows, dtype)


@pytest.mark.parametrize("opts", SMOOTH_OPTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_huge_logits(backend, dtype, opts, rng, torch_ce):
    logits = _huge_rows(dtype)
    n = logits.shape[0]
    for labels in (np.zeros(n, np.int64), np.arange(n) % 4, np.full(n, 3)):
        check_like_torch(logits, labels, backend, torch_ce, exact_loss=True, **_opts(opts, rng, 4))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_huge_logits_long_row(fast_backend, threads, dtype, rng, torch_ce):
    c = 40000
    logits = make_logits(rng, (2, c), dtype) * 1e25
    logits[0, 123] = 1e30
    logits[1, -1] = float(np.finfo(np.float32).max) / 2
    labels = np.array([123, 5])
    loss, grad = check_like_torch(logits, labels, fast_backend, torch_ce, reduction="none")
    assert loss[0] == 0 and np.all(grad[0] == 0)


# ----------------------------------------------------------------------------------------------
# NaN and ignored rows


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("c", [7, 3000, 50000])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_nan_stays_in_its_row(backend, threads, dtype, c, reduction, rng, torch_ce):
    """One NaN logit makes that row's loss and gradient NaN; other rows are exactly what they
    are without it (and "mean"/"sum" are NaN)."""
    n = 3
    logits = make_logits(rng, (n, c), dtype)
    labels = np.array([0, c // 2, c - 1])
    clean = logits.copy()
    logits[1, c // 3] = np.nan
    opts = {"reduction": reduction, "label_smoothing": 0.1, "weight": make_weight(rng, c)}
    loss, grad = check_like_torch(logits, labels, backend, torch_ce, **opts)
    assert np.isnan(grad[1]).all()
    assert np.isfinite(grad[[0, 2]]).all()
    closs, cgrad = fastxent.cross_entropy_with_grad(clean, labels, backend=backend, **opts)
    np.testing.assert_array_equal(grad[[0, 2]], cgrad[[0, 2]])
    if reduction == "none":
        assert np.isnan(loss[1])
        np.testing.assert_array_equal(loss[[0, 2]], closs[[0, 2]])
    else:
        assert np.isnan(loss)


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "all-nan"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_ignored_rows_with_bad_values(backend, dtype, reduction, bad, rng, torch_ce):
    """Ignored rows are not read for the result: loss 0 and gradient 0 even with NaN/inf."""
    c = 12
    logits = make_logits(rng, (5, c), dtype)
    value = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "all-nan": np.nan}[bad]
    if bad == "all-nan":
        logits[[1, 3]] = np.nan
    else:
        logits[[1, 3], 2] = value
    labels = np.array([0, -100, 5, -100, 11])
    # torch's autograd puts 0 * NaN = NaN into an ignored row's gradient; fastxent gives what
    # torch gives for the same batch with those rows cleaned (they do not count).
    clean = logits.copy()
    clean[[1, 3]] = 0
    for eps in (0.0, 0.3):
        weight = make_weight(rng, c)
        opts = {"reduction": reduction, "label_smoothing": eps, "weight": weight}
        want_loss, want_grad = torch_ce(clean, labels, **opts)
        loss, grad = fastxent.cross_entropy_with_grad(logits, labels, backend=backend, **opts)
        assert_loss_close(loss, want_loss, dtype, clean)
        assert_grad_close(grad, want_grad, dtype, gradient_scale(labels, c, **opts))
        fwd = {k: v for k, v in opts.items() if k != "grad_output"}
        assert_loss_close(fastxent.cross_entropy(logits, labels, backend=backend, **fwd), want_loss,
                          dtype, clean)
        floss, lse = fastxent.cross_entropy_forward(logits, labels, backend=backend, **fwd)
        assert_loss_close(floss, want_loss, dtype, clean)
        bgrad = fastxent.cross_entropy_backward(logits, labels, lse, backend=backend, **opts)
        assert np.all(bgrad[[1, 3]] == 0) and np.isfinite(bgrad).all()
        assert np.all(grad[[1, 3]] == 0)
        assert np.isfinite(grad).all()
        assert np.isfinite(loss).all()
        if reduction == "none":
            assert np.all(loss[[1, 3]] == 0)


@pytest.mark.parametrize("c", [3, 40000])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_all_rows_ignored(backend, threads, dtype, c, rng, torch_ce):
    """Every row ignored: mean NaN (0/0, as torch), sum 0, none zeros; gradient all zeros."""
    logits = make_logits(rng, (3, c), dtype)
    labels = np.full(3, -100)
    for eps in (0.0, 0.2):
        for weight in (None, make_weight(rng, c)):
            for reduction in REDUCTIONS:
                loss, grad = check_like_torch(logits, labels, backend, torch_ce, reduction=reduction,
                                              label_smoothing=eps, weight=weight)
                if reduction == "mean":
                    assert np.isnan(loss)
                else:
                    assert np.all(np.asarray(loss) == 0)
                assert np.all(grad == 0)
                _, lse = fastxent.cross_entropy_forward(logits, labels, reduction=reduction,
                                                        label_smoothing=eps, weight=weight,
                                                        backend=backend)
                bgrad = fastxent.cross_entropy_backward(logits, labels, lse, reduction=reduction,
                                                        label_smoothing=eps, weight=weight,
                                                        backend=backend)
                assert np.all(bgrad == 0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_zero_weight_target_mean(backend, dtype, torch_ce):
    """Targets whose class weight is 0: mean divides by 0 -> NaN like torch; sum is finite."""
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.5, -1.0]], dtype)
    labels = np.array([1, 1])
    weight = np.array([1.0, 0.0, 2.0])
    check_like_torch(logits, labels, backend, torch_ce, weight=weight)
    loss, grad = check_like_torch(logits, labels, backend, torch_ce, weight=weight, reduction="sum")
    assert loss == 0 and np.all(grad == 0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_extreme_confidence(backend, dtype, torch_ce):
    """p_y within rounding of 1: loss tiny but positive and gradient tiny, not 0 - 1 noise."""
    logits = np.array([[30.0, 0.0, 0.0], [0.0, 60.0, -60.0], [10.0, 0.0, 0.0]], dtype)
    labels = np.array([0, 1, 0])
    loss, grad = check_like_torch(logits, labels, backend, torch_ce, reduction="none")
    assert np.all(np.asarray(loss) >= 0)


@pytest.mark.parametrize("grad_output", [0.0, -2.0])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_all_rows_ignored_mean_no_warning(backend, dtype, grad_output, rng):
    """All rows ignored with "mean" and grad_output 0: NaN loss, zero gradient, and no
    RuntimeWarning (0/0 is expected here; filterwarnings=error turns a warning into a failure)."""
    logits = make_logits(rng, (4, 6), dtype)
    labels = np.full(4, -100)
    loss, grad = fastxent.cross_entropy_with_grad(logits, labels, grad_output=grad_output,
                                                  backend=backend)
    assert np.isnan(loss) and np.all(grad == 0)
    _, lse = fastxent.cross_entropy_forward(logits, labels, backend=backend)
    bgrad = fastxent.cross_entropy_backward(logits, labels, lse, grad_output=grad_output,
                                            backend=backend)
    assert np.all(bgrad == 0)
