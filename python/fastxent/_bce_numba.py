"""Binary cross-entropy with logits on Numba: the formulas of _bce_reference.py, elementwise, in
the logits' dtype (float32 for 16-bit logits, rounded once on output), @njit(parallel=True).

Per element: e = exp(-|x|) with the loop-vectorisable exp of _numba_backend, log1p(e) from the
series 2 atanh(s), s = e / (2 + e) in [0, 1/3] (no 1 + e is rounded, and no libm call stops
the vectoriser), and selects instead of branches. Weights that are the same for every row are
tiled to a period of at least _checks.BCE_PERIOD elements, so the inner loop runs over long contiguous
segments even when the last axis is short.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numba
import numpy as np
from numba import njit, prange
from numba.core.extending import overload

# Numba's thread ceiling, read from the environment at import (not in numba's type stubs).
_NUMBA_MAX_THREADS: int = getattr(numba.config, "NUMBA_NUM_THREADS")

from ._checks import BceProblem, is_half, tiled_weight
from ._numba_backend import _OPTS, _borrow, _lock, _radd, _vexp
from ._runtime import get_num_threads

name = "numba"

_MIN_PARALLEL = 1 << 15
# 1 / (2k + 1), highest first: u^2 <= 1/9, so 8 terms reach float32 and 16 float64 precision.
_SERIES = {
    32: tuple(np.float32(1.0 / (2 * k + 1)) for k in range(7, -1, -1)),
    64: tuple(np.float64(1.0 / (2 * k + 1)) for k in range(15, -1, -1)),
}


def _log1p_unit(e):
    """log1p(e) for e in [0, 1] (NaN passes through)."""


@overload(_log1p_unit, jit_options=cast(Any, dict(_OPTS)))  # (numba types these options narrowly)
def _log1p_unit_impl(e):
    coefs = _SERIES[e.bitwidth]
    two = np.float32(2) if e.bitwidth == 32 else np.float64(2)

    def impl(e):
        s = e / (two + e)
        s2 = s * s
        p = coefs[0]
        for c in coefs[1:]:
            p = p * s2 + c
        return two * s * p

    return impl


@njit(**_OPTS)
def _chunk(x, t, w, w_full, pw, pw_full, ge, ge_full, scale, lo, lo_full, go, go_full, period,
           e0, e1):
    """Elements [e0, e1) (e0 a multiple of period); returns their summed loss (float64).
    Every array is read or written at offset s of segment s when "full", else at 0 (weights
    tiled to the period, or scratch for outputs that are not wanted): the loop body has no
    branch, which is what lets LLVM vectorise it."""
    x, t, w, pw, ge = _borrow(x), _borrow(t), _borrow(w), _borrow(pw), _borrow(ge)
    lo, go = _borrow(lo), _borrow(go)
    zero, one = x.dtype.type(0), x.dtype.type(1)
    sc = x.dtype.type(scale)
    total = 0.0
    for s in range(e0, e1, period):
        m = min(period, e1 - s)
        xs, ts = x[s:s + m], t[s:s + m]
        ws = w[s:s + m] if w_full else w[:m]
        ps = pw[s:s + m] if pw_full else pw[:m]
        gs = ge[s:s + m] if ge_full else ge[:m]
        ls = lo[s:s + m] if lo_full else lo[:m]
        os = go[s:s + m] if go_full else go[:m]
        acc = zero
        for j in range(m):
            xv = xs[j]
            tv = ts[j]
            wv = ws[j]
            pv = ps[j]
            e = _vexp(-abs(xv))
            a = pv * tv            # coefficient of softplus(-x)'s max(-x, 0)
            b = one - tv           # coefficient of softplus(x)'s max(x, 0)
            lw = one + (pv - one) * tv
            ra = max(-xv, zero)
            rb = max(xv, zero)
            inner = (zero if a == zero else a * ra) + (zero if b == zero else b * rb)
            inner = inner + lw * _log1p_unit(e)
            lv = zero if wv == zero else wv * inner
            acc = _radd(acc, lv)
            ls[j] = lv
            q = e / (one + e)
            os[j] = wv * (b - lw * q if xv >= zero else lw * q - a) * sc * gs[j]
        total += np.float64(acc)
    return total


@njit(parallel=True, **_OPTS)
def _chunks(x, t, w, w_full, pw, pw_full, ge, ge_full, scale, lo, lo_full, go, go_full, period,
            chunk, n):
    tasks = (n + chunk - 1) // chunk
    totals = np.empty(tasks)
    for k in prange(tasks):
        e0 = np.int64(k) * chunk
        totals[k] = _chunk(x, t, w, w_full, pw, pw_full, ge, ge_full, scale, lo, lo_full, go,
                           go_full, period, e0, min(e0 + chunk, n))
    return totals


def compute(problem: BceProblem, loss_out, grad_out, grad_scale, grad_elems, want_total=True):
    """As _bce_reference.compute: loss_out / grad_out are flat arrays of the logits' dtype."""
    n = problem.size
    if n == 0:
        return 0.0
    x, t = problem.logits, problem.targets
    wide = is_half(x.dtype)
    if wide:  # Numba has no 16-bit arithmetic: float32 copies, rounded on output
        x, t = x.astype(np.float32), t.astype(np.float32)
    dtype = x.dtype
    period, w, w_full = tiled_weight(problem.weight, problem, dtype)
    _, pw, pw_full = tiled_weight(problem.pos_weight, problem, dtype)
    # Separate scratch arrays: one shared by both outputs would make LLVM pick the scalar loop.
    lo = np.empty(period, dtype) if loss_out is None else (np.empty(n, dtype) if wide else loss_out)
    go = np.empty(period, dtype)
    if grad_out is not None:
        # A separate buffer when the gradient goes over the inputs: LLVM's overlap checks would
        # otherwise pick the scalar loop.
        shared = np.may_share_memory(grad_out, x) or np.may_share_memory(grad_out, t)
        go = np.empty(n, dtype) if (wide or shared) else grad_out
    ge = np.ones(period, dtype) if grad_elems is None else grad_elems.astype(dtype)
    chunk = period * max(1, (1 << 14) // period)
    threads = min(get_num_threads(), _NUMBA_MAX_THREADS)
    args = (x, t, w, w_full, pw, pw_full, ge, grad_elems is not None, float(grad_scale), lo,
            loss_out is not None, go, grad_out is not None, period)
    if threads > 1 and n >= _MIN_PARALLEL and _lock.acquire(blocking=False):
        try:
            numba.set_num_threads(threads)
            totals = list(_chunks(*args, chunk, n))
        finally:
            _lock.release()
    else:
        totals = [_chunk(*args, e0, min(e0 + chunk, n)) for e0 in range(0, n, chunk)]
    total = math.fsum(totals)  # exactly rounded: the same for any thread count
    with np.errstate(over="ignore"):
        if loss_out is not None and lo is not loss_out:
            loss_out[...] = lo
        if grad_out is not None and go is not grad_out:
            grad_out[...] = go
    return total
