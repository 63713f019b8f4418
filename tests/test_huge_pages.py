"""Large gradients that the caller (PyTorch, XLA) has just allocated are asked to be backed by
transparent huge pages before the kernels' first writes (Linux madvise; cpp/huge_pages.cpp)."""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import numpy as np
import pytest

import fastxent

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode():
    text = THP.read_text() if THP.exists() else ""
    return text[text.find("[") + 1:text.find("]")] if "[" in text else None


def anon_huge_kib(address):
    """AnonHugePages of the mapping that holds `address`, from /proc/self/smaps."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= address < hi
        elif inside and head == "AnonHugePages:":
            return int(line.split()[1])
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not sys.platform.startswith("linux") or thp_mode() not in ("always", "madvise"),
                    reason="needs Linux with transparent huge pages on (always or madvise)")
@pytest.mark.parametrize("func", ["cross_entropy_with_grad", "bce"])
def test_fresh_gradient_gets_huge_pages(func, rng):
    # Anonymous memory that nobody has advised (NumPy advises its own large arrays itself).
    rows, classes = 512, 16384  # 32 MiB of float32
    pages = mmap.mmap(-1, rows * classes * 4, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    grad = np.frombuffer(pages, dtype=np.float32).reshape(rows, classes)
    x = rng.standard_normal((rows, classes)).astype(np.float32)
    if func == "bce":
        fastxent.binary_cross_entropy_with_logits_with_grad(x, (x > 0).astype(np.float32), out=grad)
    else:
        fastxent.cross_entropy_with_grad(x, rng.integers(0, classes, rows), out=grad)
    middle = grad.ctypes.data + grad.nbytes // 2
    assert anon_huge_kib(middle) > 0
    del grad
    pages.close()
