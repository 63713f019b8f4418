// Vectorised log for the per-row log(sum of exp) when rows are processed a vector of rows at a
// time. Inputs are sums of exp(z - max), so >= 1 (or NaN). log(x) = e ln2 + log(m), m in [1, 2).
// - float, on ISAs with a 32-entry lane permute (V::has_lut32): log(m) = -log(R_i) + log1p(r),
//   r = m R_i - 1 in [0, 1/32], R_i ~ 1 / (1 + i/32) picked by m's top 5 mantissa bits
//   (tools/fit_log_table.py), log1p by its Taylor series to degree 5: 1.25 ulp, and 12 vector
//   operations without a division (the series below: 3.3 ulp, 20 with a division; 65536 x 3
//   fused, AVX-512, one thread: see the README's figures);
// - float, on ISAs with an 8-entry lane permute for it (V::has_log_lut8: AVX2): likewise from
//   8 entries picked by the top 3 mantissa bits, r in [0, 1/8], log1p to degree 8: 1.2 ulp, and
//   20 operations without a division (65536 x 3 forward, AVX2, two threads: 69-71 -> 62-64 us);
// - double, on ISAs with a 16-entry permute of doubles (V::has_lut16): x = m 2^e with m in
//   [0.75, 1.5), log(m) = -log(R_k) + log1p(r), k = round(16 m) in 12 .. 24 (distinct mod 16),
//   R_k = 16 / k, r = m R_k - 1 in [-1/26, 1/24], log1p by its Taylor series to degree 12
//   (remainder below 2.1e-18 relative): 22 vector operations without a division, instead of 26
//   and one. k = 16 (m within 1/32 of 1) has R = 1 and -log(R) = 0, so log(m) near 1 keeps its
//   relative precision;
// - otherwise log(m) = 2 atanh(u) = 2 (u + u^3/3 + u^5/5 + ...), u = (m - 1) / (m + 1) in
//   [0, 1/3].
// Included inside an ISA namespace, after the vector types and vexp.h (HasLut16).
#pragma once

// Table of fit_log_table.py: R_i, and -log(R_i) of that rounded R_i.
constexpr float kLogTableInv[32] = {0x1p+0f, 0x1.f07c2p-1f, 0x1.e1e1e2p-1f, 0x1.d41d42p-1f, 0x1.c71c72p-1f, 0x1.bacf92p-1f, 0x1.af286cp-1f, 0x1.a41a42p-1f, 0x1.99999ap-1f, 0x1.8f9c18p-1f, 0x1.861862p-1f, 0x1.7d05f4p-1f, 0x1.745d18p-1f, 0x1.6c16c2p-1f, 0x1.642c86p-1f, 0x1.5c9882p-1f, 0x1.555556p-1f, 0x1.4e5e0ap-1f, 0x1.47ae14p-1f, 0x1.414142p-1f, 0x1.3b13b2p-1f, 0x1.3521dp-1f, 0x1.2f684cp-1f, 0x1.29e412p-1f, 0x1.24924ap-1f, 0x1.1f7048p-1f, 0x1.1a7b96p-1f, 0x1.15b1e6p-1f, 0x1.111112p-1f, 0x1.0c9714p-1f, 0x1.08421p-1f, 0x1.041042p-1f};
constexpr float kLogTableNegLog[32] = {0x0p+0f, 0x1.f8299p-6f, 0x1.f0a30ap-5f, 0x1.6f0d28p-4f, 0x1.e27074p-4f, 0x1.29552cp-3f, 0x1.5ff306p-3f, 0x1.9525a8p-3f, 0x1.c8ff7ap-3f, 0x1.fb918cp-3f, 0x1.1675cap-2f, 0x1.2e8e2cp-2f, 0x1.4618bap-2f, 0x1.5d1bdap-2f, 0x1.739d7ep-2f, 0x1.89a33ap-2f, 0x1.9f323cp-2f, 0x1.b44f7ap-2f, 0x1.c8ff7ep-2f, 0x1.dd469ep-2f, 0x1.f128f4p-2f, 0x1.02552ap-1f, 0x1.0be72ep-1f, 0x1.154c3ep-1f, 0x1.1e85f4p-1f, 0x1.2795ep-1f, 0x1.307d74p-1f, 0x1.393e0ep-1f, 0x1.41d8fcp-1f, 0x1.4a4f88p-1f, 0x1.52a2d4p-1f, 0x1.5ad402p-1f};

// Table of fit_log_table.py for double, at k mod 16 (9-11 unused): R_k, and -log(R_k) of that
// rounded R_k.
constexpr double kLogTable16Inv[16] = {
    0x1p+0, 0x1.e1e1e1e1e1e1ep-1, 0x1.c71c71c71c71cp-1, 0x1.af286bca1af28p-1,
    0x1.999999999999ap-1, 0x1.8618618618618p-1, 0x1.745d1745d1746p-1, 0x1.642c8590b2164p-1,
    0x1.5555555555555p-1, 0x1p+0, 0x1p+0, 0x1p+0,
    0x1.5555555555555p+0, 0x1.3b13b13b13b14p+0, 0x1.2492492492492p+0, 0x1.1111111111111p+0};
constexpr double kLogTable16NegLog[16] = {
    0x0p+0, 0x1.f0a30c01162a8p-5, 0x1.e27076e2af2eap-4, 0x1.5ff3070a793d6p-3,
    0x1.c8ff7c79a9a20p-3, 0x1.1675cababa60fp-2, 0x1.4618bc21c5ec2p-2, 0x1.739d7f6bbd007p-2,
    0x1.9f323ecbf984dp-2, 0x0p+0, 0x0p+0, 0x0p+0,
    -0x1.269621134db91p-2, -0x1.a93ed3c8ad9e5p-3, -0x1.1178e8227e47ap-3, -0x1.08598b59e3a06p-4};

// The same for 8 entries (fit_log_table.py): R_i ~ 1 / (1 + i/8) and -log(R_i).
constexpr float kLogTable8Inv[8] = {0x1p+0f, 0x1.c71c72p-1f, 0x1.99999ap-1f, 0x1.745d18p-1f, 0x1.555556p-1f, 0x1.3b13b2p-1f, 0x1.24924ap-1f, 0x1.111112p-1f};
constexpr float kLogTable8NegLog[8] = {0x0p+0f, 0x1.e27074p-4f, 0x1.c8ff7ap-3f, 0x1.4618bap-2f, 0x1.9f323cp-2f, 0x1.f128f4p-2f, 0x1.1e85f4p-1f, 0x1.41d8fcp-1f};

template <class V, class = void>
struct HasLogLut8 {
  static constexpr bool value = false;
};
template <class V>
struct HasLogLut8<V, decltype(void(V::has_log_lut8))> {
  static constexpr bool value = V::has_log_lut8;
};

template <class V, class = void>
struct HasLut32 {
  static constexpr bool value = false;
};
template <class V>
struct HasLut32<V, decltype(void(V::has_lut32))> {
  static constexpr bool value = V::has_lut32;
};

// log1p(r) = r + r^2 q(r), q(r) = sum_{j=2}^{kDegree} (-1)^(j+1) r^(j-2) / j: the Taylor
// series, by Horner's rule, for the small r the tables leave.
template <int kDegree, class V>
FX_ALWAYS_INLINE V log1p_series(V r) {
  using S = typename V::scalar;
  V q = V::set1(S(kDegree % 2 ? 1 : -1) / S(kDegree));
  for (int j = kDegree - 1; j >= 2; --j) q = fmadd(q, r, V::set1(S(j % 2 ? 1 : -1) / S(j)));
  return fmadd(r * r, q, r);
}

template <class V>
FX_ALWAYS_INLINE V vlog(V x) {
  using S = typename V::scalar;
  V mant, expo;
  if constexpr (sizeof(S) == 8 && HasLut16<V>::value) {
    V::split_exponent_centred(x, mant, expo);
    // Adding 1.5 * 2^52 rounds 16 m to the integer k in the low mantissa bits.
    const V t = fmadd(mant, V::set1(16.0), V::set1(6755399441055744.0));
    const V inv_centre = V::lookup16(t, kLogTable16Inv);
    const V neg_log_inv = V::lookup16(t, kLogTable16NegLog);
    const V log1p_r = log1p_series<12>(fmadd(mant, inv_centre, V::set1(-1.0)));
    // NaN stays NaN through the mantissa; inf has mantissa 1 and exponent inf.
    return fmadd(expo, V::set1(0.6931471805599453), neg_log_inv) + log1p_r;
  }
  V::split_exponent(x, mant, expo);
  if constexpr (sizeof(S) == 4 && HasLut32<V>::value) {
    const V inv_center = V::lookup32_by_mantissa(mant, kLogTableInv);
    const V neg_log_inv = V::lookup32_by_mantissa(mant, kLogTableNegLog);
    const V log1p_r = log1p_series<5>(fmadd(mant, inv_center, V::set1(-1.0f)));
    // NaN stays NaN through the mantissa; inf has mantissa 1 and exponent inf.
    return fmadd(expo, V::set1(0.6931471805599453f), neg_log_inv) + log1p_r;
  } else if constexpr (sizeof(S) == 4 && HasLogLut8<V>::value) {
    const V inv_center = V::lookup8_by_mantissa(mant, kLogTable8Inv);
    const V neg_log_inv = V::lookup8_by_mantissa(mant, kLogTable8NegLog);
    const V log1p_r = log1p_series<8>(fmadd(mant, inv_center, V::set1(-1.0f)));  // (degree 7: 1.4 ulp)
    // x - x: NaN where x is NaN or inf, which this bit split (no getexp) would hide.
    return fmadd(expo, V::set1(0.6931471805599453f), neg_log_inv) + log1p_r + (x - x);
  } else {
    // u^2 <= 1/9: 8 odd terms reach float precision, 16 reach double precision.
    constexpr int kTerms = sizeof(S) == 4 ? 8 : 16;
    const V one = V::set1(S(1));
    V u = (mant - one) * (one / (mant + one));
    V u2 = u * u;
    V series = V::set1(S(1.0 / (2 * kTerms - 1)));
    for (int k = kTerms - 2; k >= 0; --k) series = fmadd(series, u2, V::set1(S(1.0 / (2 * k + 1))));
    V log_mant = (u + u) * series;
    // x - x is 0, or NaN when x is NaN or inf: the bit split alone would hide those.
    return fmadd(expo, V::set1(S(0.6931471805599453)), log_mant) + (x - x);
  }
}
