// Rows with few classes (C <= 4 W: 64 float / 32 double classes with AVX-512, 32 / 16 with
// AVX2, 16 float with NEON), included by kernel_body.h inside an ISA namespace.
//
// One row per vector lane, W rows at a time: the W rows of a column block are loaded as W
// vectors straight from the rows (a masked load of their first n classes), transposed in
// registers so that vector j holds class j of every row, and everything per row is then a
// lane-wise vector operation: max, exp, sum, log, the label's pick, the loss and the gradient
// coefficients. The gradient is transposed back and stored row by row (the pieces that would
// pass a row's end cut to its classes), so no row is read or written past its end and strided
// rows need nothing special. Only a ragged tail of fewer than W rows goes to the general code.
//
// The label's exp is kept apart from the others' (rest): the label's gradient
// (1 - eps) w_y g (p_y - 1) uses p_y - 1 = -rest / s, and -log p_y = log1p(rest / ey) when
// p_y > 1/2, so confident rows keep their precision instead of cancelling near p_y = 1.
// Float rows without smoothing of up to this many classes get code with C fixed (see
// ce_small_rows_fixed).
constexpr int64_t kSmallClasses = 16;

// Up to four column blocks: beyond 16 classes (17-64 with AVX-512) a row per lane still beats
// the row-at-a-time code, whose per-row costs (reductions across lanes, a log, an exp in double,
// the calls) come to about 50 ns a row (65536 x 32 float fused, one thread, AVX-512: see
// kSmallRowClasses' measurements in the README). Vectors of 2 lanes (NEON's doubles) would
// need 8 blocks for 16 classes: they take the row path.
template <class S>
constexpr int64_t kSmallRowClasses = VecFor<S>::type::width >= 4 ? 4 * VecFor<S>::type::width : 0;

// Has V an in-register W x W transpose? (The others go through memory.)
template <class V, class = void>
struct HasTranspose : std::false_type {};
template <class V>
struct HasTranspose<V, std::void_t<decltype(V::transpose(static_cast<V*>(nullptr)))>> : std::true_type {};

// r[i] lane j <-> r[j] lane i. Only r[0, kOut) is wanted afterwards and the values of r[kIn, W)
// do not matter: with an in-register transpose they are read as zero, so the shuffles that feed
// only unwanted outputs, or read only zeros, fold away (a block of 10 classes: 10 of the 64
// shuffles each way with AVX-512).
template <class V, int kIn = V::width, int kOut = V::width>
inline void transpose_square(V* r) {
  if constexpr (HasTranspose<V>::value) {
    if constexpr (kIn == V::width && kOut == V::width) {
      V::transpose(r);
    } else {
      V t[V::width];
      for (int i = 0; i < V::width; ++i) t[i] = i < kIn ? r[i] : V::set1(typename V::scalar(0));
      V::transpose(t);
      for (int j = 0; j < kOut; ++j) r[j] = t[j];
    }
  } else {
    using S = typename V::scalar;
    constexpr int W = V::width;
    alignas(64) S in[W][W], out[W][W];
    for (int i = 0; i < W; ++i) r[i].store(in[i]);
    for (int i = 0; i < W; ++i)
      for (int j = 0; j < W; ++j) out[j][i] = in[i][j];
    for (int i = 0; i < W; ++i) r[i] = V::load(out[i]);
  }
}

template <class V, class = void>
struct HasColumns : std::false_type {};
template <class V>
struct HasColumns<V, std::void_t<decltype(V::has_columns(1))>> : std::true_type {};

// Contiguous rows of C classes that V moves between memory and columns without a transpose
// (V::has_columns(C), V::load_columns / store_columns: AVX2's blends for odd C below 8,
// AVX-512's permutes for C <= 8). False: not for this C, stride or V.
template <class V, int C>
FX_ALWAYS_INLINE bool load_columns_of(const typename V::scalar* src, V* cols) {
  if constexpr (V::has_columns(C)) {
    V::template load_columns<C>(src, cols);
    return true;
  } else {
    return false;
  }
}

template <class V, int C>
FX_ALWAYS_INLINE bool store_columns_of(const V* cols, typename V::scalar* dst) {
  if constexpr (V::has_columns(C)) {
    V::template store_columns<C>(cols, dst);
    return true;
  } else {
    return false;
  }
}

// f(std::integral_constant<int, C>{}) for C in 1..8 (what V::has_columns can accept), else false.
template <class F>
FX_ALWAYS_INLINE bool with_column_count(int C, F&& f) {
  switch (C) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    case 8: return f(std::integral_constant<int, 8>{});
    default: return false;
  }
}

template <class V>
FX_ALWAYS_INLINE bool load_row_columns(int C, const typename V::scalar* src, int64_t stride, V* cols) {
  if constexpr (HasColumns<V>::value) {
    if (stride == C) {
      return with_column_count(C, [&](auto c) { return load_columns_of<V, decltype(c)::value>(src, cols); });
    }
  }
  return false;
}

template <class V>
FX_ALWAYS_INLINE bool store_row_columns(int C, const V* cols, typename V::scalar* dst, int64_t stride) {
  if constexpr (HasColumns<V>::value) {
    if (stride == C) {
      return with_column_count(C, [&](auto c) { return store_columns_of<V, decltype(c)::value>(cols, dst); });
    }
  }
  return false;
}

template <class V, class = void>
struct HasTwoColumns : std::false_type {};
template <class V>
struct HasTwoColumns<V, std::void_t<decltype(V::has_two_columns)>> : std::true_type {};

// Is the last column block two classes wide, and can V move two columns without a transpose
// (V::load_two_columns / store_two_columns)? Any row stride.
template <class V>
FX_ALWAYS_INLINE bool last_block_of_two(int C) {
  if constexpr (HasTwoColumns<V>::value) {
    return C % V::width == 2;
  } else {
    return false;
  }
}

template <class V>
FX_ALWAYS_INLINE void load_two_columns(const typename V::scalar* src, int64_t stride, V* cols) {
  if constexpr (HasTwoColumns<V>::value) V::load_two_columns(src, stride, cols);
}

template <class V>
FX_ALWAYS_INLINE void store_two_columns(const V* cols, typename V::scalar* dst, int64_t stride) {
  if constexpr (HasTwoColumns<V>::value) V::store_two_columns(cols, dst, stride);
}

// The per-class picks below take the mask of the lanes whose label is not the class (vne):
// AVX-512's masked add and blend use it as it is, where the equal compare's mask needed a knot
// for the add, one more mask instruction per class and group of rows (with the labels' low
// halves, group_labels: 65536 x 3, C++ kernels alone, two threads, three alternating runs,
// forward 35.8 -> 33.8 us, fused 42.8 -> 41.1, backward 35.7 -> 33.1); AVX2 and / andnot either way.
template <class V, class = void>
struct HasAddWhere : std::false_type {};
template <class V>
struct HasAddWhere<V, std::void_t<decltype(V::add_where(typename V::mask{}, V{}, V{}))>> : std::true_type {};

// acc + x in the lanes where m is set, acc where it is clear (AVX-512: one masked add; AVX2:
// and and add, for acc that is not -0.0).
template <class V>
FX_ALWAYS_INLINE V add_where(typename V::mask m, V acc, V x) {
  if constexpr (HasAddWhere<V>::value) {
    return V::add_where(m, acc, x);
  } else {
    return acc + vselect(m, x, V::set1(typename V::scalar(0)));
  }
}

template <class V, class = void>
struct HasZeroLaneOps : std::false_type {};
template <class V>
struct HasZeroLaneOps<V, std::void_t<decltype(V::zero_unless(typename V::mask{}, V{}))>> : std::true_type {};

// x where m is set, +0.0 elsewhere (AVX2: one and instead of a blend).
template <class V>
FX_ALWAYS_INLINE V zero_unless(typename V::mask m, V x) {
  if constexpr (HasZeroLaneOps<V>::value) {
    return V::zero_unless(m, x);
  } else {
    return vselect(m, x, V::set1(typename V::scalar(0)));
  }
}

template <class V, class = void>
struct HasPickUnless : std::false_type {};
template <class V>
struct HasPickUnless<V, std::void_t<decltype(V::pick_unless(typename V::mask{}, V{}, V{}))>> : std::true_type {};

// x where m is clear, acc where it is set; acc must be +0.0 where m is clear (the label's value of
// a row, picked class by class: AVX2 andnot / or instead of a blend).
template <class V>
FX_ALWAYS_INLINE V pick_unless(typename V::mask m, V x, V acc) {
  if constexpr (HasPickUnless<V>::value) {
    return V::pick_unless(m, x, acc);
  } else {
    return vselect(m, acc, x);
  }
}

// Rows are taken in batches of kSmallBatch: the per-row scalars (label, weight, gradient scale)
// are laid out in arrays for the whole batch first, and the per-row results are written out
// after it, so that no vector load waits for the scalar stores just made (a store-forwarding
// stall that cost more than the arithmetic). 64 rows: with 256 the batch's arrays and exp values
// crowded the rows out of L1 (on the Intel AVX-512 machine, 65536 x 3 fused: 185 -> 160 us on
// one thread with AVX-512, 258 -> 233 us with AVX2; 65536 x 10: 443 -> 415 us with AVX-512).
constexpr int64_t kSmallBatch = 64;

// Prefetch rows [r0, r1) of C classes with write intent, a cache line at a time.
template <class T>
FX_ALWAYS_INLINE void prefetch_rows_for_write(const T* rows, int64_t stride, int C, int64_t r0, int64_t r1) {
  if (r0 >= r1) return;
  if (stride == C) {
    const char* begin = reinterpret_cast<const char*>(rows + r0 * stride);
    const char* end = reinterpret_cast<const char*>(rows + r1 * stride);
    for (const char* p = begin; p < end; p += kLineBytes) FX_PREFETCH_W(p);
  } else {
    for (int64_t i = r0; i < r1; ++i) {
      const char* row = reinterpret_cast<const char*>(rows + i * stride);
      FX_PREFETCH_W(row);
      FX_PREFETCH_W(row + (int64_t(C) * int64_t(sizeof(T)) - 1));
    }
  }
}

// n labels as int32 (-1 where ignored) and as S: simple loops the compiler vectorises (labels
// are validated: in [0, C) or ignore_index, so the class index fits int32).
template <class S>
FX_ALWAYS_INLINE void batch_labels(const int64_t* labels, int n, int64_t ignore_index, int32_t* y32, S* yf) {
  for (int k = 0; k < n; ++k) y32[k] = labels[k] == ignore_index ? -1 : int32_t(labels[k]);
  for (int k = 0; k < n; ++k) yf[k] = S(y32[k]);
}

template <class V, class = void>
struct HasLabelLoad : std::false_type {};
template <class V>
struct HasLabelLoad<V, std::void_t<decltype(V::has_label_load)>> : std::bool_constant<V::has_label_load> {};

// The labels of W rows as floats, -1 where ignored: V's own load where it has one, else read
// from yf, batch_labels' floats. (AVX-512's load in the few-class kernel: 65536 x 3, C++
// kernels alone, one thread, medians of six alternating runs, forward 69.3 -> 67.2 us, fused
// 85.0 -> 82.0. In the general row-per-lane kernel, whose batch arrays need the labels as
// int32 too, it changed nothing at 65536 x 10.)
// Where ignore_index is a negative int32 (PyTorch's -100) the labels' low halves alone are right
// (an ignored row's is below every class), and V's load leaves out finding the ignored rows
// (the test is the same every call of a loop: the compiler chooses once, outside it).
template <class V>
FX_ALWAYS_INLINE V group_labels(const int64_t* labels, int64_t ignore_index, const typename V::scalar* yf) {
  if constexpr (HasLabelLoad<V>::value) {
    (void)yf;
    const bool negative_ignore = ignore_index < 0 && ignore_index >= INT32_MIN;
    return negative_ignore ? V::load_labels_low(labels) : V::load_labels(labels, ignore_index);
  } else {
    (void)labels;
    (void)ignore_index;
    return V::load(yf);
  }
}

// A lane per row: -log p_y (nll), log s and lse from rest (the other classes' exps), ey (the
// label's), s = rest + ey, dy = z_y - m and shift = m.
template <class V>
struct RowLossTerms {
  V nll, log_s, lse;
};

template <class V>
FX_ALWAYS_INLINE RowLossTerms<V> row_loss_terms(V rest, V ey, V s, V dy, V shift) {
  using S = typename V::scalar;
  const V one = V::set1(S(1));
  // -log p_y: (m - z_y) + log s, or where p_y > 1/2, log1p(u) with u = rest / ey, and
  // then log s = (z_y - m) + log1p(u). p_y > 1/2 (rest < ey) only where the label is the
  // row's strict max, so ey = exp(0) = 1 exactly there and u = rest, no division.
  // log1p(u) = log(v) - ((v - 1) - u) / v with v = 1 + u rounded is exact to rounding;
  // 1 / v is taken as 2 - v (error (v - 1)^2 / v on a correction below half an ulp of v:
  // at most 0.35 ulp of the result), a second division saved.
  const auto confident = vlt(rest, ey);
  const V u = rest, vu = one + u;
  const V log_arg = vlog(vselect(confident, vu, s));
  const V log1p_u = log_arg - ((vu - one) - u) * (V::set1(S(2)) - vu);
  const V nll = vselect(confident, log1p_u, log_arg - dy);
  const V log_s = vselect(confident, dy + log1p_u, log_arg);
  // An all -inf row: lse = -inf (its loss and gradient are NaN from -inf - -inf).
  const V lse = vselect(veq(shift, V::set1(S(-kInf))), shift, shift + log_s);
  return {nll, log_s, lse};
}

// Backward from the caller's lse: the label's p_y is renormalised by 1 / s only where that lse
// is the forward's (sum_is_one); elsewhere inv_s = 1 and 1 - p_y = 1 - ey as given.
template <class V>
FX_ALWAYS_INLINE void renormalise_if_forward_lse(V s, V rest, V ey, V lse, int classes, V& inv_s, V& one_minus_py) {
  using S = typename V::scalar;
  const V zero = V::set1(S(0)), one = V::set1(S(1)), deviation = s - one;
  const V tolerance = (vmax(lse, zero - lse) + V::set1(S(classes))) * V::set1(S(kSumIsOneSlack<S>));
  const auto renormalise = vlt(vmax(deviation, zero - deviation), tolerance);
  inv_s = vselect(renormalise, inv_s, one);
  one_minus_py = vselect(renormalise, rest, one - ey);
}

// kClasses: C when fixed at compile time (float rows), 0 when read from a.
// kBlocks = ceil(C / W), fixed at compile time: the loops over the column blocks (loads,
// transposes, stores) unroll and their vectors stay at fixed places.
template <class T, CeMode kMode, bool kSmooth, bool kWeighted, int kBlocks, int kClasses>
void ce_small_rows_mode(const CeArgs& a, int64_t r0, int64_t r1) {
  using S = compute_t<T>;
  using V = typename VecFor<S>::type;
  constexpr int W = V::width;
  constexpr int kMaxCols = int(kSmallRowClasses<S>);
  constexpr bool kGrad = kMode != CeMode::forward;
  constexpr bool kLoss = kMode != CeMode::backward;
  // Copies of what the loops read: stores through the output pointers could alias a's fields.
  const int C = kClasses > 0 ? kClasses : int(a.classes);
  constexpr int blocks = kBlocks;
  const T* logits = static_cast<const T*>(a.logits);
  const int64_t logits_stride = a.logits_stride, grad_stride = a.grad_stride;
  const int64_t* labels = a.labels;
  const int64_t ignore_index = a.ignore_index;
  const double grad_scale = a.grad_scale, smoothing = a.smoothing, weight_total_d = a.weight_total;
  const double* grad_rows = a.grad_rows;
  double* row_loss = a.row_loss;
  T* grad = static_cast<T*>(a.grad);
  S* lse_io = static_cast<S*>(a.lse);
  const S* w = weight_of<S>(a);
  // 1 - eps; a literal 1 without smoothing, so that the products with it fold away.
  const S keep_label = kSmooth ? S(1.0 - smoothing) : S(1), eps_per_class = S(smoothing / double(C));
  const S weight_total = S(weight_total_d);
  const V zero = V::set1(S(0)), one = V::set1(S(1));
  V wv[kMaxCols];
  // Classes of weight 0 add nothing to the smoothing sum, also at a -inf logit (0 * -inf).
  bool weight_counts[kMaxCols];
  if constexpr (kWeighted) {
    for (int j = 0; j < C; ++j) {
      wv[j] = V::set1(w[j]);
      weight_counts[j] = !(double(w[j]) < kTinyWeight && double(w[j]) > -kTinyWeight);
    }
  }
  // 16-bit rows are widened into stage (contiguous rows), and their gradient rounded from it.
  alignas(64) S stage[kNarrow<T> ? kMaxCols * W : 1];
  // Per row of the batch: in, the label as a float (-1 when ignored), its weight (0 when
  // ignored), the gradient scale; out, the loss without smoothing, log s and t (smoothing),
  // rest and ey (the label's gradient of 16-bit rows).
  alignas(64) S yf_b[kSmallBatch], wy_b[kSmallBatch], g_b[kGrad ? kSmallBatch : 1];
  alignas(64) S loss_b[kLoss ? kSmallBatch : 1];
  alignas(64) S log_s_b[kLoss && kSmooth ? kSmallBatch : 1], t_b[kLoss && kSmooth ? kSmallBatch : 1];
  alignas(64) S rest_b[kSmallBatch], ey_b[kSmallBatch];
  alignas(64) S dy_b[kLoss ? kSmallBatch : 1], shift_b[kLoss ? kSmallBatch : 1];
  alignas(64) S alpha_b[kGrad ? kSmallBatch : 1], label_b[kGrad ? kSmallBatch : 1];
  alignas(64) S smooth_b[kGrad && kSmooth ? kSmallBatch : 1];
  // z-loss (z_loss lse^2 per row; 2 z_loss lse p_j in the gradient, the z term's own scale per
  // row) and accuracy (1 where the row's first maximum is the label and no logit is NaN).
  const bool want_z = a.z_loss != 0.0, want_correct = kLoss && a.correct != nullptr;
  const double z_loss = a.z_loss, z_grad_scale = a.z_grad_scale;
  double* row_z = a.row_z;
  uint8_t* correct = a.correct;
  alignas(64) S zg_b[kGrad ? kSmallBatch : 1], correct_b[kLoss ? kSmallBatch : 1];
  // The batch's exp values (then gradients), a group of W rows per kGroupCols vectors (its
  // column blocks: no more, so that the batch's working set stays in L1 beside the rows).
  constexpr int kGroupCols = kBlocks * W;
  // The classes in the last column block, when C is fixed (else W: all lanes treated as live).
  constexpr int kLastLive = kClasses > 0 ? kClasses - (kBlocks - 1) * W : W;
  V ebuf[kSmallBatch / W * kGroupCols];
  // In place, the rows' lines are fetched a batch ahead for ownership: lines another core
  // wrote last (the layer before, or a copy) would otherwise come shared to the load and be
  // claimed again by the gradient's store.
  const bool in_place = kGrad && static_cast<const void*>(grad) == static_cast<const void*>(logits) &&
                        grad_stride == logits_stride;
  constexpr int64_t kAhead = 4 * kSmallBatch;
  int64_t i0 = r0;
  for (; i0 + W <= r1; i0 += kSmallBatch) {
    const int rows = int(min64(kSmallBatch, (r1 - i0) / W * W));
    if (in_place) prefetch_rows_for_write(logits, logits_stride, C, i0 + kAhead, min64(i0 + kAhead + kSmallBatch, r1));
    alignas(64) int32_t y32[kSmallBatch];
    batch_labels(labels + i0, rows, ignore_index, y32, yf_b);
    if (w) {
      for (int k = 0; k < rows; ++k) wy_b[k] = y32[k] < 0 ? S(0) : w[y32[k]];
    } else {
      for (int k = 0; k < rows; ++k) wy_b[k] = y32[k] < 0 ? S(0) : S(1);
    }
    // One flag for the batch (a loop that vectorises): only batches with an ignored row pay
    // for zeroing the gradient of ignored rows.
    int32_t label_bits = 0;
    for (int k = 0; k < rows; ++k) label_bits |= y32[k];
    const bool batch_has_ignored = label_bits < 0;  // the sign bit: some label is -1
    if constexpr (kGrad) {
      if (grad_rows) {
        for (int k = 0; k < rows; ++k) g_b[k] = S(grad_scale * grad_rows[i0 + k]);
        if (want_z) {
          for (int k = 0; k < rows; ++k) zg_b[k] = S(z_grad_scale * grad_rows[i0 + k]);
        }
      }
    }
    // Passes over the batch's groups of W rows, so that the out-of-order core overlaps
    // groups: within one group, load -> transpose -> max -> exp -> sum -> log / divide ->
    // gradient -> stores is one long chain, longer than the reorder window.
    // 1: load, transpose, the shift (max, or lse in backward).
    for (int k = 0; k < rows; k += W) {
      const int64_t i = i0 + k;
      V* cols = ebuf + (k / W) * kGroupCols;

      // Load and transpose: cols[j] = class j of the W rows.
      const S* src;
      int64_t src_stride;
      if constexpr (kNarrow<T>) {
        const T* x = logits + i * logits_stride;
        for (int l = 0; l < W; ++l) {
          for_each_vector<S>(C, [&](auto v, int64_t j, int) {
            decltype(v)::load(x + l * logits_stride + j).store(stage + l * C + j);
          });
        }
        src = stage;
        src_stride = C;
      } else {
        src = logits + i * logits_stride;
        src_stride = logits_stride;
      }
      if (!load_row_columns(C, src, src_stride, cols)) {
        for (int b = 0; b < blocks; ++b) {
          V* r = cols + b * W;
          if (b + 1 < blocks) {  // a whole block
            for (int l = 0; l < W; ++l) r[l] = V::load(src + l * src_stride + b * W);
            transpose_square(r);
          } else if (last_block_of_two<V>(C)) {
            load_two_columns(src + b * W, src_stride, r);
          } else {
            for (int l = 0; l < W; ++l) r[l] = V::load_first(src + l * src_stride + b * W, C - b * W);
            transpose_square<V, W, kLastLive>(r);
          }
        }
      }

      if constexpr (kMode != CeMode::backward) {
        V m = cols[0];
        for (int j = 1; j < C; ++j) m = vmax(m, cols[j]);
        m.store(shift_b + k);
        if (want_correct) {
          // The first class equal to the max, and whether some logit is NaN (m alone may not
          // show it: max passes a NaN only in its second operand).
          V first = V::set1(S(C)), nan = zero;
          for (int j = C - 1; j >= 0; --j) {
            first = vselect(veq(cols[j], m), V::set1(S(j)), first);
            nan = vselect(veq(cols[j], cols[j]), nan, one);
          }
          vselect(veq(first, V::load(yf_b + k)), vselect(veq(nan, zero), one, zero), zero).store(correct_b + k);
        }
      }
    }
    // 2: exp per class; the label's (ey) apart from the others' (rest); dy = z_y - shift.
    for (int k = 0; k < rows; k += W) {
      const V yf = V::load(yf_b + k);
      V* cols = ebuf + (k / W) * kGroupCols;
      const V shift = V::load(kMode == CeMode::backward ? lse_io + i0 + k : shift_b + k);
      V rest = zero, ey = zero, dy = zero, t = zero;
      V jv = zero;  // the class index j in every lane
      for (int j = 0; j < C; ++j, jv = jv + one) {
        const V d = cols[j] - shift;
        const V e = vexp<V, kMode != CeMode::backward>(d);  // (backward: the caller's lse)
        const auto other = vne(yf, jv);
        ey = pick_unless(other, e, ey);
        rest = add_where(other, rest, e);
        if constexpr (kLoss) dy = pick_unless(other, d, dy);
        if constexpr (kSmooth && kLoss) {
          const V scaled = d * V::set1(S(kSmoothSumScale));  // no float overflow near FLT_MAX
          if constexpr (kWeighted) {
            if (weight_counts[j]) t = fmadd(wv[j], scaled, t);
          } else {
            t = t + scaled;
          }
        }
        if constexpr (kGrad) cols[j] = e;
      }
      rest.store(rest_b + k);
      ey.store(ey_b + k);
      if constexpr (kLoss) {
        dy.store(dy_b + k);
        if constexpr (kSmooth) t.store(t_b + k);
      }
    }
    // 3: per row, the loss, lse and the gradient's coefficients.
    for (int k = 0; k < rows; k += W) {
      const int64_t i = i0 + k;
      const V wy = V::load(wy_b + k);
      const auto keep = vlt(V::set1(S(-0.5)), V::load(yf_b + k));
      const V rest = V::load(rest_b + k), ey = V::load(ey_b + k);
      const V s = rest + ey;
      (void)i;
      if constexpr (kLoss) {
        const auto [nll, log_s, lse] = row_loss_terms(rest, ey, s, V::load(dy_b + k), V::load(shift_b + k));
        zero_unless(keep, lse).store(lse_io + i);
        // A label of target weight 0 adds 0, even at nll = inf.
        const V label_weight = V::set1(keep_label) * wy;
        const V label_term = vselect(veq(label_weight, zero), zero, label_weight * nll);
        zero_unless(keep, label_term).store(loss_b + k);
        if constexpr (kSmooth) log_s.store(log_s_b + k);
      }

      if constexpr (kGrad) {
        // grad_j = p_j p_coef - smooth_coef w_j, and at the label
        // -label_coef rest / s + smooth_coef (W p_y - w_y); 0 in ignored rows (even NaN rows).
        const V g = grad_rows ? V::load(g_b + k) : V::set1(S(grad_scale));
        const V label_coef = g * V::set1(keep_label) * wy;
        V inv_s = one / s, one_minus_py = rest;  // times inv_s
        if constexpr (kMode == CeMode::backward) {
          renormalise_if_forward_lse(s, rest, ey, V::load(lse_io + i), C, inv_s, one_minus_py);
        }
        V p_coef = label_coef, smooth_coef = zero, label = zero - label_coef * (one_minus_py * inv_s);
        if constexpr (kSmooth) {
          smooth_coef = g * V::set1(eps_per_class);
          p_coef = fmadd(smooth_coef, V::set1(weight_total), label_coef);
          label = fmadd(smooth_coef, V::set1(weight_total) * (ey * inv_s) - wy, label);
        }
        if (want_z) {
          // lse: stored above (fused; 0 in ignored rows), or the caller's (backward).
          const V zg = grad_rows ? V::load(zg_b + k) : V::set1(S(z_grad_scale));
          const V z_coef = zg * V::set1(S(2 * z_loss)) * V::load(lse_io + i);
          p_coef = p_coef + z_coef;
          label = fmadd(z_coef, ey * inv_s, label);
        }
        // In backward cols hold exp(z - lse) = p already; in the fused pass exp(z - m) = p s.
        (kMode == CeMode::backward ? p_coef : p_coef * inv_s).store(alpha_b + k);
        label.store(label_b + k);
        if constexpr (kSmooth) smooth_coef.store(smooth_b + k);
      }
    }
    // 4: the gradient, transposed back to rows and stored.
    if constexpr (kGrad) {
      for (int k = 0; k < rows; k += W) {
        const int64_t i = i0 + k;
        const V yf = V::load(yf_b + k);
        const auto keep = vlt(V::set1(S(-0.5)), yf);
        V* cols = ebuf + (k / W) * kGroupCols;
        const V alpha = V::load(alpha_b + k), label = V::load(label_b + k);
        V smooth_coef = zero;
        if constexpr (kSmooth) smooth_coef = V::load(smooth_b + k);
        V jv = zero;
        for (int j = 0; j < C; ++j, jv = jv + one) {
          V gj = cols[j] * alpha;
          if constexpr (kSmooth) gj = gj - (kWeighted ? smooth_coef * wv[j] : smooth_coef);
          cols[j] = vselect(veq(yf, jv), label, gj);
        }
        if (batch_has_ignored) {
          for (int j = 0; j < C; ++j) cols[j] = zero_unless(keep, cols[j]);
        }
        S* dst;
        int64_t dst_stride;
        if constexpr (kNarrow<T>) {
          dst = stage;
          dst_stride = C;
        } else {
          dst = grad + i * grad_stride;
          dst_stride = grad_stride;
        }
        if (store_row_columns(C, cols, dst, dst_stride)) {
          // stored by blends and permutes
        } else if (last_block_of_two<V>(C)) {
          // The other blocks are whole: rows of plain stores.
          for (int b = 0; b + 1 < blocks; ++b) transpose_square(cols + b * W);
          for (int l = 0; l < W; ++l) {
            for (int b = 0; b + 1 < blocks; ++b) cols[b * W + l].store(dst + l * dst_stride + b * W);
          }
          store_two_columns(cols + (blocks - 1) * W, dst + (blocks - 1) * W, dst_stride);
        } else {
          for (int b = 0; b + 1 < blocks; ++b) transpose_square(cols + b * W);
          transpose_square<V, kLastLive, W>(cols + (blocks - 1) * W);
          // Rows in order, each a full vector per block: with contiguous rows, what a vector
          // writes past its row's n classes is rewritten by the next store, so only the stores
          // that would pass the group's end (and every store of strided rows) are cut to n
          // classes (store_first).
          // Contiguous rows: row l's vectors stay inside the group for l < plain_rows.
          const int plain_rows = dst_stride == C ? int((int64_t(W) * C - blocks * W) / C) + 1 : 0;
          const int last_n = C - (blocks - 1) * W;
          int l = 0;
          for (; l < plain_rows && l < W; ++l) {
            S* row = dst + l * dst_stride;
            for (int b = 0; b < blocks; ++b) cols[b * W + l].store(row + b * W);
          }
          for (; l < W; ++l) {
            S* row = dst + l * dst_stride;
            for (int b = 0; b + 1 < blocks; ++b) cols[b * W + l].store(row + b * W);
            cols[(blocks - 1) * W + l].store_first(row + (blocks - 1) * W, last_n);
          }
        }
        if constexpr (kNarrow<T>) {
          T* gout = grad + i * grad_stride;
          for (int l = 0; l < W; ++l) {
            T* grow = gout + l * grad_stride;
            for_each_vector<S>(C, [&](auto v, int64_t j, int) {
              decltype(v)::load(stage + l * C + j).store(grow + j);
            });
          }
        }
      }
    }
    if constexpr (kLoss) {
      for (int k = 0; k < rows; ++k) {
        double loss = double(loss_b[k]);
        if constexpr (kSmooth) {
          if (yf_b[k] >= 0) {
            loss += smoothing_loss(a, double(shift_b[k]), double(log_s_b[k]),
                                   double(t_b[k]) / kSmoothSumScale);
          }
        }
        row_loss[i0 + k] = loss;
      }
      if (want_z) {
        for (int k = 0; k < rows; ++k) {
          const double lse = double(lse_io[i0 + k]);  // (0 in ignored rows)
          row_z[i0 + k] = z_loss * lse * lse;
        }
      }
      if (want_correct) {
        for (int k = 0; k < rows; ++k) correct[i0 + k] = correct_b[k] != S(0);
      }
    }
    if constexpr (kNarrow<T> && kGrad) {
      // The label's entry is rounded once to 16 bits from double (as in the general path).
      for (int k = 0; k < rows; ++k) {
        if (yf_b[k] < 0) continue;
        const int64_t y = int64_t(yf_b[k]);
        const GradCoefs c = grad_coefs(a, i0 + k, double(wy_b[k]), double(lse_io[i0 + k]));
        const double rest = double(rest_b[k]), ey = double(ey_b[k]);
        const bool renormalise = kMode != CeMode::backward ||
                                 sum_is_one<float>(rest + ey, double(lse_io[i0 + k]), C);
        grad[(i0 + k) * grad_stride + y] = narrow_from_double<T>(label_grad_from_rest(
            rest, ey, c.label_coef, c.smooth_coef, weight_total_d, double(wy_b[k]), c.z_coef, renormalise));
      }
    }
    if (rows < kSmallBatch) {
      i0 += rows;
      break;
    }
  }
  if (i0 < r1) ce_rows<T, kSmooth, kWeighted>(a, i0, r1, kMode);
}

#include "kernel_few_classes.h"  // (uses the helpers above)

template <class T, bool kSmooth, bool kWeighted, int kBlocks, int kClasses = 0>
void ce_small_rows_blocks(const CeArgs& a, int64_t r0, int64_t r1, CeMode mode) {
  switch (mode) {
    case CeMode::forward: return ce_small_rows_mode<T, CeMode::forward, kSmooth, kWeighted, kBlocks, kClasses>(a, r0, r1);
    case CeMode::fused: return ce_small_rows_mode<T, CeMode::fused, kSmooth, kWeighted, kBlocks, kClasses>(a, r0, r1);
    case CeMode::backward: return ce_small_rows_mode<T, CeMode::backward, kSmooth, kWeighted, kBlocks, kClasses>(a, r0, r1);
  }
}

// float rows without label smoothing (class weights then only scale the label's term, so
// kWeighted is false) get one instantiation per class count: with C known, the loops over
// classes unroll, the column vectors get fixed places and the odd-C switch folds away (about
// 20% fewer instructions per row at C = 3 and 10). Smoothed rows share the per-block code:
// fixing C for them too grew the library by 1.7 MB.
template <class T, bool kSmooth, bool kWeighted, int kClasses>
void ce_small_rows_fixed(const CeArgs& a, int64_t r0, int64_t r1, CeMode mode) {
  using V = typename VecFor<compute_t<T>>::type;
  constexpr int W = V::width;
  if (!kNarrow<T> && !kSmooth && few_class_rows_apply<V, kClasses>(a)) {
    switch (mode) {
      case CeMode::forward: r0 = few_class_rows<V, CeMode::forward, kClasses>(a, r0, r1); break;
      case CeMode::fused: r0 = few_class_rows<V, CeMode::fused, kClasses>(a, r0, r1); break;
      case CeMode::backward: r0 = few_class_rows<V, CeMode::backward, kClasses>(a, r0, r1); break;
    }
  }
  ce_small_rows_blocks<T, kSmooth, kWeighted, (kClasses + W - 1) / W, kClasses>(a, r0, r1, mode);
}

using SmallRowsFn = void (*)(const CeArgs&, int64_t, int64_t, CeMode);

template <class T, bool kSmooth, bool kWeighted, int... kIndex>
constexpr SmallRowsFn kSmallRowsFixed[] = {&ce_small_rows_fixed<T, kSmooth, kWeighted, kIndex + 1>...};

template <class T, bool kSmooth, bool kWeighted, int... kIndex>
SmallRowsFn small_rows_fixed(int64_t classes, std::integer_sequence<int, kIndex...>) {
  return kSmallRowsFixed<T, kSmooth, kWeighted, kIndex...>[classes - 1];
}

template <class T, bool kSmooth, bool kWeighted>
void ce_small_rows(const CeArgs& a, int64_t r0, int64_t r1, CeMode mode) {
  constexpr int W = VecFor<compute_t<T>>::type::width;
  static_assert(kSmallRowClasses<compute_t<T>> == 4 * W, "at most 4 column blocks");
  // C fixed for float rows of up to kSmallClasses, and for float64 rows of up to 8 with AVX-512
  // (the few-class kernel's).
  constexpr int kFixed = std::is_same_v<T, float> ? int(kSmallClasses) : std::is_same_v<T, double> && W == 8 ? W : 0;
  if constexpr (kFixed > 0 && !kSmooth && !kWeighted) {
    if (a.classes <= kFixed) {
      return small_rows_fixed<T, kSmooth, kWeighted>(a.classes, std::make_integer_sequence<int, kFixed>{})(a, r0, r1, mode);
    }
  }
  switch ((a.classes + W - 1) / W) {
    case 1: return ce_small_rows_blocks<T, kSmooth, kWeighted, 1>(a, r0, r1, mode);
    case 2: return ce_small_rows_blocks<T, kSmooth, kWeighted, 2>(a, r0, r1, mode);
    case 3: return ce_small_rows_blocks<T, kSmooth, kWeighted, 3>(a, r0, r1, mode);
    case 4: return ce_small_rows_blocks<T, kSmooth, kWeighted, 4>(a, r0, r1, mode);
    default: break;
  }
}
