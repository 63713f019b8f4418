"""Thread scaling of the fused float32 kernel (out=): 1 and 2 threads at (4096, 32000), rows
split across threads, and at (2, 1000000), where each row's classes are split. Issue 3 reads
the ratio of the two medians of a group."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent
from bench_support import QUICK, run
from fastxent import bench as fb

SHAPES = [(64, 32000), (2, 100000)] if QUICK else [(4096, 32000), (2, 1000000)]


@pytest.fixture(scope="module", params=SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def case32(request):
    n, c = request.param
    return fb.Case(n, c, np.float32)


@pytest.mark.parametrize("threads", [1, 2])
def test_cpp_out_threads(benchmark, case32, threads):
    benchmark.group = f"threads f32 {case32.name}"
    x, y, out = case32.logits, case32.labels, np.empty_like(case32.logits)
    before = fastxent.get_num_threads()
    fastxent.set_num_threads(threads)
    try:
        loss, grad = run(benchmark, lambda: fastxent.cross_entropy_with_grad(x, y, out=out, backend="cpp"),
                         case=case32)
    finally:
        fastxent.set_num_threads(before)
    benchmark.extra_info["threads"] = threads
    case32.check(f"cpp fused out= {threads} thread(s)", loss, grad)
