"""The numba backend's probability targets, z-loss, soft-capping and accuracy against the float64
NumPy reference: every call (forward, fused, backward from lse), every dtype, short and long rows
(one block and several, the online-max and the cached paths), -inf and huge logits, ignored rows,
weights (one of them 0), smoothing, reductions and per-row grad_output, out= and inplace=."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import fastxent

pytest.importorskip("numba")
ml_dtypes = pytest.importorskip("ml_dtypes")

DTYPES = {"f16": np.float16, "bf16": ml_dtypes.bfloat16, "f32": np.float32, "f64": np.float64}
# Loss and lse: relative to the reference. Gradient: also absolute, relative to its largest entry.
LOSS_TOL = {"f16": 2e-3, "bf16": 2e-3, "f32": 2e-5, "f64": 1e-11}
GRAD_TOL = {"f16": 2e-3, "bf16": 1e-2, "f32": 1e-5, "f64": 1e-11}
SHAPES = [(1, 1), (3, 5), (300, 17), (7, 1000), (2, 1025), (5, 4097), (2, 70000)]


def assert_close(actual, expected, tol, what):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    finite = expected[np.isfinite(expected)]
    scale = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, equal_nan=True,
                               err_msg=what)


def make_case(rng, rows, classes, dtype, *, soft, special, weighted, ignored):
    x = (rng.standard_normal((rows, classes)) * 3).astype(DTYPES[dtype])
    kw = {}
    if weighted:
        w = rng.uniform(0.5, 2.0, classes)
        w[rng.integers(classes)] = 0.0  # a class of weight 0 counts 0, also at a -inf logit
        kw["weight"] = w
    if soft:
        t = rng.dirichlet(np.full(classes, 0.5), size=rows)
        if classes > 2:
            t[:, 0] = 0.0  # a target of 0 counts 0, also at a -inf logit
            t /= t.sum(axis=1, keepdims=True)
        labels = t.astype(np.float64 if dtype == "f64" else np.float32)
    else:
        labels = rng.integers(0, classes, rows)
        # Half of the rows predict their label, so accuracy is neither 0 nor 1.
        x[np.arange(rows // 2), labels[: rows // 2]] = 20.0
        if ignored:
            labels[rng.random(rows) < 0.3] = -100
    if special and x.size > 2:
        flat = x.reshape(-1)
        where = rng.permutation(flat.size)[: max(2, flat.size // 50)]
        flat[where[::2]] = -np.inf
        if dtype in ("f32", "f64"):
            flat[where[1::2]] = 1e30 if dtype == "f32" else 1e200
    return x, labels, kw


def results(x, labels, backend, grad_output, accuracy, **kw):
    loss, lse, *extra = fastxent.cross_entropy_forward(
        x, labels, return_z_loss=True, return_accuracy=accuracy, backend=backend, **kw)
    fused = fastxent.cross_entropy_with_grad(
        x, labels, grad_output=grad_output, return_z_loss=True, return_accuracy=accuracy,
        backend=backend, **kw)
    back = fastxent.cross_entropy_backward(x, labels, lse, grad_output=grad_output,
                                           backend=backend, **kw)
    return (loss, lse, *extra), fused, back


def check_against_reference(x, labels, dtype, grad_output=1.0, **kw):
    accuracy = labels.dtype.kind in "iu"
    mine = results(x, labels, "numba", grad_output, accuracy, **kw)
    ref = results(x, labels, "numpy", grad_output, accuracy, **kw)
    (loss, lse, z_term, *acc), (f_loss, grad, f_z, *f_acc), back = mine
    (r_loss, r_lse, r_z, *r_acc), (_, r_grad, _, *_), r_back = ref
    tol = LOSS_TOL[dtype]
    assert_close(loss, r_loss, tol, "loss")
    assert_close(f_loss, r_loss, tol, "fused loss")
    assert_close(lse, r_lse, tol, "lse")
    assert_close(z_term, r_z, tol, "z-loss term")
    assert_close(f_z, r_z, tol, "fused z-loss term")
    if accuracy:
        np.testing.assert_equal(acc[0], r_acc[0])
        np.testing.assert_equal(f_acc[0], r_acc[0])
    assert_close(grad, r_grad, GRAD_TOL[dtype], "fused gradient")
    assert_close(back, r_back, GRAD_TOL[dtype], "gradient from lse")
    # out= and inplace=True give the same gradient as a fresh array.
    out = np.full_like(x, 7)
    result = fastxent.cross_entropy_with_grad(x, labels, grad_output=grad_output, out=out,
                                              backend="numba", **kw)
    assert result[1] is out
    np.testing.assert_array_equal(out, grad)
    over = x.copy()
    fastxent.cross_entropy_with_grad(over, labels, grad_output=grad_output, inplace=True,
                                     backend="numba", **kw)
    np.testing.assert_array_equal(over, grad)


OPTIONS = list(itertools.product(
    [False, True],        # probability targets
    [0.0, 1e-3],          # z_loss
    [None, 5.0],          # softcap
    [0.0, 0.1],           # label_smoothing
))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("soft,z_loss,softcap,smoothing", OPTIONS)
def test_options_against_reference(rng, dtype, shape, soft, z_loss, softcap, smoothing):
    # The other dimensions vary with the generator (seeded per test): weights, reduction,
    # special values, per-row grad_output.
    weighted, special = bool(rng.integers(2)), bool(rng.integers(2))
    reduction = ("mean", "sum", "none")[rng.integers(3)]
    x, labels, kw = make_case(rng, *shape, dtype, soft=soft, special=special,
                              weighted=weighted, ignored=True)
    if reduction == "mean" and not soft and "weight" in kw:
        kept = labels[labels != -100]
        if kept.size and kw["weight"][kept].sum() == 0:
            kw["weight"][kept] = 1.0  # a 0 "mean" divisor: the gradient is inf * 0 (no defined value)
    grad_output = rng.standard_normal(shape[0]) if reduction == "none" else 0.7
    check_against_reference(x, labels, dtype, grad_output, reduction=reduction,
                            label_smoothing=smoothing, z_loss=z_loss, softcap=softcap, **kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(64, 3000), (4, 40000)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_all_options_parallel(rng, dtype, shape):
    """Enough work for the parallel path (rows handed out in groups with their scratch rows)."""
    for soft in (False, True):
        x, labels, kw = make_case(rng, *shape, dtype, soft=soft, special=True, weighted=True,
                                  ignored=True)
        check_against_reference(x, labels, dtype, 1.3, reduction="mean", label_smoothing=0.05,
                                z_loss=1e-4, softcap=30.0, **kw)


def test_accuracy_rules():
    # Row 0: first maximum at the label. Row 1: a tie before the label. Row 2: NaN. Row 3:
    # ignored. Row 4: all -inf with label 0 (argmax 0). Row 5: wrong. Row 6: the first +inf.
    x = np.array([[1.0, 3.0, 3.0], [3.0, 3.0, 0.0], [np.nan, 5.0, 0.0], [0.0, 9.0, 0.0],
                  [-np.inf, -np.inf, -np.inf], [2.0, 0.0, 1.0], [np.inf, 0.0, np.inf]],
                 np.float32)
    labels = np.array([1, 1, 1, -100, 0, 2, 0])
    for backend in ("numba", "numpy"):
        _, acc = fastxent.cross_entropy(x, labels, return_accuracy=True, backend=backend)
        assert acc == pytest.approx(3 / 6)
        _, _, fused_acc = fastxent.cross_entropy_with_grad(x, labels, return_accuracy=True,
                                                           backend=backend)
        assert fused_acc == pytest.approx(3 / 6)
    _, acc = fastxent.cross_entropy(x, np.full(7, -100), return_accuracy=True, backend="numba")
    assert np.isnan(acc)


def test_z_term_reductions():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 9)).astype(np.float32) * 4
    labels = np.array([0, 3, -100, 8, 2, -100])
    weight = rng.uniform(0.5, 2.0, 9)
    kept = labels != -100
    lse = np.log(np.exp(x.astype(np.float64)).sum(axis=1))
    rows_z = np.where(kept, 0.01 * lse**2, 0.0)
    for reduction, expected in [("none", rows_z), ("sum", rows_z.sum()),
                                ("mean", rows_z.sum() / kept.sum())]:
        _, z_term = fastxent.cross_entropy(x, labels, weight=weight, z_loss=0.01,
                                           reduction=reduction, return_z_loss=True,
                                           backend="numba")
        np.testing.assert_allclose(z_term, expected, rtol=1e-5)


def test_softcap_is_not_rounded_to_16_bits():
    # Capped float16 logits rounded to 16 bits would move the loss by ~1e-3; in float32 they
    # stay within float32 rounding of the reference.
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((8, 300)) * 20).astype(np.float16)
    labels = rng.integers(0, 300, 8)
    mine = fastxent.cross_entropy(x, labels, softcap=7.0, reduction="none", backend="numba")
    ref = fastxent.cross_entropy(x, labels, softcap=7.0, reduction="none", backend="numpy")
    np.testing.assert_allclose(mine.astype(np.float64), ref.astype(np.float64), rtol=1e-3)
    capped = (7.0 * np.tanh(x.astype(np.float64) / 7.0)).astype(np.float16).astype(np.float32)
    rounded = fastxent.cross_entropy(capped, labels, reduction="none", backend="numba")
    assert not np.allclose(rounded, ref.astype(np.float32), rtol=1e-5, atol=0)


def test_soft_targets_match_one_hot_labels(rng):
    x = rng.standard_normal((40, 1500)).astype(np.float64)
    labels = rng.integers(0, 1500, 40)
    one_hot = np.eye(1500)[labels]
    for red in ("mean", "sum", "none"):
        hard = fastxent.cross_entropy_with_grad(x, labels, reduction=red, label_smoothing=0.2,
                                                z_loss=1e-3, softcap=4.0, backend="numba")
        soft = fastxent.cross_entropy_with_grad(x, one_hot, reduction=red, label_smoothing=0.2,
                                                z_loss=1e-3, softcap=4.0, backend="numba")
        np.testing.assert_allclose(soft[0], hard[0], rtol=1e-12)
        np.testing.assert_allclose(soft[1], hard[1], rtol=1e-10, atol=1e-15)


def test_accuracy_with_probability_targets_is_rejected():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="return_accuracy"):
        fastxent.cross_entropy(x, np.full((2, 3), 1 / 3, np.float32), return_accuracy=True,
                               backend="numba")
