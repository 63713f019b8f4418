"""float64 logits at the model-like shapes: fused (out= and inplace), forward and backward from
lse, beside a memory copy of the same float64 logits (issue 3's float64 target is read against
that copy). Each benchmark checks its answer against the NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent
from bench_support import QUICK, run
from fastxent import bench as fb

SHAPES = [(64, 1000)] if QUICK else [(8192, 1000), (4096, 32000), (512, 128256), (32, 262144)]


@pytest.fixture(scope="module", params=SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def case64(request):
    n, c = request.param
    return fb.Case(n, c, np.float64)


def _group(case):
    return f"float64 {case.name}"


def test_copy(benchmark, case64):
    benchmark.group = _group(case64)
    out = np.empty_like(case64.logits)
    run(benchmark, lambda: np.copyto(out, case64.logits), case=case64)
    assert np.array_equal(out, case64.logits)


def test_cpp_out(benchmark, case64):
    benchmark.group = _group(case64)
    x, y, out = case64.logits, case64.labels, np.empty_like(case64.logits)
    loss, grad = run(benchmark, lambda: fastxent.cross_entropy_with_grad(x, y, out=out, backend="cpp"),
                     case=case64)
    case64.check("cpp fused out= float64", loss, grad)


def test_cpp_inplace(benchmark, case64):
    benchmark.group = _group(case64)
    x, y, work = case64.logits, case64.labels, np.empty_like(case64.logits)
    loss, grad = run(benchmark, lambda: fastxent.cross_entropy_with_grad(work, y, inplace=True, backend="cpp"),
                     setup=lambda: np.copyto(work, x), case=case64)
    case64.check("cpp fused inplace float64", loss, grad)


def test_cpp_forward(benchmark, case64):
    benchmark.group = _group(case64)
    x, y = case64.logits, case64.labels
    loss = run(benchmark, lambda: fastxent.cross_entropy(x, y, backend="cpp"), case=case64, kind="forward")
    case64.check("cpp forward float64", loss)


def test_cpp_backward_from_lse(benchmark, case64):
    benchmark.group = _group(case64)
    x, y, out = case64.logits, case64.labels, np.empty_like(case64.logits)
    loss, lse = fastxent.cross_entropy_forward(x, y, backend="cpp")
    grad = run(benchmark, lambda: fastxent.cross_entropy_backward(x, y, lse, out=out, backend="cpp"),
               case=case64)
    case64.check("cpp backward float64", loss, grad)
