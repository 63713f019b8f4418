// Runs a binary cross-entropy call on the active ISA, threaded.
#pragma once
#include "bce_problem.h"

namespace fastxent {

// Fills loss / grad as asked; returns the summed loss (0 without want_total). The sum is taken
// over fixed ranges in a fixed order, so it does not depend on the thread count.
double run_bce(const BceArgs& args);

}  // namespace fastxent
