"""pytest-benchmark suite for fastxent: ``pytest benchmarks --benchmark-only`` from the repo root.

The grid is batch x classes (N in {1, 64, 4096, 65536} x C in {10, 1000, 32000, 128256}, capped at
512 MiB of float32 logits) plus a few model-like shapes. Each shape has two benchmark groups,
"fused f32 NxC" (loss + gradient in one call, with the peers) and "forward/backward f32 NxC"
(the split path), and each group holds a memory copy of the same logits: the roofline.

FASTXENT_BENCH_QUICK=1 (or ``-m quick``) trims the run to a few small shapes.
Every benchmark checks its answer against the NumPy reference, computed once per shape.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastxent
from bench_support import SHAPES, shape_param
from fastxent import bench as fb


def pytest_configure(config):
    config.addinivalue_line("markers", "quick: the few small shapes of FASTXENT_BENCH_QUICK=1")


@pytest.fixture(scope="session", params=[shape_param(s) for s in SHAPES])
def case(request):
    """Logits, labels and the NumPy reference for one shape. Session scope with a parameter makes
    pytest run all benchmarks of a shape together, so each reference is computed once and the
    arrays are freed before the next shape."""
    n, c = request.param
    return fb.Case(n, c, np.float32)


@pytest.fixture
def out(case):
    return np.empty_like(case.logits)


@pytest.fixture(scope="session")
def torch_mod():
    """(torch, F) with torch using fastxent's thread count, restored at the end."""
    pytest.importorskip("torch")
    torch, F = fb.import_torch()  # noqa: N806
    before = torch.get_num_threads()
    torch.set_num_threads(fastxent.get_num_threads())
    yield torch, F
    torch.set_num_threads(before)


def pytest_terminal_summary(terminalreporter, config):
    """A compact per-group table with GB/s and the ratio to the memory copy in the same group,
    which pytest-benchmark's own table cannot show. Uses pytest-benchmark's session object;
    prints nothing if that is not available."""
    session = getattr(config, "_benchmarksession", None)
    benches = getattr(session, "benchmarks", None) or []
    groups = {}
    for b in benches:
        try:
            median = b.stats.median
        except AttributeError:
            continue
        groups.setdefault(b.group, []).append((b.name, median, b.extra_info.get("bytes")))
    if not groups:
        return
    tr = terminalreporter
    tr.write_sep("-", "fastxent: GB/s and time / memory copy of the same logits (median)")
    for name in sorted(groups, key=_group_key):
        rows = sorted(groups[name], key=lambda r: r[1])
        copy = next((m for n, m, _ in rows if "copy" in n), None)
        tr.write_line(name)
        for bname, median, moved in rows:
            gbps = f"{moved / median / 1e9:8.2f}" if moved else "       -"
            ratio = f"{median / copy:7.2f}" if copy else "      -"
            tr.write_line(f"  {bname:<44} {fb.fmt_time(median):>10} {gbps} GB/s {ratio} x copy")


def _group_key(name):
    """Sort groups by kind, then by shape numerically."""
    kind, _, shape = (name or "").rpartition(" ")
    try:
        n, c = (int(v) for v in shape.split("x"))
    except ValueError:
        return (name or "", 0, 0)
    return (kind, c, n)
