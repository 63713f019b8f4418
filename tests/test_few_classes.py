"""The plain few-class kernel (cpp/kernel_few_classes.h): float32 rows of 1-7 classes (1-16
with AVX-512, whose 16-row groups of 9-16 classes are transposed in registers), contiguous,
without class weights, per-row grad_output, z-loss or accuracy, taken in batches of several
vector groups of rows (32-64 rows with AVX-512, 16-32 with AVX2) and the rest by the general
row-per-lane code. It must give the same bits as that general code, which class weights of 1
select (the same arithmetic with a weight that multiplies exactly), and the reference's
answers, with special values and ignored rows anywhere in a batch."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent
from _helpers import assert_grad_close, assert_loss_close, gradient_scale, make_labels, make_logits
from test_against_reference import check_all_modes

CLASSES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 16, 17]
# Whole batches only, whole batches and a ragged rest, and many batches.
ROWS = [64, 64 * 3 + 13, 1000]


def special_logits(rng, n, c):
    """float32 logits with special rows spread over the batches (and their vector lanes)."""
    big = float(np.finfo(np.float32).max) / 2
    x = make_logits(rng, (n, c), np.float32)
    rows = rng.permutation(min(n, 192))[:10]  # inside the whole batches
    x[rows[0], ::2] = -np.inf                       # masked classes
    x[rows[1], 1:] = -np.inf                        # one class left
    x[rows[2]] = [big if j % 3 == 0 else -big for j in range(c)]
    x[rows[3]] = 1e30
    x[rows[4]] = -np.inf                            # all -inf: NaN loss and gradient
    x[rows[5], c // 2] = np.nan                     # NaN: NaN in this row only
    x[rows[6], 0] = np.nan                          # NaN in an ignored row: zeros there
    x[rows[7], 0] = 40.0                            # confident rows: p_y = 1 - 1e-17 ...
    x[rows[8], 0] = -40.0                           # ... and p_y = 1e-17
    x[rows[9]] = -big
    labels = make_labels(rng, (n,), c, ignore_index=-100, ignore_frac=0.2)
    labels[rows[[0, 1, 2, 7, 8]]] = [min(1, c - 1), 0, 0, 0, 0]
    labels[rows[[4, 5]]] = c - 1
    labels[rows[6]] = -100
    return x, labels, rows


def results(x, labels, backend, **opts):
    """(loss, fused grad, forward loss, lse, backward grad from that lse)."""
    loss, grad = fastxent.cross_entropy_with_grad(x, labels, backend=backend, **opts)
    floss, lse = fastxent.cross_entropy_forward(x, labels, backend=backend, **opts)
    bgrad = fastxent.cross_entropy_backward(x, labels, lse, backend=backend, **opts)
    return loss, grad, floss, lse, bgrad


def assert_same_as_general(x, labels, context="", **opts):
    """Every result of the plain call equals the general code's (class weights of 1), bit for bit."""
    plain = results(x, labels, "cpp", **opts)
    general = results(x, labels, "cpp", weight=np.ones(x.shape[1], np.float32), **opts)
    for name, got, want in zip(["loss", "grad", "forward loss", "lse", "backward grad"], plain, general):
        np.testing.assert_array_equal(got, want, err_msg=f"{name} {context}")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("n", ROWS)
@pytest.mark.parametrize("c", CLASSES)
def test_same_bits_as_the_general_code(cpp_isa, threads, c, n, reduction, rng):
    x, labels, _ = special_logits(rng, n, c)
    assert_same_as_general(x, labels, reduction=reduction)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("n", ROWS)
@pytest.mark.parametrize("c", [1, 2, 3, 5, 8, 9])
def test_float64_same_bits_as_the_general_code(cpp_isa, threads, c, n, reduction, rng):
    """float64 rows of up to 8 classes take the few-class kernel with AVX-512 (8 rows a group,
    moved to columns by lane permutes up to 5 classes, transposed from 6): the general code's
    bits, special rows included."""
    x, labels, _ = special_logits(rng, n, c)
    x = x.astype(np.float64)
    x[np.abs(x) == np.float32(np.finfo(np.float32).max) / 2] *= 1e200  # huge for a double too
    assert_same_as_general(x, labels, reduction=reduction)
    check_all_modes(make_logits(rng, (n, c), np.float64), labels, "cpp", reduction=reduction)


@pytest.mark.parametrize("n", ROWS)
@pytest.mark.parametrize("c", CLASSES)
def test_against_reference(fast_backend, threads, c, n, rng):
    x = make_logits(rng, (n, c), np.float32)
    labels = make_labels(rng, (n,), c, ignore_index=-100, ignore_frac=0.2)
    labels[:2] = [0, c - 1]
    for reduction in ["mean", "sum", "none"]:
        check_all_modes(x, labels, fast_backend, reduction=reduction)


@pytest.mark.parametrize("c", CLASSES)
def test_special_rows(fast_backend, threads, c, rng):
    n = 64 * 3 + 13
    x, labels, rows = special_logits(rng, n, c)
    loss, grad, _, lse, bgrad = results(x, labels, fast_backend, reduction="none")
    want_loss, want_grad = fastxent.cross_entropy_with_grad(x, labels, backend="numpy", reduction="none")
    bad = rows[[4, 5]]
    assert np.isnan(loss[bad]).all() and np.isnan(grad[bad]).all() and np.isnan(bgrad[bad]).all()
    ignored = labels == -100
    assert np.all(loss[ignored] == 0) and np.all(grad[ignored] == 0) and np.all(bgrad[ignored] == 0)
    assert np.all(lse[ignored] == 0)
    ok = np.setdiff1d(np.arange(n), bad)
    scale = gradient_scale(labels, c, reduction="none")
    assert_loss_close(loss[ok], want_loss[ok], np.float32, x[ok][np.isfinite(x[ok])])
    assert_grad_close(grad[ok], want_grad[ok], np.float32, scale)
    # A confident row keeps its precision: -log p_y = log1p(sum_j!=y exp(z_j - z_y)), about
    # 1e-15, relative to its size (lse - z_y cancels there, even in float64).
    # (The row-at-a-time code takes lse - z_y: the scalar ISA's in double, numba's in float32,
    # so there the error is bounded by their rounding at |z_y| = 40 instead.)
    z = x[rows[7]].astype(np.float64)
    exact = np.log1p(np.sum(np.exp(np.delete(z, 0) - z[0])))
    if fast_backend != "cpp":
        atol = 40 * float(np.finfo(np.float32).eps)
    else:
        atol = 2.3e-16 if fastxent._backends._core_or_none().isa() == "scalar" else 0.0
    np.testing.assert_allclose(loss[rows[7]], exact, rtol=1e-5, atol=atol)
    # (not the huge rows: exp(z - lse) from an lse rounded at 1e38 is not the softmax)
    modest = np.setdiff1d(ok, rows[[2, 3, 9]])
    assert_grad_close(bgrad[modest], want_grad[modest], np.float32, scale)


@pytest.mark.parametrize("ignore_index", [2**32 + 1, -(2**63), 2**63 - 1, -1, 0, 1, 6, -100, -(2**31),
                                          -(2**31) - 1, -(2**32) + 1])
@pytest.mark.parametrize("c", [1, 2, 3, 7, 10])
def test_any_ignore_index(cpp_isa, threads, c, ignore_index, rng):
    """Labels are read 16 at a time as floats (AVX-512), the ignored ones found by whole 64-bit
    compares: an ignore_index whose low 32 bits are a class index (2**32 + 1) must not ignore
    that class, and one inside [0, C) ignores exactly that class's rows. A negative int32
    ignore_index (-100 down to -2**31) takes the low halves alone; just below that range, or
    negative with a class in its low half (-2**32 + 1), the compares must still run."""
    n = 64 * 3 + 13
    x = make_logits(rng, (n, c), np.float32)
    labels = make_labels(rng, (n,), c, ignore_index=ignore_index, ignore_frac=0.2)
    labels[1::7] = min(1, c - 1)  # the class that 2**32 + 1 would alias
    for reduction in ["mean", "none"]:
        assert_same_as_general(x, labels, f"ignore_index={ignore_index}", reduction=reduction,
                               ignore_index=ignore_index)
        check_all_modes(x, labels, "cpp", reduction=reduction, ignore_index=ignore_index)
    kept = labels != ignore_index
    loss = fastxent.cross_entropy(x, labels, backend="cpp", reduction="none", ignore_index=ignore_index)
    assert np.all(loss[~kept] == 0) and np.all(loss[kept] > 0 if c > 1 else loss[kept] == 0)


@pytest.mark.parametrize("c", [1, 3, 4, 7, 10, 16])
def test_inplace_and_out(cpp_isa, threads, c, rng):
    """inplace=True and out= give the fused gradient of a fresh array, bit for bit."""
    n = 64 * 5 + 7
    x, labels, _ = special_logits(rng, n, c)
    loss, grad = fastxent.cross_entropy_with_grad(x, labels, backend="cpp")
    out = np.full_like(x, 7.0)
    loss_out, same = fastxent.cross_entropy_with_grad(x, labels, backend="cpp", out=out)
    assert same is out
    y = x.copy()
    loss_in, over = fastxent.cross_entropy_with_grad(y, labels, backend="cpp", inplace=True)
    assert np.shares_memory(over, y)
    for got in (out, over):
        np.testing.assert_array_equal(got, grad)
    np.testing.assert_array_equal([loss_out, loss_in], [loss, loss])  # (NaN: the NaN row)


@pytest.mark.parametrize("softcap", [None, 20.0])
@pytest.mark.parametrize("c", [1, 3, 7, 10])
def test_long_calls_same_bits(cpp_isa, threads, c, softcap, rng):
    """Calls long enough for several threads' tasks (which start on blocks of the loss sums,
    some of which the few-class kernel sums itself) and, with softcap, several chunks of
    capped rows (counted from the chunk's first row, where the kernel must not sum blocks):
    the mean and the sum are the general code's bits."""
    n = 50000 + 77
    x = make_logits(rng, (n, c), np.float32)
    labels = make_labels(rng, (n,), c, ignore_index=-100, ignore_frac=0.1)
    for reduction in ["mean", "sum"]:
        assert_same_as_general(x, labels, reduction, reduction=reduction, softcap=softcap)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c", [1, 2, 3, 5, 7, 10])
def test_block_sums_in_double_same_bits(cpp_isa, threads, c, dtype, rng):
    """The sum of a block of 256 rows that the few-class kernel adds up itself, compared as the
    double the kernels return: the float32 loss rounds it and would hide a changed order of
    additions (lanes rotated wrongly between groups, a lane left out of the fold). Logits of
    scales 1/4 to 64 give losses from 0 to hundreds, which do not add exactly in double, so a
    changed order shows in the last bits of some calls: 100 calls each. (With AVX-512 a group
    fills all 16 lanes: no rotation to get wrong; float64 groups of 8 rotate there too.)"""
    core = pytest.importorskip("fastxent._core")
    n = 257  # (256 rows or fewer are summed by the driver; the extra row is ignored, adds 0)
    for _ in range(100):
        scale = np.exp2(rng.uniform(-2, 6, (n, 1)))
        x = (rng.standard_normal((n, c)) * scale).astype(dtype)
        labels = make_labels(rng, (n,), c, ignore_index=-100, ignore_frac=0.1)
        labels[-1] = -100
        for mode in (0, 1):  # forward, fused
            sums = []
            for weight in (None, np.ones(c)):  # None: the few-class kernel; ones: the general code
                grad = np.empty_like(x) if mode == 1 else None
                total, _, _ = core.cross_entropy(mode, x, labels, weight, -100, 0.0, 2, 1.0, None,
                                                 None, None, grad, -1, None, 0.0, 0.0, None, None)
                sums.append(total)
            assert sums[0] == sums[1], f"mode {mode}: {sums[0]!r} != {sums[1]!r}"
