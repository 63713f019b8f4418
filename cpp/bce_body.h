// Binary cross-entropy with logits: one elementwise kernel body, compiled per ISA like
// kernel_body.h (included right after it, inside the ISA namespace; reuses its VecFor,
// compute_t, Accum and for_each_vector). 16-bit rows are computed in float and rounded once.
//
// Per element (see bce_problem.h): e = exp(-|x|) (vexp: input <= 0), and with one division
// r = 1 / ((1 + e)(2 + e)):
//   q = s(-|x|) = e / (1 + e) = e (2 + e) r
//   log1p(e) = 2 atanh(u), u = e / (2 + e) = e (1 + e) r in [0, 1/3]: the series of vlog.h
//   without forming 1 + e, so small e keeps its precision.
// The gradient is (1 - t) - lw q for x >= 0 and lw q - pw t for x < 0: both forms avoid
// subtracting from a rounded 1 (sigmoid(40) - 1 would be 0 in float).

template <class V>
inline V bce_log1p_from_u(V u) {
  using S = typename V::scalar;
  constexpr int kTerms = sizeof(S) == 4 ? 8 : 16;  // u^2 <= 1/9
  const V u2 = u * u;
  V series = V::set1(S(1.0 / (2 * kTerms - 1)));
  for (int k = kTerms - 2; k >= 0; --k) series = fmadd(series, u2, V::set1(S(1.0 / (2 * k + 1))));
  return (u + u) * series;
}

// Elements [e0, e1) of one call; e0 is a multiple of a.period. kTotal: sum the losses;
// kStore: write each loss; kGrad: write the gradient; kGe: per-element grad_output.
template <class T, bool kTotal, bool kStore, bool kGrad, bool kGe>
double bce_range_t(const BceArgs& a, int64_t e0, int64_t e1) {
  using S = compute_t<T>;
  const T* x = static_cast<const T*>(a.logits);
  const T* t = static_cast<const T*>(a.targets);
  const S* w = static_cast<const S*>(a.weight);
  const S* pw = static_cast<const S*>(a.pos_weight);
  const S* ge = static_cast<const S*>(a.grad_elems);
  T* loss = static_cast<T*>(a.loss);
  T* grad = static_cast<T*>(a.grad);
  const S scale = S(a.grad_scale);
  double total = 0;
  for (int64_t s = e0; s < e1; s += a.period) {
    const int64_t seg = min64(a.period, e1 - s);
    const S* ws = w + (a.weight_full ? s : 0);
    const S* pws = pw + (a.pos_weight_full ? s : 0);
    // Block sums in S, added in double: a long range stays accurate to S's rounding.
    for (int64_t b0 = 0; b0 < seg; b0 += kBlock) {
      const int64_t len = min64(kBlock, seg - b0);
      const int64_t o = s + b0;
      Accum<S> acc;
      for_each_vector<S>(len, [&](auto v, int64_t j, int k) {
        using V = decltype(v);
        const V zero = V::set1(S(0)), one = V::set1(S(1));
        const V xv = V::load(x + o + j);
        const V tv = V::load(t + o + j);
        const V wv = V::load(ws + b0 + j);
        const V pv = V::load(pws + b0 + j);
        const V e = vexp<V, true>(vmin(xv, zero - xv));  // exp(-|x|); vmin passes a NaN x through
        const V a_coef = pv * tv;               // multiplies max(-x, 0)
        const V b_coef = one - tv;              // multiplies max(x, 0)
        const V lw = fmadd(pv - one, tv, one);
        const V one_e = one + e;
        const V two_e = one_e + one;
        const V r = one / (one_e * two_e);
        if constexpr (kTotal || kStore) {
          const V log1p_e = bce_log1p_from_u(e * one_e * r);
          // vmax(zero, .) returns its second operand for NaN: NaN logits stay NaN.
          V inner = zero_where_zero(a_coef, a_coef * vmax(zero, zero - xv)) +
                    zero_where_zero(b_coef, b_coef * vmax(zero, xv));
          inner = fmadd(lw, log1p_e, inner);
          const V lv = zero_where_zero(wv, wv * inner);
          if constexpr (kTotal) acc.add(lv, k);
          if constexpr (kStore) lv.store(loss + o + j);
        }
        if constexpr (kGrad) {
          const V lq = lw * (e * two_e * r);
          V gv = select_below(xv, zero, lq - a_coef, b_coef - lq) * (wv * V::set1(scale));
          if constexpr (kGe) gv = gv * V::load(ge + o + j);
          gv.store(grad + o + j);
        }
      });
      if constexpr (kTotal) total += double(acc.total());
    }
  }
  return total;
}

template <class T>
double bce_range_dispatch(const BceArgs& a, int64_t e0, int64_t e1) {
  const bool store = a.loss != nullptr, grad = a.grad != nullptr, ge = a.grad_elems != nullptr;
  if (!grad) {
    if (store) return bce_range_t<T, true, true, false, false>(a, e0, e1);
    return bce_range_t<T, true, false, false, false>(a, e0, e1);
  }
  if (!a.want_total && !store) {  // the backward
    if (ge) return bce_range_t<T, false, false, true, true>(a, e0, e1);
    return bce_range_t<T, false, false, true, false>(a, e0, e1);
  }
  if (store) {
    if (ge) return bce_range_t<T, true, true, true, true>(a, e0, e1);
    return bce_range_t<T, true, true, true, false>(a, e0, e1);
  }
  if (ge) return bce_range_t<T, true, false, true, true>(a, e0, e1);
  return bce_range_t<T, true, false, true, false>(a, e0, e1);
}

// As in kernel_body.h: float and double here, float16 / bfloat16 in the ISA's _half file.
#if defined(FASTXENT_KERNELS_HALF)

double bce_range_half(const BceArgs& a, int64_t e0, int64_t e1) {
  double total = 0;
  with_half_type(a.dtype, [&](auto tag) { total = bce_range_dispatch<decltype(tag)>(a, e0, e1); });
  return total;
}

#else

double bce_range_half(const BceArgs& a, int64_t e0, int64_t e1);

double bce_range(const BceArgs& a, int64_t e0, int64_t e1) {
  if (a.dtype == DType::f32) return bce_range_dispatch<float>(a, e0, e1);
  if (a.dtype == DType::f64) return bce_range_dispatch<double>(a, e0, e1);
  return bce_range_half(a, e0, e1);
}

#endif
