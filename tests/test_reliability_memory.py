"""Repeated calls of every entry point, successful and failing, keep memory flat and hold no
references to their arguments; nanobind reports no leaked objects at interpreter exit."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastxent

pytestmark = pytest.mark.skipif("cpp" not in fastxent.info()["backends"], reason="extension not built")


def rss_bytes() -> int:
    """Resident memory now (Linux), or the peak so far elsewhere (it grows with a leak too)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def every_entry_point(x, y, lse, out, bad_labels):
    """One round of all public functions, then the same with errors raised at each layer."""
    fastxent.cross_entropy(x, y)
    fastxent.cross_entropy(x, y, reduction="none", label_smoothing=0.1, weight=np.ones(x.shape[1]))
    fastxent.cross_entropy_forward(x, y)
    fastxent.cross_entropy_with_grad(x, y, grad_output=np.ones(x.shape[0]), reduction="none")
    fastxent.cross_entropy_with_grad(x, y, out=out)
    fastxent.cross_entropy_with_grad(x.copy(), y, inplace=True)
    fastxent.cross_entropy_backward(x, y, lse, out=out)
    fastxent.softmax(x)
    fastxent.log_softmax(x, axis=0)
    fastxent.logsumexp(x)
    failing = [
        lambda: fastxent.cross_entropy(x, bad_labels),                # C++ label check
        lambda: fastxent.cross_entropy_with_grad(x, bad_labels, out=out),
        lambda: fastxent.cross_entropy_backward(x, bad_labels, lse),
        lambda: fastxent.cross_entropy(x, y, reduction="bogus"),      # Python checks
        lambda: fastxent.cross_entropy_with_grad(x, y, out=out[:1]),
        lambda: fastxent.softmax(x, axis=5),
    ]
    for call in failing:
        with pytest.raises((ValueError, TypeError)):
            call()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.skipif(os.environ.get("FASTXENT_SANITIZED") == "1",
                    reason="under ASan freed memory stays resident in its quarantine; "
                           "the normal build checks RSS")
def test_repeated_calls_keep_rss_flat(dtype):
    rng = np.random.default_rng(0)
    # 64 000 logits: enough for the threaded paths and the kernels' scratch buffers.
    x = rng.standard_normal((64, 1000)).astype(dtype)
    y = rng.integers(0, 1000, 64)
    bad = y.copy()
    bad[40] = 1000
    lse = fastxent.cross_entropy_forward(x, y)[1]
    out = np.empty_like(x)
    for _ in range(30):  # warm up: allocator pools, thread pool, lazy imports
        every_entry_point(x, y, lse, out, bad)
    gc.collect()
    start = rss_bytes()
    for _ in range(200):
        every_entry_point(x, y, lse, out, bad)
    gc.collect()
    grown = rss_bytes() - start
    # 200 rounds allocate about 0.5 GB in total; a leak of one array per round shows (>= 25 MiB).
    assert grown < 8 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 200 rounds"


def test_calls_hold_no_references_to_arguments():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 20)).astype(np.float32)
    y = rng.integers(0, 20, 8)
    bad = y.copy()
    bad[3] = -7
    lse = fastxent.cross_entropy_forward(x, y)[1]
    out = np.empty_like(x)
    every_entry_point(x, y, lse, out, bad)
    gc.collect()
    before = [sys.getrefcount(a) for a in (x, y, lse, out, bad)]
    for _ in range(50):
        every_entry_point(x, y, lse, out, bad)
    gc.collect()
    assert [sys.getrefcount(a) for a in (x, y, lse, out, bad)] == before


def test_nanobind_reports_no_leaks_at_exit():
    code = textwrap.dedent("""
        import numpy as np, fastxent
        from fastxent import _core
        x = np.random.default_rng(0).standard_normal((5, 7))
        y = np.arange(5)
        for isa in _core.isas():
            _core.set_isa(isa)
            fastxent.cross_entropy_with_grad(x, y)
            fastxent.softmax(x)
        try:
            fastxent.cross_entropy(x, y + 7)
        except ValueError:
            pass
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert "leak" not in done.stderr.lower(), done.stderr
