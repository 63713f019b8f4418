"""Shapes and timing helpers shared by the benchmark modules (conftest.py holds the fixtures).

A module of its own, not conftest.py, so the test modules can import it by a unique name."""

from __future__ import annotations

import os
import time

import pytest

QUICK = os.environ.get("FASTXENT_BENCH_QUICK", "").strip() not in ("", "0")
CAP_BYTES = 512 * 2**20

GRID = [(n, c) for n in (1, 64, 4096, 65536) for c in (10, 1000, 32000, 128256) if n * c * 4 <= CAP_BYTES]
# (65536, 32) and (16384, 100): class counts past the 16 where the row-per-lane kernel used to end.
MODEL_SHAPES = [(8192, 1000), (4096, 32000), (512, 128256), (32, 262144), (65536, 3), (65536, 32),
                (16384, 100)]
QUICK_SHAPES = [(64, 1000), (4096, 10), (64, 32000)]  # in GRID too: -m quick picks them from a full run
SHAPES = QUICK_SHAPES if QUICK else list(dict.fromkeys(GRID + MODEL_SHAPES))

# torch.compile costs ~30 s of compilation per shape here, so it runs on a few shapes only.
COMPILE_SHAPES = {(8192, 1000), (4096, 32000), (512, 128256), (64, 1000)}
NUMPY_MAX_ELEMS = 1 << 22  # the float64 reference is ~100x slower than the kernels

# Seconds of timed calls per benchmark: the full suite takes 5-10 minutes on 2 noisy cores.
BUDGET = 0.1 if QUICK else 0.4


def group(kind: str, case) -> str:
    return f"{kind} f32 {case.name}"


def run(benchmark, fn, *, case, kind="fused", setup=None, budget=None):
    """Time fn with benchmark.pedantic: rounds and iterations sized so the benchmark takes about
    `budget` seconds, at least 5 rounds (3 when one call takes over a second). Returns fn's last
    result for the caller to check. `kind` sets the bytes behind the GB/s in extra_info."""
    budget = BUDGET if budget is None else budget
    if setup is not None:
        setup()
    t0 = time.perf_counter()
    fn()  # warm-up and calibration, off the clock
    t = max(time.perf_counter() - t0, 1e-7)
    min_rounds = 3 if t > 1.0 else 5
    if setup is None:
        iterations = max(1, int(1e-3 / t))  # batch sub-millisecond calls: timer overhead
        rounds = max(min_rounds, min(1000, int(budget / (t * iterations))))
    else:
        iterations = 1  # pytest-benchmark runs setup once per round
        rounds = max(min_rounds, min(1000, int(budget / t)))
    moved = case.nbytes if kind == "forward" else 2 * case.nbytes
    benchmark.extra_info.update(bytes=moved, shape=list(case.shape), dtype=case.dtype.name)
    return benchmark.pedantic(fn, setup=setup, rounds=rounds, iterations=iterations, warmup_rounds=0)


def shape_param(shape):
    n, c = shape
    marks = [pytest.mark.quick] if shape in QUICK_SHAPES else []
    return pytest.param(shape, id=f"{n}x{c}", marks=marks)
