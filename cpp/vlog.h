// Vectorised log for the per-row log(sum of exp) when rows are processed a vector of rows at a
// time. Inputs are sums of exp(z - max), so >= 1 (or NaN). log(x) = e ln2 + log(m), m in [1, 2),
// and log(m) = 2 atanh(u) = 2 (u + u^3/3 + u^5/5 + ...), u = (m - 1) / (m + 1) in [0, 1/3].
// Included inside an ISA namespace, after the vector types.
#pragma once

template <class V>
FX_ALWAYS_INLINE V vlog(V x) {
  using S = typename V::scalar;
  // u^2 <= 1/9: 8 odd terms reach float precision, 16 reach double precision.
  constexpr int kTerms = sizeof(S) == 4 ? 8 : 16;
  V mant, expo;
  V::split_exponent(x, mant, expo);
  const V one = V::set1(S(1));
  V u = (mant - one) * (one / (mant + one));
  V u2 = u * u;
  V series = V::set1(S(1.0 / (2 * kTerms - 1)));
  for (int k = kTerms - 2; k >= 0; --k) series = fmadd(series, u2, V::set1(S(1.0 / (2 * k + 1))));
  V log_mant = (u + u) * series;
  // x - x is 0, or NaN when x is NaN or inf: the bit split alone would hide those.
  return fmadd(expo, V::set1(S(0.6931471805599453)), log_mant) + (x - x);
}
