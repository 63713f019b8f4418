// The plainest calls with a handful of classes (float rows, contiguous, at most kFewClasses
// classes that V moves to columns without a transpose, or with AVX-512 up to 16 classes
// transposed in registers; with AVX-512 float64 rows of up to 8 classes too; no class weights,
// no per-row grad_output, no z-loss, no accuracy),
// included by kernel_small_rows.h inside an ISA namespace.
//
// The same arithmetic as ce_small_rows_mode, in the same order (so the same bits), but with the
// few column vectors of kGroups groups of W rows held in registers from load to store: no batch
// arrays of per-row scalars and exp values between passes, and no per-row weight or scale. The
// groups are still taken pass by pass (all loads, then all exps, then the per-row results and
// stores), which keeps several groups' long chains in flight at once. At 65536 x 3 (AVX-512,
// one thread, C++ kernels alone) fused 120 -> 95 us, forward 87 -> 79, backward 82 -> 66.

constexpr int kFewClasses = 7;

// The loops over groups and classes unrolled (AVX-512, 65536 x 3, one thread: fused 88 -> 84
// us, forward 71 -> 67). With AVX2's 16 registers the unrolled groups had spilled more than the
// rolled loops' arrays on the stack (x 5 fused 234 -> 251 us, 2026-12-02); with today's shorter
// loops unrolling wins there too (one thread, C++ alone: x 3 forward 124 -> 112-118 us, fused
// 142-149 -> 134-142; x 5 backward 202 -> 188-191; x 1 and x 7 two threads 3-8% faster).

// Beyond kFewClasses, up to a whole vector of classes where V has an in-register transpose of
// 16 lanes (AVX-512): the W rows of a group are loaded one per vector and transposed, as the
// general kernel does, two groups at a time (one group alone was slower than the general
// kernel at 10 classes). C++ kernels alone, one thread, medians of four runs: 65536 x 10
// forward 247 -> 221 us, fused 424 -> 348, backward 370 -> 330; x 9 fused 363 -> 279; x 16
// fused 613 -> 474. (AVX2's 8 x 8 transposes of 9-16 classes would need two column blocks.)
// float64 rows likewise up to 8 classes with AVX-512 (one transposed block of 8 doubles; C++
// kernels alone, one thread, three alternating runs: 65536 x 3 forward 336 -> 278 us, fused
// 501 -> 346, backward 380 -> 276; x 8 fused 946 -> 727), since 2026-12-04 only from 6 classes:
// rows of 1-5 move by VecD's lane permutes (VecD::has_columns).
template <class V>
constexpr bool has_columns_for(int C) {
  if constexpr (HasColumns<V>::value) {
    return V::has_columns(C);
  } else {
    return false;
  }
}

template <class V, int C>
constexpr bool kTransposedFew =
    HasTranspose<V>::value && C <= V::width &&
    (std::is_same_v<typename V::scalar, float> ? V::width == 16 && C > kFewClasses
                                               : V::width == 8 && !has_columns_for<V>(C));

template <class V, int C>
constexpr int kFewGroups = C <= 5 ? 4 : 2;

// Has V a few-class kernel for C classes?
template <class V, int C>
constexpr bool few_class_fits() {
  if constexpr (kTransposedFew<V, C>) {
    return true;
  } else if constexpr (C <= kFewClasses) {
    return has_columns_for<V>(C);
  } else {
    return false;
  }
}

// cols[j] = class j of the W contiguous rows of C classes at src.
template <class V, int C>
FX_ALWAYS_INLINE void load_group_columns(const typename V::scalar* src, V* cols) {
  if constexpr (kTransposedFew<V, C>) {
    constexpr int W = V::width;
    V r[W];
    for (int l = 0; l < W; ++l) r[l] = C == W ? V::load(src + l * C) : V::load_first(src + l * C, C);
    transpose_square<V, W, C>(r);
    for (int j = 0; j < C; ++j) cols[j] = r[j];
  } else {
    V::template load_columns<C>(src, cols);
  }
}

// The W contiguous rows of C classes at dst from cols[j] = class j.
template <class V, int C>
FX_ALWAYS_INLINE void store_group_columns(const V* cols, typename V::scalar* dst) {
  if constexpr (kTransposedFew<V, C>) {
    constexpr int W = V::width;
    V r[W];
    for (int j = 0; j < C; ++j) r[j] = cols[j];
    transpose_square<V, C, W>(r);
    // A whole vector per row while it ends inside the group (the next row's store rewrites
    // what it wrote past its own row), then cut to the row.
    constexpr int kPlainRows = (W * C - W) / C + 1;
    for (int l = 0; l < W; ++l) {
      if (l < kPlainRows) {
        r[l].store(dst + l * C);
      } else {
        r[l].store_first(dst + l * C, C);
      }
    }
  } else {
    V::template store_columns<C>(cols, dst);
  }
}

// Can few_class_rows take this call (the caller has T = float, C fixed, no smoothing)?
template <class V, int C>
FX_ALWAYS_INLINE bool few_class_rows_apply(const CeArgs& a) {
  return few_class_fits<V, C>() && a.logits_stride == C && (a.grad == nullptr || a.grad_stride == C) &&
         a.weight_f32 == nullptr && a.weight_f64 == nullptr && a.grad_rows == nullptr && a.z_loss == 0.0 &&
         a.correct == nullptr;
}

// loss_sums.h's kSumLanes running sums of one block of rows, held in double vectors: each group's
// W losses add to the first W / D::width vectors, which then rotate to the back, so value k of
// the block reaches sum k % kSumLanes in order, as sum_values has it (the same bits). With a
// memory array of sums each group's adds waited on the group before's stores (65536 x 3
// forward, one thread: AVX2 140 -> 134 us, AVX-512 67 -> 66; fused and 5 classes unchanged).
template <class V>
struct BlockLanes {
  using D = typename VecFor<double>::type;
  static constexpr int kPerGroup = V::width / D::width, kVecs = kSumLanes / D::width;
  static_assert(kSumLanes % V::width == 0 && V::width % D::width == 0, "a group fills whole lane vectors");
  D lane[kVecs];

  FX_ALWAYS_INLINE void reset() {
    for (int k = 0; k < kVecs; ++k) lane[k] = D::set1(0.0);  // 0.0 + the first value, as there
  }
  FX_ALWAYS_INLINE void add(V values) {
    D wide[kPerGroup];
    widen(values, wide);
    D next[kVecs];
    for (int k = 0; k < kVecs - kPerGroup; ++k) next[k] = lane[k + kPerGroup];
    for (int k = 0; k < kPerGroup; ++k) next[kVecs - kPerGroup + k] = lane[k] + wide[k];
    for (int k = 0; k < kVecs; ++k) lane[k] = next[k];
  }
  // At a block's end (the lanes back in order): the block's sum, as fold_sums; the lanes reset.
  FX_ALWAYS_INLINE double fold() {
    alignas(64) double sums[kSumLanes];
    for (int k = 0; k < kVecs; ++k) lane[k].store(sums + k * D::width);
    reset();
    return fold_sums(sums);
  }
};

// Rows [r0, r1) in whole batches of kFewGroups * W rows; returns where it stopped (the caller
// takes the rest).
template <class V, CeMode kMode, int C>
int64_t few_class_rows(const CeArgs& a, int64_t r0, int64_t r1) {
  if constexpr (few_class_fits<V, C>()) {
    using S = typename V::scalar;
    constexpr int W = V::width, G = kFewGroups<V, C>;
    constexpr bool kGrad = kMode != CeMode::forward, kLoss = kMode != CeMode::backward;
    const S* logits = static_cast<const S*>(a.logits);
    S* grad = static_cast<S*>(a.grad);
    S* lse_io = static_cast<S*>(a.lse);
    // (fused calls' lse is never read: only a forward's is stored, and only when wanted)
    const bool lse_wanted = kMode == CeMode::forward && !a.lse_unread;
    double* row_loss = a.row_loss;
    const int64_t* labels = a.labels;
    const int64_t ignore_index = a.ignore_index;
    const V zero = V::set1(S(0)), one = V::set1(S(1)), g = V::set1(S(a.grad_scale));
    const bool in_place = kGrad && static_cast<const void*>(grad) == static_cast<const void*>(logits);
    constexpr int64_t kBatch = int64_t(G) * W, kAhead = 4 * kSmallBatch;
    static_assert(kSumBlock % kBatch == 0 && kSumLanes % W == 0, "a group lies in one block's lane run");
    // The whole blocks of the loss sums among these rows, when they start on a block: summed
    // here as they go (in loss_sums.h's order), their per-row losses not written (saves a
    // store of 8 bytes a row here and a pass over them after: 65536 x 3 fused, 1 thread, 8%).
    double* const block_loss = a.block_loss;
    uint8_t* const block_done = a.block_done;
    const int64_t summed_end =
        kLoss && block_loss && r0 % kSumBlock == 0 ? (r0 + (r1 - r0) / kBatch * kBatch) / kSumBlock * kSumBlock : r0;
    static_assert(kBatch % kSumLanes == 0, "every batch starts on lane 0");
    BlockLanes<V> lanes;
    lanes.reset();
    int64_t i = r0;
    for (; i + kBatch <= r1; i += kBatch) {
      if (in_place) prefetch_rows_for_write(logits, C, C, i + kAhead, min64(i + kAhead + kBatch, r1));
      alignas(64) int32_t y32[kBatch];
      alignas(64) S yf[kBatch];
      if constexpr (!HasLabelLoad<V>::value) batch_labels(labels + i, int(kBatch), ignore_index, y32, yf);
      V cols[G][C], yv[G], shift[G], rest[G], ey[G], dy[G];
      FX_UNROLL
      for (int q = 0; q < G; ++q) {
        yv[q] = group_labels<V>(labels + i + q * W, ignore_index, yf + q * W);
        load_group_columns<V, C>(logits + (i + q * W) * C, cols[q]);
        if constexpr (kLoss) {
          V m = cols[q][0];
          FX_UNROLL
          for (int j = 1; j < C; ++j) m = vmax(m, cols[q][j]);
          shift[q] = m;
        } else {
          shift[q] = V::load(lse_io + i + q * W);
        }
      }
      FX_UNROLL
      for (int q = 0; q < G; ++q) {
        V r = zero, e_y = zero, d_y = zero, jv = zero;
        FX_UNROLL
        for (int j = 0; j < C; ++j, jv = jv + one) {
          const V d = cols[q][j] - shift[q];
          const V e = vexp<V, kLoss>(d);
          const auto other = vne(yv[q], jv);
          e_y = pick_unless(other, e, e_y);
          r = add_where(other, r, e);
          if constexpr (kLoss) d_y = pick_unless(other, d, d_y);
          cols[q][j] = e;
        }
        rest[q] = r;
        ey[q] = e_y;
        dy[q] = d_y;
      }
      FX_UNROLL
      for (int q = 0; q < G; ++q) {
        const int64_t row = i + q * W;
        const auto keep = vlt(V::set1(S(-0.5)), yv[q]);
        const V s = rest[q] + ey[q];
        if constexpr (kLoss) {
          const auto terms = row_loss_terms(rest[q], ey[q], s, dy[q], shift[q]);
          const V nll = terms.nll;
          if (lse_wanted) zero_unless(keep, terms.lse).store(lse_io + row);
          const V loss = zero_unless(keep, nll);
          if (row < summed_end) {
            lanes.add(loss);
            if ((row + W) % kSumBlock == 0) {
              block_loss[row / kSumBlock] = lanes.fold();
              block_done[row / kSumBlock] = 1;
            }
          } else {
            alignas(64) S stored[W];
            loss.store(stored);
            for (int k = 0; k < W; ++k) row_loss[row + k] = double(stored[k]);
          }
        }
        if constexpr (kGrad) {
          const V label_coef = zero_unless(keep, g);
          V inv_s = one / s, one_minus_py = rest[q];
          if constexpr (kMode == CeMode::backward) {
            renormalise_if_forward_lse(s, rest[q], ey[q], shift[q], C, inv_s, one_minus_py);
          }
          const V label = zero - label_coef * (one_minus_py * inv_s);
          const V alpha = kMode == CeMode::backward ? label_coef : label_coef * inv_s;
          // 0 in ignored rows, NaN rows too, as they are scaled (AVX-512: a zero-masked
          // multiply); their label is below every class, so no lane of theirs takes `label`.
          V jv = zero;
          FX_UNROLL
          for (int j = 0; j < C; ++j, jv = jv + one) {
            cols[q][j] = vselect(vne(yv[q], jv), zero_unless(keep, cols[q][j] * alpha), label);
          }
          store_group_columns<V, C>(cols[q], grad + row * C);
        }
      }
    }
    return i;
  }
  (void)a;
  (void)r1;
  return r0;
}
