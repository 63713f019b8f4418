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
    groups, linear = {}, {}
    for b in benches:
        try:
            median = b.stats.median
        except AttributeError:
            continue
        if "linear" in b.extra_info:  # test_bench_linear.py: its own table below
            linear.setdefault(b.group, []).append((b.extra_info, median))
            continue
        groups.setdefault(b.group, []).append((b.name, median, b.extra_info.get("bytes")))
    tr = terminalreporter
    if linear:
        _linear_summary(tr, linear)
    if not groups:
        return
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


def _linear_summary(tr, groups):
    """Per shape of test_bench_linear.py: each method's median time, its ratio to the median of
    the three matmuls on the same BLAS (NumPy's for the NumPy path, PyTorch's for the rest), the
    median of its per-round ratios to a floor run just before each round and that floor's
    median time (paired shapes only), its ratios to the two PyTorch baselines, and its peak
    extra memory."""
    tr.write_sep("-", "fastxent linear cross-entropy: medians, ratios to the same-BLAS floor "
                      "and to PyTorch (same run)")
    for name in sorted(groups, key=lambda g: [int(x) for x in g.split()[-1].split("x")]):
        rows = {info["linear"]: (info, median) for info, median in groups[name]}
        med = {label: m for label, (_, m) in rows.items()}
        tr.write_line(name)
        tr.write_line(f"  {'method':<26} {'median':>9} {'/ floor':>8} {'paired':>7} "
                      f"{'(floor)':>9} {'/ F.lce':>8} {'/ unfused':>9} {'peak MiB':>9}")
        for label, (info, median) in sorted(rows.items(), key=lambda r: r[1][1]):
            floor = "matmuls numpy" if label in ("fastxent", "matmuls numpy") else "matmuls torch"
            cells = []
            for other in (floor, "F.linear_cross_entropy", "matmul + F.cross_entropy"):
                cells.append(f"{median / med[other]:.3f}" if other in med else "-")
            paired = info.get("paired_ratio_median")
            paired = f"{paired:.3f}" if paired is not None else "-"
            pfloor = info.get("paired_floor_median_s")
            pfloor = fb.fmt_time(pfloor) if pfloor is not None else "-"
            tr.write_line(f"  {label:<26} {fb.fmt_time(median):>9} {cells[0]:>8} {paired:>7} "
                          f"{pfloor:>9} {cells[1]:>8} {cells[2]:>9} {info['peak_extra_mib']:>9.0f}")
