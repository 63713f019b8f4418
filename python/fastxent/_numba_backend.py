"""The Numba backend: the C++ kernels' algorithm as @njit(parallel=True) functions.

Per row: the max, then one exp per logit of z - max, summed in the logits' dtype per block of
1024 logits and added in float64 (the label-smoothing sum is taken in float64). With the
gradient wanted the exp values are stored in the gradient row and scaled afterwards; the loss
alone uses the online max/sum recurrence, so the row is read once. Ignored rows are never
read. float64 rows are computed in float64.

The options follow cpp/kernel_body.h: probability targets make q_j = w_j ((1 - eps) t_j + eps/C)
per row and use it as the smoothing weights (no label term); z-loss adds 2 z_loss lse to the
coefficient of p; soft-capped rows are capped into a scratch row (tanh as vectorisable IR, like
exp) that the row's passes then read, and the gradient is multiplied by 1 - tanh^2 at the end;
accuracy compares the label's logit with the max the row's pass finds anyway.

Numba has no vector math library (math.exp in a loop is a scalar libm call), so exp is emitted
here as LLVM IR that the loop vectoriser handles: 2^n * p(r), 2^n built by writing the
exponent bits. Small intrinsics keep the loops vectorisable without fastmath: llvm.maxnum for
the row max (the NaN it skips still poisons the sum through exp) and an fadd that carries only
the `reassoc` flag for the running sums (a plain fadd chain cannot be split into vector lanes;
`reassoc` allows exactly that and leaves inf/NaN semantics alone). A last one drops Numba's
reference counting from array views, which would otherwise cost atomic operations per row.

The work is in one kernel function per dtype (every mode, the softmax family too): Numba
compiles each @njit function to machine code on its own and again inside each caller, so
helper functions would multiply the compile time. The plain calls with at most 32 classes
take a second one, _few_rows, which runs a batch of rows class by class (columns) so that its
loops, log included, run down the rows as vectors.

Only this module imports Numba; fastxent imports it on first use of backend="numba".
"""

from __future__ import annotations

import functools
import math
import threading
from fractions import Fraction
from typing import Any

import numba
import numpy as np
from llvmlite import ir  # type: ignore[import-untyped]  # (llvmlite ships no stubs)
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

_OPTS: dict[str, Any] = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")


# ----------------------------------------------------------------------------------------------
# LLVM intrinsics

# exp: x = n ln2 + r with |r| <= ln2/2, exp(x) = 2^n p(r); the constants are those of
# cpp/vexp.h (tools/fit_exp_poly.py). Inputs are <= 0 but in backward (z - lse, the caller's
# lse). Below the smallest normal result the answer is 0, so exp(-inf) = 0; x is clamped at hi,
# where n + bias is the all-ones exponent, so 2^n and the result are inf from there (a finite
# exp within a factor 1.4 of the largest float comes out inf: only an lse far below the row's
# max reaches it); NaN fails every comparison and comes out as NaN.
_EXP = {
    32: dict(
        lo=-87.33654, hi=88.5, log2e=1.4426950408889634,
        magic=12582912.0,  # 1.5 * 2^23: t = x log2e + magic holds round(x log2e) in its low bits
        magic_bits=0x4B400000, bias=127, mantissa=23,
        ln2=(0.693145751953125, 1.4286068202862268e-06),  # hi has few bits: n * hi is exact
        poly=(0.001384585764014428, 0.008374124211286284, 0.04166796533110868,
              0.16666431823613423, 0.49999994344606147, 1.0000000319309859, 1.0),
    ),
    64: dict(
        lo=-708.3964185322641, hi=709.8, log2e=1.4426950408889634,
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


def _exp_ir(builder, v, bits):
    """IR for exp(v) (see _EXP)."""
    ty = v.type
    k = _EXP[bits]
    ity = ir.IntType(bits)

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
    bits_ = builder.sub(builder.bitcast(t, ity), ir.Constant(ity, k["magic_bits"] - k["bias"]))
    scale = builder.bitcast(builder.shl(bits_, ir.Constant(ity, k["mantissa"])), ty)
    result = builder.fmul(p, scale)
    return builder.select(builder.fcmp_ordered("<", v, lo), c(0.0), result)


@intrinsic
def _vexp(typingctx, x):
    """exp(x) as straight-line IR the loop vectoriser can widen."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, sig, args):
        return _exp_ir(builder, args[0], sig.return_type.bitwidth)

    return x(x), codegen


def _tanh_taylor(count):
    """The first `count` Taylor coefficients of tanh after u: those of u^3, u^5, ...; the
    coefficient of u^(2k-1) is 2^2k (2^2k - 1) B_2k / (2k)! (B: Bernoulli numbers, exact)."""
    bern = [Fraction(1)]
    for m in range(1, 2 * count + 3):
        bern.append(-sum(math.comb(m + 1, k) * bern[k] for k in range(m)) / (m + 1))
    return [float(4**k * (4**k - 1) * bern[2 * k] / math.factorial(2 * k))
            for k in range(2, count + 2)]


# Below |u| = 1/4 tanh is the odd polynomial: each term is ~40x smaller than the last there, so
# 6 terms reach float32 rounding and 12 float64's. Above it (1 - e) / (1 + e), e = exp(-2|u|),
# loses at most a few ulps to the subtraction (near 0 it would lose all of u's low bits).
_TANH_NEAR = 0.25
_TANH_POLY = {32: _tanh_taylor(6), 64: _tanh_taylor(12)}


# log for float64 sums of exps (>= 1, or NaN): x = 2^e m, m in [sqrt(1/2), sqrt(2)),
# log(m) = 2 atanh(u) = 2 (u + u^3/3 + ...), u = (m - 1) / (m + 1), |u| <= 0.172: 12 odd terms
# reach float64 rounding (u^24 / 25 < 3e-39 relative to u).
_LOG_TERMS = 12


def _log_ir(builder, v):
    """IR for log(v), v a float64 >= 1 or NaN (see _LOG_TERMS)."""
    ty, i64 = v.type, ir.IntType(64)

    def c(value):
        return ir.Constant(ty, value)

    bits = builder.bitcast(v, i64)
    mant = builder.bitcast(builder.or_(builder.and_(bits, ir.Constant(i64, (1 << 52) - 1)),
                                       ir.Constant(i64, 1023 << 52)), ty)
    biased = builder.lshr(bits, ir.Constant(i64, 52))
    expo = builder.sitofp(builder.sub(biased, ir.Constant(i64, 1023)), ty)
    high = builder.fcmp_ordered(">", mant, c(math.sqrt(2.0)))
    mant = builder.select(high, builder.fmul(mant, c(0.5)), mant)
    expo = builder.select(high, builder.fadd(expo, c(1.0)), expo)
    u = builder.fdiv(builder.fsub(mant, c(1.0)), builder.fadd(mant, c(1.0)))
    u2 = builder.fmul(u, u)
    series = c(1.0 / (2 * _LOG_TERMS - 1))
    for k in range(_LOG_TERMS - 2, -1, -1):
        series = _fmuladd(builder, series, u2, c(1.0 / (2 * k + 1)))
    log_m = builder.fmul(builder.fadd(u, u), series)
    # v - v is 0, or NaN when v is NaN or inf: the bit split alone would hide those.
    return builder.fadd(_fmuladd(builder, expo, c(math.log(2.0)), log_m), builder.fsub(v, v))


@intrinsic
def _vlog(typingctx, x):
    """log(x) of a float64 >= 1 as straight-line IR the loop vectoriser can widen."""
    if x != types.float64:
        return None

    def codegen(context, builder, sig, args):
        return _log_ir(builder, args[0])

    return x(x), codegen


def _float_intrinsic(builder, name, args):
    t = args[0].type
    fn = builder.module.declare_intrinsic(name, [t], ir.FunctionType(t, [t] * len(args)))
    return builder.call(fn, args)


@intrinsic
def _vtanh(typingctx, x):
    """tanh(x) as straight-line IR (selects, no branches) the loop vectoriser can widen."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, sig, args):
        (u,) = args
        ty = u.type
        bits = sig.return_type.bitwidth

        def c(value):
            return ir.Constant(ty, value)

        mag = _float_intrinsic(builder, "llvm.fabs", [u])
        e = _exp_ir(builder, builder.fmul(mag, c(-2.0)), bits)
        far = builder.fdiv(builder.fsub(c(1.0), e), builder.fadd(c(1.0), e))
        far = _float_intrinsic(builder, "llvm.copysign", [far, u])  # NaN stays NaN
        near_side = builder.fcmp_ordered("<", mag, c(_TANH_NEAR))
        uc = builder.select(near_side, u, c(0.0))  # keeps the unused polynomial finite
        u2 = builder.fmul(uc, uc)
        coefs = _TANH_POLY[bits]
        p = c(coefs[-1])
        for coef in reversed(coefs[:-1]):
            p = _fmuladd(builder, p, u2, c(coef))
        near = _fmuladd(builder, builder.fmul(uc, u2), p, uc)
        return builder.select(near_side, near, far)

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
    limit overflows); a class of weight 0 counts 0, also at z = -inf (0 * -inf is NaN). A loop
    of its own, after the exp loop over the same (cached) block: in one loop the float64 half
    would halve the vector width of the exp."""
    total = 0.0
    for j in range(xb.shape[0]):
        term = wb[j] * (np.float64(xb[j]) - m)
        total = _radd(total, term if wb[j] != 0.0 else 0.0)
    return total


@njit(**_OPTS)
def _soft_weights(tr, w64, keep, spread, q64, qx, qcum):
    """A probability-target row's q_j = w_j (keep t_j + spread) into q64 (float64) and qx (the
    logits' dtype, for the gradient loop); qcum[k] = the sum of q over blocks 0..k-1. Returns
    sum q. q then plays the part of the smoothing weights (see _rows)."""
    total = 0.0
    qcum[0] = 0.0
    for c0 in range(0, tr.shape[0], _BLOCK):
        tb, wb = tr[c0:c0 + _BLOCK], w64[c0:c0 + _BLOCK]
        qb, qxb = q64[c0:c0 + _BLOCK], qx[c0:c0 + _BLOCK]
        bs = 0.0
        for j in range(tb.shape[0]):
            q = wb[j] * (keep * tb[j] + spread)
            qb[j] = q
            qxb[j] = q
            bs = _radd(bs, q)
        total += bs
        qcum[c0 // _BLOCK + 1] = total
    return total


@njit(**_OPTS)
def _cap_row(xr, z, inv_cap, cap):
    """z = cap * tanh(x / cap), in the compute dtype (never rounded to 16 bits)."""
    for j in range(xr.shape[0]):
        z[j] = _vtanh(xr[j] * inv_cap) * cap


@njit(**_OPTS)
def _cap_grad(gr, z, inv_cap):
    """The gradient with respect to z times d z / d x = 1 - tanh^2 = (1 - t)(1 + t), t = z / cap
    (the factored form keeps its precision where t is near 1)."""
    one = z.dtype.type(1)
    for j in range(gr.shape[0]):
        t = z[j] * inv_cap
        gr[j] = gr[j] * ((one - t) * (one + t))


@njit(**_OPTS)
def _first_argmax_is(xr, y, m):
    """No logit before y equals the row max m (the caller checks z_y == m and no NaN)."""
    hits = 0
    for j in range(y):
        hits += np.int64(xr[j] == m)
    return hits == 0


@njit(**_OPTS)
def _has_nan(xr):
    for j in range(xr.shape[0]):
        if xr[j] != xr[j]:
            return True
    return False


# ----------------------------------------------------------------------------------------------
# The kernel: rows [r0, r1). x and g are the flat storage of the (N, C) logits and output
# (gradient or softmax rows) with row strides xs and gs in elements. w (logits' dtype) and w64
# hold the class weights, ones when unweighted; wcum[k] is the weight of blocks 0..k-1 (only
# read with label smoothing). labels of length 0 (the softmax family, probability targets) mean
# no labels; grows of length 0 means no per-row grad_output. lse is written (forward, fused,
# logsumexp) or read (backward); row_loss is written by the cross-entropy modes.
# Options: tg (flat, row stride ts) holds probability targets, or is empty; z_loss adds
# z_loss * lse^2 per row (row_z, written when not empty) with gradient scale zscale; correct
# (when not empty) gets 1 where the row's first argmax is its label; cap != 0 soft-caps.
#
# Probability targets reuse the smoothing machinery: q_j = w_j ((1 - eps) t_j + eps / C) takes
# the place of the smoothing weights w_j, with factor 1 instead of eps / C and no label term:
# loss = sum q * log s - sum_j q_j (z_j - m), grad_j = g (p_j sum q - q_j).
# Soft-capped rows are capped into a scratch row first; everything then reads that row, and the
# gradient is multiplied by the cap's derivative at the end.


@njit(**_OPTS)
def _rows(mode, x, xs, n, labels, ignore, w, w64, wcum, wtotal, eps, gscale, grows, lse,
          row_loss, g, gs, tg, ts, z_loss, zscale, row_z, correct, cap, r0, r1):
    soft = tg.shape[0] > 0
    capped = cap != 0.0
    # With eps = 0 and class labels the smoothing sum is never formed: 0 * inf would be NaN.
    smooth = eps != 0.0 or soft
    want_z = row_z.shape[0] > 0
    want_correct = correct.shape[0] > 0
    x, g, w, w64, tg = _borrow(x), _borrow(g), _borrow(w), _borrow(w64), _borrow(tg)
    # (Also the arrays that per-row aliases like swcum below would otherwise count.)
    wcum, labels, grows = _borrow(wcum), _borrow(labels), _borrow(grows)
    zero = x.dtype.type(0)
    # Scratch rows for this group of rows (empty when unused; kept reference-counted, since
    # a borrowed view would not keep them alive): the capped logits, a soft row's weights.
    z = np.empty(n if capped else 0, x.dtype)
    q64 = np.empty(n if soft else 0)
    qx = np.empty(n if soft else 0, x.dtype)
    qcum = np.empty((n + _BLOCK - 1) // _BLOCK + 1 if soft else 0)
    capx = x.dtype.type(cap)
    inv_capx = x.dtype.type(1.0 / cap if capped else 0.0)
    for i in range(r0, r1):
        y = labels[i] if labels.shape[0] > 0 else 0
        if y == ignore:
            if mode != _BACKWARD:
                row_loss[i] = 0.0
                lse[i] = zero
                if want_z:
                    row_z[i] = 0.0
                if want_correct:
                    correct[i] = 0
            if mode != _FORWARD:
                gr = g[i * gs:i * gs + n]
                for j in range(n):
                    gr[j] = zero
            continue
        xr = x[i * xs:i * xs + n]
        gr = g[i * gs:i * gs + n]
        if capped:
            _cap_row(xr, z, inv_capx, capx)
            xr = z
        # The smoothing weights: the class weights, or a soft row's q.
        sw, sw64, swcum, swtotal = w, w64, wcum, wtotal
        if soft:
            swtotal = _soft_weights(tg[i * ts:i * ts + n], w64, 1.0 - eps, eps / n, q64, qx, qcum)
            sw, sw64, swcum = qx, q64, qcum
            wy = 0.0
            zy = 0.0
            label_factor = 0.0  # loss = label_factor * nll + smooth_factor * (smoothing sum)
            smooth_factor = 1.0
        else:
            wy = w64[y]
            zy = np.float64(xr[y])
            label_factor = (1.0 - eps) * wy
            smooth_factor = eps / n
        gi = gscale * grows[i] if grows.shape[0] > 0 else gscale
        zgi = zscale * grows[i] if grows.shape[0] > 0 else zscale
        label_coef = gi * label_factor
        smooth_coef = gi * smooth_factor if smooth else 0.0
        p_coef = label_coef + smooth_coef * swtotal

        if mode == _BACKWARD:
            # One read, one write: exp(z - lse) * coef - smoothing term; no max or sum.
            lse_i = np.float64(lse[i])
            if z_loss != 0.0:
                p_coef += zgi * 2.0 * z_loss * lse_i
            shift = x.dtype.type(lse_i)
            alpha = x.dtype.type(p_coef)
            beta = x.dtype.type(smooth_coef)
            if smooth:
                for j in range(n):
                    gr[j] = _vexp(xr[j] - shift) * alpha - beta * sw[j]
            else:  # not reading w saves a stream of loads
                for j in range(n):
                    gr[j] = _vexp(xr[j] - shift) * alpha
            if not soft:
                gr[y] = math.exp(zy - lse_i) * p_coef - smooth_coef * wy - label_coef
            if capped:
                _cap_grad(gr, z, inv_capx)
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
                xb, gb, wb = xr[c0:c0 + _BLOCK], gr[c0:c0 + _BLOCK], sw64[c0:c0 + _BLOCK]
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
                xb, wb = xr[c0:c0 + _BLOCK], sw64[c0:c0 + _BLOCK]
                bm = xb[0]
                for j in range(1, xb.shape[0]):
                    bm = _fmax(bm, xb[j])
                if bm > m:
                    s *= math.exp(m - bm)
                    if smooth:
                        wsum = swcum[c0 // _BLOCK]
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
            loss = 0.0
            if label_factor != 0.0:  # a label of weight 0 counts 0, also at z_y = -inf
                # (m - z_y) + log s rather than lse - z_y: exact when |m| dwarfs log s.
                loss = label_factor * ((m - zy) + log_s)
            if smooth:
                if m == -np.inf:  # an all -inf row: NaN where some class has weight (as cpp)
                    loss += np.nan if swtotal != 0.0 else 0.0
                else:
                    loss += smooth_factor * (swtotal * log_s - t)
            row_loss[i] = loss
            lse[i] = lse_i
            if want_z:
                row_z[i] = z_loss * lse_i * lse_i
            if z_loss != 0.0:
                p_coef += zgi * 2.0 * z_loss * lse_i
            if want_correct:
                # The first argmax is the label: z_y is the max, none equal before, no NaN.
                # (A NaN s without a NaN logit: an all -inf row, or +inf logits.)
                ms = x.dtype.type(m)
                correct[i] = (zy == m and _first_argmax_is(xr, y, ms)
                              and (s == s or not _has_nan(xr)))
            if mode == _FORWARD:
                continue
        else:
            p_coef = 1.0
        # The stored exp values become p * coef - smoothing term.
        alpha = x.dtype.type(p_coef / s)
        beta = x.dtype.type(smooth_coef)
        if smooth:
            for j in range(n):
                gr[j] = gr[j] * alpha - beta * sw[j]
        else:
            for j in range(n):
                gr[j] = gr[j] * alpha
        if mode == _FUSED:
            if not soft:
                # p_y * coef - label_coef cancels when p_y is near 1: recompute it in float64
                # from the logit rather than from the rounded stored exp.
                gr[y] = math.exp((zy - m) - log_s) * p_coef - smooth_coef * wy - label_coef
            if capped:
                _cap_grad(gr, z, inv_capx)


@njit(parallel=True, **_OPTS)
def _rows_parallel(mode, x, xs, n, labels, ignore, w, w64, wcum, wtotal, eps, gscale, grows,
                   lse, row_loss, g, gs, tg, ts, z_loss, zscale, row_z, correct, cap, rows, group):
    # Borrowed views: the call below would otherwise count references to every array for
    # every group, from every thread, on the same counters.
    x, labels, w, w64, wcum = _borrow(x), _borrow(labels), _borrow(w), _borrow(w64), _borrow(wcum)
    grows, lse, row_loss, g = _borrow(grows), _borrow(lse), _borrow(row_loss), _borrow(g)
    tg, row_z, correct = _borrow(tg), _borrow(row_z), _borrow(correct)
    # Groups of rows rather than rows: each call allocates its scratch rows once.
    for k in prange((rows + group - 1) // group):
        r0 = np.int64(k) * group  # prange's index is unsigned: another type would compile _rows again
        _rows(mode, x, xs, n, labels, ignore, w, w64, wcum, wtotal, eps, gscale, grows, lse,
              row_loss, g, gs, tg, ts, z_loss, zscale, row_z, correct, cap, r0,
              min(r0 + group, rows))


# ----------------------------------------------------------------------------------------------
# Rows of few classes, in the plain calls (class labels, no smoothing, z-loss or soft-cap):
# _rows' loops over a row's classes are too short to vectorise there, and its per-row float64
# log and exp (libm calls) cost as much as the rest. Here a batch of rows is copied to columns
# (class j of every row contiguous), so that each step (the max, the exps and their sum, the
# log, the label's float64 exp, the scaling) is a loop down the rows that LLVM widens. Same
# formulas as _rows; the label's gradient entry likewise from float64.
# Up to 32 classes (two threads, fused: 65536 x 17 2.2 -> 1.5 ms, x 32 2.9 -> 2.5 ms); at 64 the
# row path is faster (3.8 against 4.2 ms), and from 100 the batch's columns outgrow L1.
_FEW_CLASSES = 32
_FEW_BATCH = 128


@njit(**_OPTS)
def _few_rows(mode, x, xs, n, labels, ignore, w64, gscale, grows, lse, row_loss, g, gs, correct,
              r0, r1):
    x, g, labels, w64 = _borrow(x), _borrow(g), _borrow(labels), _borrow(w64)
    grows, lse, row_loss = _borrow(grows), _borrow(lse), _borrow(row_loss)
    correct = _borrow(correct)
    B = _FEW_BATCH
    cols = np.empty(n * B, x.dtype)  # class j of the batch's row r at j * B + r
    shift = np.empty(B, x.dtype)     # the row's max (backward: the caller's lse)
    # The sum of its exps, in float64: the max's exp, 1, is among them, and a float32 sum would
    # round each small term against it (a confident row's 1 - p_y is made of those terms).
    total = np.empty(B)
    zy = np.empty(B)                 # the label's logit
    wy = np.empty(B)                 # the label's weight (0 in ignored rows)
    coef = np.empty(B)               # the label's gradient coefficient
    alpha = np.empty(B, x.dtype)     # the exps' gradient factor
    gy = np.empty(B)                 # the label's gradient entry
    kept = np.empty(B, np.bool_)
    first = np.empty(B, np.int64)    # the row's first class equal to its max
    nan = np.empty(B, np.bool_)      # some logit of the row is NaN
    zero = x.dtype.type(0)
    per_row = grows.shape[0] > 0
    want_correct = correct.shape[0] > 0
    for i0 in range(r0, r1, B):
        b = min(B, r1 - i0)
        for r in range(b):
            base = (i0 + r) * xs
            for j in range(n):
                cols[j * B + r] = x[base + j]
        for r in range(b):
            y = labels[i0 + r]
            kept[r] = y != ignore
            yk = y if kept[r] else 0
            zy[r] = np.float64(cols[yk * B + r])
            wy[r] = w64[yk] if kept[r] else 0.0
            coef[r] = (gscale * grows[i0 + r] if per_row else gscale) * wy[r]
        if mode == _BACKWARD:
            for r in range(b):
                shift[r] = lse[i0 + r]
                alpha[r] = x.dtype.type(coef[r])
                gy[r] = _vexp(zy[r] - np.float64(shift[r])) * coef[r] - coef[r]
            for j in range(n):
                for r in range(b):
                    cols[j * B + r] = _vexp(cols[j * B + r] - shift[r]) * alpha[r]
        else:
            for r in range(b):
                shift[r] = cols[r]
                total[r] = 0.0
            for j in range(1, n):
                for r in range(b):
                    shift[r] = _fmax(shift[r], cols[j * B + r])
            if want_correct:
                # Correct: the first argmax is the label and no logit is NaN (as _rows).
                for r in range(b):
                    first[r] = n
                    nan[r] = False
                for j in range(n - 1, -1, -1):
                    for r in range(b):
                        v = cols[j * B + r]
                        first[r] = j if v == shift[r] else first[r]
                        nan[r] = nan[r] or v != v
                for r in range(b):
                    correct[i0 + r] = kept[r] and first[r] == labels[i0 + r] and not nan[r]
            for j in range(n):
                for r in range(b):
                    e = _vexp(cols[j * B + r] - shift[r])
                    cols[j * B + r] = e
                    total[r] = total[r] + np.float64(e)
            for r in range(b):
                m = np.float64(shift[r])
                s = total[r]
                log_s = _vlog(s)
                # (m - z_y) + log s rather than lse - z_y: exact when |m| dwarfs log s. A label
                # of weight 0 counts 0, also at z_y = -inf; an all -inf row has lse -inf.
                loss = wy[r] * ((m - zy[r]) + log_s)
                row_loss[i0 + r] = loss if wy[r] != 0.0 else 0.0
                lse_r = m + log_s if m != -np.inf else m
                lse[i0 + r] = lse_r if kept[r] else zero
                if mode == _FUSED:  # (the gradient's factors: none in a forward)
                    alpha[r] = x.dtype.type(coef[r] / s)
                    # p_y * coef - coef cancels when p_y is near 1: from the logit, in float64.
                    gy[r] = _vexp((zy[r] - m) - log_s) * coef[r] - coef[r]
            if mode == _FORWARD:
                continue
            for j in range(n):
                for r in range(b):
                    cols[j * B + r] = cols[j * B + r] * alpha[r]
        for r in range(b):
            base = (i0 + r) * gs
            if kept[r]:
                for j in range(n):
                    g[base + j] = cols[j * B + r]
                g[base + labels[i0 + r]] = gy[r]
            else:
                for j in range(n):
                    g[base + j] = zero


@njit(parallel=True, **_OPTS)
def _few_rows_parallel(mode, x, xs, n, labels, ignore, w64, gscale, grows, lse, row_loss, g, gs,
                       correct, rows, group):
    x, labels, w64, grows = _borrow(x), _borrow(labels), _borrow(w64), _borrow(grows)
    lse, row_loss, g, correct = _borrow(lse), _borrow(row_loss), _borrow(g), _borrow(correct)
    for k in prange((rows + group - 1) // group):
        r0 = np.int64(k) * group
        _few_rows(mode, x, xs, n, labels, ignore, w64, gscale, grows, lse, row_loss, g, gs,
                  correct, r0, min(r0 + group, rows))


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


def _launch(rows, classes, *args, few=False):
    """Run the kernel (few: _few_rows) on all rows: in parallel when there is enough work."""
    serial, parallel = (_few_rows, _few_rows_parallel) if few else (_rows, _rows_parallel)
    big = rows > 1 and rows * classes >= _MIN_PARALLEL
    threads = min(get_num_threads(), numba.config.NUMBA_NUM_THREADS) if big else 1
    # One parallel launch at a time: Numba's workqueue threading layer aborts the process on
    # concurrent launches from two Python threads; a caller that finds it busy runs serially.
    if threads > 1 and _lock.acquire(blocking=False):
        try:
            numba.set_num_threads(threads)
            # Groups of rows handed out one at a time as threads become free (the default
            # gives each thread one fixed share, so one descheduled thread holds up the call).
            old = numba.set_parallel_chunksize(1)
            try:
                parallel(*args, rows, max(1, rows // (threads * 8)))
            finally:
                numba.set_parallel_chunksize(old)
        finally:
            _lock.release()
    else:
        serial(*args, 0, rows)


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
        if problem.soft:
            self.labels = _empty(np.int64)
            # (N, C) contiguous in the compute dtype (_checks): its flat storage, stride C.
            self.targets = _writable(problem.targets).reshape(-1)
        else:
            self.labels = _writable(np.ascontiguousarray(problem.labels64()))
            self.targets = _empty(dtype)
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
        if self.eps != 0.0 and not problem.soft:
            blocks = np.add.reduceat(self.w64, np.arange(0, c, _BLOCK))
            self.wcum = np.concatenate(([0.0], np.cumsum(blocks)))
        else:
            self.wcum = _empty(_F64)
        self._denominator: float | None = None
        self._kept: int | None = None

    def kept(self) -> int:
        """The number of rows not ignored (the z-loss and accuracy divisor; counted once)."""
        if self._kept is None:
            soft = self.problem.soft
            self._kept = self.rows if soft else int(np.count_nonzero(self.labels != self.ignore))
        return self._kept

    def denominator(self) -> float:
        """The summed target weight of the rows not ignored (the "mean" divisor), or the
        number of rows for probability targets."""
        if self._denominator is None:
            if self.problem.soft or self.weight is None:
                self._denominator = float(self.kept())
            else:
                keep = self.labels != self.ignore
                self._denominator = float(self.weight[self.labels[keep]].sum())
        return self._denominator

    def run(self, mode, grad_scalar, grad_rows, lse, grad_out, want_accuracy=False):
        """Run the kernel; returns the per-row losses, the per-row z-loss terms (or None) and
        the per-row correct flags (or None)."""
        problem = self.problem
        rows = self.rows
        row_loss = np.empty(rows)
        want_z = problem.z_loss != 0.0 and mode != _BACKWARD
        row_z = np.empty(rows) if want_z else _empty(_F64)
        correct = np.empty(rows, np.uint8) if want_accuracy else _empty(np.uint8)
        result = row_loss, (row_z if want_z else None), (correct if want_accuracy else None)
        if rows == 0:
            return result
        gscale = zscale = float(grad_scalar)
        if mode != _FORWARD and problem.reduction == "mean":
            gscale = _divide(gscale, self.denominator())
            zscale = _divide(zscale, float(self.kept()))
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
            if flat is None or np.may_share_memory(grad_out, problem.logits):
                target, grad_out = grad_out, np.empty(grad_out.shape, grad_out.dtype)
                flat = _flat(grad_out)
            g, gs = flat
        if (self.classes <= _FEW_CLASSES and not problem.soft and self.eps == 0.0
                and problem.z_loss == 0.0 and not problem.softcap):
            _launch(rows, self.classes, mode, self.x, self.xs, self.classes, self.labels,
                    self.ignore, self.w64, gscale, grows, lse, row_loss, g, gs, correct, few=True)
        else:
            _launch(rows, self.classes, mode, self.x, self.xs, self.classes, self.labels,
                    self.ignore, self.w, self.w64, self.wcum, self.wtotal, self.eps, gscale,
                    grows, lse, row_loss, g, gs, self.targets, self.classes, problem.z_loss,
                    zscale, row_z, correct, problem.softcap or 0.0)
        if target is not None:
            target[...] = grad_out
        return result

    def reduce(self, row_loss, row_z):
        """(loss, z-loss term), reduced as the call asks: "mean" divides the cross-entropy by
        denominator() and the z-loss by the rows not ignored."""
        reduction = self.problem.reduction
        if reduction == "none":
            if row_z is None:
                return row_loss, None  # (zeros, made by the caller only if asked for)
            return row_loss + row_z, row_z
        total = float(row_loss.sum())
        z_total = 0.0 if row_z is None else float(row_z.sum())
        if reduction == "sum":
            return total + z_total, z_total
        z_mean = _divide(z_total, float(self.kept()))
        return _divide(total, self.denominator()) + z_mean, z_mean

    def accuracy(self, correct):
        if correct is None:
            return None
        return _divide(float(np.count_nonzero(correct)), float(self.kept()))


# float16 / bfloat16 logits: Numba has no 16-bit float arithmetic (and no bfloat16 at all), so
# these kernels run on a float32 copy of the logits and a float32 gradient that is then rounded
# to the 16-bit dtype (the float32 rounding in between can differ from the cpp backend's single
# rounding by one 16-bit ulp in rare ties). lse is float32 either way, and so are soft-capped
# logits (never rounded to 16 bits) and probability targets (_checks gives them in float32).


def _upcast(problem: Problem) -> Problem:
    if not is_half(problem.logits.dtype):
        return problem
    return Problem(problem.logits.astype(np.float32), problem.labels, problem.shape,
                   problem.weight, problem.ignore_index, problem.smoothing, problem.reduction,
                   None, targets=problem.targets, z_loss=problem.z_loss, softcap=problem.softcap)


def _float32_out(grad_out):
    """(buffer the kernel writes, the caller's 16-bit buffer to round it into, or None)."""
    if grad_out is None or not is_half(grad_out.dtype):
        return grad_out, None
    return np.empty(grad_out.shape, np.float32), grad_out


def _check_accuracy(problem: Problem, want_accuracy):
    if want_accuracy and problem.soft:
        raise ValueError("return_accuracy needs class-index labels, not probability targets")


def forward(problem: Problem, want_accuracy=False, want_lse=True):
    """(reduced loss or per-row float64 losses, per-row lse in the logits' dtype, float32 for
    16-bit logits, z-loss term reduced like the loss, accuracy or None). The kernels write lse
    either way: want_lse is for backends that can skip it."""
    _check_accuracy(problem, want_accuracy)
    call = _Call(_upcast(problem))
    lse = np.empty(call.rows, call.x.dtype)
    row_loss, row_z, correct = call.run(_FORWARD, 1.0, None, lse, None, want_accuracy)
    loss, z_term = call.reduce(row_loss, row_z)
    return loss, lse, z_term, call.accuracy(correct)


def fused(problem: Problem, grad_scalar, grad_rows, grad_out: np.ndarray, want_accuracy=False):
    """(loss, z-loss term, accuracy or None), with the gradient written to grad_out."""
    _check_accuracy(problem, want_accuracy)
    call = _Call(_upcast(problem))
    lse = np.empty(call.rows, call.x.dtype)
    grad32, target = _float32_out(grad_out)
    row_loss, row_z, correct = call.run(_FUSED, grad_scalar, grad_rows, lse, grad32,
                                        want_accuracy)
    if target is not None:
        target[...] = grad32
    loss, z_term = call.reduce(row_loss, row_z)
    return loss, z_term, call.accuracy(correct)


def backward(problem: Problem, lse: np.ndarray, grad_scalar, grad_rows, grad_out: np.ndarray):
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
            _empty(_F64), g, classes, _empty(dtype), classes, 0.0, 1.0, _empty(_F64),
            _empty(np.uint8), 0.0)
    return out
