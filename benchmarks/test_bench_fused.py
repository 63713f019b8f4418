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


def test_cpp_inplace(benchmark, case):
    """inplace=True overwrites the logits, so each round restores them first (off the clock)."""
    benchmark.group = group("fused", case)
    x, y = case.logits, case.labels
    work = np.empty_like(x)
    loss, grad = run(
        benchmark, lambda: xent(work, y, inplace=True, backend="cpp"),
        setup=lambda: np.copyto(work, x), case=case,
    )
    assert grad is work
    case.check("cpp fused inplace", loss, grad)


def test_cpp_out_restored(benchmark, case, out):
    """out= after the same untimed restore as test_cpp_inplace: its like-for-like comparison
    (the restore leaves the logits dirty in the calling thread's cache)."""
    benchmark.group = group("fused", case)
    x, y = case.logits, case.labels
    work = np.empty_like(x)
    loss, grad = run(
        benchmark, lambda: xent(work, y, out=out, backend="cpp"),
        setup=lambda: np.copyto(work, x), case=case,
    )
    assert grad is out
    case.check("cpp fused out= after restore", loss, grad)


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
