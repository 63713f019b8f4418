"""softmax, log_softmax and logsumexp: every backend, every axis of a 3-D array, float32 and
float64, against a plain NumPy float64 computation; -inf, huge values, empty axes."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent
from _helpers import FLOAT_DTYPES, np_rowop

OPS = ["softmax", "log_softmax", "logsumexp"]


def tol(dtype, op):
    if np.dtype(dtype) == np.float32:
        return {"softmax": (1e-5, 1e-30), "log_softmax": (2e-6, 2e-6), "logsumexp": (2e-6, 2e-6)}[op]
    return {"softmax": (1e-12, 1e-300), "log_softmax": (1e-12, 1e-12), "logsumexp": (1e-12, 1e-12)}[op]


def check(x, axis, op, backend, scale=1.0):
    got = getattr(fastxent, op)(x, axis, backend=backend)
    want = np_rowop(x, axis, op)
    assert isinstance(got, np.ndarray)
    assert got.dtype == x.dtype
    assert got.shape == want.shape
    rtol, atol = tol(x.dtype, op)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale, equal_nan=True,
                               err_msg=f"{op} axis={axis}")
    return got


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("axis", [0, 1, -1, 2, -3])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_axes(backend, dtype, axis, op, rng):
    x = (rng.standard_normal((4, 5, 37)) * 4).astype(dtype)
    before = x.copy()
    got = check(x, axis, op, backend, scale=16)
    np.testing.assert_array_equal(x, before)
    if op == "softmax":
        np.testing.assert_allclose(got.sum(axis=axis), 1.0, rtol=1e-5 if dtype == np.float32 else 1e-12)
    # Same as moving the axis last and using the default axis.
    moved = getattr(fastxent, op)(np.moveaxis(x, axis, -1).copy(), backend=backend)
    if op != "logsumexp":
        moved = np.moveaxis(moved, -1, axis)
    np.testing.assert_array_equal(got, moved)


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 1), (2, 1000), (1, 40000), (64, 1000), (4096, 10)])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_shapes(backend, threads, dtype, shape, rng):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    for op in OPS:
        check(x, -1, op, backend, scale=16)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_strided_input(backend, dtype, op, rng):
    big = (rng.standard_normal((12, 50)) * 3).astype(dtype)
    for x in (big[:, :31], big[::3], big[::-1], np.asfortranarray(big), big.T):
        check(x, -1, op, backend, scale=16)
        check(x, 0, op, backend, scale=16)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("c", [6, 3000, 50000])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_minus_inf(backend, dtype, c, op, rng):
    x = (rng.standard_normal((5, c)) * 3).astype(dtype)
    x[0, : c // 2] = -np.inf          # a leading block
    x[1, 1::2] = -np.inf              # every other class
    x[2, :] = -np.inf
    x[2, c - 1] = 0.5                  # all but one
    x[3, :] = -np.inf                 # the whole row: softmax NaN, logsumexp -inf
    got = check(x, -1, op, backend, scale=16)
    if op == "logsumexp":
        assert got[3] == -np.inf
        assert np.isfinite(got[[0, 1, 2, 4]]).all()
    elif op == "softmax":
        assert np.isfinite(got[[0, 1, 2, 4]]).all()
        assert got[2, c - 1] == 1.0
        assert np.all(got[0, : c // 2] == 0)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_huge_values(backend, dtype, op):
    big = float(np.finfo(np.float32).max) / 2
    x = np.array([
        [1e30, 1e30, 0.0, -1e30],
        [big, big, -big, 0.0],
        [-big, -big, -big, -big],
        [1e16, 1e16, 1e16, 0.0],
        [1e30, -1e30, 1.0, 2.0],
    ], dtype)
    got = check(x, -1, op, backend, scale=1.0)
    if op == "softmax":
        np.testing.assert_allclose(got[0], [0.5, 0.5, 0, 0], rtol=1e-6)
        np.testing.assert_allclose(got[2], [0.25] * 4, rtol=1e-6)
        np.testing.assert_allclose(got.sum(axis=-1), 1.0, rtol=1e-6)
    if op == "log_softmax":
        np.testing.assert_allclose(got[0, :2], [-np.log(2)] * 2, rtol=1e-6)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_nan(backend, dtype, op, rng):
    x = rng.standard_normal((3, 9)).astype(dtype)
    x[1, 4] = np.nan
    got = check(x, -1, op, backend, scale=8)
    assert np.isnan(got[1]).all()
    assert np.isfinite(got[[0, 2]]).all()


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_empty(backend, dtype, op):
    """An empty reduction axis: logsumexp is -inf (log of an empty sum), softmax is empty;
    empty leading axes give empty results."""
    for shape, axis in [((3, 0), -1), ((0, 4), 0), ((0, 5), -1), ((2, 0, 3), 1), ((0,), 0)]:
        x = np.zeros(shape, dtype)
        got = getattr(fastxent, op)(x, axis, backend=backend)
        assert got.dtype == dtype
        if op == "logsumexp":
            expected_shape = tuple(s for i, s in enumerate(shape) if i != axis % len(shape))
            assert got.shape == expected_shape
            if shape[axis] == 0:
                assert np.all(got == -np.inf)
        else:
            assert got.shape == shape


@pytest.mark.parametrize("op", OPS)
def test_lists_and_scalars(backend, op):
    got = getattr(fastxent, op)([1.0, 5.0, 6.0], backend=backend)
    want = np_rowop(np.array([1.0, 5.0, 6.0]), -1, op)
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("op", OPS)
def test_against_torch(backend, op, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((3, 4, 50)) * 5
    x[0, 1, :10] = -np.inf
    f = {"softmax": torch.softmax, "log_softmax": torch.log_softmax, "logsumexp": torch.logsumexp}[op]
    for axis in (0, 1, 2):
        want = f(torch.tensor(x), axis).numpy()
        got = getattr(fastxent, op)(x, axis, backend=backend)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
