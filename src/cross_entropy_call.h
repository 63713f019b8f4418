// One softmax cross-entropy call from arrays: the checks that need the kernels' view of the
// arguments (label values, shapes against logits, overlap), the scratch buffers, the run (with
// the GIL released for all but small calls) and the reduction. Both bindings call it.
#pragma once

#include <optional>

#include "../cpp/driver.h"
#include "array_view.h"

namespace fastxent {

enum Reduction { kNone = 0, kMean = 1, kSum = 2 };

// Options beyond torch's cross_entropy: probability targets (rows in the compute type, replacing
// labels), z-loss, soft-capping; per-row outputs of the z-loss term and of accuracy. The arrays'
// ranks, dtypes of double / uint8 buffers, contiguity and writability are the caller's checks.
struct CrossEntropyCall {
  CeMode mode = CeMode::forward;
  ArrayView logits;                     // (rows, classes)
  ArrayView labels;                     // (rows,) integers; ignored when targets is given
  std::optional<ArrayView> weight;      // (classes,) float64
  int64_t ignore_index = -100;
  double smoothing = 0.0;
  int reduction = kMean;
  double grad_output = 1.0;
  std::optional<ArrayView> grad_rows;   // (rows,) float64: grad_output per row
  std::optional<ArrayView> lse;         // (rows,): written by forward / fused, read by backward
  std::optional<ArrayView> row_loss;    // (rows,) float64, or the logits' 32/16-bit storage type
  std::optional<ArrayView> grad;        // (rows, classes), written
  int dtype_code = -1;                  // see float_dtype
  std::optional<ArrayView> targets;     // (rows, classes)
  double z_loss = 0.0, softcap = 0.0;
  std::optional<ArrayView> row_z;       // (rows,) float64
  std::optional<ArrayView> correct;     // (rows,) uint8
};

struct CallResult {
  // The reduced loss (mean/sum; with the z-loss term), or NaN for "none" (the per-row losses,
  // z-loss included, are then in row_loss) and for backward.
  double loss;
  // Rows whose label is not ignore_index (all rows for probability targets): "mean"'s divisor
  // of the z-loss term and of accuracy, counted by the label check anyway.
  int64_t kept_rows;
  // The per-row z-loss terms summed (0 without z-loss; NaN for "none" and backward), so that a
  // caller reporting the term does not need them per row.
  double z_sum;
};

CallResult run_cross_entropy_call(const CrossEntropyCall& call);

}  // namespace fastxent
