// fastxent._core.fast_cross_entropy: the small-call fast path for plain NumPy arrays.
#pragma once

#include <nanobind/nanobind.h>

namespace fastxent {

// Imports NumPy's C API and adds the function to the module.
void add_numpy_fast_path(nanobind::module_& m);

}  // namespace fastxent
