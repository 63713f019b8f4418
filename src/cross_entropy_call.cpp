#include "cross_entropy_call.h"

#include <nanobind/nanobind.h>

#include <cmath>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "../cpp/huge_pages.h"
#include "../cpp/scratch.h"
#include "call_checks.h"

namespace nb = nanobind;

namespace fastxent {
namespace {

// The bytes [first, last) a 2-D array spans (strides in elements, either sign).
std::pair<const char*, const char*> byte_span(const ArrayView& a) {
  const char* base = static_cast<const char*>(a.data());
  const int64_t item = int64_t(a.itemsize());
  int64_t lo = 0, hi = 0;
  for (size_t d = 0; d < a.ndim(); ++d) {
    if (a.shape(d) == 0) return {base, base};
    const int64_t reach = (int64_t(a.shape(d)) - 1) * int64_t(a.stride(d)) * item;
    (reach < 0 ? lo : hi) += reach;
  }
  return {base + lo, base + hi + item};
}

// The gradient may be written over the logits element for element (same start, same strides);
// any other overlap would read logits the kernel has already overwritten.
void check_no_partial_overlap(const ArrayView& logits, const ArrayView& grad) {
  const auto [x0, x1] = byte_span(logits);
  const auto [g0, g1] = byte_span(grad);
  if (x0 == x1 || g0 == g1 || g1 <= x0 || x1 <= g0) return;
  const bool same = logits.data() == grad.data() && logits.stride(0) == grad.stride(0) &&
                    logits.stride(1) == grad.stride(1) && logits.itemsize() == grad.itemsize();
  if (!same) throw nb::value_error("grad overlaps logits (other than element for element)");
}

// Calls smaller than this keep the GIL: releasing and retaking it costs more than they take.
constexpr int64_t kKeepGilLogits = 1024;

}  // namespace

CallResult run_cross_entropy_call(const CrossEntropyCall& call) {
  const CeMode mode = call.mode;
  const ArrayView &logits = call.logits, &labels = call.labels;
  const auto &weight = call.weight, &grad_rows = call.grad_rows, &lse = call.lse, &row_loss = call.row_loss,
             &grad = call.grad, &targets = call.targets, &row_z = call.row_z, &correct = call.correct;
  const int64_t ignore_index = call.ignore_index;
  const int reduction = call.reduction;
  CeArgs a;
  a.dtype = float_dtype(logits.dtype(), call.dtype_code, "logits");
  // lse is double for float64 rows, float otherwise (16-bit rows too).
  const bool lse_f64 = a.dtype == DType::f64;
  if (lse) {
    check_same_storage(lse->dtype(), lse_f64 ? DType::f64 : DType::f32, "lse");
  } else if (mode == CeMode::backward) {
    throw nb::value_error("lse is needed for the backward");
  }
  a.rows = int64_t(logits.shape(0));
  a.classes = int64_t(logits.shape(1));
  // The kernels step through a row's classes one element at a time.
  const bool any = a.rows > 0 && a.classes > 1;  // (empty arrays may carry any strides)
  if (any && logits.stride(1) != 1) throw nb::value_error("logits must have a contiguous class axis");
  if (grad) {
    check_same_storage(grad->dtype(), a.dtype, "grad");
    if (grad->shape(0) != logits.shape(0) || grad->shape(1) != logits.shape(1)) {
      throw nb::value_error("grad must have the shape of logits");
    }
    if (any && grad->stride(1) != 1) throw nb::value_error("grad must have a contiguous class axis");
    check_no_partial_overlap(logits, *grad);
  }
  a.logits = logits.data();
  a.logits_stride = a.rows > 1 ? int64_t(logits.stride(0)) : a.classes;
  a.ignore_index = ignore_index;
  a.smoothing = call.smoothing;

  // Scratch, not std::vector: its zero-filling would be a whole extra pass.
  std::unique_ptr<unsigned char[]> labels64, own_row_z, own_lse, own_row_loss;
  int64_t kept_rows = a.rows;  // rows whose label is not ignore_index
  // Contiguous int64 labels are checked by the kernels' tasks (run_cross_entropy): a forward's
  // each its own rows' before reading them, a fused or backward call's all before any gradient
  // is written, the gradient scale of "mean" then divided by their count there (so not with
  // class weights, whose mean divides by the summed weight of the labels). (C++ alone, two
  // threads, float32, medians of four runs: 65536 x 3 check then forward 47.2 us, checked in the
  // tasks 44.8 us; 65536 x 10 120.8 -> 118.2 us.)
  bool labels_checked_in_tasks = !targets && (mode == CeMode::forward || !weight || reduction != kMean);
  if (targets) {
    const ArrayView& t = *targets;
    check_same_storage(t.dtype(), a.dtype == DType::f64 ? DType::f64 : DType::f32, "targets");
    if (int64_t(t.shape(0)) != a.rows || int64_t(t.shape(1)) != a.classes || (a.classes > 1 && t.stride(1) != 1)) {
      throw nb::value_error("targets must be (rows, classes) with a contiguous class axis");
    }
    a.targets = t.data();
    a.targets_stride = a.rows > 1 ? int64_t(t.stride(0)) : a.classes;
  } else {
    if (int64_t(labels.shape(0)) != a.rows) throw nb::value_error("labels must have one entry per row");
    const IntType type = int_type(labels.dtype());
    const int64_t stride = a.rows > 1 ? int64_t(labels.stride(0)) : 1;
    if (type == IntType::i64 && stride == 1) {  // the common case: read in place, no copy
      a.labels = static_cast<const int64_t*>(labels.data());
      if (!labels_checked_in_tasks) kept_rows = check_labels(a.labels, a.rows, a.classes, ignore_index);
    } else {
      labels_checked_in_tasks = false;
      int64_t* widened = call_scratch<int64_t>(ScratchSlot::labels, size_t(a.rows), labels64);
      kept_rows = read_labels(labels.data(), type, a.rows, stride, a.classes, ignore_index, widened);
      a.labels = widened;
    }
  }
  a.z_loss = call.z_loss;
  a.softcap = call.softcap;
  auto check_rows = [&](size_t n, const char* name) {
    if (int64_t(n) != a.rows) throw nb::value_error((std::string(name) + " must have one entry per row").c_str());
  };
  if (a.z_loss != 0.0 && mode != CeMode::backward) {
    if (row_z) {
      check_rows(row_z->shape(0), "row_z");
      a.row_z = row_z->data_as<double>();
    } else {
      a.row_z = call_scratch<double>(ScratchSlot::row_z, size_t(a.rows), own_row_z);  // all rows written
    }
  }
  if (correct && mode != CeMode::backward) {
    if (a.targets) throw nb::value_error("accuracy needs class-index labels");
    check_rows(correct->shape(0), "correct");
    a.correct = correct->data_as<uint8_t>();
  }

  std::vector<float> weight32;
  const double* w = weight ? weight->data_as<double>() : nullptr;
  if (w) {
    weight32.assign(w, w + a.classes);
    a.weight_f64 = w;
    a.weight_f32 = weight32.data();
    a.weight_total = 0;
    for (int64_t j = 0; j < a.classes; ++j) a.weight_total += w[j];
  } else {
    a.weight_total = double(a.classes);
  }
  // "mean" divides the cross-entropy by the summed target weight (the row count for probability
  // targets) and the z-loss term by the number of rows not ignored. (With labels checked in the
  // tasks, after the run: the kept count comes from there, and run_cross_entropy has divided the
  // gradient's scales by it.)
  double denom = 1.0, z_denom = 1.0;
  auto set_denominators = [&] {
    if (reduction == kMean) {
      z_denom = double(kept_rows);
      denom = w && !a.targets ? target_weight_sum(a.labels, a.rows, ignore_index, w) : z_denom;
    }
    a.grad_scale = call.grad_output / denom;
    a.z_grad_scale = call.grad_output / z_denom;
  };
  if (labels_checked_in_tasks) {  // the scales' numerators (run_cross_entropy divides for "mean")
    a.grad_scale = call.grad_output;
    a.z_grad_scale = call.grad_output;
  } else {
    set_denominators();
  }
  a.grad_rows = grad_rows ? grad_rows->data_as<double>() : nullptr;
  if (lse) {
    a.lse = const_cast<void*>(lse->data());
  } else {  // as doubles: enough room for a.rows floats or doubles
    a.lse = call_scratch<double>(ScratchSlot::lse, size_t(a.rows), own_lse);
    a.lse_unread = mode == CeMode::forward;
  }
  // Per-row losses in the logits' dtype are the kernels' doubles rounded once, after the run.
  void* narrow_row_loss = nullptr;
  if (mode != CeMode::backward) {
    if (row_loss) {
      check_rows(row_loss->shape(0), "row_loss");
      if (row_loss->dtype().bits == 64) {
        check_same_storage(row_loss->dtype(), DType::f64, "row_loss");
      } else {
        check_same_storage(row_loss->dtype(), a.dtype, "row_loss");
        narrow_row_loss = row_loss->data();
      }
    }
    if (row_loss && !narrow_row_loss) {
      a.row_loss = row_loss->data_as<double>();
    } else {  // every row is written by the kernels
      a.row_loss = call_scratch<double>(ScratchSlot::row_loss, size_t(a.rows), own_row_loss);
    }
  }
  if (mode != CeMode::forward) {
    a.grad = grad->data();
    a.grad_stride = a.rows > 1 ? int64_t(grad->stride(0)) : a.classes;
    if (a.grad != a.logits) {  // (over the logits: their pages are there already)
      const auto [g0, g1] = byte_span(*grad);
      advise_huge_pages(const_cast<char*>(g0), size_t(g1 - g0));
    }
  }
  const RowLossOutput per_row{narrow_row_loss};
  const RowLossOutput* finish = reduction == kNone ? &per_row : nullptr;
  LossSums sums;
  int64_t* const count_into = labels_checked_in_tasks ? &kept_rows : nullptr;
  const bool scale_by_kept = labels_checked_in_tasks && reduction == kMean;
  if (a.rows * a.classes < kKeepGilLogits) {
    sums = run_cross_entropy(a, mode, reduction != kNone, finish, count_into, scale_by_kept);  // done before a release would pay off
  } else {
    nb::gil_scoped_release release;
    sums = run_cross_entropy(a, mode, reduction != kNone, finish, count_into, scale_by_kept);
  }
  if (labels_checked_in_tasks) set_denominators();
  if (mode == CeMode::backward || reduction == kNone) return {NAN, kept_rows, NAN};
  return {sums.loss / denom + (a.row_z ? sums.z / z_denom : 0.0), kept_rows, a.row_z ? sums.z : 0.0};
}

}  // namespace fastxent
