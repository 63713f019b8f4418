// Plain descriptions of one kernel call: pointers, sizes, strides, options.
// No Python headers; shared by the driver and every ISA's kernels.
#pragma once
#include <cstdint>

#include "portable.h"

namespace fastxent {

enum class DType : int { f32 = 0, f64 = 1, f16 = 2, bf16 = 3 };

// 16-bit storage types: the raw bits, converted to float on load and rounded back on store
// (per ISA: simd/vec_*.h, simd/half_scalar.h). Their rows are computed in float.
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

// Softmax cross-entropy over `rows` rows of `classes` logits. Strides count elements.
// Per row i with label y (not ignored), eps = smoothing, w = weight (ones if null), logits z
// (x, or softcap * tanh(x / softcap) with softcap):
//   loss_i = (1-eps) w_y (lse - z_y) + eps/C * sum_j w_j (lse - z_j)
//   grad_ij = g_i * d loss_i / d x_ij + gz_i * d (z_loss lse_i^2) / d x_ij
//   g_i = grad_scale * (grad_rows ? grad_rows[i] : 1), gz_i likewise with z_grad_scale
// With probability targets t (targets non-null, no labels), q_j = w_j ((1-eps) t_j + eps/C):
//   loss_i = sum_j q_j (lse - z_j) (a term with q_j = 0 counts 0)
struct CeArgs {
  DType dtype = DType::f32;
  int64_t rows = 0, classes = 0;
  const void* logits = nullptr;
  int64_t logits_stride = 0;
  const int64_t* labels = nullptr;  // validated: in [0, C) or == ignore_index
  int64_t ignore_index = -100;
  const float* weight_f32 = nullptr;   // the weight in float (for f32/f16/bf16 rows) ...
  const double* weight_f64 = nullptr;  // ... and in double; both null = unweighted
  double weight_total = 0;             // sum_j w_j (C when unweighted)
  double smoothing = 0;
  double grad_scale = 1;
  const double* grad_rows = nullptr;
  double* row_loss = nullptr;  // out (forward), per row, unscaled; 0 for ignored rows
  void* lse = nullptr;         // out (forward) or in (backward): double for f64, else float
  bool lse_unread = false;     // forward: lse is scratch nobody reads after (a kernel may skip it)
  void* grad = nullptr;        // out: same dtype as logits, may alias logits exactly
  int64_t grad_stride = 0;
  // Probability targets, rows of the compute type (double for f64 rows, else float).
  const void* targets = nullptr;
  int64_t targets_stride = 0;
  double z_loss = 0;           // PaLM's z-loss coefficient; 0 = off
  double z_grad_scale = 0;     // as grad_scale, for the z-loss term (its own "mean" divisor)
  double* row_z = nullptr;     // out (forward), per row: z_loss * lse^2 (0 for ignored rows)
  uint8_t* correct = nullptr;  // out (forward), per row: 1 when the first argmax is the label
  double softcap = 0;          // 0 = off
  // Set by run_cross_entropy when it sums the losses and nothing reads row_loss after: a kernel
  // may sum whole blocks of kSumBlock rows itself (loss_sums.h's order) into block_loss[b], set
  // block_done[b] and leave those rows' row_loss unwritten. Null: every row's loss is written.
  double* block_loss = nullptr;
  uint8_t* block_done = nullptr;
};

// sum_j w_j (lse - z_j) = w_sum log s - t, t = sum_j w_j (z_j - m): the smoothing sum of a row
// (w = class weights) and a probability-target row's loss (w = q). An all -inf row (m = -inf) has
// no probabilities: NaN when some class has weight, 0 when none has (a class of weight 0 adds 0,
// as in the reference), not the -inf or NaN of the formula.
// static: each file (every ISA's kernels, the driver) keeps its own copy, so the linker cannot
// hand one compiled with AVX-512 flags to the others (see kernel_body.h).
static inline double weighted_nll_sum(double m, double log_s, double w_sum, double t) {
  if (m == -FX_INF) return w_sum != 0.0 ? FX_NAN : 0.0;
  return w_sum * log_s - t;
}

// The label-smoothing part of a row's loss, eps/C sum_j w_j (lse - z_j).
static inline double smoothing_loss(const CeArgs& a, double m, double log_s, double t) {
  return a.smoothing / double(a.classes) * weighted_nll_sum(m, log_s, a.weight_total, t);
}

// Partial statistics of a slice of one row, merged when a long row is split across threads.
// t = sum_j w_j (z_j - m) over the slice (only with smoothing), wsum = sum_j w_j.
// 16-bit rows also split s = rest + ey, ey = exp(z_y - m) of the label (0 when the slice does
// not hold it): 1 - p_y = rest / s and -log p_y = log1p(rest / ey) then keep the precision of
// rest instead of cancelling near p_y = 1 (rest is what matters at 16-bit precision).
struct RowStats {
  double m, s, t, wsum;
  bool nan;
  double rest = 0, ey = 0;
};

// What a cross-entropy call computes: loss only, loss and gradient, or gradient from saved lse.
enum class CeMode : int { forward = 0, fused = 1, backward = 2 };

// Backward's p = exp(z - lse) with the caller's lse. The forward's lse makes a row's p sum to
// s = 1 up to the rounding of lse (2^-24 |lse| for a float lse) and of the sum (a few ulp per
// class); within 4x that, the label's p_y is renormalised to ey / s, so that p_y - 1 = -rest / s
// keeps its precision near p_y = 1. An lse off by more is not the forward's: it is used as given,
// p_y = ey, as the reference does (and an overflowed exp stays inf, not inf / inf).
// Per unit of |lse| + classes, for an lse of type S (the vector kernels read it too).
template <class S>
constexpr double kSumIsOneSlack = 4.0 * (sizeof(S) == 4 ? 0x1p-24 : 0x1p-53);

template <class S>
inline bool sum_is_one(double s, double lse, int64_t classes) {
  const double deviation = s - 1.0, tolerance = kSumIsOneSlack<S> * ((lse < 0 ? -lse : lse) + double(classes));
  return (deviation < 0 ? -deviation : deviation) <= tolerance;  // false for NaN
}

// The label's gradient of a 16-bit row from ey = exp(z_y - shift) and rest = the sum of the
// other classes' exp(z_j - shift), in double: (1 - eps) w_y g (p_y - 1) with p_y - 1 = -rest / s
// (no cancellation near p_y = 1), plus the smoothing term eps/C g (W p_y - w_y). Dividing by
// s = rest + ey also renormalises p when shift is a float-rounded lse (backward); renormalise
// false (backward with an lse that is not the forward's, sum_is_one): p_y = ey as given.
inline double label_grad_from_rest(double rest, double ey, double label_coef, double smooth_coef,
                                   double weight_total, double wy, double z_coef, bool renormalise = true) {
  const double s = rest + ey;
  const double p_y = renormalise ? ey / s : ey, one_minus_p_y = renormalise ? rest / s : 1.0 - ey;
  double grad = -label_coef * one_minus_p_y;
  // A term whose coefficient is 0 adds 0, also where p_y is inf (an lse far below the row's).
  if (smooth_coef != 0.0) grad += smooth_coef * (weight_total * p_y - wy);
  if (z_coef != 0.0) grad += z_coef * p_y;
  return grad;
}

enum class RowOp : int { logsumexp = 0, softmax = 1, log_softmax = 2 };

// softmax / log_softmax (out has rows x classes) or logsumexp (out has rows values).
struct RowsArgs {
  DType dtype = DType::f32;
  int64_t rows = 0, classes = 0;
  const void* x = nullptr;
  int64_t x_stride = 0;
  void* out = nullptr;
  int64_t out_stride = 0;
};

}  // namespace fastxent
