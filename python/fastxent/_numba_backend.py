"""The Numba backend: the C++ kernels' algorithm as @njit(parallel=True) functions.

Per row: the max, then one exp per logit of z - max, summed in the logits' dtype per block of
1024 logits and added in float64 (the label-smoothing sum is taken in float64). With the
gradient wanted the exp values are stored in the gradient row and scaled afterwards; the loss
alone uses the online max/sum recurrence, so the row is read once. Ignored rows are never
read. float64 rows are computed in float64.

Numba has no vector math library (math.exp in a loop is a scalar libm call), so exp is emitted
here as LLVM IR that the loop vectoriser handles: 2^n * p(r), 2^n built by writing the
exponent bits. Small intrinsics keep the loops vectorisable without fastmath: llvm.maxnum for
the row max (the NaN it skips still poisons the sum through exp) and an fadd that carries only
the `reassoc` flag for the running sums (a plain fadd chain cannot be split into vector lanes;
`reassoc` allows exactly that and leaves inf/NaN semantics alone). A last one drops Numba's
reference counting from array views, which would otherwise cost atomic operations per row.

The work is in one kernel function per dtype (every mode, the softmax family too): Numba
compiles each @njit function to machine code on its own and again inside each caller, so
helper functions would multiply the compile time.

Only this module imports Numba; fastxent imports it on first use of backend="numba".
"""

from __future__ import annotations

import functools
import math
import threading

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic
from numpy.lib.stride_tricks import as_strided

from ._checks import Problem, is_half
from ._runtime import get_num_threads

name = "numba"

# Kernel modes: the three cross-entropy calls, then the softmax family (no labels).
_FORWARD, _FUSED, _BACKWARD, _LOGSUMEXP, _SOFTMAX, _LOG_SOFTMAX = range(6)
_OPS = {"logsumexp": _LOGSUMEXP, "softmax": _SOFTMAX, "log_softmax": _LOG_SOFTMAX}
# Block sums in the logits' dtype are added into float64 every this many logits, which keeps a
# 128k-class float32 row accurate to float32 rounding.
_BLOCK = 1024
# Below this many logits a call runs on the calling thread: waking workers costs more.
_MIN_PARALLEL = 1 << 15

_OPTS = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")


# ----------------------------------------------------------------------------------------------
# LLVM intrinsics

# exp for x <= 0: x = n ln2 + r with |r| <= ln2/2, exp(x) = 2^n p(r); the constants are those
# of cpp/vexp.h (tools/fit_exp_poly.py). Below the smallest normal result the answer is 0, so
# exp(-inf) = 0; NaN fails every comparison and comes out as NaN.
_EXP = {
    32: dict(
        lo=-87.33654, hi=88.0, log2e=1.4426950408889634,
        magic=12582912.0,  # 1.5 * 2^23: t = x log2e + magic holds round(x log2e) in its low bits
        magic_bits=0x4B400000, bias=127, mantissa=23,
        ln2=(0.693145751953125, 1.4286068202862268e-06),  # hi has few bits: n * hi is exact
        poly=(0.001384585764014428, 0.008374124211286284, 0.04166796533110868,
              0.16666431823613423, 0.49999994344606147, 1.0000000319309859, 1.0),
    ),
    64: dict(
        lo=-708.3964185322641, hi=709.0, log2e=1.4426950408889634,
        magic=6755399441055744.0,  # 1.5 * 2^52
        magic_bits=0x4338000000000000, bias=1023, mantissa=52,
        ln2=(0.6931471803691238, 1.9082149292705877e-10),
        poly=tuple(1.0 / math.factorial(k) for k in range(12, -1, -1)),  # Taylor, degree 12
    ),
}


def _fmuladd(builder, a, b, c):
    """a * b + c, fused where the CPU has FMA (llvm.fmuladd lets the backend choose)."""
    t = a.type
    fn = builder.module.declare_intrinsic("llvm.fmuladd", [t], ir.FunctionType(t, [t, t, t]))
    return builder.call(fn, [a, b, c])


@intrinsic
def _vexp(typingctx, x):
    """exp(x) for x <= 0 as straight-line IR the loop vectoriser can widen."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, sig, args):
        (v,) = args
        ty = v.type
        k = _EXP[sig.return_type.bitwidth]
        ity = ir.IntType(sig.return_type.bitwidth)

        def c(value):
            return ir.Constant(ty, value)

        lo, hi = c(k["lo"]), c(k["hi"])
        xc = builder.select(builder.fcmp_ordered(">", v, hi), hi, v)
        xc = builder.select(builder.fcmp_ordered("<", xc, lo), lo, xc)
        t = _fmuladd(builder, xc, c(k["log2e"]), c(k["magic"]))
        n = builder.fsub(t, c(k["magic"]))
        r = _fmuladd(builder, n, c(-k["ln2"][0]), xc)
        r = _fmuladd(builder, n, c(-k["ln2"][1]), r)
        p = c(k["poly"][0])
        for coef in k["poly"][1:]:
            p = _fmuladd(builder, p, r, c(coef))
        # 2^n: the exponent field is n + bias, and n is t's low bits minus the magic's (integer
        # ops on the bits: no float-to-int conversion, which would be poison for NaN).
        bits = builder.sub(builder.bitcast(t, ity), ir.Constant(ity, k["magic_bits"] - k["bias"]))
        scale = builder.bitcast(builder.shl(bits, ir.Constant(ity, k["mantissa"])), ty)
        result = builder.fmul(p, scale)
        return builder.select(builder.fcmp_ordered("<", v, lo), c(0.0), result)

    return x(x), codegen


@intrinsic
def _borrow(typingctx, arr):
    """The same array without reference counting (its meminfo set to NULL). Every slice of a
    counted array costs an atomic increment and decrement of one shared counter, and threads
    taking rows of the same array contend for that cache line. The borrowed view is only
    used while the caller's argument keeps the memory alive."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):
        view = context.make_array(sig.args[0])(context, builder, value=args[0])
        view.meminfo = ir.Constant(view.meminfo.type, None)
        view.parent = ir.Constant(view.parent.type, None)
        return view._getvalue()

    return arr(arr), codegen


@intrinsic
def _fmax(typingctx, a, b):
    """max(a, b) ignoring a NaN operand (llvm.maxnum): LLVM vectorises a reduction of it."""
    if not isinstance(a, types.Float) or a != b:
        return None

    def codegen(context, builder, sig, args):
        t = args[0].type
        fn = builder.module.declare_intrinsic("llvm.maxnum", [t], ir.FunctionType(t, [t, t]))
        return builder.call(fn, args)

    return a(a, a), codegen


@intrinsic
def _radd(typingctx, a, b):
    """a + b that may be reassociated: lets a running sum be split into vector lanes."""
    if not isinstance(a, types.Float) or a != b:
        return None

    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1], flags=("reassoc",))

    return a(a, a), codegen


@njit(**_OPTS)
def _smooth_sum(xb, wb, m):
    """sum_j w_j (z_j - m) over a block, in float64 (z - m of float32 logits near the float32
    limit overflows). A loop of its own, after the exp loop over the same (cached) block: in
    one loop the float64 half would halve the vector width of the exp."""
    total = 0.0
    for j in range(xb.shape[0]):
        total = _radd(total, wb[j] * (np.float64(xb[j]) - m))
    return total


# ----------------------------------------------------------------------------------------------
# The kernel: rows [r0, r1). x and g are the flat storage of the (N, C) logits and output
# (gradient or softmax rows) with row strides xs and gs in elements. w (logits' dtype) and w64
# hold the class weights, ones when unweighted; wcum[k] is the weight of blocks 0..k-1 (only
# read with label smoothing). labels of length 0 (the softmax family) mean no labels; grows of
# length 0 means no per-row grad_output. lse is written (forward, fused, logsumexp) or read
# (backward); row_loss is written by the cross-entropy modes.


@njit(**_OPTS)
def _rows(mode, x, xs, n, labels, ignore, w, w64, wcum, wtotal, eps, gscale, grows, lse,
          row_loss, g, gs, r0, r1):
    smooth = eps != 0.0  # with eps = 0 the smoothing sum is never formed: 0 * inf would be NaN
    x, g, w, w64 = _borrow(x), _borrow(g), _borrow(w), _borrow(w64)
    zero = x.dtype.type(0)
    for i in range(r0, r1):
        y = labels[i] if labels.shape[0] > 0 else 0
        if y == ignore:
            if mode != _BACKWARD:
                row_loss[i] = 0.0
                lse[i] = zero
            if mode != _FORWARD:
                gr = g[i * gs:i * gs + n]
                for j in range(n):
                    gr[j] = zero
            continue
        xr = x[i * xs:i * xs + n]
        gr = g[i * gs:i * gs + n]
        wy = w64[y]
        zy = np.float64(xr[y])
        gi = gscale * grows[i] if grows.shape[0] > 0 else gscale
        label_coef = gi * (1.0 - eps) * wy
        smooth_coef = gi * eps / n if smooth else 0.0
        p_coef = label_coef + smooth_coef * wtotal

        if mode == _BACKWARD:
            # One read, one write: exp(z - lse) * coef - smoothing term; no max or sum.
            lse_i = np.float64(lse[i])
            shift = x.dtype.type(lse_i)
            alpha = x.dtype.type(p_coef)
            beta = x.dtype.type(smooth_coef)
            if smooth:
                for j in range(n):
                    gr[j] = _vexp(xr[j] - shift) * alpha - beta * w[j]
            else:  # not reading w saves a stream of loads
                for j in range(n):
                    gr[j] = _vexp(xr[j] - shift) * alpha
            gr[y] = math.exp(zy - lse_i) * p_coef - smooth_coef * wy - label_coef
            continue

        t = 0.0  # sum_j w_j (z_j - m), with smoothing only
        if mode == _FUSED or mode == _SOFTMAX:
            # The max, then exp(z - max) stored in the output row while summing: the row is
            # still in cache for the scaling pass, and exp runs once per logit.
            ms = xr[0]
            for j in range(1, n):
                ms = _fmax(ms, xr[j])  # NaN skipped here, but it makes its exp and the sum NaN
            s = 0.0
            for c0 in range(0, n, _BLOCK):
                # Block views: a loop from 0 lets Numba drop its negative-index wraparound,
                # which otherwise keeps LLVM from vectorising the loads.
                xb, gb, wb = xr[c0:c0 + _BLOCK], gr[c0:c0 + _BLOCK], w64[c0:c0 + _BLOCK]
                bs = zero
                for j in range(xb.shape[0]):
                    e = _vexp(xb[j] - ms)
                    gb[j] = e
                    bs = _radd(bs, e)
                s += np.float64(bs)
                if smooth:
                    t += _smooth_sum(xb, wb, np.float64(ms))
            m = np.float64(ms)
        else:
            # One read: the max per block, the running sums rescaled when it grows. Blocks of
            # -inf before any finite logit are skipped, so -inf - -inf never happens (an all
            # -inf row gives s = 0, lse = -inf); a NaN among them is remembered.
            m = -np.inf
            s = 0.0
            nan = False
            for c0 in range(0, n, _BLOCK):
                xb, wb = xr[c0:c0 + _BLOCK], w64[c0:c0 + _BLOCK]
                bm = xb[0]
                for j in range(1, xb.shape[0]):
                    bm = _fmax(bm, xb[j])
                if bm > m:
                    s *= math.exp(m - bm)
                    if smooth:
                        wsum = wcum[c0 // _BLOCK]
                        if wsum != 0.0:
                            t -= wsum * (bm - m)
                    m = np.float64(bm)
                if m == -np.inf:
                    for j in range(xb.shape[0]):
                        if xb[j] != xb[j]:
                            nan = True
                    continue
                ms = x.dtype.type(m)
                bs = zero
                for j in range(xb.shape[0]):
                    bs = _radd(bs, _vexp(xb[j] - ms))
                s += np.float64(bs)
                if smooth:
                    t += _smooth_sum(xb, wb, m)
            if nan:
                s = np.nan

        log_s = math.log(s)
        lse_i = m + log_s
        if mode == _LOGSUMEXP:
            lse[i] = lse_i
            continue
        if mode == _LOG_SOFTMAX:
            # log p = (z - m) - log s: subtracting the max first keeps huge logits exact.
            ms = x.dtype.type(m)
            ls = x.dtype.type(log_s)
            for j in range(n):
                gr[j] = (xr[j] - ms) - ls
            continue
        if mode != _SOFTMAX:
            # (m - z_y) + log s rather than lse - z_y: exact when |m| dwarfs log s (-1e30 logits).
            loss = (1.0 - eps) * wy * ((m - zy) + log_s)
            if smooth:
                loss += eps / n * (wtotal * log_s - t)
            row_loss[i] = loss
            lse[i] = lse_i
            if mode == _FORWARD:
                continue
        else:
            p_coef = 1.0
        # The stored exp values become p * coef - smoothing term.
        alpha = x.dtype.type(p_coef / s)
        beta = x.dtype.type(smooth_coef)
        if smooth:
            for j in range(n):
                gr[j] = gr[j] * alpha - beta * w[j]
        else:
            for j in range(n):
                gr[j] = gr[j] * alpha
        if mode == _FUSED:
            # p_y * coef - label_coef cancels when p_y is near 1: recompute it in float64 from
            # the logit rather than from the rounded stored exp.
            gr[y] = math.exp((zy - m) - log_s) * p_coef - smooth_coef * wy - label_coef


@njit(parallel=True, **_OPTS)
def _rows_parallel(mode, x, xs, n, labels, ignore, w, w64, wcum, wtotal, eps, gscale, grows,
                   lse, row_loss, g, gs, rows):
    # Borrowed views: the call below would otherwise count references to every array for
    # every row, from every thread, on the same counters.
    x, labels, w, w64, wcum = _borrow(x), _borrow(labels), _borrow(w), _borrow(w64), _borrow(wcum)
    grows, lse, row_loss, g = _borrow(grows), _borrow(lse), _borrow(row_loss), _borrow(g)
    for i in prange(rows):
        r = np.int64(i)  # prange's index is unsigned: another type would compile _rows again
        _rows(mode, x, xs, n, labels, ignore, w, w64, wcum, wtotal, eps, gscale, grows, lse,
              row_loss, g, gs, r, r + 1)


# ----------------------------------------------------------------------------------------------
# Python side: flat views, argument preparation, thread choice, reductions.

_lock = threading.Lock()
_F64 = np.dtype(np.float64)
_INT64 = np.iinfo(np.int64)


def _empty(dtype) -> np.ndarray:
    return np.empty(0, dtype)


@functools.lru_cache(maxsize=16)
def _ones(n: int, dtype: np.dtype) -> np.ndarray:
    """Weights of an unweighted call (shared between calls; the kernel only reads them)."""
    return np.ones(n, dtype)


def _writable(a: np.ndarray) -> np.ndarray:
    # Numba compiles read-only arrays as another type: small inputs are copied instead.
    return a if a.flags.writeable else a.copy()


def _flat(a: np.ndarray):
    """(1-D contiguous view of the rows' storage, row stride in elements), or None when the
    rows are not evenly spaced forward in whole elements (the caller copies)."""
    n, c = a.shape
    if a.flags.c_contiguous:
        return a.reshape(-1), c
    if n == 1:
        return a[0], 0  # one row: its class axis is contiguous (or it has one element)
    rs, item = a.strides[0], a.itemsize
    if rs < 0 or rs % item:
        return None
    rs //= item
    return as_strided(a, shape=((n - 1) * rs + c,), strides=(item,)), rs


def _divide(a: float, b: float) -> float:
    """a / b with IEEE results for b = 0 (0/0 is NaN), and no warning."""
    if b != 0.0:
        return a / b
    if a == 0.0 or a != a:
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


def _launch(rows, classes, *args):
    """Run the kernel on all rows: in parallel when there is enough work."""
    big = rows > 1 and rows * classes >= _MIN_PARALLEL
    threads = min(get_num_threads(), numba.config.NUMBA_NUM_THREADS) if big else 1
    # One parallel launch at a time: Numba's workqueue threading layer aborts the process on
    # concurrent launches from two Python threads; a caller that finds it busy runs serially.
    if threads > 1 and _lock.acquire(blocking=False):
        try:
            numba.set_num_threads(threads)
            # Rows handed out in chunks as threads become free (the default gives each thread
            # one fixed share, so one descheduled thread holds up the whole call).
            old = numba.set_parallel_chunksize(max(1, rows // (threads * 8)))
            try:
                _rows_parallel(*args, rows)
            finally:
                numba.set_parallel_chunksize(old)
        finally:
            _lock.release()
    else:
        _rows(*args, 0, rows)


def _logits_flat(x: np.ndarray):
    flat = _flat(x)
    return flat if flat is not None else _flat(np.ascontiguousarray(x))


class _Call:
    """The kernel's arguments for one cross-entropy call."""

    def __init__(self, problem: Problem):
        self.problem = problem
        logits = problem.logits
        dtype = logits.dtype
        self.rows, self.classes = logits.shape
        self.x, self.xs = _logits_flat(logits)
        self.labels = _writable(np.ascontiguousarray(problem.labels64()))
        ignore = problem.ignore_index
        # An ignore_index outside int64 matches no (checked, int64) label; neither does -1.
        self.ignore = ignore if _INT64.min <= ignore <= _INT64.max else -1
        self.eps = float(problem.smoothing)
        c = self.classes
        if problem.weight is None:
            self.weight = None
            self.w, self.w64 = _ones(c, dtype), _ones(c, _F64)
            self.wtotal = float(c)
        else:
            self.weight = self.w64 = _writable(np.ascontiguousarray(problem.weight, dtype=_F64))
            self.w = self.w64 if dtype == _F64 else self.w64.astype(dtype)
            self.wtotal = float(self.w64.sum())
        if self.eps != 0.0:
            blocks = np.add.reduceat(self.w64, np.arange(0, c, _BLOCK))
            self.wcum = np.concatenate(([0.0], np.cumsum(blocks)))
        else:
            self.wcum = _empty(_F64)
        self._denominator = None

    def denominator(self) -> float:
        """The summed target weight of the rows not ignored (the "mean" divisor)."""
        if self._denominator is None:
            keep = self.labels != self.ignore
            if self.weight is None:
                self._denominator = float(np.count_nonzero(keep))
            else:
                self._denominator = float(self.weight[self.labels[keep]].sum())
        return self._denominator

    def run(self, mode, grad_scalar, grad_rows, lse, grad_out):
        """Run the kernel; returns the per-row losses (float64)."""
        row_loss = np.empty(self.rows)
        if self.rows == 0:
            return row_loss
        gscale = float(grad_scalar)
        if mode != _FORWARD and self.problem.reduction == "mean":
            gscale = _divide(gscale, self.denominator())
        grows = _empty(_F64) if grad_rows is None else _writable(
            np.ascontiguousarray(grad_rows, dtype=_F64))
        target = None
        if grad_out is None:
            g, gs = _empty(self.x.dtype), 0
        else:
            flat = _flat(grad_out)
            # Rows going backwards, or the gradient over the logits (out=logits): write a
            # temporary and copy it over. Over the logits, LLVM's runtime overlap checks would
            # pick the scalar loops (slower, and sums in another order than a separate out=).
            if flat is None or np.may_share_memory(grad_out, self.problem.logits):
                target, grad_out = grad_out, np.empty(grad_out.shape, grad_out.dtype)
                flat = _flat(grad_out)
            g, gs = flat
        _launch(self.rows, self.classes, mode, self.x, self.xs, self.classes, self.labels,
                self.ignore, self.w, self.w64, self.wcum, self.wtotal, self.eps, gscale, grows,
                lse, row_loss, g, gs)
        if target is not None:
            target[...] = grad_out
        return row_loss

    def reduce(self, row_loss):
        reduction = self.problem.reduction
        if reduction == "none":
            return row_loss
        total = float(row_loss.sum())
        if reduction == "sum":
            return total
        return _divide(total, self.denominator())


# float16 / bfloat16 logits: Numba has no 16-bit float arithmetic (and no bfloat16 at all), so
# these kernels run on a float32 copy of the logits and a float32 gradient that is then rounded
# to the 16-bit dtype (the float32 rounding in between can differ from the cpp backend's single
# rounding by one 16-bit ulp in rare ties). lse is float32 either way.


def _upcast(problem: Problem) -> Problem:
    if not is_half(problem.logits.dtype):
        return problem
    return Problem(problem.logits.astype(np.float32), problem.labels, problem.shape,
                   problem.weight, problem.ignore_index, problem.smoothing, problem.reduction,
                   None)


def _float32_out(grad_out):
    """(buffer the kernel writes, the caller's 16-bit buffer to round it into, or None)."""
    if grad_out is None or not is_half(grad_out.dtype):
        return grad_out, None
    return np.empty(grad_out.shape, np.float32), grad_out


def _plain(problem: Problem, want_accuracy=False):
    if problem.soft or problem.z_loss or problem.softcap is not None or want_accuracy:
        raise NotImplementedError("numba backend: probability targets, z_loss, softcap, accuracy")


def forward(problem: Problem, want_accuracy=False):
    """(reduced loss or per-row float64 losses, per-row lse in the logits' dtype, float32 for
    16-bit logits, z-loss term, accuracy)."""
    _plain(problem, want_accuracy)
    call = _Call(_upcast(problem))
    lse = np.empty(call.rows, call.x.dtype)
    return call.reduce(call.run(_FORWARD, 1.0, None, lse, None)), lse, 0.0, None


def fused(problem: Problem, grad_scalar, grad_rows, grad_out: np.ndarray, want_accuracy=False):
    _plain(problem, want_accuracy)
    call = _Call(_upcast(problem))
    lse = np.empty(call.rows, call.x.dtype)
    grad32, target = _float32_out(grad_out)
    loss = call.reduce(call.run(_FUSED, grad_scalar, grad_rows, lse, grad32))
    if target is not None:
        target[...] = grad32
    return loss, 0.0, None


def backward(problem: Problem, lse: np.ndarray, grad_scalar, grad_rows, grad_out: np.ndarray):
    _plain(problem)
    call = _Call(_upcast(problem))
    lse = _writable(np.ascontiguousarray(lse, dtype=call.x.dtype))
    grad32, target = _float32_out(grad_out)
    call.run(_BACKWARD, grad_scalar, grad_rows, lse, grad32)
    if target is not None:
        target[...] = grad32


def rowop(x: np.ndarray, op: str) -> np.ndarray:
    """op on the last axis of a 2-D float array: 'softmax', 'log_softmax' or 'logsumexp'
    (16-bit arrays computed in float32; the caller casts the result back)."""
    if is_half(x.dtype):
        x = x.astype(np.float32)
    rows, classes = x.shape
    mode = _OPS[op]
    dtype = x.dtype
    if mode == _LOGSUMEXP:
        lse = out = np.empty(rows, dtype)
        g = _empty(dtype)
    else:
        out = np.empty((rows, classes), dtype)
        lse, g = _empty(dtype), out.reshape(-1)
    if rows == 0:
        return out
    xf, xs = _logits_flat(x)
    _launch(rows, classes, mode, xf, xs, classes, _empty(np.int64), -1, _ones(classes, dtype),
            _ones(classes, _F64), _empty(_F64), float(classes), 0.0, 1.0, _empty(_F64), lse,
            _empty(_F64), g, classes)
    return out
