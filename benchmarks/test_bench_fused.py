"""Fused loss + gradient in one call, per backend, beside a memory copy of the same logits."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent
from bench_support import NUMPY_MAX_ELEMS, group, run
from fastxent import bench as fb

xent = fastxent.cross_entropy_with_grad


def test_copy(benchmark, case, out):
    """np.copyto of the logits into a preallocated buffer: the memory roofline of the group."""
    benchmark.group = group("fused", case)
    x = case.logits
    run(benchmark, lambda: np.copyto(out, x), case=case)
    assert np.array_equal(out, x)


def test_cpp_out(benchmark, case, out):
    benchmark.group = group("fused", case)
    x, y = case.logits, case.labels
    loss, grad = run(benchmark, lambda: xent(x, y, out=out, backend="cpp"), case=case)
    assert grad is out
    case.check("cpp fused out=", loss, grad)


@pytest.mark.parametrize("inplace", [True, False], ids=["inplace", "out-restored"])
def test_cpp_restored(benchmark, case, out, inplace):
    """Each round restores the logits into a work buffer first (off the clock): inplace=True
    overwrites them, and out= after the same restore is its like-for-like comparison (the
    restore leaves the logits dirty in the calling thread's cache)."""
    benchmark.group = group("fused", case)
    x, y = case.logits, case.labels
    work = np.empty_like(x)
    kwargs = {"inplace": True} if inplace else {"out": out}
    loss, grad = run(
        benchmark, lambda: xent(work, y, backend="cpp", **kwargs),
        setup=lambda: np.copyto(work, x), case=case,
    )
    assert grad is (work if inplace else out)
    case.check("cpp fused inplace" if inplace else "cpp fused out= after restore", loss, grad)


def test_cpp_inplace_chained(benchmark, case):
    """inplace=True on one buffer call after call, no restore: each call's logits are the
    gradient the last one left (finite, the same work), in the caches the threads left them in,
    as test_cpp_out finds its buffers: the like-for-like comparison with out=."""
    benchmark.group = group("fused", case)
    x, y = case.logits, case.labels
    chain = x.copy()
    loss, grad = xent(chain, y, inplace=True, backend="cpp")
    assert grad is chain
    case.check("cpp fused inplace, first call", loss, grad)
    run(benchmark, lambda: xent(chain, y, inplace=True, backend="cpp"), case=case)
    assert np.isfinite(chain).all()


def test_numba_out(benchmark, case, out):
    why = fb.numba_missing()
    if why:
        pytest.skip(why)
    benchmark.group = group("fused", case)
    x, y = case.logits, case.labels
    xent(x, y, out=out, backend="numba")  # JIT compile outside the timing
    loss, grad = run(benchmark, lambda: xent(x, y, out=out, backend="numba"), case=case)
    case.check("numba fused out=", loss, grad)


def test_numpy_reference(benchmark, case, out):
    if case.n * case.c > NUMPY_MAX_ELEMS:
        pytest.skip(f"NumPy reference only up to {NUMPY_MAX_ELEMS} elements (slow)")
    benchmark.group = group("fused", case)
    x, y = case.logits, case.labels
    loss, grad = run(benchmark, lambda: xent(x, y, out=out, backend="numpy"), case=case)
    case.check("numpy fused", loss, grad)
