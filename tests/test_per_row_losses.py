"""reduction="none" in the compiled backend: the kernels sum each row in double, and the per-row
losses come back in the logits' dtype rounded once from those doubles (float32, float16,
bfloat16; float64 as they are), past the dtype's range as inf. The z-loss term and accuracy
divide by the rows the label check counted."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent
from _helpers import ISAS, using_impl

_core = pytest.importorskip("fastxent._core")
ml_dtypes = pytest.importorskip("ml_dtypes")

DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16]


def finfo(dtype):
    return ml_dtypes.finfo(dtype) if np.dtype(dtype) == ml_dtypes.bfloat16 else np.finfo(dtype)


def nearest(values: np.ndarray, dtype) -> np.ndarray:
    """Non-negative float64 values rounded once to dtype, ties to even, overflow to inf (written
    out: ml_dtypes rounds double to bfloat16 through float32, which is two roundings)."""
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return values
    bits = np.uint16 if dtype.itemsize == 2 else np.uint32
    with np.errstate(over="ignore"):
        rough = values.astype(np.float32).astype(dtype)  # the answer or a neighbour of it
    candidates = [rough] + [(rough.view(bits) + np.array(step).astype(bits)).view(dtype)
                            for step in (-1, 1)]
    best = rough
    with np.errstate(invalid="ignore", over="ignore"):  # (neighbours of inf are NaN: skipped)
        for c in candidates[1:]:
            d_best = np.abs(best.astype(np.float64) - values)
            d_c = np.abs(c.astype(np.float64) - values)
            even = (c.view(bits) & 1) == 0
            better = np.isfinite(c.astype(np.float64)) & ((d_c < d_best) | ((d_c == d_best) & even))
            best = np.where(better, c, best)
    info = finfo(dtype)
    past_range = float(info.max) + float(info.eps) * 2.0 ** (info.maxexp - 2)  # max + half a step
    return np.where(values >= past_range, np.array(np.inf, dtype), best).astype(dtype)


def row_losses_in_double(x, labels, z_loss=0.0):
    """The compiled kernels' per-row losses as doubles (no rounding to the logits' dtype)."""
    view, code = x, -1
    if x.dtype.itemsize == 2:
        view, code = x.view(np.uint16), (2 if x.dtype == np.float16 else 3)
    row_loss = np.empty(len(x))
    row_z = np.empty(len(x)) if z_loss else None
    _core.cross_entropy(0, view, labels, None, -100, 0.0, 0, 1.0, None, None, row_loss, None,
                        code, None, z_loss, 0.0, row_z, None)
    return row_loss


def huge_rows(dtype, rng, n=40, c=6):
    """Rows whose losses reach past the dtype's range, and ordinary ones."""
    top = float(finfo(dtype).max)
    x = rng.standard_normal((n, c)) * 4
    x[: n // 2, 0] = top * rng.uniform(0.2, 1.0, n // 2)
    x[: n // 2, 1] = -top * rng.uniform(0.2, 1.0, n // 2)
    labels = rng.integers(0, c, n)
    labels[: n // 4] = 1  # loss about x0 - x1: past the range for many
    return x.astype(dtype), labels


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("z_loss", [0.0, 1e-4])
def test_rounded_once_from_the_row_doubles(isa, dtype, z_loss, rng):
    x, labels = huge_rows(dtype, rng)
    with using_impl(f"cpp-{isa}"):
        got = fastxent.cross_entropy(x, labels, reduction="none", z_loss=z_loss, backend="cpp")
        want = nearest(row_losses_in_double(x, labels, z_loss), dtype)
    assert got.dtype == np.dtype(dtype)
    assert np.isinf(want.astype(np.float64)).any() and np.isfinite(want.astype(np.float64)).any()
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("z_loss", [0.0, 1e-4])
@pytest.mark.parametrize("shape", [(12000, 6), (3, 20000)], ids=["row-tasks", "split-rows"])
def test_threaded_calls_round_each_row_once(dtype, z_loss, shape, threads, rng):
    """Long calls finish their per-row losses in the tasks that computed them (z-loss added,
    then rounded): the same bits as one pass over the whole call, in forward and fused."""
    n, c = shape
    x, labels = huge_rows(dtype, rng, n=n, c=c)
    labels[n // 3::7] = -100
    fastxent.set_num_threads(1)
    want = nearest(row_losses_in_double(x, labels, z_loss), dtype)
    _, want_grad = fastxent.cross_entropy_with_grad(x, labels, reduction="none", z_loss=z_loss,
                                                    backend="cpp")
    fastxent.set_num_threads(threads)
    forward = fastxent.cross_entropy(x, labels, reduction="none", z_loss=z_loss, backend="cpp")
    fused, grad = fastxent.cross_entropy_with_grad(x, labels, reduction="none", z_loss=z_loss,
                                                   backend="cpp")
    for got in (forward, fused):
        assert got.dtype == np.dtype(dtype) and got.shape == (n,)
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
    if shape[0] > 3:  # (split rows merge per-slice statistics: not the one-thread bits)
        np.testing.assert_array_equal(grad.view(np.uint8), want_grad.view(np.uint8))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_fused_per_row_losses_equal_forward(dtype, rng):
    x = (rng.standard_normal((300, 7)) * 3).astype(dtype)
    labels = rng.integers(0, 7, 300)
    labels[::5] = -100
    forward = fastxent.cross_entropy(x, labels, reduction="none", backend="cpp")
    loss, _ = fastxent.cross_entropy_with_grad(x, labels, reduction="none", backend="cpp")
    np.testing.assert_array_equal(loss.view(np.uint8), forward.view(np.uint8))
    assert np.all(loss[::5].astype(np.float64) == 0.0)


def test_z_loss_term_without_z_loss(backend):  # (conftest's fixture: every backend and ISA)
    """return_z_loss with no z-loss: zeros per row for "none" (the logits' dtype and shape), 0
    for "mean" and "sum", and NaN for "mean" when every row is ignored (0 / 0, as the loss)."""
    x = np.arange(24, dtype=np.float32).reshape(2, 4, 3) / 7
    labels = np.array([[0, 1, 2, -100], [2, 2, 0, 1]])
    loss, z = fastxent.cross_entropy(x, labels, reduction="none", return_z_loss=True,
                                     backend=backend)
    assert z.dtype == np.float32 and z.shape == (2, 4) and np.all(z == 0)
    assert loss.shape == (2, 4) and loss[0, 3] == 0 and np.all(loss.ravel()[:3] > 0)
    _, z = fastxent.cross_entropy(x, labels, return_z_loss=True, backend=backend)
    assert z == 0
    _, z, accuracy = fastxent.cross_entropy(x, np.full((2, 4), -100), return_z_loss=True,
                                            return_accuracy=True, backend=backend)
    assert np.isnan(z) and np.isnan(accuracy)
    _, _, z, accuracy = fastxent.cross_entropy_with_grad(
        x, labels, reduction="sum", return_z_loss=True, return_accuracy=True, backend=backend)
    assert z == 0 and accuracy == pytest.approx(
        np.mean((x.argmax(-1) == labels)[labels != -100]))
