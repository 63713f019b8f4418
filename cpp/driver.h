// The C++ entry points behind the bindings: label checks, the threading plan, the ISA table.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#include "problem.h"

namespace fastxent {

enum class IntType : int { i8, i16, i32, i64, u8, u16, u32, u64 };

// A label that is neither a class index nor ignore_index.
struct LabelError : std::invalid_argument {
  LabelError(int64_t row, int64_t value, int64_t classes, int64_t ignore_index);
  int64_t row, value;
};

// Copies n labels of any integer type (element stride `stride`) to int64. Throws LabelError
// for the first label outside [0, classes) that is not ignore_index; an unsigned label too
// large for int64 is an error too. Returns how many are not ignore_index.
int64_t read_labels(const void* data, IntType type, int64_t n, int64_t stride, int64_t classes,
                    int64_t ignore_index, int64_t* out);

// read_labels' checks and count for contiguous int64 labels, which the kernels read as they are.
int64_t check_labels(const int64_t* labels, int64_t n, int64_t classes, int64_t ignore_index);

// Sum of the target weights (1 each when weight is null) of the rows not ignored.
double target_weight_sum(const int64_t* labels, int64_t n, int64_t ignore_index, const double* weight);

// Sums of the per-row losses and z-loss terms (0 when row_z is null).
struct LossSums {
  double loss = 0, z = 0;
};

// "none"'s per-row losses as the caller gets them: row_loss[i] += row_z[i] (with a z-loss),
// then, when out is set, row_loss rounded once to the logits' dtype into out (the caller's
// float32 / 16-bit array; float64 arrays are row_loss itself).
struct RowLossOutput {
  void* out = nullptr;
};

// Runs a whole call on the active ISA, threaded. Forward/fused fill row_loss and lse;
// fused/backward fill grad. With want_sums (forward/fused), also sums row_loss and row_z while
// they are still in cache; the sums are the same bits for any thread count. With per_row
// (forward/fused, without sums), each task finishes its own rows' losses likewise (65536 x 3
// float32: a serial pass after the call took 20 of its 84 us).
// With kept_rows, args.labels are contiguous int64 labels not yet checked: the tasks check them
// (no separate pass and wake-up of the threads: check_labels' job; label_gate.h), *kept_rows
// gets the count of rows not ignored, and a bad label throws LabelError as check_labels does.
// A forward checks each task's rows before reading them (it writes nothing of the caller's);
// fused and backward calls check every label before any gradient is written, and with
// scale_by_kept then divide grad_scale and z_grad_scale by the count ("mean").
LossSums run_cross_entropy(const CeArgs& args, CeMode mode, bool want_sums = false,
                           const RowLossOutput* per_row = nullptr, int64_t* kept_rows = nullptr,
                           bool scale_by_kept = false);

void run_rowop(const RowsArgs& args, RowOp op);

}  // namespace fastxent
