// Vectorised exp for softmax: exp(x) = 2^n * p(r), n = round(x / ln2), r = x - n*ln2.
// Inputs are <= 0 in the kernels (logit minus row max). Below the smallest normal result
// the answer is 0 (so -inf gives 0); NaN gives NaN. Constants: tools/fit_exp_poly.py.
// Included inside an ISA namespace, after the vector types.
#pragma once

template <class V>
// Always inlined: a call per vector passes the vector through memory (seen with double rows).
FX_ALWAYS_INLINE V vexp(V x) {
  using S = typename V::scalar;
  constexpr bool f32 = sizeof(S) == 4;
  const V lo = V::set1(f32 ? S(-87.33654) : S(-708.3964185322641));
  // Inputs are <= 0 (logit minus the row max), so only the low end is clamped. vmax returns
  // its second operand on NaN, so NaN passes through.
  V xc = vmax(lo, x);
  // Adding 1.5 * 2^mantissa_bits rounds x/ln2 to an integer n held in the low mantissa bits
  // of t, where pow2_of_rounded reads it back as an exponent.
  const V magic = V::set1(f32 ? S(12582912.0) : S(6755399441055744.0));
  V t = fmadd(xc, V::set1(S(1.4426950408889634)), magic);
  V n = t - magic;
  V r;
  if constexpr (f32) {
    r = fmadd(n, V::set1(-0.693145751953125f), xc);  // ln2 split so n*hi is exact
    r = fmadd(n, V::set1(-1.4286068202862268e-06f), r);
  } else {
    r = fmadd(n, V::set1(-0.6931471803691238), xc);
    r = fmadd(n, V::set1(-1.9082149292705877e-10), r);
  }
  V p;
  if constexpr (f32) {
    p = V::set1(0.001384585764014428f);
    p = fmadd(p, r, V::set1(0.008374124211286284f));
    p = fmadd(p, r, V::set1(0.04166796533110868f));
    p = fmadd(p, r, V::set1(0.16666431823613423f));
    p = fmadd(p, r, V::set1(0.49999994344606147f));
    p = fmadd(p, r, V::set1(1.0000000319309859f));
    p = fmadd(p, r, V::set1(1.0f));
  } else {
    // Taylor coefficients 1/k!, k = 12 .. 0.
    p = V::set1(2.08767569878681e-09);
    p = fmadd(p, r, V::set1(2.505210838544172e-08));
    p = fmadd(p, r, V::set1(2.755731922398589e-07));
    p = fmadd(p, r, V::set1(2.7557319223985893e-06));
    p = fmadd(p, r, V::set1(2.48015873015873e-05));
    p = fmadd(p, r, V::set1(0.0001984126984126984));
    p = fmadd(p, r, V::set1(0.001388888888888889));
    p = fmadd(p, r, V::set1(0.008333333333333333));
    p = fmadd(p, r, V::set1(0.041666666666666664));
    p = fmadd(p, r, V::set1(0.16666666666666666));
    p = fmadd(p, r, V::set1(0.5));
    p = fmadd(p, r, V::set1(1.0));
    p = fmadd(p, r, V::set1(1.0));
  }
  return zero_below(x, lo, p * V::pow2_of_rounded(t));
}
