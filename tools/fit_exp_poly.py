"""Fit the polynomials and the table behind the kernels' vectorised exp (cpp/vexp.h).

Two reductions are used:
- polynomial only: exp(x) = 2**n * p(r), n = round(x / ln2), r = x - n*ln2 in [-ln2/2, ln2/2]
  (float on ISAs without a vector table lookup: degree 6; double: Taylor to degree 12);
- table of 8: exp(x) = 2**(k/8) * p(r), k = round(8x / ln2), r = x - k*ln2/8 in [-ln2/16, ln2/16],
  2**(k/8) = 2**(k >> 3) * T[k & 7] (float on ISAs with a lane permute: degree 3);
- table of 16, double (ISAs with a 16-entry permute of doubles): k = round(16x / ln2),
  |r| <= ln2/32, Taylor to degree 7 (remainder r^8/8! < 1.2e-18).
p is fitted to exp on its interval by weighted least squares on Chebyshev nodes (relative
error), with p(0) = 1 pinned, then iterated with Lawson's reweighting so the result is close to
minimax. Run it to regenerate the constants.
"""
import math
import struct
from decimal import Decimal, getcontext

import numpy as np


def fit(degree, half=np.log(2.0) / 2, iters=80):
    k = np.arange(4000)
    r = half * np.cos(np.pi * (k + 0.5) / k.size)
    target = np.expm1(r)          # fit p(r) - 1 = r*q(r) so p(0) == 1 exactly
    basis = np.stack([r ** j for j in range(1, degree + 1)], axis=1)
    weights = np.ones_like(r)
    for _ in range(iters):
        w = weights / np.exp(r)   # relative error
        coef, *_ = np.linalg.lstsq(basis * w[:, None], target * w, rcond=None)
        err = np.abs(basis @ coef - target) / np.exp(r)
        weights *= err / err.max() + 1e-3
        weights /= weights.mean()
    return np.concatenate([[1.0], coef]), err.max()


def float_bits(v):
    return struct.unpack("<I", struct.pack("<f", v))[0]


def split_hi_lo(value, keep_bits=12, double=False):
    """value = hi + lo with hi's low mantissa bits cleared (keep_bits of the 24 of a float or
    the 53 of a double kept), so k * hi is exact for |k| below 2**(mantissa bits - keep_bits).
    A double's value is a Decimal, so that lo is the exact remainder rounded once."""
    if not double:
        hi_bits = float_bits(value) & ~((1 << (24 - keep_bits)) - 1)
        hi = struct.unpack("<f", struct.pack("<I", hi_bits))[0]
        return hi, float(np.float32(value - hi))
    bits = struct.unpack("<Q", struct.pack("<d", float(value)))[0]
    hi = struct.unpack("<d", struct.pack("<Q", bits & ~((1 << (53 - keep_bits)) - 1)))[0]
    return hi, float(value - Decimal(hi))


if __name__ == "__main__":
    # Polynomial only, float: degree 6 (2e-9 relative, far under float32's 6e-8 ulp).
    # float64 kernels use the Taylor series to degree 12: its remainder on the interval is
    # below 2.5e-16, which a least-squares fit in float64 cannot beat (ill-conditioned basis).
    c, e = fit(6)
    print(f"polynomial, degree 6: max rel err {e:.3e}")
    print("  " + ", ".join(repr(float(x)) for x in c))
    # Table of 8, float: degree 3 (2.6e-8 relative; about 1.1 ulp with float rounding).
    c, e = fit(3, half=np.log(2.0) / 16)
    print(f"table of 8, degree 3: max rel err {e:.3e}")
    print("  " + ", ".join(repr(float(np.float32(x))) for x in c))
    print("  8 / ln2 =", repr(8 / np.log(2.0)), " ln2 / 8 = hi + lo:", split_hi_lo(np.log(2.0) / 8))
    table = [float_bits(float(np.float32(2.0 ** (j / 8)))) - (127 << 23) for j in range(8)]
    print("  T (bits of 2^(j/8) less the exponent bias):", ", ".join(f"0x{b:06X}" for b in table))
    # What the kernels add to t << 20, whose bits 20-22 still hold j (cpp/vexp.h).
    shifted = [(b - (j << 20)) % 2**32 for j, b in enumerate(table)]
    print("  T - (j << 20), mod 2^32:", ", ".join(f"0x{b:08X}" for b in shifted))
    # Table of 16, double: exact constants from decimal arithmetic (60 digits).
    getcontext().prec = 60
    ln2 = Decimal(2).ln()
    step = ln2 / 16
    print("table of 16, double: 16 / ln2 =", repr(float(16 / ln2)), " ln2 / 16 = hi + lo:",
          split_hi_lo(step, keep_bits=36, double=True))
    print("  r^8 / 8! at ln2/32:", float((step / 2) ** 8 / math.factorial(8)))
    bits = [struct.unpack("<Q", struct.pack("<d", float(Decimal(2) ** (Decimal(j) / 16))))[0]
            for j in range(16)]
    # T[j] less the exponent bias and less j << 48, mod 2^64 (the kernels add t << 48).
    shifted = [(b - (1023 << 52) - (j << 48)) % 2**64 for j, b in enumerate(bits)]
    print("  T - bias - (j << 48), mod 2^64:", ", ".join(f"0x{b:016X}" for b in shifted))
    print("  clamp: round(16 lo / ln2) = -16 * 1023 at lo =", float(-16 * 1023 * step),
          "; s is inf from k = 16384, x =", float(Decimal(16383.5) * step))
