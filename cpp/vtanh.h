// Vectorised tanh for logit soft-capping: an odd Taylor polynomial near 0, where
// (1 - e) / (1 + e) with e = exp(-2|u|) would lose u's leading bits to cancellation, and that
// quotient elsewhere (vexp's input -2|u| is <= 0, its domain). Coefficients: the Taylor series
// of tanh, 2^2n (2^2n - 1) B_2n / (2n)!; at |u| <= 1/4 each term is 40x smaller than the last.
// Included inside an ISA namespace, after the vector types and vexp.
#pragma once

template <class V>
FX_ALWAYS_INLINE V vtanh(V u) {
  using S = typename V::scalar;
  constexpr bool f32 = sizeof(S) == 4;
  const V zero = V::set1(S(0)), one = V::set1(S(1)), threshold = V::set1(S(0.25));
  const V magnitude = vmax(u, zero - u);
  const V e = vexp<V, true>(magnitude * V::set1(S(-2)));
  const V far = (one - e) / (one + e);
  // far with u's sign: zero_below keeps its operand where the first argument is >= 0 (or NaN).
  const V far_signed = zero_below(u, zero, far) - zero_below(zero - u, zero, far);
  // The polynomial on u clamped to the threshold, so it stays finite where it is not used.
  const V uc = vmin(vmax(u, zero - threshold), threshold);
  const V u2 = uc * uc;
  V p;
  if constexpr (f32) {
    p = V::set1(S(0.003592128036572481));
    p = fmadd(p, u2, V::set1(S(-0.008863235529902197)));
    p = fmadd(p, u2, V::set1(S(0.021869488536155203)));
    p = fmadd(p, u2, V::set1(S(-0.05396825396825397)));
    p = fmadd(p, u2, V::set1(S(0.13333333333333333)));
    p = fmadd(p, u2, V::set1(S(-0.3333333333333333)));
  } else {
    p = V::set1(S(1.5918905069328964e-05));
    p = fmadd(p, u2, V::set1(S(-3.927832388331683e-05)));
    p = fmadd(p, u2, V::set1(S(9.691537956929451e-05)));
    p = fmadd(p, u2, V::set1(S(-0.00023912911424355248)));
    p = fmadd(p, u2, V::set1(S(0.000590027440945586)));
    p = fmadd(p, u2, V::set1(S(-0.0014558343870513183)));
    p = fmadd(p, u2, V::set1(S(0.003592128036572481)));
    p = fmadd(p, u2, V::set1(S(-0.008863235529902197)));
    p = fmadd(p, u2, V::set1(S(0.021869488536155203)));
    p = fmadd(p, u2, V::set1(S(-0.05396825396825397)));
    p = fmadd(p, u2, V::set1(S(0.13333333333333333)));
    p = fmadd(p, u2, V::set1(S(-0.3333333333333333)));
  }
  const V near = fmadd(uc * u2, p, uc);
  // near where |u| < threshold, far_signed elsewhere: each side is zeroed where the other holds
  // (both are finite there, so the zeroed side adds exactly 0).
  const V near_part = near - zero_below(magnitude, threshold, near);
  return zero_below(magnitude, threshold, far_signed) + near_part;
}
