"""The split path: forward only (loss, no gradient) and the backward from the saved lse."""

from __future__ import annotations

import numpy as np

import fastxent
from bench_support import group, run


def test_copy(benchmark, case, out):
    benchmark.group = group("forward/backward", case)
    x = case.logits
    run(benchmark, lambda: np.copyto(out, x), case=case)
    assert np.array_equal(out, x)


def test_cpp_forward(benchmark, case):
    """Reads the logits once; GB/s counts the logits only."""
    benchmark.group = group("forward/backward", case)
    x, y = case.logits, case.labels
    loss = run(benchmark, lambda: fastxent.cross_entropy(x, y, backend="cpp"), case=case,
               kind="forward")
    case.check("cpp forward", loss)


def test_cpp_backward_from_lse(benchmark, case, out):
    benchmark.group = group("forward/backward", case)
    x, y = case.logits, case.labels
    loss, lse = fastxent.cross_entropy_forward(x, y, backend="cpp")
    grad = run(
        benchmark, lambda: fastxent.cross_entropy_backward(x, y, lse, out=out, backend="cpp"),
        case=case, kind="backward",
    )
    assert grad is out
    case.check("cpp backward from lse", loss, grad)
