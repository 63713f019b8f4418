"""More than 2^31 logits: a (2, 2^30 + 3) float32 input (8 GiB) is indexed right, so every
offset past 2^31 elements is computed in 64 bits. Marked slow (needs ~9 GiB of memory):
    python -m pytest -m slow tests/test_reliability_large.py
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastxent
from _helpers import num_threads

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif("cpp" not in fastxent.info()["backends"], reason="extension not built"),
]

C = 2**30 + 3
# Row 0 peaks at its label near the end of the row; row 1 (which starts at element 2^30 + 3
# and ends past 2^31) peaks at its last class, and its label is in the first half.
PEAK = 5.0
LABELS = np.array([C - 2, 7])
PEAK_AT = [C - 2, C - 1]


def expected(row):
    total = (C - 1) + math.exp(PEAK)  # every other logit is 0
    lse = math.log(total)
    y, k = LABELS[row], PEAK_AT[row]
    loss = lse - (PEAK if y == k else 0.0)
    p_other, p_peak = 1 / total, math.exp(PEAK) / total
    return loss, lse, p_other, p_peak


def test_two_rows_past_2_to_the_31_elements():
    try:
        x = np.zeros((2, C), np.float32)
    except MemoryError:
        pytest.skip("needs 8 GiB for the logits")
    for row, k in enumerate(PEAK_AT):
        x[row, k] = PEAK
    with num_threads(1):  # the plain row loop
        loss, lse = fastxent.cross_entropy_forward(x, LABELS, reduction="none")
    for row in range(2):
        want_loss, want_lse, _, _ = expected(row)
        assert loss[row] == pytest.approx(want_loss, rel=1e-5)
        assert lse[row] == pytest.approx(want_lse, rel=1e-6)
    with num_threads(2):  # two long rows on two threads: each row split across the pool
        loss2, grad = fastxent.cross_entropy_with_grad(x, LABELS, reduction="sum", inplace=True)
    assert grad is x
    assert loss2 == pytest.approx(float(loss.sum()), rel=1e-5)
    for row in range(2):
        _, _, p_other, p_peak = expected(row)
        g = grad[row]
        y, k = LABELS[row], PEAK_AT[row]
        # Spots at the start, the middle, around 2^31 - 1 overall, and the end of each row.
        for j in [0, 1, C // 2, 2**31 - 1 - row * C if row else 2**30, C - 3]:
            if j not in (y, k):
                assert g[j] == pytest.approx(p_other, rel=1e-4), (row, j)
        assert g[k] == pytest.approx(p_peak - (1.0 if k == y else 0.0), rel=1e-4)
        if y != k:
            assert g[y] == pytest.approx(p_other - 1.0, rel=1e-4)
    # Nothing outside the expected range: the row's gradient sums to 0.
    for row in range(2):
        assert abs(float(np.sum(grad[row], dtype=np.float64))) < 1e-3
