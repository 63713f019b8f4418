// Vectorised exp for softmax. Inputs are <= 0 in the forward kernels (logit minus row max);
// backward's z - lse takes the caller's lse, which may be too small, so large inputs give inf.
// Results below the smallest normal are 0 or tiny (so -inf gives 0); NaN gives NaN. Constants:
// tools/fit_exp_poly.py. Included inside an ISA namespace, after the vector types.
//
// The op count is what the kernels' speed rests on (one exp per logit), so:
// - float, on ISAs with a lane permute (V::has_lut8): exp(x) = 2^(k/8) * p(r), k = round(8x/ln2),
//   2^(k/8) = 2^(k>>3) * T[k&7] from an 8-entry register table, p of degree 3 (1.1 ulp):
//   7 multiply-adds instead of 11;
// - double, on ISAs with a 16-entry permute of doubles (V::has_lut16): exp(x) = 2^(k/16) p(r),
//   2^(k/16) = 2^(k>>4) * T[k&15] from a register table, p of degree 7 (Taylor, remainder below
//   1.2e-18 on |r| <= ln2/32): 12 multiplies and multiply-adds instead of 17 (see the README);
// - otherwise (NEON float, double elsewhere): exp(x) = 2^n * p(r), n = round(x/ln2), p of
//   degree 6 (float, Horner) or 12 (double, Estrin);
// - the exponent bias is folded into the rounding constant, so 2^n is a bare shift;
// - x is clamped below where the biased exponent is 0, so that shift gives 0 without a compare
//   and mask for underflow (and -inf becomes the finite clamp: no inf - inf inside), and
//   (without the table) above where it is all ones, so 2^n is inf there and never carries;
// - without the table, exp(x) = 2^n (1 + r q(r)), the power last (exact: a power of two): an
//   inf power times p(r) > 0 is inf, where 2^n + (r 2^n) q would be inf - inf for r < 0. Where
//   the last step of 2^n overflows, a finite exp within a factor 1.4 of the largest float comes
//   out inf (1.06 with the table, see there); only an lse below the row's max by ~88 (float)
//   or ~709 (double) reaches there.
#pragma once

// Bits of 2^(j/8) in float, less the exponent bias and less j << 20 (mod 2^32): T[j] plus
// ((e + 127) * 8 + j) << 20 is 2^(e + j/8). t << 20 is that sum's second term as it stands (j in
// bits 20-22), so V::exp2_eighths adds it without masking those bits off.
constexpr uint32_t kExp2Eighths[8] = {0x00000000, 0xFFFB95C2, 0xFFF837F0, 0xFFF5FED7,
                                      0xFFF504F3, 0xFFF5672A, 0xFFF744FD, 0xFFFAC0C7};

// Bits of 2^(j/16) in double less the exponent bias and less j << 48 (mod 2^64), as
// kExp2Eighths for float: T[j] plus ((e + 1023) * 16 + j) << 48 is 2^(e + j/16).
constexpr uint64_t kExp2Sixteenths[16] = {
    0x0000000000000000, 0xFFFFB5586CF9890F, 0xFFFF72B83C7D517B, 0xFFFF387A6E756238,
    0xFFFF06FE0A31B715, 0xFFFEDEA64C123422, 0xFFFEBFDAD5362A27, 0xFFFEAB07DD485429,
    0xFFFEA09E667F3BCD, 0xFFFEA11473EB0187, 0xFFFEACE5422AA0DB, 0xFFFEC49182A3F090,
    0xFFFEE89F995AD3AD, 0xFFFF199BDD85529C, 0xFFFF5818DCFBA487, 0xFFFFA4AFA2A490DA};

template <class V, class = void>
struct HasLut16 {
  static constexpr bool value = false;
};
template <class V>
struct HasLut16<V, decltype(void(V::has_lut16))> {
  static constexpr bool value = V::has_lut16;
};

template <class V, class = void>
struct HasLut8 {
  static constexpr bool value = false;
};
template <class V>
struct HasLut8<V, decltype(void(V::has_lut8))> {
  static constexpr bool value = V::has_lut8;
};

// kNonPositive: the caller's x is <= 0 or NaN (a logit less its row's max), so the overflow
// select of the table path is left out (two of its 14 vector operations).
template <class V, bool kNonPositive = false>
// Always inlined: a call per vector passes the vector through memory (seen with double rows).
FX_ALWAYS_INLINE V vexp(V x) {
  using S = typename V::scalar;
  constexpr bool f32 = sizeof(S) == 4;
  if constexpr (f32 && HasLut8<V>::value) {
    // round(8 lo / ln2) + 8 * 127 = 0: 2^(k/8) reads as +0.0 there; lo < -87.34 (subnormal
    // results), so the flush is within the accuracy bound.
    const V xc = vmax(V::set1(-88.0f), x);  // vmax returns its second operand on NaN
    // Adding 1.5 * 2^23 rounds 8x/ln2 to the integer k + 8 * 127 in the low mantissa bits.
    const V magic = V::set1(12582912.0f + 1016.0f);
    const V t = fmadd(xc, V::set1(11.541560327111707f), magic);
    const V scale = V::exp2_eighths(t, kExp2Eighths);
    const V k = t - magic;
    V r = fmadd(k, V::set1(-0.086639404296875f), xc);  // ln2/8 split so k*hi is exact
    r = fmadd(k, V::set1(-3.993272912339307e-06f), r);
    V q = fmadd(V::set1(0.1666608303785324f), r, V::set1(0.5000646114349365f));
    q = fmadd(q, r, V::set1(1.0f));
    // s + (r s) q, not s (1 + r q): s is a rounded table entry, and adding the small term to it
    // keeps the result within 1.5 ulp (1.9 the other way). Above 88.67 (k = 1024 from 88.68,
    // where s is inf, and above that the exponent carries) the answer is inf, chosen by a
    // compare: exp(88.67) is a factor 1.06 below the largest float, so finite results that close
    // to it come out inf.
    const V e = fmadd(r * scale, q, scale);
    if constexpr (kNonPositive) {
      return e;
    } else {
      return vselect(vlt(V::set1(88.67f), x), V::set1(S(FX_INF)), e);
    }
  } else if constexpr (!f32 && HasLut16<V>::value) {
    // round(16 lo / ln2) + 16 * 1023 = 0: 2^(k/16) reads as +0.0 there. Above -708.4 results are
    // normal; between, the biased exponent is 0 and the bits read as a tiny subnormal.
    const V xc = vmax(V::set1(-709.08), x);  // vmax returns its second operand on NaN
    const V magic = V::set1(6755399441055744.0 + 16.0 * 1023.0);
    const V t = fmadd(xc, V::set1(23.083120654223414), magic);
    const V scale = V::exp2_sixteenths(t, kExp2Sixteenths);
    const V k = t - magic;
    V r = fmadd(k, V::set1(-0.04332169878489367), xc);  // ln2/16 split so k*hi is exact
    r = fmadd(k, V::set1(-1.0291218489310676e-13), r);
    // q(r) = (exp(r) - 1) / r to degree 6, as pairs: a chain of 4 multiply-adds.
    const V r2 = r * r;
    const V p01 = fmadd(V::set1(0.5), r, V::set1(1.0));
    const V p23 = fmadd(V::set1(0.041666666666666664), r, V::set1(0.16666666666666666));
    const V p46 = fmadd(fmadd(V::set1(0.0001984126984126984), r, V::set1(0.001388888888888889)), r,
                        V::set1(0.008333333333333333));
    const V q = fmadd(fmadd(p46, r2, p23), r2, p01);
    // s + (r s) q for the rounded table entry s, as for float. From 709.761 (k = 16384) s is inf:
    // the answer is inf by a compare (finite results within a factor 1.02 of the largest double
    // come out inf).
    const V e = fmadd(r * scale, q, scale);
    if constexpr (kNonPositive) {
      return e;
    } else {
      return vselect(vlt(V::set1(709.76), x), V::set1(S(FX_INF)), e);
    }
  } else {
    // round(lo / ln2) = -bias: the biased exponent is 0 and 2^n reads as +0.0. Below -87.3
    // (float) / -708.4 (double) exp is subnormal; flushing it is within the accuracy bound.
    // hi: round(hi / ln2) + bias is the all-ones exponent (2^n = inf), never more.
    const V xc = vmin(V::set1(f32 ? S(88.5) : S(709.8)), vmax(V::set1(f32 ? S(-88.0) : S(-709.0)), x));
    // Adding 1.5 * 2^mantissa_bits rounds x/ln2 to an integer n held in the low mantissa bits
    // of t, with the exponent bias added; pow2_from_biased shifts it into the exponent field.
    const V magic = V::set1(f32 ? S(12582912.0 + 127.0) : S(6755399441055744.0 + 1023.0));
    const V t = fmadd(xc, V::set1(S(1.4426950408889634)), magic);
    const V scale = V::pow2_from_biased(t);
    const V n = t - magic;
    V r;
    if constexpr (f32) {
      r = fmadd(n, V::set1(-0.693145751953125f), xc);  // ln2 split so n*hi is exact
      r = fmadd(n, V::set1(-1.4286068202862268e-06f), r);
    } else {
      r = fmadd(n, V::set1(-0.6931471803691238), xc);
      r = fmadd(n, V::set1(-1.9082149292705877e-10), r);
    }
    V q;
    if constexpr (f32) {
      // Near-minimax (exp(r) - 1) / r on [-ln2/2, ln2/2]: 2.0e-9 relative.
      q = V::set1(0.001384585764014428f);
      q = fmadd(q, r, V::set1(0.008374124211286284f));
      q = fmadd(q, r, V::set1(0.04166796533110868f));
      q = fmadd(q, r, V::set1(0.16666431823613423f));
      q = fmadd(q, r, V::set1(0.49999994344606147f));
      q = fmadd(q, r, V::set1(1.0000000319309859f));
    } else {
      // Taylor coefficients c_k = 1/(k+1)!, k = 0 .. 11: remainder below 2.5e-16 on the
      // interval. Estrin's scheme (pairs, then powers r^2, r^4, r^8): a dependency chain of 4
      // multiply-adds instead of Horner's 11, which kept double rows waiting on latency.
      const V r2 = r * r, r4 = r2 * r2, r8 = r4 * r4;
      const V p01 = fmadd(V::set1(0.5), r, V::set1(1.0));
      const V p23 = fmadd(V::set1(0.041666666666666664), r, V::set1(0.16666666666666666));
      const V p45 = fmadd(V::set1(0.001388888888888889), r, V::set1(0.008333333333333333));
      const V p67 = fmadd(V::set1(2.48015873015873e-05), r, V::set1(0.0001984126984126984));
      const V p89 = fmadd(V::set1(2.755731922398589e-07), r, V::set1(2.7557319223985893e-06));
      const V p1011 = fmadd(V::set1(2.08767569878681e-09), r, V::set1(2.505210838544172e-08));
      const V p03 = fmadd(p23, r2, p01), p47 = fmadd(p67, r2, p45), p811 = fmadd(p1011, r2, p89);
      q = fmadd(p811, r8, fmadd(p47, r4, p03));
    }
    return scale * fmadd(q, r, V::set1(S(1)));
  }
}
