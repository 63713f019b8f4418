// The one kernel body, compiled once per instruction set. Each isa_*.cpp includes it inside
// its own namespace, after the vector types (VecF, VecD, Vec1) and vexp for that ISA, and
// defines FASTXENT_TABLE_NAME / FASTXENT_ISA_NAME. Only builtins and this namespace's own
// inline functions are used here, so no inline symbol compiled with wide-vector flags can be
// picked by the linker for a narrower ISA.
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

constexpr double kInf = __builtin_inf();
// A row whose logits and gradient fit in L2 together is processed with the exp values kept
// there (one exp per logit); longer rows recompute exp in a second pass instead.
constexpr int64_t kCachedRowBytes = 384 * 1024;
// The online max is taken per block of this many logits; block sums are added in double,
// which keeps a 128k-class row accurate to float32 rounding.
constexpr int64_t kBlock = 1024;

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

template <class S>
inline S max_of(const S* x, int64_t n) {
  using V = typename VecFor<S>::type;
  V lanes[4] = {V::set1(-kInf), V::set1(-kInf), V::set1(-kInf), V::set1(-kInf)};
  S tail = -kInf;
  for_each_vector<S>(n, [&](auto v, int64_t j, int k) {
    using VV = decltype(v);
    if constexpr (std::is_same_v<VV, V>) {
      lanes[k] = vmax(lanes[k], V::load(x + j));
    } else {
      tail = x[j] > tail ? x[j] : tail;
    }
  });
  S m = vmax(vmax(lanes[0], lanes[1]), vmax(lanes[2], lanes[3])).hmax();
  return tail > m ? tail : m;
}

template <class S>
inline bool has_nan(const S* x, int64_t n) {
  for (int64_t j = 0; j < n; ++j)
    if (x[j] != x[j]) return true;
  return false;
}

template <class S>
inline double sum_of(const S* x, int64_t n) {
  double total = 0;
  for (int64_t j = 0; j < n; ++j) total += x[j];
  return total;
}

template <class S>
inline void fill_zero(S* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = S(0);
}

struct BlockSums {
  double s = 0, t = 0, wsum = 0;
};

// One block: s = sum exp(x - m); with kSmooth also t = sum w (x - m) and wsum = sum w.
// With kStore the exp values are written to out (which may be x itself).
template <class S, bool kStore, bool kSmooth, bool kWeighted>
inline BlockSums exp_block(const S* x, S* out, int64_t n, S m, const S* w) {
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
      if constexpr (kWeighted) {
        VV wj = VV::load(w + j);
        acc_t.add(wj * shifted, k);
        acc_w.add(wj, k);
      } else {
        acc_t.add(shifted, k);
      }
    }
  });
  BlockSums r;
  r.s = acc_s.total();
  if constexpr (kSmooth) {
    r.t = acc_t.total();
    r.wsum = kWeighted ? double(acc_w.total()) : double(n);
  }
  return r;
}

// out_j = in_j * alpha - beta * w_j (beta * 1 when unweighted); in may be out.
template <class S, bool kSmooth, bool kWeighted>
inline void scale_row(const S* in, S* out, int64_t n, S alpha, S beta, const S* w) {
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
template <class S, bool kStore, bool kSmooth, bool kWeighted>
inline RowStats online_stats(const S* x, int64_t n, const S* w, S* out = nullptr,
                             double* block_shift = nullptr) {
  RowStats st{-kInf, 0.0, 0.0, 0.0, false};
  for (int64_t c0 = 0, k = 0; c0 < n; c0 += kBlock, ++k) {
    const int64_t len = min64(kBlock, n - c0);
    const S* xb = x + c0;
    const S* wb = kWeighted ? w + c0 : nullptr;
    const double bm = max_of(xb, len);
    if (bm > st.m) {
      if (st.s != 0) st.s *= __builtin_exp(st.m - bm);
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
    BlockSums b = exp_block<S, kStore, kSmooth, kWeighted>(xb, kStore ? out + c0 : nullptr, len,
                                                           S(st.m), wb);
    st.s += b.s;
    st.t += b.t;
    st.wsum += b.wsum;
  }
  if (st.nan) st.s = __builtin_nan("");
  return st;
}

// Rows of at most this many blocks keep their exp values in cache between the two passes.
constexpr int64_t kMaxCachedBlocks = 64;

template <class S>
inline bool row_fits_cache(int64_t n) {
  return 2 * n * int64_t(sizeof(S)) <= kCachedRowBytes && n <= kMaxCachedBlocks * kBlock;
}

// Second pass over exp values stored by online_stats<kStore>: out_j = e_j * alpha *
// exp(shift_block - m) - beta * w_j, which is p_j * coef - beta * w_j.
template <class S, bool kSmooth, bool kWeighted>
inline void scale_blocks(S* out, int64_t n, const double* block_shift, double m, double alpha,
                         S beta, const S* w) {
  for (int64_t c0 = 0, k = 0; c0 < n; c0 += kBlock, ++k) {
    const S factor = S(alpha * __builtin_exp(block_shift[k] - m));
    scale_row<S, kSmooth, kWeighted>(out + c0, out + c0, min64(kBlock, n - c0), factor, beta,
                                     kWeighted ? w + c0 : nullptr);
  }
}

// out_j = exp(x_j - shift) * alpha - beta * w_j; out may be x.
template <class S, bool kSmooth, bool kWeighted>
inline void write_grad(const S* x, S* out, int64_t n, S shift, S alpha, S beta, const S* w) {
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

template <class S, bool kSmooth, bool kWeighted>
void ce_rows(const CeArgs& a, int64_t r0, int64_t r1, CeMode mode) {
  const int64_t C = a.classes;
  const S* logits = static_cast<const S*>(a.logits);
  S* grad = static_cast<S*>(a.grad);
  S* lse_out = static_cast<S*>(a.lse);
  const S* w = weight_of<S>(a);
  const bool cached = mode == CeMode::fused && row_fits_cache<S>(C);
  double block_shift[kMaxCachedBlocks];
  for (int64_t i = r0; i < r1; ++i) {
    const S* x = logits + i * a.logits_stride;
    S* g = grad ? grad + i * a.grad_stride : nullptr;
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
    const double zy = x[y];  // read before an in-place gradient overwrites it
    double lse, shift, inv_s = 1.0;
    if (mode == CeMode::backward) {
      lse = shift = double(lse_out[i]);
    } else {
      RowStats st = cached ? online_stats<S, true, kSmooth, kWeighted>(x, C, w, g, block_shift)
                           : online_stats<S, false, kSmooth, kWeighted>(x, C, w);
      lse = st.m + __builtin_log(st.s);
      shift = st.m;
      inv_s = 1.0 / st.s;
      double loss = (1.0 - a.smoothing) * wy * (lse - zy);
      if constexpr (kSmooth) {
        loss += a.smoothing / double(C) * (a.weight_total * (lse - st.m) - st.t);
      }
      a.row_loss[i] = loss;
      lse_out[i] = S(lse);
      if (mode == CeMode::forward) continue;
    }
    const GradCoefs c = grad_coefs(a, i, wy);
    if (cached) {
      scale_blocks<S, kSmooth, kWeighted>(g, C, block_shift, shift, c.p_coef * inv_s,
                                          S(c.smooth_coef), w);
    } else {
      write_grad<S, kSmooth, kWeighted>(x, g, C, S(shift), S(c.p_coef * inv_s), S(c.smooth_coef),
                                        w);
    }
    // The label's entry p_y * coef - label_coef cancels when p_y is near 1: recompute it in
    // double from the saved logit rather than from the rounded stored value.
    g[y] = S(__builtin_exp(zy - lse) * c.p_coef - c.smooth_coef * wy - c.label_coef);
  }
}

// Rows with few classes: one row per vector lane, W rows at a time, so that the per-row work
// (max, log, coefficients) is vectorised too instead of paying for horizontal reductions and
// tails on every short row. Rows are transposed through a small tile.
constexpr int64_t kSmallClasses = 16;

template <class S, bool kSmooth, bool kWeighted>
void ce_small_rows(const CeArgs& a, int64_t r0, int64_t r1, CeMode mode) {
  using V = typename VecFor<S>::type;
  constexpr int W = V::width;
  const int64_t C = a.classes;
  const S* logits = static_cast<const S*>(a.logits);
  S* grad = static_cast<S*>(a.grad);
  S* lse_io = static_cast<S*>(a.lse);
  const S* w = weight_of<S>(a);
  alignas(64) S tile[kSmallClasses][W];
  alignas(64) S m_l[W], s_l[W], t_l[W], lse_l[W], alpha_l[W], beta_l[W];
  double label_grad[W];
  int64_t i = r0;
  for (; i + W <= r1; i += W) {
    for (int l = 0; l < W; ++l) {
      const S* x = logits + (i + l) * a.logits_stride;
      for (int64_t j = 0; j < C; ++j) tile[j][l] = x[j];
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
        if constexpr (kSmooth) t = kWeighted ? fmadd(V::set1(w[j]), d, t) : t + d;
      }
      (m + vlog(s)).store(lse_l);
      m.store(m_l);
      s.store(s_l);
      t.store(t_l);
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
        const double lse = lse_l[l];
        double loss = (1.0 - a.smoothing) * wy * (lse - double(logits[row * a.logits_stride + y]));
        if constexpr (kSmooth) loss += a.smoothing / double(C) * (a.weight_total * (lse - m_l[l]) - t_l[l]);
        a.row_loss[row] = loss;
        lse_io[row] = S(lse);
        if (mode == CeMode::forward) continue;
      }
      const GradCoefs c = grad_coefs(a, row, wy);
      // In backward the tile already holds p; in the fused pass it holds exp(z - m) = p * s.
      const double alpha = mode == CeMode::backward ? c.p_coef : c.p_coef / double(s_l[l]);
      alpha_l[l] = S(alpha);
      beta_l[l] = S(c.smooth_coef);
      label_grad[l] = double(tile[y][l]) * alpha - c.smooth_coef * wy - c.label_coef;
    }
    if (mode == CeMode::forward) continue;
    const V alpha = V::load(alpha_l), beta = V::load(beta_l);
    for (int64_t j = 0; j < C; ++j) {
      V g = V::load(tile[j]) * alpha;
      if constexpr (kSmooth) g = g - (kWeighted ? beta * V::set1(w[j]) : beta);
      g.store(tile[j]);
    }
    for (int l = 0; l < W; ++l) {
      const int64_t row = i + l, y = a.labels[row];
      S* g = grad + row * a.grad_stride;
      if (y == a.ignore_index) {
        fill_zero(g, C);
        continue;
      }
      for (int64_t j = 0; j < C; ++j) g[j] = tile[j][l];
      g[y] = S(label_grad[l]);
    }
  }
  if (i < r1) ce_rows<S, kSmooth, kWeighted>(a, i, r1, mode);
}

template <class S, bool kSmooth, bool kWeighted>
void ce_rows_any(const CeArgs& a, int64_t r0, int64_t r1, CeMode mode) {
  if (VecFor<S>::type::width > 1 && a.classes <= kSmallClasses) {
    ce_small_rows<S, kSmooth, kWeighted>(a, r0, r1, mode);
  } else {
    ce_rows<S, kSmooth, kWeighted>(a, r0, r1, mode);
  }
}

template <class S>
void ce_rows_dispatch(const CeArgs& a, int64_t r0, int64_t r1, CeMode mode) {
  const bool weighted = weight_of<S>(a) != nullptr;
  if (a.smoothing == 0.0) {
    ce_rows_any<S, false, false>(a, r0, r1, mode);
  } else if (weighted) {
    ce_rows_any<S, true, true>(a, r0, r1, mode);
  } else {
    ce_rows_any<S, true, false>(a, r0, r1, mode);
  }
}

void ce_dispatch(const CeArgs& a, int64_t r0, int64_t r1, CeMode mode) {
  if (a.dtype == DType::f32) {
    ce_rows_dispatch<float>(a, r0, r1, mode);
  } else {
    ce_rows_dispatch<double>(a, r0, r1, mode);
  }
}

void forward_rows(const CeArgs& a, int64_t r0, int64_t r1) { ce_dispatch(a, r0, r1, CeMode::forward); }
void fused_rows(const CeArgs& a, int64_t r0, int64_t r1) { ce_dispatch(a, r0, r1, CeMode::fused); }
void backward_rows(const CeArgs& a, int64_t r0, int64_t r1) {
  ce_dispatch(a, r0, r1, CeMode::backward);
}

template <class S>
RowStats slice_stats_t(const CeArgs& a, int64_t row, int64_t c0, int64_t c1, bool smoothing) {
  const S* x = static_cast<const S*>(a.logits) + row * a.logits_stride + c0;
  const S* w = weight_of<S>(a);
  if (!smoothing) return online_stats<S, false, false, false>(x, c1 - c0, nullptr);
  if (w) return online_stats<S, false, true, true>(x, c1 - c0, w + c0);
  return online_stats<S, false, true, false>(x, c1 - c0, nullptr);
}

RowStats slice_stats(const CeArgs& a, int64_t row, int64_t c0, int64_t c1, bool smoothing) {
  if (a.dtype == DType::f32) return slice_stats_t<float>(a, row, c0, c1, smoothing);
  return slice_stats_t<double>(a, row, c0, c1, smoothing);
}

template <class S>
void slice_grad_t(const CeArgs& a, int64_t row, int64_t c0, int64_t c1, double shift, double alpha,
                  double beta) {
  const S* x = static_cast<const S*>(a.logits) + row * a.logits_stride + c0;
  S* g = static_cast<S*>(a.grad) + row * a.grad_stride + c0;
  const S* w = weight_of<S>(a);
  if (beta == 0.0) {
    write_grad<S, false, false>(x, g, c1 - c0, S(shift), S(alpha), S(0), nullptr);
  } else if (w) {
    write_grad<S, true, true>(x, g, c1 - c0, S(shift), S(alpha), S(beta), w + c0);
  } else {
    write_grad<S, true, false>(x, g, c1 - c0, S(shift), S(alpha), S(beta), nullptr);
  }
}

void slice_grad(const CeArgs& a, int64_t row, int64_t c0, int64_t c1, double shift, double alpha,
                double beta) {
  if (a.dtype == DType::f32) {
    slice_grad_t<float>(a, row, c0, c1, shift, alpha, beta);
  } else {
    slice_grad_t<double>(a, row, c0, c1, shift, alpha, beta);
  }
}

template <class S>
void rowop_rows_t(const RowsArgs& a, RowOp op, int64_t r0, int64_t r1) {
  const int64_t C = a.classes;
  const bool cached = row_fits_cache<S>(C);
  double block_shift[kMaxCachedBlocks];
  for (int64_t i = r0; i < r1; ++i) {
    const S* x = static_cast<const S*>(a.x) + i * a.x_stride;
    if (op == RowOp::logsumexp) {
      RowStats st = online_stats<S, false, false, false>(x, C, nullptr);
      static_cast<S*>(a.out)[i * a.out_stride] = S(st.m + __builtin_log(st.s));
      continue;
    }
    S* out = static_cast<S*>(a.out) + i * a.out_stride;
    if (op == RowOp::softmax && cached) {
      RowStats st = online_stats<S, true, false, false>(x, C, nullptr, out, block_shift);
      scale_blocks<S, false, false>(out, C, block_shift, st.m, 1.0 / st.s, S(0), nullptr);
      continue;
    }
    RowStats st = online_stats<S, false, false, false>(x, C, nullptr);
    if (op == RowOp::softmax) {
      write_grad<S, false, false>(x, out, C, S(st.m), S(1.0 / st.s), S(0), nullptr);
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

void rowop_rows(const RowsArgs& a, RowOp op, int64_t r0, int64_t r1) {
  if (a.dtype == DType::f32) {
    rowop_rows_t<float>(a, op, r0, r1);
  } else {
    rowop_rows_t<double>(a, op, r0, r1);
  }
}
