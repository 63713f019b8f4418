"""Probability targets, z-loss, soft-capping and accuracy: every fast backend against the NumPy
reference, the reference against PyTorch (float64) and finite differences, edge values, errors."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent
from _helpers import assert_grad_close, assert_loss_close, make_labels, make_logits, make_weight

# (rows, classes): one row, small classes (the rows-per-lane path), a cached row, a
# row longer than the cache, and few long rows (the split path with 2 threads).
SHAPES = [(1, 1), (1, 10), (7, 3), (65, 16), (33, 1000), (3, 70000), (2, 40000)]
OPTION_SETS = {
    "z": dict(z_loss=1e-2),
    "cap": dict(softcap=4.0),
    "acc": dict(return_accuracy=True),
    "all": dict(z_loss=3e-3, softcap=2.5, label_smoothing=0.1, weighted=True,
                return_accuracy=True),
    "z-sum-w": dict(z_loss=0.1, reduction="sum", weighted=True),
    "z-none-rows": dict(z_loss=0.05, reduction="none", grad_rows=True, return_accuracy=True),
    "soft": dict(soft=True),
    "soft-all": dict(soft=True, z_loss=1e-3, softcap=3.0, label_smoothing=0.2, weighted=True),
    "soft-none": dict(soft=True, reduction="none", grad_rows=True, weighted=True),
}


def soft_targets(rng, n, c, dtype=np.float64):
    t = rng.random((n, c)) ** 3  # some near 0
    t[:, ::7] = 0.0  # exact zeros
    t /= np.maximum(t.sum(axis=1, keepdims=True), 1e-300)
    return t.astype(dtype)


def build(rng, n, c, dtype, spec):
    """(logits, labels, options, return flags) for an OPTION_SETS entry."""
    spec = dict(spec)
    logits = make_logits(rng, (n, c), dtype)
    if spec.pop("soft", False):
        labels = soft_targets(rng, n, c, dtype)
    else:
        labels = make_labels(rng, (n,), c, ignore_index=-100, ignore_frac=0.25)
    if spec.pop("weighted", False):
        spec["weight"] = make_weight(rng, c)
    if spec.pop("grad_rows", False):
        spec["grad_output"] = rng.uniform(-2, 2, size=n)
    flags = {"return_accuracy": spec.pop("return_accuracy", False), "return_z_loss": True}
    return logits, labels, spec, flags


def grad_scale(n, opts):
    g = np.max(np.abs(opts.get("grad_output", 1.0)))
    w = np.max(opts["weight"]) if "weight" in opts else 1.0
    per_row = g * w * (1 + 2 * opts.get("z_loss", 0.0) * 20)
    return per_row / n if opts.get("reduction", "mean") == "mean" else per_row


def check_against_reference(backend, logits, labels, opts, flags):
    """Every entry point of `backend` with the options against the reference backend."""
    dtype = logits.dtype
    fwd = {k: v for k, v in opts.items() if k != "grad_output"}
    scale = grad_scale(len(logits), opts)
    want = fastxent.cross_entropy_with_grad(logits, labels, backend="numpy", **opts, **flags)
    got = fastxent.cross_entropy_with_grad(logits, labels, backend=backend, **opts, **flags)
    assert len(got) == len(want) == 3 + flags["return_accuracy"]
    assert_loss_close(got[0], want[0], dtype, logits, err_msg="fused loss")
    assert_grad_close(got[1], want[1], dtype, scale, err_msg="fused grad")
    assert_loss_close(got[2], want[2], dtype, logits, err_msg="z-loss term")
    if flags["return_accuracy"]:
        assert got[3] == want[3] or (np.isnan(got[3]) and np.isnan(want[3]))

    loss_only = fastxent.cross_entropy(logits, labels, backend=backend, **fwd, **flags)
    assert_loss_close(loss_only[0], want[0], dtype, logits, err_msg="cross_entropy loss")
    forward = fastxent.cross_entropy_forward(logits, labels, backend=backend, **fwd, **flags)
    assert_loss_close(forward[0], want[0], dtype, logits, err_msg="forward loss")
    for a, b in zip(forward[2:], loss_only[1:]):
        np.testing.assert_array_equal(a, b)
    _, want_lse = fastxent.cross_entropy_forward(logits, labels, backend="numpy", **fwd)
    assert_loss_close(forward[1], want_lse, dtype, logits, err_msg="forward lse")
    back = fastxent.cross_entropy_backward(logits, labels, forward[1], backend=backend, **opts)
    want_back = fastxent.cross_entropy_backward(logits, labels, forward[1], backend="numpy", **opts)
    assert_grad_close(back, want_back, dtype, scale, err_msg="backward grad")

    inplace = logits.copy()
    result = fastxent.cross_entropy_with_grad(inplace, labels, backend=backend, inplace=True,
                                              **opts, **flags)
    assert result[1] is inplace
    np.testing.assert_array_equal(inplace, got[1])


@pytest.mark.parametrize("name", list(OPTION_SETS))
@pytest.mark.parametrize("n,c", SHAPES, ids=[f"{n}x{c}" for n, c in SHAPES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_options_match_reference(fast_backend, threads, n, c, dtype, name, rng):
    logits, labels, opts, flags = build(rng, n, c, dtype, OPTION_SETS[name])
    check_against_reference(fast_backend, logits, labels, opts, flags)


@pytest.mark.parametrize("name", ["z", "cap", "all", "soft-all"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_options(fast_backend, dtype, name, rng):
    """16-bit logits with the options: within a 16-bit rounding of the float64 answer."""
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    dtype = np.dtype(dtype)
    logits, labels, opts, flags = build(rng, 40, 300, np.float32, OPTION_SETS[name])
    logits = logits.astype(dtype)
    if labels.dtype.kind == "f":
        labels = labels.astype(dtype)
    want = fastxent.cross_entropy_with_grad(logits, labels, backend="numpy", **opts, **flags)
    got = fastxent.cross_entropy_with_grad(logits, labels, backend=fast_backend, **opts, **flags)
    rtol = 2.0 ** -7 if dtype.name == "bfloat16" else 2.0 ** -10
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=rtol)
    g, w = got[1].astype(np.float64), want[1].astype(np.float64)
    np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * np.abs(w).max())


# ----------------------------------------------------------------------------------------------
# The reference against PyTorch (float64) and against finite differences


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_soft_targets_match_torch(backend, reduction, weighted, eps, rng):
    torch = pytest.importorskip("torch")
    n, c = 9, 13
    x = make_logits(rng, (n, c), np.float64)
    t = soft_targets(rng, n, c)
    w = make_weight(rng, c) if weighted else None
    xt = torch.tensor(x, requires_grad=True)
    want = torch.nn.functional.cross_entropy(
        xt, torch.tensor(t), weight=None if w is None else torch.tensor(w),
        label_smoothing=eps, reduction=reduction)
    want.sum().backward()
    loss, grad = fastxent.cross_entropy_with_grad(
        x, t, weight=w, label_smoothing=eps, reduction=reduction,
        grad_output=np.ones(n) if reduction == "none" else 1.0, backend=backend)
    np.testing.assert_allclose(loss, want.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-6, atol=1e-9)


def test_soft_one_hot_equals_class_labels(backend, rng):
    x = make_logits(rng, (20, 11), np.float64)
    y = make_labels(rng, (20,), 11)
    w = make_weight(rng, 11)
    one_hot = np.eye(11)[y]
    # With weights, "mean" divides by the summed target weight for labels, by N for targets.
    for reduction in ["sum", "none"]:
        a = fastxent.cross_entropy_with_grad(x, y, weight=w, label_smoothing=0.2,
                                             reduction=reduction, grad_output=np.ones(20) if reduction == "none" else 1.0,
                                             backend=backend)
        b = fastxent.cross_entropy_with_grad(x, one_hot, weight=w, label_smoothing=0.2,
                                             reduction=reduction, grad_output=np.ones(20) if reduction == "none" else 1.0,
                                             backend=backend)
        np.testing.assert_allclose(a[0], b[0], rtol=1e-12)
        np.testing.assert_allclose(a[1], b[1], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_softcap_and_z_loss_match_torch_autograd(backend, reduction, rng):
    """softcap * tanh(x / softcap) then cross_entropy, plus z_loss * logsumexp**2, in torch."""
    torch = pytest.importorskip("torch")
    n, c, cap, z = 12, 30, 3.0, 0.02
    x = make_logits(rng, (n, c), np.float64, scale=6.0)
    y = make_labels(rng, (n,), c, ignore_index=-100, ignore_frac=0.25)
    xt = torch.tensor(x, requires_grad=True)
    capped = cap * torch.tanh(xt / cap)
    yt = torch.tensor(y)
    ce = torch.nn.functional.cross_entropy(capped, yt, reduction=reduction)
    kept = yt != -100
    zl = z * torch.logsumexp(capped, dim=1)[kept] ** 2
    zl = zl.mean() if reduction == "mean" else zl.sum()
    (ce + zl).backward()
    loss, grad, z_term = fastxent.cross_entropy_with_grad(
        x, y, softcap=cap, z_loss=z, reduction=reduction, return_z_loss=True, backend=backend)
    np.testing.assert_allclose(loss, (ce + zl).item(), rtol=1e-10)
    np.testing.assert_allclose(z_term, zl.item(), rtol=1e-10)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", ["all", "soft-all", "z-none-rows"])
def test_gradient_by_finite_differences(backend, name, rng):
    logits, labels, opts, _ = build(rng, 4, 6, np.float64, OPTION_SETS[name])
    gout = opts.pop("grad_output", 1.0)

    def total(x):
        loss = fastxent.cross_entropy(x, labels, backend=backend, **opts)
        return float(np.sum(np.asarray(loss) * gout))

    _, grad = fastxent.cross_entropy_with_grad(logits, labels, grad_output=gout, backend=backend,
                                               **opts)
    h = 1e-6
    numeric = np.zeros_like(logits)
    for idx in np.ndindex(logits.shape):
        up, down = logits.copy(), logits.copy()
        up[idx] += h
        down[idx] -= h
        numeric[idx] = (total(up) - total(down)) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------------------------
# Accuracy


def test_accuracy_ties_and_special_rows(backend):
    ninf, nan = -np.inf, np.nan
    x = np.array([
        [1.0, 3.0, 3.0, 0.0],       # tie between 1 and 2: the first wins
        [1.0, 3.0, 3.0, 0.0],
        [ninf, ninf, ninf, ninf],   # all -inf: argmax is 0
        [ninf, ninf, ninf, ninf],
        [0.0, nan, 5.0, 1.0],       # NaN: wrong
        [9.0, 0.0, 0.0, 0.0],       # ignored
        [0.0, 0.0, 0.0, 7.0],       # label C-1
    ])
    y = np.array([1, 2, 0, 3, 2, -100, 3])
    # Correct: rows 0, 2, 6 out of 6 kept.
    for dtype in [np.float32, np.float64]:
        loss, acc = fastxent.cross_entropy(x.astype(dtype), y, reduction="none",
                                           return_accuracy=True, backend=backend)
        assert acc == pytest.approx(3 / 6)
        _, _, acc2 = fastxent.cross_entropy_with_grad(x.astype(dtype), y, reduction="none",
                                                      return_accuracy=True, backend=backend)
        assert acc2 == acc


def test_accuracy_long_rows_first_max_in_another_block(backend, threads):
    """The row's max first appears in an earlier block than the label's equal logit."""
    c = 40000
    x = np.zeros((3, c), np.float32)
    x[:, 5] = 4.0
    x[:, 30000] = 4.0
    x[2, 5] = 0.0
    y = np.array([30000, 5, 30000])
    _, acc = fastxent.cross_entropy(x, y, return_accuracy=True, backend=backend)
    assert acc == pytest.approx(2 / 3)


def test_accuracy_all_ignored_is_nan(backend):
    x = np.zeros((3, 4), np.float32)
    _, acc = fastxent.cross_entropy(x, np.full(3, -100), return_accuracy=True, backend=backend)
    assert np.isnan(acc)
    _, acc = fastxent.cross_entropy(np.zeros((0, 4)), np.zeros(0, np.int64), return_accuracy=True,
                                    backend=backend)
    assert np.isnan(acc)


def test_accuracy_with_softcap_uses_capped_logits(backend):
    # Capped to 1 * tanh: 30 and 40 both round to 1.0 in float64, so the first index wins.
    x = np.array([[30.0, 40.0, 0.0]])
    _, acc = fastxent.cross_entropy(x, np.array([0]), softcap=1.0, return_accuracy=True,
                                    backend=backend)
    assert acc == 1.0


# ----------------------------------------------------------------------------------------------
# Edge values


def test_soft_targets_with_masked_classes_stay_finite(backend):
    """Classes masked with -inf logits and target 0 add nothing (PyTorch gives NaN there)."""
    x = np.array([[0.5, -np.inf, 2.0, -np.inf], [1.0, 1.0, -np.inf, 0.0]])
    t = np.array([[0.25, 0.0, 0.75, 0.0], [0.5, 0.5, 0.0, 0.0]])
    for dtype in [np.float32, np.float64]:
        loss, grad = fastxent.cross_entropy_with_grad(x.astype(dtype), t.astype(dtype),
                                                      backend=backend)
        assert np.isfinite(loss) and np.isfinite(grad).all()
        loss_w, _ = fastxent.cross_entropy_with_grad(x.astype(dtype), t.astype(dtype),
                                                     weight=np.array([1.0, 0.0, 2.0, 1.0]),
                                                     backend=backend)
        assert np.isfinite(loss_w)
    # A positive target on a -inf logit is an infinite loss.
    loss = fastxent.cross_entropy(x, np.array([[0.0, 1.0, 0.0, 0.0], [1, 0, 0, 0.0]]), backend=backend)
    assert loss == np.inf


def test_softcap_bounds_huge_logits(backend):
    x = np.array([[1e30, -1e30, 0.0, np.inf, -np.inf]], np.float32)
    loss, grad = fastxent.cross_entropy_with_grad(x, np.array([2]), softcap=5.0, backend=backend)
    capped = np.array([5.0, -5.0, 0.0, 5.0, -5.0])
    p = np.exp(capped - capped.max())
    p /= p.sum()
    assert loss == pytest.approx(-np.log(p[2]), rel=1e-6)
    # Saturated logits pass no gradient back; the centre one passes p - 1.
    np.testing.assert_allclose(grad[0], [0, 0, p[2] - 1, 0, 0], atol=1e-6)


def test_z_loss_on_huge_logits_is_not_nan(backend):
    x = np.array([[1e15, 0.0, -1e15]])
    loss, grad, z = fastxent.cross_entropy_with_grad(x, np.array([0]), z_loss=1e-4,
                                                     return_z_loss=True, backend=backend)
    assert z == pytest.approx(1e-4 * 1e30)
    assert not np.isnan(grad).any()


# ----------------------------------------------------------------------------------------------
# Results and errors


def test_result_tuple_order(backend, rng):
    x = make_logits(rng, (5, 4), np.float32)
    y = make_labels(rng, (5,), 4)
    assert not isinstance(fastxent.cross_entropy(x, y, z_loss=0.1, backend=backend), tuple)
    loss, z, acc = fastxent.cross_entropy(x, y, z_loss=0.1, return_z_loss=True,
                                          return_accuracy=True, backend=backend)
    assert isinstance(z, np.float32) and isinstance(acc, np.float64)
    loss2, acc2 = fastxent.cross_entropy(x, y, z_loss=0.1, return_accuracy=True, backend=backend)
    assert (loss2, acc2) == (loss, acc)
    loss3, lse, z3 = fastxent.cross_entropy_forward(x, y, z_loss=0.1, return_z_loss=True,
                                                    backend=backend)
    assert z3 == z and lse.shape == (5,)
    rows, zrows = fastxent.cross_entropy(x, y, z_loss=0.1, reduction="none", return_z_loss=True,
                                         backend=backend)
    assert rows.shape == zrows.shape == (5,)
    np.testing.assert_allclose(rows.sum() / 5, loss, rtol=1e-6)
    np.testing.assert_allclose(zrows.sum() / 5, z, rtol=1e-6)
    # Without z_loss the term is 0.
    assert fastxent.cross_entropy(x, y, return_z_loss=True, backend=backend)[1] == 0


@pytest.mark.parametrize("value,error", [
    (-0.1, ValueError), (np.nan, ValueError), (np.inf, ValueError), ("big", TypeError)])
def test_bad_z_loss(backend, value, error):
    with pytest.raises(error, match="z_loss"):
        fastxent.cross_entropy(np.zeros((2, 3)), np.zeros(2, np.int64), z_loss=value,
                               backend=backend)


@pytest.mark.parametrize("value,error", [
    (0.0, ValueError), (-1.0, ValueError), (np.nan, ValueError), (np.inf, ValueError),
    ("x", TypeError)])
def test_bad_softcap(backend, value, error):
    with pytest.raises(error, match="softcap"):
        fastxent.cross_entropy(np.zeros((2, 3)), np.zeros(2, np.int64), softcap=value,
                               backend=backend)


def test_bad_soft_targets(backend):
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="labels"):
        fastxent.cross_entropy(x, np.zeros((2, 4)), backend=backend)
    with pytest.raises(ValueError, match="ignore_index"):
        fastxent.cross_entropy(x, np.zeros((2, 3)), ignore_index=1, backend=backend)
    with pytest.raises(ValueError, match="return_accuracy"):
        fastxent.cross_entropy(x, np.zeros((2, 3)), return_accuracy=True, backend=backend)
    with pytest.raises(TypeError, match="labels"):
        fastxent.cross_entropy(x, np.zeros(2), backend=backend)


def test_options_leave_inputs_unchanged(fast_backend, rng):
    x = make_logits(rng, (6, 5), np.float32)
    t = soft_targets(rng, 6, 5, np.float32)
    x0, t0 = x.copy(), t.copy()
    out = np.empty_like(x)
    fastxent.cross_entropy_with_grad(x, t, z_loss=0.1, softcap=2.0, out=out, backend=fast_backend)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(t, t0)


def test_z_loss_term_of_no_kept_rows_is_nan_like_the_loss(backend):
    for z in [0.0, 0.1]:
        loss, term = fastxent.cross_entropy(np.zeros((2, 3)), np.full(2, -100), z_loss=z,
                                            return_z_loss=True, backend=backend)
        assert np.isnan(loss) and np.isnan(term)
        loss, term = fastxent.cross_entropy(np.zeros((2, 3)), np.full(2, -100), z_loss=z,
                                            reduction="sum", return_z_loss=True, backend=backend)
        assert loss == 0 and term == 0


@pytest.mark.parametrize("c", [5, 79])  # the rows-per-lane path and the general one
def test_label_of_target_weight_zero_adds_nothing_at_minus_inf(backend, c):
    """label_smoothing=1 or a class weight of 0 at the label: the label's -inf logit adds 0
    (PyTorch gives NaN here); with smoothing the spread term still makes the loss inf."""
    x = np.zeros((20, c), np.float32)
    x[:, 2] = -np.inf
    y = np.full(20, 2)
    w = np.ones(c)
    w[2] = 0.0
    assert fastxent.cross_entropy(x, y, weight=w, reduction="sum", backend=backend) == 0.0
    assert fastxent.cross_entropy(x, y, label_smoothing=1.0, backend=backend) == np.inf


@pytest.mark.parametrize("shape", [(2, 40000), (3, 70000)], ids=["split-rows", "long-rows"])
def test_accuracy_counts_an_infinite_label_logit(fast_backend, threads, shape, rng):
    """A +inf logit is the argmax like any other (its row's loss is NaN, from inf - inf): the
    row counts as correct when it is the label's, also when a row is split across threads; a
    NaN logit makes a row wrong."""
    n, c = shape
    x = rng.standard_normal(shape).astype(np.float32)
    labels = np.arange(n) * 7
    x[0, 7 * 0] = np.inf                  # +inf at the label: correct
    x[1, 3], x[1, 7] = np.inf, 50.0       # +inf elsewhere: wrong
    if n > 2:
        x[2, 14], x[2, c - 1] = 60.0, np.nan
    for backend in (fast_backend, "numpy"):
        acc = fastxent.cross_entropy(x, labels, backend=backend, return_accuracy=True)[1]
        assert acc == 1 / n, backend


def test_soft_targets_of_a_long_row_sum_accurately(cpp_isa):
    """Label-smoothed one-hot targets over 32000 classes: 31999 equal small targets beside a
    large one. Their sum scales every p_j of the gradient; summed in one float per lane it had
    lost 1e-5 (each small add onto the large lane rounded the same way)."""
    n, c = 4, 32000
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((n, c)) * 3).astype(np.float32)
    t = np.full((n, c), 0.1 / c, np.float32)
    t[np.arange(n), rng.integers(0, c, n)] += 0.9
    x64, t64 = x.astype(np.float64), t.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=1, keepdims=True))
    want = e / e.sum(axis=1, keepdims=True) * t64.sum(axis=1, keepdims=True) - t64
    got = fastxent.cross_entropy_with_grad(x, t, reduction="sum", backend="cpp")[1]
    assert np.abs(got - want).max() <= 4e-7 * np.abs(want).max()
