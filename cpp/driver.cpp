#include "driver.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "dispatch.h"
#include "portable.h"
#include "thread_pool.h"

namespace fastxent {
namespace {

#include "simd/half_scalar.h"

#include "label_gate.h"
#include "loss_sums.h"

// Below this many logits a call runs on the calling thread: waking workers costs more.
constexpr int64_t kMinParallelLogits = 1 << 15;
// Split a row's classes across threads when rows are fewer than this many per thread...
constexpr int64_t kSplitRowsPerThread = 2;
// ...and the rows are at least this long.
constexpr int64_t kMinSplitClasses = 1 << 14;
// The most rows one vector holds (AVX-512's float lanes); task boundaries are multiples of it.
constexpr int64_t kTaskRowAlign = 16;

// One pass that only converts and flags (no branch per label, so it vectorises); the rare bad
// call is scanned again for its first bad label, before anything has been written.
// kCopy = false only checks and counts (int64 labels the kernels read in place).
template <class T, bool kCopy = true>
int64_t read_labels_t(const T* data, int64_t n, int64_t stride, int64_t classes, int64_t ignore_index,
                      int64_t* out) {
  bool bad = false;
  int64_t kept = 0;
  auto convert = [&](auto unit_stride) {
    const int64_t step = decltype(unit_stride)::value ? 1 : stride;
    for (int64_t i = 0; i < n; ++i) {
      const T raw = data[i * step];
      const int64_t v = int64_t(raw);
      bool ok = (uint64_t(v) < uint64_t(classes)) | (v == ignore_index);
      // An unsigned label beyond int64 wraps to a negative v: never a valid one.
      if constexpr (std::is_unsigned_v<T> && sizeof(T) == 8) ok &= v >= 0;
      bad |= !ok;
      kept += v != ignore_index;
      if constexpr (kCopy) out[i] = v;
    }
  };
  if (stride == 1) {
    convert(std::true_type{});  // contiguous: the compiler sees unit steps
  } else {
    convert(std::false_type{});
  }
  if (!bad) return kept;
  for (int64_t i = 0; i < n; ++i) {
    const T raw = data[i * stride];
    if constexpr (std::is_unsigned_v<T> && sizeof(T) == 8) {
      // No class index or int64 ignore_index is this large: always an error (the Python layer
      // reformats the message with the unsigned value).
      if (raw > uint64_t(std::numeric_limits<int64_t>::max())) throw LabelError(i, -1, classes, ignore_index);
    }
    const int64_t v = int64_t(raw);
    if ((v < 0 || v >= classes) && v != ignore_index) throw LabelError(i, v, classes, ignore_index);
  }
  return kept;  // (not reached: some label was bad)
}

void ce_rows(const KernelTable& table, const CeArgs& a, CeMode mode, int64_t r0, int64_t r1) {
  switch (mode) {
    case CeMode::forward: table.forward_rows(a, r0, r1); break;
    case CeMode::fused: table.fused_rows(a, r0, r1); break;
    case CeMode::backward: table.backward_rows(a, r0, r1); break;
  }
}

// The split-row path touches single elements here: the label's gradient (rounded once from
// double), ignored rows' zeros, the label's logit. T is the storage type of a.dtype.
template <class T>
void store_label_grad(const CeArgs& a, int64_t i, int64_t y, double value) {
  static_cast<T*>(a.grad)[i * a.grad_stride + y] = narrow_from_double<T>(value);
}

template <class T>
void zero_grad_row(const CeArgs& a, int64_t i) {
  std::memset(static_cast<T*>(a.grad) + i * a.grad_stride, 0, sizeof(T) * size_t(a.classes));
}

double widen(float v) { return v; }
double widen(double v) { return v; }
double widen(Half v) { return half_to_float(v); }
double widen(BFloat16 v) { return bf16_to_float(v); }

template <class T>
double logit_at(const CeArgs& a, int64_t i, int64_t j) {
  return widen(static_cast<const T*>(a.logits)[i * a.logits_stride + j]);
}

template <class F>
void with_storage_type(DType d, F&& f) {
  switch (d) {
    case DType::f32: f(float{}); break;
    case DType::f64: f(double{}); break;
    case DType::f16: f(Half{}); break;
    case DType::bf16: f(BFloat16{}); break;
  }
}

// Accuracy on the split path: no logit before the label's reaches the row's max m (the label's
// logit equals m). The row is read before any gradient is written over it.
bool first_max_is(const CeArgs& a, int64_t i, int64_t y, double m) {
  bool first = true;
  with_storage_type(a.dtype, [&](auto tag) {
    for (int64_t j = 0; j < y && first; ++j) first = logit_at<decltype(tag)>(a, i, j) < m;
  });
  return first;
}

bool row_has_nan(const CeArgs& a, int64_t i) {
  bool nan = false;
  with_storage_type(a.dtype, [&](auto tag) {
    for (int64_t j = 0; j < a.classes && !nan; ++j) nan = std::isnan(logit_at<decltype(tag)>(a, i, j));
  });
  return nan;
}

// Few, long rows: each row's classes are cut into slices; threads compute per-slice
// (max, sum) pairs, the pairs are merged here, then threads write the gradient slices.
void split_rows(const KernelTable& table, const CeArgs& a, CeMode mode, int threads) {
  const bool lse_f64 = a.dtype == DType::f64;  // else lse is float
  // 16-bit rows: the label's exp is kept apart from the rest's (RowStats::rest, ey), so that
  // 1 - p_y and -log p_y keep their precision near p_y = 1 (as in the kernels' ce_rows).
  const bool narrow = a.dtype == DType::f16 || a.dtype == DType::bf16;
  const int64_t C = a.classes, N = a.rows;
  const int64_t slices = threads;
  const int64_t slice_len = ((C + slices - 1) / slices + 63) / 64 * 64;
  auto slice_begin = [&](int64_t k) { return std::min(C, k * slice_len); };
  const bool smoothing = a.smoothing != 0.0;
  const double* w = a.weight_f64;

  std::vector<RowStats> parts(size_t(N * slices));
  const size_t rows = static_cast<size_t>(N);
  std::vector<double> shift(rows), alpha(rows), beta(rows), label_grad(rows);
  std::vector<double> rest(narrow ? rows : 0), ey(narrow ? rows : 0), label_coefs(narrow ? rows : 0),
      z_coefs(narrow ? rows : 0);
  if (mode != CeMode::backward) {
    parallel_run(N * slices, [&](int64_t task) {
      const int64_t i = task / slices, k = task % slices;
      if (a.labels[i] == a.ignore_index) return;
      parts[size_t(task)] = table.slice_stats(a, i, slice_begin(k), slice_begin(k + 1), smoothing);
    });
  }
  for (int64_t i = 0; i < N; ++i) {
    const int64_t y = a.labels[i];
    if (y == a.ignore_index) {
      if (mode != CeMode::backward) {
        a.row_loss[i] = 0.0;
        if (lse_f64) static_cast<double*>(a.lse)[i] = 0.0; else static_cast<float*>(a.lse)[i] = 0.f;
        if (a.row_z) a.row_z[i] = 0.0;
        if (a.correct) a.correct[i] = 0;
      }
      continue;
    }
    const double wy = w ? w[y] : 1.0;
    double zy = 0;
    with_storage_type(a.dtype, [&](auto tag) { zy = logit_at<decltype(tag)>(a, i, y); });
    double lse, log_s = 0.0, inv_s = 1.0;  // log s apart from m: m + log s rounds for huge m
    if (mode == CeMode::backward) {
      lse = shift[size_t(i)] = lse_f64 ? static_cast<double*>(a.lse)[i] : double(static_cast<float*>(a.lse)[i]);
    } else {
      double m = -INFINITY;
      bool nan = false;
      for (int64_t k = 0; k < slices; ++k) {
        const RowStats& p = parts[size_t(i * slices + k)];
        if (p.m > m) m = p.m;
        nan = nan || p.nan;
      }
      double s = 0, t = 0, row_rest = 0, row_ey = 0;
      for (int64_t k = 0; k < slices; ++k) {
        const RowStats& p = parts[size_t(i * slices + k)];
        if (slice_begin(k) == slice_begin(k + 1)) continue;
        if (p.m != -INFINITY) {
          const double rescale = std::exp(p.m - m);
          s += p.s * rescale;
          row_rest += p.rest * rescale;
          row_ey += p.ey * rescale;
        }
        if (smoothing) t += (p.m == -INFINITY) ? (p.wsum > 0 ? -INFINITY : 0.0) : p.t - p.wsum * (m - p.m);
      }
      if (nan) s = row_rest = NAN;
      log_s = std::log(s);
      lse = m + log_s;
      shift[size_t(i)] = m;
      inv_s = 1.0 / s;
      double nll = (m - zy) + log_s;
      if (narrow) {
        rest[size_t(i)] = row_rest;
        ey[size_t(i)] = row_ey;
        if (row_ey > 0) nll = std::log1p(row_rest / row_ey);  // exact where lse - zy cancels
      }
      const double label_weight = (1.0 - a.smoothing) * wy;  // 0 adds 0, even at nll = inf
      double loss = label_weight != 0.0 ? label_weight * nll : 0.0;
      if (smoothing) loss += smoothing_loss(a, m, log_s, t);
      a.row_loss[i] = loss;
      if (lse_f64) static_cast<double*>(a.lse)[i] = lse; else static_cast<float*>(a.lse)[i] = float(lse);
      if (a.row_z) a.row_z[i] = a.z_loss * lse * lse;
      // (s is NaN for a NaN logit and for a +inf one, which can be the label's argmax.)
      if (a.correct) a.correct[i] = !nan && zy == m && (s == s || (m == INFINITY && !row_has_nan(a, i))) &&
                                    first_max_is(a, i, y, m);
    }
    if (mode == CeMode::forward) continue;
    const double g = a.grad_scale * (a.grad_rows ? a.grad_rows[i] : 1.0);
    const double label_coef = g * (1.0 - a.smoothing) * wy;
    const double smooth_coef = g * a.smoothing / double(C);
    // The z-loss term's 2 z_loss lse p_j (kernel_body.h's z_loss_coef).
    const double z_coef = a.z_loss == 0.0 ? 0.0
        : a.z_grad_scale * (a.grad_rows ? a.grad_rows[i] : 1.0) * 2.0 * a.z_loss * lse;
    const double p_coef = label_coef + smooth_coef * a.weight_total + z_coef;
    if (narrow) z_coefs[size_t(i)] = z_coef;
    alpha[size_t(i)] = p_coef * inv_s;
    beta[size_t(i)] = smooth_coef;
    label_grad[size_t(i)] = std::exp((zy - shift[size_t(i)]) - log_s) * p_coef - smooth_coef * wy - label_coef;
    if (narrow) {
      label_coefs[size_t(i)] = label_coef;
      if (mode == CeMode::backward) ey[size_t(i)] = std::exp(zy - lse);  // rest: from the slices
    }
  }
  if (mode == CeMode::forward) return;
  std::vector<double> slice_rest(narrow && mode == CeMode::backward ? size_t(N * slices) : 0);
  parallel_run(N * slices, [&](int64_t task) {
    const int64_t i = task / slices, k = task % slices;
    if (a.labels[i] == a.ignore_index) return;
    const double r = table.slice_grad(a, i, slice_begin(k), slice_begin(k + 1), shift[size_t(i)],
                                      alpha[size_t(i)], beta[size_t(i)]);
    if (!slice_rest.empty()) slice_rest[size_t(task)] = r;
  });
  if (narrow) {
    // p_y - 1 = -rest / s in double (label_grad_from_rest): in backward, rest is
    // the other classes' exp(z - lse) summed by the slices, and s renormalises p.
    for (int64_t i = 0; i < N; ++i) {
      const int64_t y = a.labels[i];
      if (y == a.ignore_index) continue;
      const size_t r = size_t(i);
      if (mode == CeMode::backward) {
        rest[r] = 0;
        for (int64_t k = 0; k < slices; ++k) rest[r] += slice_rest[size_t(i * slices + k)];
      }
      const double wy = w ? w[y] : 1.0;
      // (An lse that is not the forward's is used as given: sum_is_one.)
      const bool renormalise = mode != CeMode::backward || sum_is_one<float>(rest[r] + ey[r], shift[r], C);
      label_grad[r] = label_grad_from_rest(rest[r], ey[r], label_coefs[r], beta[r], a.weight_total, wy,
                                           z_coefs[r], renormalise);
    }
  }
  for (int64_t i = 0; i < N; ++i) {
    const int64_t y = a.labels[i];
    with_storage_type(a.dtype, [&](auto tag) {
      using T = decltype(tag);
      if (y == a.ignore_index) {
        zero_grad_row<T>(a, i);
      } else {
        store_label_grad<T>(a, i, y, label_grad[size_t(i)]);
      }
    });
  }
}

}  // namespace

LabelError::LabelError(int64_t row, int64_t value, int64_t classes, int64_t ignore_index)
    : std::invalid_argument("labels[" + std::to_string(row) + "] = " + std::to_string(value) +
                            " is not a class index in [0, " + std::to_string(classes) +
                            ") nor ignore_index (" + std::to_string(ignore_index) + ")"),
      row(row),
      value(value) {}

// Below this many labels the check runs on the calling thread alone.
constexpr int64_t kMinParallelLabels = 1 << 15;

// count(r0, r1): the kept labels of [r0, r1), or -1 when one is bad; split across the threads
// for long calls (the check runs before the kernels, on the calling thread: 10-15 us of a 65536-row
// call with few classes).
template <class Count>
int64_t count_kept_split(int64_t n, Count&& count) {
  const int threads = get_num_threads();
  if (threads == 1 || n < kMinParallelLabels) return count(0, n);
  const int64_t tasks = threads;
  std::vector<int64_t> kept(size_t(tasks), 0);
  parallel_run(tasks, [&](int64_t k) { kept[size_t(k)] = count(n * k / tasks, n * (k + 1) / tasks); });
  int64_t total = 0;
  for (const int64_t part : kept) {
    if (part < 0) return -1;
    total += part;
  }
  return total;
}

int64_t read_labels(const void* data, IntType type, int64_t n, int64_t stride, int64_t classes,
                    int64_t ignore_index, int64_t* out) {
  if (type == IntType::i32 && stride == 1) {  // JAX's default: the vectorised check first
    const KernelTable& table = active_table();
    const int32_t* labels = static_cast<const int32_t*>(data);
    const int64_t kept = count_kept_split(n, [&](int64_t r0, int64_t r1) {
      return table.widen_kept_labels(labels + r0, r1 - r0, classes, ignore_index, out + r0);
    });
    if (kept >= 0) return kept;
  }
  switch (type) {
    case IntType::i8: return read_labels_t(static_cast<const int8_t*>(data), n, stride, classes, ignore_index, out);
    case IntType::i16: return read_labels_t(static_cast<const int16_t*>(data), n, stride, classes, ignore_index, out);
    case IntType::i32: return read_labels_t(static_cast<const int32_t*>(data), n, stride, classes, ignore_index, out);
    case IntType::i64: return read_labels_t(static_cast<const int64_t*>(data), n, stride, classes, ignore_index, out);
    case IntType::u8: return read_labels_t(static_cast<const uint8_t*>(data), n, stride, classes, ignore_index, out);
    case IntType::u16: return read_labels_t(static_cast<const uint16_t*>(data), n, stride, classes, ignore_index, out);
    case IntType::u32: return read_labels_t(static_cast<const uint32_t*>(data), n, stride, classes, ignore_index, out);
    case IntType::u64: return read_labels_t(static_cast<const uint64_t*>(data), n, stride, classes, ignore_index, out);
  }
  throw std::invalid_argument("labels: unknown integer type");  // (the bindings map every dtype)
}

double target_weight_sum(const int64_t* labels, int64_t n, int64_t ignore_index, const double* weight) {
  if (!weight) {
    int64_t kept = 0;  // a count without branches
    for (int64_t i = 0; i < n; ++i) kept += labels[i] != ignore_index;
    return double(kept);
  }
  double total = 0;
  for (int64_t i = 0; i < n; ++i)
    if (labels[i] != ignore_index) total += weight[labels[i]];
  return total;
}

int64_t check_labels(const int64_t* labels, int64_t n, int64_t classes, int64_t ignore_index) {
  const KernelTable& table = active_table();
  const int64_t kept = count_kept_split(n, [&](int64_t r0, int64_t r1) {
    return table.count_kept_labels(labels + r0, r1 - r0, classes, ignore_index);
  });
  if (kept >= 0) return kept;
  return read_labels_t<int64_t, false>(labels, n, 1, classes, ignore_index, nullptr);  // throws
}

namespace {

// "none"'s rows [r0, r1) as the caller gets them: the z-loss term added, then rounded once to
// the logits' dtype into per_row.out (float64 losses are the kernels' own doubles: no copy).
void finish_row_losses(const CeArgs& a, const RowLossOutput& per_row, int64_t r0, int64_t r1) {
  if (a.row_z)
    for (int64_t i = r0; i < r1; ++i) a.row_loss[i] += a.row_z[i];
  auto narrow = [&](auto* typed) {
    using T = std::remove_pointer_t<decltype(typed)>;
    for (int64_t i = r0; i < r1; ++i) typed[i] = narrow_from_double<T>(a.row_loss[i]);
  };
  if (!per_row.out) return;
  switch (a.dtype) {
    case DType::f32: return narrow(static_cast<float*>(per_row.out));
    case DType::f16: return narrow(static_cast<Half*>(per_row.out));
    case DType::bf16: return narrow(static_cast<BFloat16*>(per_row.out));
    case DType::f64: break;
  }
}

}  // namespace

LossSums run_cross_entropy(const CeArgs& a, CeMode mode, bool want_sums, const RowLossOutput* per_row,
                           int64_t* kept_rows, bool scale_by_kept) {
  const KernelTable& table = active_table();
  LossSums sums;
  if (kept_rows) *kept_rows = 0;
  if (a.rows == 0) return sums;
  // Unchecked labels (kept_rows): checked by the tasks, chunk by chunk (label_gate.h).
  const bool check_first = kept_rows && mode != CeMode::forward;
  auto count_kept = [&](int64_t r0, int64_t r1) {
    return table.count_kept_labels(a.labels + r0, r1 - r0, a.classes, a.ignore_index);
  };
  // A gate over `chunks` chunks of rows (for check_all; none needed otherwise).
  auto make_gate = [&](int64_t chunks) { return LabelGate(check_first ? chunks : 0); };
  // Whether a task may run rows [r0, r1) (chunk c of the gate's); args then as it runs them
  // (the gradient scales divided by the kept count when asked).
  auto labels_ok = [&](LabelGate& gate, int64_t c, int64_t r0, int64_t r1, auto&& chunk_rows) {
    if (!kept_rows) return true;
    if (!check_first) return gate.check_own([&] { return count_kept(r0, r1); });
    return gate.check_all(c, [&](int64_t k) {
      const auto [k0, k1] = chunk_rows(k);
      return count_kept(k0, k1);
    });
  };
  auto scaled = [&](const CeArgs& args, const LabelGate& gate) {
    CeArgs run = args;
    if (check_first && scale_by_kept) {
      run.grad_scale = args.grad_scale / double(gate.kept());
      run.z_grad_scale = args.z_grad_scale / double(gate.kept());
    }
    return run;
  };
  auto whole_call = [&](int64_t) { return std::pair<int64_t, int64_t>(0, a.rows); };
  // After the run: the first bad label named (check_labels throws), or the count.
  auto finish_labels = [&](const LabelGate& gate) {
    if (!kept_rows) return;
    if (gate.bad()) check_labels(a.labels, a.rows, a.classes, a.ignore_index);
    *kept_rows = gate.kept();
  };
  want_sums = want_sums && mode != CeMode::backward;
  if (mode == CeMode::backward || want_sums) per_row = nullptr;  // (sums read row_loss unfinished)
  auto finish_rows = [&](int64_t r0, int64_t r1) {
    if (per_row) finish_row_losses(a, *per_row, r0, r1);
  };
  // The sums go block by block (fixed blocks of rows, summed in order), so that a task can sum
  // its own blocks while their losses are in cache and the result does not depend on threads.
  if (want_sums && a.rows <= kSumBlock && (get_num_threads() == 1 || a.rows * a.classes < kMinParallelLogits)) {
    // One block on this thread (the small calls): the same sums, without the bookkeeping.
    LabelGate gate = make_gate(1);
    if (labels_ok(gate, 0, 0, a.rows, whole_call)) ce_rows(table, scaled(a, gate), mode, 0, a.rows);
    finish_labels(gate);
    sums.loss = sum_values(a.row_loss, a.rows);
    if (a.row_z) sums.z = sum_values(a.row_z, a.rows);
    return sums;
  }
  const int64_t blocks = want_sums ? (a.rows + kSumBlock - 1) / kSumBlock : 0;
  std::vector<double> block_loss(size_t(blocks), 0.0), block_z(a.row_z ? size_t(blocks) : 0, 0.0);
  std::vector<uint8_t> block_done(size_t(blocks), 0);
  // Kernels that can may sum whole blocks themselves (nothing reads row_loss after a summed call).
  CeArgs args = a;
  if (want_sums && !a.row_z) {
    args.block_loss = block_loss.data();
    args.block_done = block_done.data();
  }
  auto sum_block = [&](int64_t b) {
    const int64_t r0 = b * kSumBlock, n = std::min(a.rows, r0 + kSumBlock) - r0;
    block_loss[size_t(b)] = sum_values(a.row_loss + r0, n);
    if (a.row_z) block_z[size_t(b)] = sum_values(a.row_z + r0, n);
    block_done[size_t(b)] = 1;
  };
  // The blocks wholly inside [r0, r1) (the last block counts as whole when r1 ends the rows).
  auto sum_blocks_inside = [&](int64_t r0, int64_t r1) {
    if (!want_sums) return;
    const int64_t b1 = r1 == a.rows ? blocks : r1 / kSumBlock;
    for (int64_t b = (r0 + kSumBlock - 1) / kSumBlock; b < b1; ++b)
      if (!block_done[size_t(b)]) sum_block(b);
  };

  const int threads = get_num_threads();
  const int64_t work = a.rows * a.classes;
  // (Soft-capped logits and probability targets run whole rows: the split merge knows neither.)
  const bool splittable = a.softcap == 0.0 && a.targets == nullptr;
  if (threads == 1 || work < kMinParallelLogits) {
    LabelGate gate = make_gate(1);
    if (labels_ok(gate, 0, 0, a.rows, whole_call)) {
      ce_rows(table, scaled(args, gate), mode, 0, a.rows);
      finish_rows(0, a.rows);
    }
    finish_labels(gate);
  } else if (splittable && a.rows < kSplitRowsPerThread * threads && a.classes >= kMinSplitClasses) {
    LabelGate gate = make_gate(1);
    if (labels_ok(gate, 0, 0, a.rows, whole_call)) {  // (a few rows)
      split_rows(table, scaled(a, gate), mode, threads);
      finish_rows(0, a.rows);
    }
    finish_labels(gate);
  } else {
    const int64_t tasks = std::min<int64_t>(a.rows, int64_t(threads) * 4);
    // Tasks start on whole vectors of rows, so that the rows left to the row-per-lane kernels'
    // ragged-tail code (whose gradient and z-loss term round differently) are the same for any
    // thread count; with sums, on block boundaries, so that every block lies in one task.
    const int64_t align = want_sums && a.rows >= tasks * kSumBlock ? kSumBlock : kTaskRowAlign;
    auto task_start = [&](int64_t k) {
      const int64_t r = a.rows * k / tasks;
      return k < tasks ? r / align * align : r;
    };
    auto task_rows = [&](int64_t k) { return std::pair<int64_t, int64_t>(task_start(k), task_start(k + 1)); };
    LabelGate gate = make_gate(tasks);
    parallel_run(tasks, [&](int64_t k) {
      const int64_t r0 = task_start(k), r1 = task_start(k + 1);
      if (!labels_ok(gate, k, r0, r1, task_rows)) return;
      ce_rows(table, scaled(args, gate), mode, r0, r1);
      sum_blocks_inside(r0, r1);
      finish_rows(r0, r1);
    });
    finish_labels(gate);
  }
  if (!want_sums) return sums;
  for (int64_t b = 0; b < blocks; ++b)
    if (!block_done[size_t(b)]) sum_block(b);
  sums.loss = sum_values(block_loss.data(), blocks);
  if (a.row_z) sums.z = sum_values(block_z.data(), blocks);
  return sums;
}

void run_rowop(const RowsArgs& a, RowOp op) {
  const KernelTable& table = active_table();
  if (a.rows == 0) return;
  const int threads = get_num_threads();
  if (threads == 1 || a.rows * a.classes < kMinParallelLogits) {
    table.rowop_rows(a, op, 0, a.rows);
    return;
  }
  const int64_t tasks = std::min<int64_t>(a.rows, int64_t(threads) * 4);
  parallel_run(tasks, [&](int64_t k) { table.rowop_rows(a, op, a.rows * k / tasks, a.rows * (k + 1) / tasks); });
}

}  // namespace fastxent
