// The argument struct of one binary cross-entropy (with logits) call. No Python headers.
#pragma once
#include <cstdint>

#include "problem.h"

namespace fastxent {

// n elements, all arrays flat and contiguous. Per element, with s(x) = 1 / (1 + e^-x):
//   loss = w * (pw t max(-x, 0) + (1 - t) max(x, 0) + (1 + (pw - 1) t) log1p(e^-|x|))
//   grad = grad_scale * ge * w * ((1 + (pw - 1) t) s(x) - pw t)
// with a zero coefficient times an infinite value taken as 0 (the limit).
// weight / pos_weight / grad_elems are in the compute type (double for f64 rows, else float);
// "full" ones hold n values, the others `period` values repeated (period: a multiple of the
// last axis' length; elements are handed out in ranges that start at multiples of it).
struct BceArgs {
  DType dtype = DType::f32;
  int64_t n = 0, period = 1;
  const void* logits = nullptr;      // storage type T
  const void* targets = nullptr;     // T
  const void* weight = nullptr;      // never null (ones when the caller gave none)
  bool weight_full = false;
  const void* pos_weight = nullptr;  // never null
  bool pos_weight_full = false;
  const void* grad_elems = nullptr;  // n values, or null for 1
  double grad_scale = 1;
  bool want_total = true;  // compute the summed loss
  void* loss = nullptr;    // T, n values, or null
  void* grad = nullptr;    // T, n values, or null; may be the logits or targets exactly
};

}  // namespace fastxent
