// The small-call fast path of fastxent._api. A 1 x 10 call spends more in reaching the kernels
// than in them: nanobind's DLPack import (a capsule and two allocations per array), np.empty for
// the gradient and np.float32 for the loss cost about 1.5 us, the kernels 0.1 us. Here the arrays
// are read from NumPy's own fields, and the gradient array and the loss scalar are made with
// NumPy's C API. Anything the kernels cannot read as it is returns None, and the caller takes the
// full path, which converts or explains.
#include "numpy_fast_path.h"

#include <cfloat>
#include <cmath>

// Built against NumPy 2 headers, the module runs with NumPy 1.23 and later (the project's floor).
#define NPY_NO_DEPRECATED_API NPY_1_23_API_VERSION
#define NPY_TARGET_VERSION NPY_1_23_API_VERSION
#include <numpy/arrayobject.h>

#include "cross_entropy_call.h"

namespace nb = nanobind;

namespace fastxent {
namespace {

enum class Elements { floats, integers };

// The element type of an array of `kind` the kernels read (float32/float64 rows, integer labels);
// false otherwise.
bool element_type(int type_num, Elements kind, nb::dlpack::dtype& type) {
  if (kind == Elements::floats) {
    switch (type_num) {
      case NPY_FLOAT: type = nb::dtype<float>(); return true;
      case NPY_DOUBLE: type = nb::dtype<double>(); return true;
      default: return false;
    }
  }
  switch (type_num) {
    case NPY_BYTE: type = nb::dtype<signed char>(); return true;
    case NPY_UBYTE: type = nb::dtype<unsigned char>(); return true;
    case NPY_SHORT: type = nb::dtype<short>(); return true;
    case NPY_USHORT: type = nb::dtype<unsigned short>(); return true;
    case NPY_INT: type = nb::dtype<int>(); return true;
    case NPY_UINT: type = nb::dtype<unsigned int>(); return true;
    case NPY_LONG: type = nb::dtype<long>(); return true;
    case NPY_ULONG: type = nb::dtype<unsigned long>(); return true;
    case NPY_LONGLONG: type = nb::dtype<long long>(); return true;
    case NPY_ULONGLONG: type = nb::dtype<unsigned long long>(); return true;
    default: return false;
  }
}

// An exact ndarray of `dims` dimensions and elements of `kind`, aligned, in native byte order,
// with strides of whole elements, as a view; false for anything else.
bool view_numpy(PyObject* obj, int dims, Elements kind, ArrayView& view) {
  if (!PyArray_CheckExact(obj)) return false;
  auto* arr = reinterpret_cast<PyArrayObject*>(obj);
  if (PyArray_NDIM(arr) != dims || !PyArray_ISALIGNED(arr) || !PyArray_ISNOTSWAPPED(arr)) return false;
  if (!element_type(PyArray_TYPE(arr), kind, view.type)) return false;
  const npy_intp item = view.type.bits / 8;
  view.ptr = PyArray_DATA(arr);
  view.dims = size_t(dims);
  for (int d = 0; d < dims; ++d) {
    const npy_intp stride = PyArray_STRIDE(arr, d);
    if (stride % item != 0) return false;
    view.extent[d] = int64_t(PyArray_DIM(arr, d));
    view.step[d] = int64_t(stride / item);
  }
  return true;
}

// The loss as a NumPy scalar of the logits' type; a float32 loss past its range is inf (as
// PyTorch's), without a float conversion overflow.
nb::object loss_scalar(double loss, int type_num) {
  PyArray_Descr* descr = PyArray_DescrFromType(type_num);  // a new reference
  float narrow = 0.0f;
  if (type_num == NPY_FLOAT) {
    narrow = std::fabs(loss) > double(FLT_MAX) ? float(std::copysign(INFINITY, loss)) : float(loss);
  }
  PyObject* scalar = PyArray_Scalar(type_num == NPY_FLOAT ? static_cast<void*>(&narrow)
                                                          : static_cast<void*>(&loss), descr, nullptr);
  Py_DECREF(descr);
  if (scalar == nullptr) throw nb::python_error();
  return nb::steal(scalar);
}

// A new 1-D array of n elements of type_num.
nb::object new_vector(int64_t n, int type_num) {
  npy_intp shape[1] = {npy_intp(n)};
  nb::object a = nb::steal(PyArray_SimpleNew(1, shape, type_num));
  if (!a.is_valid()) throw nb::python_error();
  return a;
}

// The modes of fast_cross_entropy: CeMode's three, and the forward that also returns lse.
constexpr int kForwardWithLse = 3;

// fast_cross_entropy(mode, logits, labels, reduction, grad_output, out, lse): forward (mode 0)
// gives the loss; fused (1) gives (loss, grad), grad being out or a new array; backward (2) gives
// grad from lse (a 1-D contiguous array of the logits' dtype, one per row); mode 3 gives
// (loss, lse), lse a new array. The loss is a scalar for mean and sum, and for none a new array
// of per-row losses in the logits' dtype. The options are torch's defaults (no weight,
// ignore_index -100, no smoothing). Bad labels or shapes raise as in _core.cross_entropy, before
// anything is written.
nb::object fast_cross_entropy(int mode_code, nb::handle logits, nb::handle labels, int reduction,
                              double grad_output, nb::handle out, nb::handle lse) {
  const bool with_lse = mode_code == kForwardWithLse;
  const CeMode mode = with_lse ? CeMode::forward : CeMode(mode_code);
  if ((mode_code < 0 || mode_code > kForwardWithLse) || (mode == CeMode::backward && lse.is_none()) ||
      (reduction != kMean && reduction != kSum && reduction != kNone)) {
    return nb::none();
  }
  CrossEntropyCall call;
  if (!view_numpy(logits.ptr(), 2, Elements::floats, call.logits) ||
      !view_numpy(labels.ptr(), 1, Elements::integers, call.labels)) {
    return nb::none();
  }
  const int type_num = PyArray_TYPE(reinterpret_cast<PyArrayObject*>(logits.ptr()));
  call.mode = mode;
  call.reduction = reduction;
  call.grad_output = grad_output;
  const int64_t rows = call.logits.extent[0];
  nb::object lse_array;
  if (mode == CeMode::backward) {
    lse_array = nb::borrow(lse);
  } else if (with_lse) {
    lse_array = new_vector(rows, type_num);
  }
  if (lse_array.is_valid()) {
    ArrayView lse_view;
    if (!view_numpy(lse_array.ptr(), 1, Elements::floats, lse_view) || lse_view.type != call.logits.type ||
        lse_view.extent[0] != rows || (rows > 1 && lse_view.step[0] != 1)) {
      return nb::none();
    }
    call.lse = lse_view;
  }
  nb::object grad;
  if (mode != CeMode::forward) {
    if (out.is_none()) {
      npy_intp shape[2] = {npy_intp(rows), npy_intp(call.logits.extent[1])};
      grad = nb::steal(PyArray_SimpleNew(2, shape, type_num));
      if (!grad.is_valid()) throw nb::python_error();
    } else {
      grad = nb::borrow(out);
    }
    ArrayView grad_view;
    if (!view_numpy(grad.ptr(), 2, Elements::floats, grad_view) || grad_view.type != call.logits.type ||
        !PyArray_ISWRITEABLE(reinterpret_cast<PyArrayObject*>(grad.ptr()))) {
      return nb::none();
    }
    call.grad = grad_view;
  }
  if (mode == CeMode::backward) {
    run_cross_entropy_call(call);
    return grad;
  }
  nb::object loss;
  if (reduction == kNone) {
    loss = new_vector(rows, type_num);
    ArrayView row_loss;
    view_numpy(loss.ptr(), 1, Elements::floats, row_loss);  // (a new array of floats: it fits)
    call.row_loss = row_loss;
    run_cross_entropy_call(call);
  } else {
    loss = loss_scalar(run_cross_entropy_call(call).loss, type_num);
  }
  if (with_lse) return nb::make_tuple(loss, lse_array);
  if (mode == CeMode::forward) return loss;
  return nb::make_tuple(loss, grad);
}

}  // namespace

void add_numpy_fast_path(nb::module_& m) {
  if (_import_array() < 0) throw nb::python_error();
  m.def("fast_cross_entropy", &fast_cross_entropy, nb::arg("mode"), nb::arg("logits"), nb::arg("labels"),
        nb::arg("reduction"), nb::arg("grad_output"), nb::arg("out").none(), nb::arg("lse").none() = nb::none());
}

}  // namespace fastxent
