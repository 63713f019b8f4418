"""cross_entropy_backward with an lse that is not the forward's: the gradient is the reference's
exp(z - lse)-based one as given (no renormalisation of the label's entry), and an exp past the
float range is inf, not a wrapped exponent's garbage or inf / inf = NaN.

Every backend and ISA, small class counts (the lane-per-row kernels), long rows, rows split
across threads, float32 / float64 and the 16-bit types, with weights and label smoothing."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import fastxent

from _helpers import num_threads

# Offsets added to the forward's lse: within rounding (renormalised), off by a little, by a lot
# (exp near the float range), and past it (inf for float32; float64 reaches inf at -720).
OFFSETS = [0.0, -1e-3, 1e-3, -1.0, 2.0, -50.0, -88.5, -89.0, -100.0, -200.0, -720.0, -1000.0]


def judge(got, want, dtype, rtol):
    """Mismatches of got against the reference: close, both NaN, or both of one sign and past
    1/1024 of the dtype's range (inf, or a value that overflowed in one and not the other)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    big = float(np.finfo(dtype).max) / 1024
    huge = (np.abs(got) >= big) & (np.abs(want) >= big) & (np.sign(got) == np.sign(want))
    ok = np.isclose(got, want, rtol=rtol, atol=1e-30) | huge | (np.isnan(got) & np.isnan(want))
    return np.argwhere(~ok)


def quiet(fn, *args, **opts):
    """A reference call without its overflow warnings (exp, and casts of inf to 16 bits)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, backend="numpy", **opts)


def reference_backward(x, y, lse, **opts):
    return quiet(fastxent.cross_entropy_backward, x, y, lse, **opts)


def forward_lse(x, y, offset, **opts):
    """The forward's lse moved by offset (in float64, then rounded to the lse's dtype)."""
    _, lse = quiet(fastxent.cross_entropy_forward, x, y, **opts)
    return (lse.astype(np.float64) + offset).astype(lse.dtype)


def check(backend, x, y, offset, rtol, **opts):
    lse = forward_lse(x, y, offset, **opts)
    want = reference_backward(x, y, lse, **opts)
    got = fastxent.cross_entropy_backward(x, y, lse, backend=backend, **opts)
    assert got.dtype == x.dtype and got.shape == x.shape
    bad = judge(got, want, x.dtype, rtol)
    assert bad.size == 0, (
        f"offset {offset}: {len(bad)} entries differ, first at {tuple(bad[0])}: "
        f"got {got[tuple(bad[0])]!r}, want {want[tuple(bad[0])]!r}")
    return got, want


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("classes", [1, 3, 8, 10, 16, 37, 3000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda t: np.dtype(t).name)
def test_backward_with_given_lse_matches_reference(fast_backend, rng, dtype, classes, offset):
    x = rng.standard_normal((70, classes)).astype(dtype)  # 70: whole vectors of rows and a tail
    y = rng.integers(0, classes, 70)
    y[::9] = -100
    check(fast_backend, x, y, offset, rtol=1e-4 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("offset", [-1.0, -100.0, -1000.0])
@pytest.mark.parametrize("classes", [3, 10, 37])
def test_backward_with_given_lse_options(fast_backend, rng, classes, offset):
    """Weights and label smoothing scale the same p_y: the as-given rule holds with them."""
    x = rng.standard_normal((40, classes)).astype(np.float32)
    y = rng.integers(0, classes, 40)
    weight = rng.uniform(0.5, 2.0, classes)
    check(fast_backend, x, y, offset, rtol=1e-4, weight=weight, label_smoothing=0.1)


def test_overflow_is_inf_not_garbage(fast_backend):
    """The case that found it: an lse 100 below the row's: exp(z - lse) is past float32's range,
    so every entry is +inf (the label's too: ey - 1 = inf), none finite or NaN."""
    x = np.zeros((2, 3), np.float32)
    lse = np.full(2, np.log(3.0) - 100.0, np.float32)
    got = fastxent.cross_entropy_backward(x, np.array([0, 1]), lse, backend=fast_backend)
    assert np.all(got == np.inf), got


@pytest.mark.parametrize("offset", [0.0, -1.0, -100.0])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_backward_with_given_lse_16bit(fast_backend, rng, dtype, offset):
    ml_dtypes = pytest.importorskip("ml_dtypes") if dtype == "bfloat16" else None
    np_dtype = np.dtype(ml_dtypes.bfloat16) if ml_dtypes else np.dtype(np.float16)
    for classes in (3, 10, 300):
        x = rng.standard_normal((24, classes)).astype(np_dtype)
        y = rng.integers(0, classes, 24)
        lse = forward_lse(x, y, offset)
        want = reference_backward(x, y, lse)
        got = fastxent.cross_entropy_backward(x, y, lse, backend=fast_backend)
        # One 16-bit rounding of each entry (and 16-bit overflow to inf past its range).
        bad = judge(got, want, np.float16 if dtype == "float16" else np.float32,
                    rtol=1e-2)
        assert bad.size == 0, (classes, tuple(bad[0]), got[tuple(bad[0])], want[tuple(bad[0])])


@pytest.mark.parametrize("offset", [0.0, -1.0, -100.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=lambda t: np.dtype(t).name)
def test_backward_with_given_lse_split_rows(rng, dtype, offset):
    """Few long rows are split across threads (per-slice sums merged by the driver)."""
    x = rng.standard_normal((2, 200_000)).astype(dtype)
    y = np.array([5, 199_999])
    with num_threads(2):
        lse = forward_lse(x, y, offset)
        want = reference_backward(x, y, lse)
        got = fastxent.cross_entropy_backward(x, y, lse, backend="cpp")
    rtol = {np.float32: 1e-4, np.float64: 1e-10, np.float16: 1e-2}[dtype]
    bad = judge(got, want, np.float32 if dtype == np.float16 else dtype, rtol)
    assert bad.size == 0, (tuple(bad[0]), got[tuple(bad[0])], want[tuple(bad[0])])
