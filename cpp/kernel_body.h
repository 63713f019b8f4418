// The one kernel body, compiled once per instruction set. Each isa_*.cpp includes it inside
// its own namespace, after the vector types (VecF, VecD, Vec1) and vexp for that ISA, and
// defines FASTXENT_TABLE_NAME / FASTXENT_ISA_NAME. Only builtins and this namespace's own
// inline functions are used here, so no inline symbol compiled with wide-vector flags can be
// picked by the linker for a narrower ISA.
//
// Rows are stored as T (float, double, or the 16-bit Half / BFloat16) and computed in S =
// compute_t<T> (double for double, float otherwise): vector loads widen T to S, stores round S
// to T. For T = S the loads and stores are plain, so float and double rows run the same code
// as without 16-bit support. lse and weights are in S.
#include <type_traits>

template <class S>
struct VecFor;
template <>
struct VecFor<float> {
  using type = VecF;
};
template <>
struct VecFor<double> {
  using type = VecD;
};

template <class T>
struct ComputeOf {
  using type = float;  // float, Half, BFloat16
};
template <>
struct ComputeOf<double> {
  using type = double;
};
// (A dependent alias: in parameter lists it is not deduced, T is given or deduced from x.)
template <class T>
using compute_t = typename ComputeOf<T>::type;
// 16-bit storage: never holds an intermediate value (that would round twice).
template <class T>
constexpr bool kNarrow = !std::is_same_v<T, compute_t<T>>;

// One element of a row, widened to the compute type.
template <class T>
inline compute_t<T> load1(const T* p) {
  return Vec1<compute_t<T>>::load(p).v;
}

constexpr double kInf = __builtin_inf();
// A row whose logits and gradient fit in L2 together is processed with the exp values kept
// there (one exp per logit); longer rows recompute exp in a second pass instead.
constexpr int64_t kCachedRowBytes = 384 * 1024;
// The online max is taken per block of this many logits; block sums are added in double,
// which keeps a 128k-class row accurate to float32 rounding.
constexpr int64_t kBlock = 1024;
constexpr double kSmoothSumScale = 5.421010862427522e-20;  // 2^-64

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Four independent vector accumulators (latency hiding) plus the scalar tail.
template <class S>
struct Accum {
  using V = typename VecFor<S>::type;
  V lanes[4] = {V::set1(0), V::set1(0), V::set1(0), V::set1(0)};
  S tail = 0;
  template <class VV>
  void add(VV v, int k) {
    if constexpr (std::is_same_v<VV, V>) {
      lanes[k] = lanes[k] + v;
    } else {
      tail += v.v;
    }
  }
  S total() const { return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])).hsum() + tail; }
};

// Calls f(vector, offset, accumulator index) over [0, n): four vectors at a time, then one,
// then scalar for the tail. f is a generic lambda so the same code runs at every width.
template <class S, class F>
inline void for_each_vector(int64_t n, F&& f) {
  using V = typename VecFor<S>::type;
  constexpr int64_t W = V::width;
  int64_t j = 0;
  for (; j + 4 * W <= n; j += 4 * W) {
    f(V{}, j, 0);
    f(V{}, j + W, 1);
    f(V{}, j + 2 * W, 2);
    f(V{}, j + 3 * W, 3);
  }
  for (; j + W <= n; j += W) f(V{}, j, 0);
  for (; j < n; ++j) f(Vec1<S>{}, j, 0);
}

template <class T>
inline compute_t<T> max_of(const T* x, int64_t n) {
  using S = compute_t<T>;
  using V = typename VecFor<S>::type;
  V lanes[4] = {V::set1(-kInf), V::set1(-kInf), V::set1(-kInf), V::set1(-kInf)};
  S tail = -kInf;
  for_each_vector<S>(n, [&](auto v, int64_t j, int k) {
    using VV = decltype(v);
    if constexpr (std::is_same_v<VV, V>) {
      lanes[k] = vmax(lanes[k], V::load(x + j));
    } else {
      const S xj = load1(x + j);
      tail = xj > tail ? xj : tail;
    }
  });
  S m = vmax(vmax(lanes[0], lanes[1]), vmax(lanes[2], lanes[3])).hmax();
  return tail > m ? tail : m;
}

template <class T>
inline bool has_nan(const T* x, int64_t n) {
  for (int64_t j = 0; j < n; ++j)
    if (load1(x + j) != load1(x + j)) return true;
  return false;
}

template <class S>
inline double sum_of(const S* x, int64_t n) {
  double total = 0;
  for (int64_t j = 0; j < n; ++j) total += x[j];
  return total;
}

template <class T>
inline void fill_zero(T* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = T{};  // all bits zero: +0 in every type
}

struct BlockSums {
  double s = 0, t = 0, wsum = 0;
};

// One block: s = sum exp(x - m); with kSmooth also t = sum w (x - m) and wsum = sum w.
// With kStore the exp values are written to out (in S; it may be x itself when T = S).
template <class T, bool kStore, bool kSmooth, bool kWeighted>
inline BlockSums exp_block(const T* x, compute_t<T>* out, int64_t n, compute_t<T> m,
                           const compute_t<T>* w) {
  using S = compute_t<T>;
  using V = typename VecFor<S>::type;
  Accum<S> acc_s, acc_t, acc_w;
  const V vm = V::set1(m);
  for_each_vector<S>(n, [&](auto v, int64_t j, int k) {
    using VV = decltype(v);
    VV shift;
    if constexpr (std::is_same_v<VV, V>) {
      shift = vm;
    } else {
      shift = VV::set1(m);
    }
    VV shifted = VV::load(x + j) - shift;
    VV e = vexp(shifted);
    if constexpr (kStore) e.store(out + j);
    acc_s.add(e, k);
    if constexpr (kSmooth) {
      // Scaled by 2^-64 so that float sums of logit-sized terms near FLT_MAX do not overflow.
      const VV scaled = shifted * VV::set1(S(kSmoothSumScale));
      if constexpr (kWeighted) {
        VV wj = VV::load(w + j);
        acc_t.add(wj * scaled, k);
        acc_w.add(wj, k);
      } else {
        acc_t.add(scaled, k);
      }
    }
  });
  BlockSums r;
  r.s = acc_s.total();
  if constexpr (kSmooth) {
    r.t = double(acc_t.total()) / kSmoothSumScale;
    r.wsum = kWeighted ? double(acc_w.total()) : double(n);
  }
  return r;
}

// out_j = in_j * alpha - beta * w_j (beta * 1 when unweighted), rounded to T; in may be out.
template <class T, bool kSmooth, bool kWeighted>
inline void scale_row(const compute_t<T>* in, T* out, int64_t n, compute_t<T> alpha,
                      compute_t<T> beta, const compute_t<T>* w) {
  using S = compute_t<T>;
  for_each_vector<S>(n, [&](auto v, int64_t j, int) {
    using VV = decltype(v);
    VV r = VV::load(in + j) * VV::set1(alpha);
    if constexpr (kSmooth) {
      VV b = kWeighted ? VV::load(w + j) * VV::set1(beta) : VV::set1(beta);
      r = r - b;
    }
    r.store(out + j);
  });
}

// Max, sum of exp and smoothing sums of a row (or slice) in one read: the max is updated per
// block and the running sums are rescaled when it grows. A block of -inf before any finite
// value is skipped, so -inf - -inf never happens. With kStore the exp values go to out,
// each block relative to the running max at that block, recorded in block_shift[block].
// 16-bit rows with a label (skip >= 0, its index in x) keep its exp apart: st.rest + st.ey.
template <class T, bool kStore, bool kSmooth, bool kWeighted>
inline RowStats online_stats(const T* x, int64_t n, const compute_t<T>* w,
                             compute_t<T>* out = nullptr, double* block_shift = nullptr,
                             int64_t skip = -1) {
  using S = compute_t<T>;
  RowStats st{-kInf, 0.0, 0.0, 0.0, false};
  for (int64_t c0 = 0, k = 0; c0 < n; c0 += kBlock, ++k) {
    const int64_t len = min64(kBlock, n - c0);
    const T* xb = x + c0;
    const S* wb = kWeighted ? w + c0 : nullptr;
    const double bm = max_of(xb, len);
    if (bm > st.m) {
      if (st.s != 0) {
        const double rescale = __builtin_exp(st.m - bm);
        st.s *= rescale;
        if constexpr (kNarrow<T>) {
          st.rest *= rescale;
          st.ey *= rescale;
        }
      }
      if (kSmooth && st.wsum > 0) st.t -= st.wsum * (bm - st.m);
      st.m = bm;
    }
    if constexpr (kStore) block_shift[k] = st.m;
    if (st.m == -kInf) {
      st.nan = st.nan || has_nan(xb, len);
      if (kSmooth) st.wsum += kWeighted ? sum_of(wb, len) : double(len);
      if constexpr (kStore) fill_zero(out + c0, len);
      continue;
    }
    if constexpr (kNarrow<T>) {
      if (skip >= c0 && skip < c0 + len) {
        // The label's block: the classes before and after it, and the label itself in double.
        const int64_t ky = skip - c0;
        BlockSums b = exp_block<T, kStore, kSmooth, kWeighted>(xb, kStore ? out + c0 : nullptr,
                                                               ky, S(st.m), wb);
        const BlockSums after = exp_block<T, kStore, kSmooth, kWeighted>(
            xb + ky + 1, kStore ? out + skip + 1 : nullptr, len - ky - 1, S(st.m),
            kWeighted ? wb + ky + 1 : nullptr);
        const double dy = double(load1(x + skip)) - st.m;
        const double ey = __builtin_exp(dy);
        if constexpr (kStore) out[skip] = S(ey);
        st.rest += b.s + after.s;
        st.ey = ey;
        st.s += (b.s + after.s) + ey;
        if constexpr (kSmooth) {
          const double wy = kWeighted ? double(wb[ky]) : 1.0;
          st.t += b.t + after.t + wy * dy;
          st.wsum += kWeighted ? b.wsum + after.wsum + wy : double(len);
        }
        continue;
      }
    }
    BlockSums b = exp_block<T, kStore, kSmooth, kWeighted>(xb, kStore ? out + c0 : nullptr, len,
                                                           S(st.m), wb);
    st.s += b.s;
    if constexpr (kNarrow<T>) st.rest += b.s;
    st.t += b.t;
    st.wsum += b.wsum;
  }
  if (st.nan) {
    st.s = __builtin_nan("");
    st.rest = st.s;
  }
  return st;
}

// Rows of at most this many blocks keep their exp values in cache between the two passes.
constexpr int64_t kMaxCachedBlocks = 64;

// The logits, the output and (16-bit rows) the float row of exp values must fit together.
template <class T>
inline bool row_fits_cache(int64_t n) {
  const int64_t bytes_per_class = 2 * int64_t(sizeof(T)) + (kNarrow<T> ? int64_t(sizeof(float)) : 0);
  return n * bytes_per_class <= kCachedRowBytes && n <= kMaxCachedBlocks * kBlock;
}

// Where a cached row keeps its exp values: in the output row itself when T = S, else in a float
// row allocated once per call (rounding exp values to 16 bits before scaling would round twice).
template <class T>
struct ExpRow {
  using S = compute_t<T>;
  S* scratch = nullptr;
  explicit ExpRow(int64_t n) {
    using size = decltype(sizeof(S));  // size_t, without a system header in this namespace
    if (kNarrow<T> && n > 0) scratch = static_cast<S*>(__builtin_malloc(sizeof(S) * size(n)));
  }
  ~ExpRow() { __builtin_free(scratch); }
  ExpRow(const ExpRow&) = delete;
  ExpRow& operator=(const ExpRow&) = delete;
  bool ok() const { return !kNarrow<T> || scratch != nullptr; }
  S* row(T* out) const {
    if constexpr (kNarrow<T>) {
      return scratch;
    } else {
      return out;
    }
  }
};

// Second pass over exp values e stored by online_stats<kStore>: out_j = e_j * alpha *
// exp(shift_block - m) - beta * w_j, which is p_j * coef - beta * w_j. e may be out.
template <class T, bool kSmooth, bool kWeighted>
inline void scale_blocks(const compute_t<T>* e, T* out, int64_t n, const double* block_shift,
                         double m, double alpha, compute_t<T> beta, const compute_t<T>* w) {
  using S = compute_t<T>;
  for (int64_t c0 = 0, k = 0; c0 < n; c0 += kBlock, ++k) {
    const S factor = S(alpha * __builtin_exp(block_shift[k] - m));
    scale_row<T, kSmooth, kWeighted>(e + c0, out + c0, min64(kBlock, n - c0), factor, beta,
                                     kWeighted ? w + c0 : nullptr);
  }
}

template <class T, bool kSmooth, bool kWeighted>
inline double write_grad_sum(const T* x, T* out, int64_t n, compute_t<T> shift, compute_t<T> alpha,
                             compute_t<T> beta, const compute_t<T>* w);

// out_j = exp(x_j - shift) * alpha - beta * w_j; out may be x.
template <class T, bool kSmooth, bool kWeighted>
inline void write_grad(const T* x, T* out, int64_t n, compute_t<T> shift, compute_t<T> alpha,
                       compute_t<T> beta, const compute_t<T>* w) {
  using S = compute_t<T>;
  if constexpr (kNarrow<T>) {
    // Through a float block buffer (see write_grad_sum); the sum is not needed.
    write_grad_sum<T, kSmooth, kWeighted>(x, out, n, shift, alpha, beta, w);
    return;
  }
  for_each_vector<S>(n, [&](auto v, int64_t j, int) {
    using VV = decltype(v);
    VV r = vexp(VV::load(x + j) - VV::set1(shift)) * VV::set1(alpha);
    if constexpr (kSmooth) {
      VV b = kWeighted ? VV::load(w + j) * VV::set1(beta) : VV::set1(beta);
      r = r - b;
    }
    r.store(out + j);
  });
}

// write_grad that also returns sum_j exp(x_j - shift) (per block in S, added in double). Only
// for 16-bit rows (backward, split rows). Per block, exp goes to a float buffer in L1 first and
// is scaled and rounded to T in a second loop: one loop doing both is so long (exp, then the
// 16-bit rounding) that too few iterations fit in the out-of-order window to hide its latency.
// Local accumulators rather than a capturing lambda: a 16-bit store may alias anything, so
// captured accumulators would go through memory on every step.
template <class T, bool kSmooth, bool kWeighted>
inline double write_grad_sum(const T* x, T* out, int64_t n, compute_t<T> shift, compute_t<T> alpha,
                             compute_t<T> beta, const compute_t<T>* w) {
  using S = compute_t<T>;
  using V = typename VecFor<S>::type;
  constexpr int64_t W = V::width;
  alignas(64) S e[kBlock];
  const V vshift = V::set1(shift);
  double total = 0;
  for (int64_t c0 = 0; c0 < n; c0 += kBlock) {
    const int64_t len = min64(kBlock, n - c0);
    const T* xb = x + c0;
    V acc0 = V::set1(0), acc1 = V::set1(0);
    int64_t j = 0;
    for (; j + 2 * W <= len; j += 2 * W) {
      const V e0 = vexp(V::load(xb + j) - vshift), e1 = vexp(V::load(xb + j + W) - vshift);
      e0.store(e + j);
      e1.store(e + j + W);
      acc0 = acc0 + e0;
      acc1 = acc1 + e1;
    }
    for (; j + W <= len; j += W) {
      const V e0 = vexp(V::load(xb + j) - vshift);
      e0.store(e + j);
      acc0 = acc0 + e0;
    }
    S tail = 0;
    for (; j < len; ++j) {
      const Vec1<S> e0 = vexp(Vec1<S>::load(xb + j) - Vec1<S>::set1(shift));
      e0.store(e + j);
      tail += e0.v;
    }
    total += double((acc0 + acc1).hsum() + tail);
    scale_row<T, kSmooth, kWeighted>(e, out + c0, len, alpha, beta, kWeighted ? w + c0 : w);
  }
  return total;
}

// The label's gradient of a 16-bit row from ey = exp(z_y - shift) and rest = the sum of the
// other classes' exp(z_j - shift), in double: (1 - eps) w_y g (p_y - 1) with p_y - 1 = -rest / s
// (no cancellation near p_y = 1), plus the smoothing term eps/C g (W p_y - w_y). Dividing by
// s = rest + ey also renormalises p when shift is a float-rounded lse (backward).
inline double label_grad_from_rest(double rest, double ey, double label_coef, double smooth_coef,
                                   double weight_total, double wy) {
  const double s = rest + ey;
  return -label_coef * (rest / s) + smooth_coef * (weight_total * (ey / s) - wy);
}

// -log p_y = lse - z_y = log1p(rest / ey): exact for confident rows, where lse - z_y cancels.
inline double nll_from_rest(double rest, double ey, double lse_minus_zy) {
  return ey > 0 ? __builtin_log1p(rest / ey) : lse_minus_zy;
}

template <class S>
inline const S* weight_of(const CeArgs& a) {
  if constexpr (std::is_same_v<S, float>) {
    return a.weight_f32;
  } else {
    return a.weight_f64;
  }
}

// Per-row coefficients of the gradient: grad_j = p_j * p_coef - smooth_coef * w_j - label_coef [j == y].
struct GradCoefs {
  double p_coef, smooth_coef, label_coef;
};

inline GradCoefs grad_coefs(const CeArgs& a, int64_t i, double wy) {
  const double g = a.grad_scale * (a.grad_rows ? a.grad_rows[i] : 1.0);
  const double label_coef = g * (1.0 - a.smoothing) * wy;
  const double smooth_coef = g * a.smoothing / double(a.classes);
  return {label_coef + smooth_coef * a.weight_total, smooth_coef, label_coef};
}

template <class T, bool kSmooth, bool kWeighted>
void ce_rows(const CeArgs& a, int64_t r0, int64_t r1, CeMode mode) {
  using S = compute_t<T>;
  const int64_t C = a.classes;
  const T* logits = static_cast<const T*>(a.logits);
  T* grad = static_cast<T*>(a.grad);
  S* lse_out = static_cast<S*>(a.lse);
  const S* w = weight_of<S>(a);
  const bool want_cache = mode == CeMode::fused && row_fits_cache<T>(C);
  const ExpRow<T> exp_row(want_cache ? C : 0);
  const bool cached = want_cache && exp_row.ok();
  double block_shift[kMaxCachedBlocks];
  for (int64_t i = r0; i < r1; ++i) {
    const T* x = logits + i * a.logits_stride;
    T* g = grad ? grad + i * a.grad_stride : nullptr;
    const int64_t y = a.labels[i];
    if (y == a.ignore_index) {
      if (mode != CeMode::backward) {
        a.row_loss[i] = 0.0;
        lse_out[i] = S(0);
      }
      if (mode != CeMode::forward) fill_zero(g, C);
      continue;
    }
    const double wy = w ? double(w[y]) : 1.0;
    const double zy = load1(x + y);  // read before an in-place gradient overwrites it
    // log_s is kept apart from the max: m + log s rounds to m for huge logits, and
    // (m - z_y) + log s does not.
    double lse, shift, log_s = 0.0, inv_s = 1.0;
    RowStats st{};
    if (mode == CeMode::backward) {
      lse = shift = double(lse_out[i]);
    } else {
      // 16-bit rows keep the label's exp apart (skip = y): see label_grad_from_rest.
      st = cached ? online_stats<T, true, kSmooth, kWeighted>(x, C, w, exp_row.row(g), block_shift,
                                                              kNarrow<T> ? y : -1)
                  : online_stats<T, false, kSmooth, kWeighted>(x, C, w, nullptr, nullptr,
                                                               kNarrow<T> ? y : -1);
      log_s = __builtin_log(st.s);
      lse = st.m + log_s;
      shift = st.m;
      inv_s = 1.0 / st.s;
      double nll = (st.m - zy) + log_s;
      if constexpr (kNarrow<T>) nll = nll_from_rest(st.rest, st.ey, nll);
      double loss = (1.0 - a.smoothing) * wy * nll;
      if constexpr (kSmooth) {
        loss += a.smoothing / double(C) * (a.weight_total * log_s - st.t);
      }
      a.row_loss[i] = loss;
      lse_out[i] = S(lse);
      if (mode == CeMode::forward) continue;
    }
    const GradCoefs c = grad_coefs(a, i, wy);
    if constexpr (kNarrow<T>) {
      if (mode == CeMode::backward) {
        // The other classes' exp(z - lse) summed on the way (the label's entry is skipped).
        const S sh = S(shift), alpha = S(c.p_coef), beta = S(c.smooth_coef);
        st.rest = write_grad_sum<T, kSmooth, kWeighted>(x, g, y, sh, alpha, beta, w) +
                  write_grad_sum<T, kSmooth, kWeighted>(x + y + 1, g + y + 1, C - y - 1, sh,
                                                        alpha, beta, kWeighted ? w + y + 1 : w);
        st.ey = __builtin_exp(zy - lse);
      }
    }
    if (cached) {
      scale_blocks<T, kSmooth, kWeighted>(exp_row.row(g), g, C, block_shift, shift,
                                          c.p_coef * inv_s, S(c.smooth_coef), w);
    } else if (!kNarrow<T> || mode != CeMode::backward) {
      write_grad<T, kSmooth, kWeighted>(x, g, C, S(shift), S(c.p_coef * inv_s), S(c.smooth_coef),
                                        w);
    }
    if constexpr (kNarrow<T>) {
      g[y] = narrow_from_double<T>(label_grad_from_rest(st.rest, st.ey, c.label_coef,
                                                        c.smooth_coef, a.weight_total, wy));
    } else {
      // The label's entry p_y * coef - label_coef cancels when p_y is near 1: recompute it in
      // double from the saved logit rather than from the rounded stored value.
      g[y] = S(__builtin_exp((zy - shift) - log_s) * c.p_coef - c.smooth_coef * wy -
               c.label_coef);
    }
  }
}

// Rows with few classes: one row per vector lane, W rows at a time, so that the per-row work
// (max, log, coefficients) is vectorised too instead of paying for horizontal reductions and
// tails on every short row. Rows are transposed through a small tile in the compute type
// (16-bit rows are widened on the way in and rounded once on the way out).
constexpr int64_t kSmallClasses = 16;

template <class T, bool kSmooth, bool kWeighted>
void ce_small_rows(const CeArgs& a, int64_t r0, int64_t r1, CeMode mode) {
  using S = compute_t<T>;
  using V = typename VecFor<S>::type;
  constexpr int W = V::width;
  const int64_t C = a.classes;
  const T* logits = static_cast<const T*>(a.logits);
  T* grad = static_cast<T*>(a.grad);
  S* lse_io = static_cast<S*>(a.lse);
  const S* w = weight_of<S>(a);
  alignas(64) S tile[kSmallClasses][W];
  alignas(64) S m_l[W], s_l[W], t_l[W], log_s_l[W], alpha_l[W], beta_l[W];
  double label_grad[W];
  // 16-bit rows: the W rows converted a vector at a time through block_buf (as one block when
  // the rows are contiguous); per lane the label's exp (ey_l) and the others' (rest_l) kept
  // apart, and -log p_y = log1p(rest / ey) (nll_l).
  alignas(64) S block_buf[kSmallClasses * W], rest_l[W], ey_l[W], nll_l[W];
  auto convert = [](const auto* from, auto* to, int64_t n) {
    for_each_vector<S>(n, [&](auto v, int64_t j, int) { decltype(v)::load(from + j).store(to + j); });
  };
  int64_t i = r0;
  for (; i + W <= r1; i += W) {
    if constexpr (kNarrow<T>) {
      const T* x = logits + i * a.logits_stride;
      if (a.logits_stride == C) {
        convert(x, block_buf, W * C);
      } else {
        for (int l = 0; l < W; ++l) convert(x + l * a.logits_stride, block_buf + l * C, C);
      }
      for (int l = 0; l < W; ++l)
        for (int64_t j = 0; j < C; ++j) tile[j][l] = block_buf[l * C + j];
    } else {
      for (int l = 0; l < W; ++l) {
        const T* x = logits + (i + l) * a.logits_stride;
        for (int64_t j = 0; j < C; ++j) tile[j][l] = x[j];
      }
    }
    if (mode == CeMode::backward) {
      const V lse = V::load(lse_io + i);
      for (int64_t j = 0; j < C; ++j) vexp(V::load(tile[j]) - lse).store(tile[j]);
    } else {
      V m = V::load(tile[0]);
      for (int64_t j = 1; j < C; ++j) m = vmax(m, V::load(tile[j]));
      V s = V::set1(0), t = V::set1(0);
      for (int64_t j = 0; j < C; ++j) {
        const V d = V::load(tile[j]) - m;
        const V e = vexp(d);
        e.store(tile[j]);
        s = s + e;
        if constexpr (kSmooth) {
          const V scaled = d * V::set1(S(kSmoothSumScale));  // no float overflow near FLT_MAX
          t = kWeighted ? fmadd(V::set1(w[j]), scaled, t) : t + scaled;
        }
      }
      vlog(s).store(log_s_l);  // kept apart from m: m + log s rounds to m for huge logits
      m.store(m_l);
      s.store(s_l);
      t.store(t_l);
    }
    if constexpr (kNarrow<T>) {
      // The label's entry of each lane set aside (0 in the tile) while the columns are summed.
      int64_t col[W];
      for (int l = 0; l < W; ++l) {
        const int64_t y = a.labels[i + l];
        col[l] = y == a.ignore_index ? 0 : y;
        ey_l[l] = tile[col[l]][l];
        tile[col[l]][l] = S(0);
      }
      V rest = V::set1(0);
      for (int64_t j = 0; j < C; ++j) rest = rest + V::load(tile[j]);
      rest.store(rest_l);
      for (int l = 0; l < W; ++l) tile[col[l]][l] = ey_l[l];
      if (mode != CeMode::backward) {
        // log1p(u) = log(w) - ((w - 1) - u) / w with w = 1 + u rounded: exact to float
        // rounding where log(1 + u) alone would lose u (nll_l is unused where ey = 0).
        const V one = V::set1(S(1)), u = rest / V::load(ey_l), wu = one + u;
        (vlog(wu) - ((wu - one) - u) / wu).store(nll_l);
      }
    }
    for (int l = 0; l < W; ++l) {
      const int64_t row = i + l, y = a.labels[row];
      alpha_l[l] = beta_l[l] = S(0);
      if (y == a.ignore_index) {
        if (mode != CeMode::backward) {
          a.row_loss[row] = 0.0;
          lse_io[row] = S(0);
        }
        continue;
      }
      const double wy = w ? double(w[y]) : 1.0;
      if (mode != CeMode::backward) {
        // An all -inf row: lse = log(0) = -inf, as in ce_rows (m - m is NaN there).
        const double log_s = log_s_l[l], lse = m_l[l] == -kInf ? -kInf : double(m_l[l]) + log_s;
        double nll = (double(m_l[l]) - double(load1(logits + row * a.logits_stride + y))) + log_s;
        if constexpr (kNarrow<T>) nll = ey_l[l] > 0 ? double(nll_l[l]) : nll;
        double loss = (1.0 - a.smoothing) * wy * nll;
        if constexpr (kSmooth) loss += a.smoothing / double(C) * (a.weight_total * log_s - double(t_l[l]) / kSmoothSumScale);
        a.row_loss[row] = loss;
        lse_io[row] = S(lse);
        if (mode == CeMode::forward) continue;
      }
      const GradCoefs c = grad_coefs(a, row, wy);
      // In backward the tile already holds p; in the fused pass it holds exp(z - m) = p * s.
      const double alpha = mode == CeMode::backward ? c.p_coef : c.p_coef / double(s_l[l]);
      alpha_l[l] = S(alpha);
      beta_l[l] = S(c.smooth_coef);
      if constexpr (kNarrow<T>) {
        label_grad[l] = label_grad_from_rest(rest_l[l], ey_l[l], c.label_coef, c.smooth_coef,
                                             a.weight_total, wy);
      } else {
        label_grad[l] = double(tile[y][l]) * alpha - c.smooth_coef * wy - c.label_coef;
      }
    }
    if (mode == CeMode::forward) continue;
    const V alpha = V::load(alpha_l), beta = V::load(beta_l);
    for (int64_t j = 0; j < C; ++j) {
      V g = V::load(tile[j]) * alpha;
      if constexpr (kSmooth) g = g - (kWeighted ? beta * V::set1(w[j]) : beta);
      g.store(tile[j]);
    }
    if constexpr (kNarrow<T>) {
      for (int l = 0; l < W; ++l) {
        const bool ignored = a.labels[i + l] == a.ignore_index;
        for (int64_t j = 0; j < C; ++j) block_buf[l * C + j] = ignored ? S(0) : tile[j][l];
      }
      T* g = grad + i * a.grad_stride;
      if (a.grad_stride == C) {
        convert(block_buf, g, W * C);
      } else {
        for (int l = 0; l < W; ++l) convert(block_buf + l * C, g + l * a.grad_stride, C);
      }
      for (int l = 0; l < W; ++l) {
        const int64_t y = a.labels[i + l];
        if (y != a.ignore_index) g[l * a.grad_stride + y] = narrow_from_double<T>(label_grad[l]);
      }
    } else {
      for (int l = 0; l < W; ++l) {
        const int64_t row = i + l, y = a.labels[row];
        T* g = grad + row * a.grad_stride;
        if (y == a.ignore_index) {
          fill_zero(g, C);
          continue;
        }
        for (int64_t j = 0; j < C; ++j) g[j] = tile[j][l];
        g[y] = S(label_grad[l]);
      }
    }
  }
  if (i < r1) ce_rows<T, kSmooth, kWeighted>(a, i, r1, mode);
}

template <class T, bool kSmooth, bool kWeighted>
void ce_rows_any(const CeArgs& a, int64_t r0, int64_t r1, CeMode mode) {
  if (VecFor<compute_t<T>>::type::width > 1 && a.classes <= kSmallClasses) {
    ce_small_rows<T, kSmooth, kWeighted>(a, r0, r1, mode);
  } else {
    ce_rows<T, kSmooth, kWeighted>(a, r0, r1, mode);
  }
}

template <class T>
void ce_rows_dispatch(const CeArgs& a, int64_t r0, int64_t r1, CeMode mode) {
  const bool weighted = weight_of<compute_t<T>>(a) != nullptr;
  if (a.smoothing == 0.0) {
    ce_rows_any<T, false, false>(a, r0, r1, mode);
  } else if (weighted) {
    ce_rows_any<T, true, true>(a, r0, r1, mode);
  } else {
    ce_rows_any<T, true, false>(a, r0, r1, mode);
  }
}


template <class T>
RowStats slice_stats_t(const CeArgs& a, int64_t row, int64_t c0, int64_t c1, bool smoothing) {
  const T* x = static_cast<const T*>(a.logits) + row * a.logits_stride + c0;
  const auto* w = weight_of<compute_t<T>>(a);
  // 16-bit rows: the slice holding the label keeps its exp apart (RowStats::rest, ey).
  const int64_t y = a.labels[row];
  const int64_t skip = kNarrow<T> && y >= c0 && y < c1 ? y - c0 : -1;
  if (!smoothing) return online_stats<T, false, false, false>(x, c1 - c0, nullptr, nullptr, nullptr, skip);
  if (w) return online_stats<T, false, true, true>(x, c1 - c0, w + c0, nullptr, nullptr, skip);
  return online_stats<T, false, true, false>(x, c1 - c0, nullptr, nullptr, nullptr, skip);
}


// 16-bit rows: classes [c0, c1) but the label's, and the sum of their exp(z - shift).
template <class T, bool kSmooth, bool kWeighted>
double slice_grad_sum(const CeArgs& a, int64_t row, int64_t c0, int64_t c1, compute_t<T> shift,
                      compute_t<T> alpha, compute_t<T> beta, const compute_t<T>* w) {
  const T* x = static_cast<const T*>(a.logits) + row * a.logits_stride;
  T* g = static_cast<T*>(a.grad) + row * a.grad_stride;
  const int64_t y = a.labels[row];
  const int64_t mid = y >= c0 && y < c1 ? y : c1;  // the label, or the end of the slice
  const int64_t after = mid < c1 ? mid + 1 : c1;
  return write_grad_sum<T, kSmooth, kWeighted>(x + c0, g + c0, mid - c0, shift, alpha, beta,
                                               kWeighted ? w + c0 : w) +
         write_grad_sum<T, kSmooth, kWeighted>(x + after, g + after, c1 - after, shift, alpha,
                                               beta, kWeighted ? w + after : w);
}

template <class T>
double slice_grad_t(const CeArgs& a, int64_t row, int64_t c0, int64_t c1, double shift,
                    double alpha, double beta) {
  using S = compute_t<T>;
  const S* w = weight_of<S>(a);
  if constexpr (kNarrow<T>) {
    if (beta == 0.0) return slice_grad_sum<T, false, false>(a, row, c0, c1, S(shift), S(alpha), S(0), nullptr);
    if (w) return slice_grad_sum<T, true, true>(a, row, c0, c1, S(shift), S(alpha), S(beta), w);
    return slice_grad_sum<T, true, false>(a, row, c0, c1, S(shift), S(alpha), S(beta), nullptr);
  } else {
    const T* x = static_cast<const T*>(a.logits) + row * a.logits_stride + c0;
    T* g = static_cast<T*>(a.grad) + row * a.grad_stride + c0;
    if (beta == 0.0) {
      write_grad<T, false, false>(x, g, c1 - c0, S(shift), S(alpha), S(0), nullptr);
    } else if (w) {
      write_grad<T, true, true>(x, g, c1 - c0, S(shift), S(alpha), S(beta), w + c0);
    } else {
      write_grad<T, true, false>(x, g, c1 - c0, S(shift), S(alpha), S(beta), nullptr);
    }
    return 0.0;
  }
}


template <class T>
void rowop_rows_t(const RowsArgs& a, RowOp op, int64_t r0, int64_t r1) {
  using S = compute_t<T>;
  const int64_t C = a.classes;
  const bool want_cache = op == RowOp::softmax && row_fits_cache<T>(C);
  const ExpRow<T> exp_row(want_cache ? C : 0);
  const bool cached = want_cache && exp_row.ok();
  double block_shift[kMaxCachedBlocks];
  for (int64_t i = r0; i < r1; ++i) {
    const T* x = static_cast<const T*>(a.x) + i * a.x_stride;
    if (op == RowOp::logsumexp) {
      RowStats st = online_stats<T, false, false, false>(x, C, nullptr);
      static_cast<T*>(a.out)[i * a.out_stride] = narrow_from_double<T>(st.m + __builtin_log(st.s));
      continue;
    }
    T* out = static_cast<T*>(a.out) + i * a.out_stride;
    if (cached) {
      RowStats st = online_stats<T, true, false, false>(x, C, nullptr, exp_row.row(out), block_shift);
      scale_blocks<T, false, false>(exp_row.row(out), out, C, block_shift, st.m, 1.0 / st.s, S(0),
                                    nullptr);
      continue;
    }
    RowStats st = online_stats<T, false, false, false>(x, C, nullptr);
    if (op == RowOp::softmax) {
      write_grad<T, false, false>(x, out, C, S(st.m), S(1.0 / st.s), S(0), nullptr);
    } else {
      // log p_j = (z_j - m) - log s: subtracting the max first keeps huge logits exact.
      const S m = S(st.m), log_s = S(__builtin_log(st.s));
      for_each_vector<S>(C, [&](auto v, int64_t j, int) {
        using VV = decltype(v);
        ((VV::load(x + j) - VV::set1(m)) - VV::set1(log_s)).store(out + j);
      });
    }
  }
}

// The entry points. Each ISA compiles this body twice: its main file (isa_<name>.cpp) for float
// and double rows, and with FASTXENT_KERNELS_HALF defined (isa_<name>_half.cpp) for float16 and
// bfloat16 rows. Compilers budget inlining per translation unit, so keeping the 16-bit
// instantiations out of the main file leaves the float and double kernels compiled as before.
#if defined(FASTXENT_KERNELS_HALF)

// Calls f(T{}) with the 16-bit storage type of dtype d.
template <class F>
inline void with_half_type(DType d, F&& f) {
  if (d == DType::f16) {
    f(Half{});
  } else {
    f(BFloat16{});
  }
}

void ce_dispatch_half(const CeArgs& a, int64_t r0, int64_t r1, CeMode mode) {
  with_half_type(a.dtype, [&](auto tag) { ce_rows_dispatch<decltype(tag)>(a, r0, r1, mode); });
}

RowStats slice_stats_half(const CeArgs& a, int64_t row, int64_t c0, int64_t c1, bool smoothing) {
  RowStats st{};
  with_half_type(a.dtype, [&](auto tag) {
    st = slice_stats_t<decltype(tag)>(a, row, c0, c1, smoothing);
  });
  return st;
}

double slice_grad_half(const CeArgs& a, int64_t row, int64_t c0, int64_t c1, double shift,
                       double alpha, double beta) {
  double rest = 0;
  with_half_type(a.dtype, [&](auto tag) {
    rest = slice_grad_t<decltype(tag)>(a, row, c0, c1, shift, alpha, beta);
  });
  return rest;
}

void rowop_rows_half(const RowsArgs& a, RowOp op, int64_t r0, int64_t r1) {
  with_half_type(a.dtype, [&](auto tag) { rowop_rows_t<decltype(tag)>(a, op, r0, r1); });
}

#else

// Defined in this ISA's 16-bit translation unit.
void ce_dispatch_half(const CeArgs& a, int64_t r0, int64_t r1, CeMode mode);
RowStats slice_stats_half(const CeArgs& a, int64_t row, int64_t c0, int64_t c1, bool smoothing);
double slice_grad_half(const CeArgs& a, int64_t row, int64_t c0, int64_t c1, double shift,
                       double alpha, double beta);
void rowop_rows_half(const RowsArgs& a, RowOp op, int64_t r0, int64_t r1);

void ce_dispatch(const CeArgs& a, int64_t r0, int64_t r1, CeMode mode) {
  if (a.dtype == DType::f32) {
    ce_rows_dispatch<float>(a, r0, r1, mode);
  } else if (a.dtype == DType::f64) {
    ce_rows_dispatch<double>(a, r0, r1, mode);
  } else {
    ce_dispatch_half(a, r0, r1, mode);
  }
}

void forward_rows(const CeArgs& a, int64_t r0, int64_t r1) { ce_dispatch(a, r0, r1, CeMode::forward); }
void fused_rows(const CeArgs& a, int64_t r0, int64_t r1) { ce_dispatch(a, r0, r1, CeMode::fused); }
void backward_rows(const CeArgs& a, int64_t r0, int64_t r1) {
  ce_dispatch(a, r0, r1, CeMode::backward);
}

RowStats slice_stats(const CeArgs& a, int64_t row, int64_t c0, int64_t c1, bool smoothing) {
  if (a.dtype == DType::f32) return slice_stats_t<float>(a, row, c0, c1, smoothing);
  if (a.dtype == DType::f64) return slice_stats_t<double>(a, row, c0, c1, smoothing);
  return slice_stats_half(a, row, c0, c1, smoothing);
}

double slice_grad(const CeArgs& a, int64_t row, int64_t c0, int64_t c1, double shift, double alpha,
                  double beta) {
  if (a.dtype == DType::f32) return slice_grad_t<float>(a, row, c0, c1, shift, alpha, beta);
  if (a.dtype == DType::f64) return slice_grad_t<double>(a, row, c0, c1, shift, alpha, beta);
  return slice_grad_half(a, row, c0, c1, shift, alpha, beta);
}

void rowop_rows(const RowsArgs& a, RowOp op, int64_t r0, int64_t r1) {
  if (a.dtype == DType::f32) {
    rowop_rows_t<float>(a, op, r0, r1);
  } else if (a.dtype == DType::f64) {
    rowop_rows_t<double>(a, op, r0, r1);
  } else {
    rowop_rows_half(a, op, r0, r1);
  }
}

#endif
