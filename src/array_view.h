// A strided array of up to two dimensions as a cross-entropy call reads it: data, element type,
// shape, and strides in elements. It is filled from nanobind's ndarrays (bindings.cpp) or
// straight from NumPy's array fields (numpy_fast_path.cpp), so one call body serves both.
#pragma once

#include <nanobind/ndarray.h>

#include <cstddef>
#include <cstdint>

namespace fastxent {

struct ArrayView {
  void* ptr = nullptr;
  nanobind::dlpack::dtype type{};
  size_t dims = 0;
  int64_t extent[2] = {0, 0};
  int64_t step[2] = {0, 0};  // in elements

  // Named as nanobind's ndarray accessors, which the call body was first written against.
  void* data() const { return ptr; }
  template <class T>
  T* data_as() const { return static_cast<T*>(ptr); }
  nanobind::dlpack::dtype dtype() const { return type; }
  size_t ndim() const { return dims; }
  size_t shape(size_t d) const { return size_t(extent[d]); }
  int64_t stride(size_t d) const { return step[d]; }
  size_t itemsize() const { return size_t(type.bits) / 8; }
};

template <class Array>
ArrayView view_of(const Array& a) {
  ArrayView v;
  v.ptr = const_cast<void*>(static_cast<const void*>(a.data()));
  v.type = a.dtype();
  v.dims = a.ndim();
  for (size_t d = 0; d < v.dims && d < 2; ++d) {
    v.extent[d] = int64_t(a.shape(d));
    v.step[d] = int64_t(a.stride(d));
  }
  return v;
}

}  // namespace fastxent
