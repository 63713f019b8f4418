// Checks and scratch memory shared by the bindings' calls (cross-entropy, row operations, BCE).
#pragma once

#include <nanobind/ndarray.h>

#include <cstddef>
#include <memory>

#include "../cpp/driver.h"
#include "../cpp/scratch.h"

namespace fastxent {

// The dtype of an array of floats. dtype_code (a DType, or -1) names it explicitly: NumPy has no
// bfloat16 of its own (ml_dtypes' arrays may not pass through the buffer protocol), so the
// Python layer passes 16-bit arrays as uint16 views with the code; only the item size is
// checked then. Without a code, float32/float64/float16 (and a DLPack bfloat16) are read.
DType float_dtype(const nanobind::dlpack::dtype& dt, int dtype_code, const char* name);

// Checks that an output / saved array holds `want` (item size and float kind for 32/64 bits).
void check_same_storage(const nanobind::dlpack::dtype& dt, DType want, const char* name);

IntType int_type(const nanobind::dlpack::dtype& dt);

// Room for n values of T for this call: memory kept between calls on this thread
// (cpp/scratch.h), or, when too large to keep, owned by `owner` for the call.
template <class T>
T* call_scratch(ScratchSlot slot, size_t n, std::unique_ptr<unsigned char[]>& owner) {
  if (void* kept = kept_scratch(slot, n * sizeof(T))) return static_cast<T*>(kept);
  owner.reset(new unsigned char[n * sizeof(T)]);  // (std::bad_alloc: MemoryError)
  return reinterpret_cast<T*>(owner.get());
}

}  // namespace fastxent
