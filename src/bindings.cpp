// nanobind bindings: NumPy arrays in, pointers and strides out to cpp/, GIL released while the
// kernels run. Shapes and dtypes are checked by the Python layer before it calls here;
// label values are checked here, before anything is written.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cmath>
#include <memory>
#include <optional>
#include <vector>

#include "../cpp/dispatch.h"
#include "../cpp/driver.h"
#include "../cpp/thread_pool.h"

namespace nb = nanobind;
using namespace fastxent;

using Matrix = nb::ndarray<nb::ro, nb::ndim<2>, nb::device::cpu>;
using Vector = nb::ndarray<nb::ro, nb::ndim<1>, nb::device::cpu>;
using DoubleVector = nb::ndarray<nb::ro, double, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using OutMatrix = nb::ndarray<nb::ndim<2>, nb::device::cpu>;

namespace {

// The dtype of an array of floats. dtype_code (a DType, or -1) names it explicitly: NumPy has no
// bfloat16 of its own (ml_dtypes' arrays may not pass through the buffer protocol), so the
// Python layer passes 16-bit arrays as uint16 views with the code; only the item size is
// checked then. Without a code, float32/float64/float16 (and a DLPack bfloat16) are read.
DType float_dtype(const nb::dlpack::dtype& dt, int dtype_code, const char* name) {
  const bool is_float = dt.code == uint8_t(nb::dlpack::dtype_code::Float) && dt.lanes == 1;
  if (dtype_code < 0) {
    if (is_float && dt.bits == 32) return DType::f32;
    if (is_float && dt.bits == 64) return DType::f64;
    if (is_float && dt.bits == 16) return DType::f16;
    if (dt.code == uint8_t(nb::dlpack::dtype_code::Bfloat) && dt.bits == 16 && dt.lanes == 1) return DType::bf16;
    throw nb::type_error((std::string(name) + " must be float16, bfloat16, float32 or float64").c_str());
  }
  if (dtype_code > int(DType::bf16)) throw nb::value_error("unknown dtype code");
  const DType d = DType(dtype_code);
  const int bits = d == DType::f64 ? 64 : d == DType::f32 ? 32 : 16;
  if (dt.bits != bits || dt.lanes != 1) {
    throw nb::type_error((std::string(name) + ": item size does not match the dtype code").c_str());
  }
  if ((d == DType::f32 || d == DType::f64) && !is_float) {
    throw nb::type_error((std::string(name) + " must be float32 or float64 for this dtype code").c_str());
  }
  return d;
}

// Checks that an output / saved array holds `want` (item size and float kind for 32/64 bits).
void check_same_storage(const nb::dlpack::dtype& dt, DType want, const char* name) {
  const int bits = want == DType::f64 ? 64 : want == DType::f32 ? 32 : 16;
  const bool float_kind = dt.code == uint8_t(nb::dlpack::dtype_code::Float);
  if (dt.bits != bits || dt.lanes != 1 || (bits > 16 && !float_kind)) {
    throw nb::type_error((std::string(name) + " does not have the dtype the call needs").c_str());
  }
}

IntType int_type(const nb::dlpack::dtype& dt) {
  const bool is_signed = dt.code == uint8_t(nb::dlpack::dtype_code::Int);
  const bool is_unsigned = dt.code == uint8_t(nb::dlpack::dtype_code::UInt);
  if (!(is_signed || is_unsigned) || dt.lanes != 1) throw nb::type_error("labels must have an integer dtype");
  switch (dt.bits) {
    case 8: return is_signed ? IntType::i8 : IntType::u8;
    case 16: return is_signed ? IntType::i16 : IntType::u16;
    case 32: return is_signed ? IntType::i32 : IntType::u32;
    case 64: return is_signed ? IntType::i64 : IntType::u64;
  }
  throw nb::type_error("labels must have an integer dtype");
}

enum Reduction { kNone = 0, kMean = 1, kSum = 2 };

// One cross-entropy call. Returns the reduced loss (mean/sum) or NaN for "none" (the per-row
// losses are then in row_loss). lse is written by forward/fused and read by backward.
double cross_entropy(int mode_code, const Matrix& logits, const Vector& labels,
                     std::optional<DoubleVector> weight, int64_t ignore_index, double smoothing,
                     int reduction, double grad_output, std::optional<DoubleVector> grad_rows,
                     const Vector& lse, std::optional<nb::ndarray<double, nb::ndim<1>, nb::c_contig>> row_loss,
                     std::optional<OutMatrix> grad, int dtype_code) {
  const CeMode mode = CeMode(mode_code);
  CeArgs a;
  a.dtype = float_dtype(logits.dtype(), dtype_code, "logits");
  // lse is double for float64 rows, float otherwise (16-bit rows too).
  check_same_storage(lse.dtype(), a.dtype == DType::f64 ? DType::f64 : DType::f32, "lse");
  if (grad) check_same_storage(grad->dtype(), a.dtype, "grad");
  a.rows = int64_t(logits.shape(0));
  a.classes = int64_t(logits.shape(1));
  a.logits = logits.data();
  a.logits_stride = a.rows > 1 ? int64_t(logits.stride(0)) : a.classes;
  a.ignore_index = ignore_index;
  a.smoothing = smoothing;

  // Not std::vector: its zero-filling would be a whole extra pass over the labels' size.
  std::unique_ptr<int64_t[]> labels64(new int64_t[size_t(a.rows)]);
  read_labels(labels.data(), int_type(labels.dtype()), a.rows, int64_t(labels.stride(0)), a.classes,
              ignore_index, labels64.get());
  a.labels = labels64.get();

  std::vector<float> weight32;
  const double* w = weight ? weight->data() : nullptr;
  if (w) {
    weight32.assign(w, w + a.classes);
    a.weight_f64 = w;
    a.weight_f32 = weight32.data();
    a.weight_total = 0;
    for (int64_t j = 0; j < a.classes; ++j) a.weight_total += w[j];
  } else {
    a.weight_total = double(a.classes);
  }
  const double denom = reduction == kMean ? target_weight_sum(a.labels, a.rows, ignore_index, w) : 1.0;
  a.grad_scale = reduction == kMean ? grad_output / denom : grad_output;
  a.grad_rows = grad_rows ? grad_rows->data() : nullptr;
  a.lse = const_cast<void*>(lse.data());

  std::unique_ptr<double[]> own_row_loss;
  if (mode != CeMode::backward) {
    if (row_loss) {
      a.row_loss = row_loss->data();
    } else {
      own_row_loss.reset(new double[size_t(a.rows)]);  // every row is written by the kernels
      a.row_loss = own_row_loss.get();
    }
  }
  if (mode != CeMode::forward) {
    a.grad = grad->data();
    a.grad_stride = a.rows > 1 ? int64_t(grad->stride(0)) : a.classes;
  }
  {
    nb::gil_scoped_release release;
    run_cross_entropy(a, mode);
  }
  if (mode == CeMode::backward || reduction == kNone) return NAN;
  const double total = sum_values(a.row_loss, a.rows);
  return reduction == kMean ? total / denom : total;
}

void rowop(int op, const Matrix& x, OutMatrix out, int dtype_code) {
  RowsArgs a;
  a.dtype = float_dtype(x.dtype(), dtype_code, "x");
  check_same_storage(out.dtype(), a.dtype, "out");
  a.rows = int64_t(x.shape(0));
  a.classes = int64_t(x.shape(1));
  a.x = x.data();
  a.x_stride = int64_t(x.stride(0));
  a.out = out.data();
  a.out_stride = int64_t(out.stride(0));
  nb::gil_scoped_release release;
  run_rowop(a, RowOp(op));
}

std::vector<std::string> isas() {
  std::vector<std::string> names;
  for (const KernelTable* t : supported_tables()) names.emplace_back(t->isa);
  return names;
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "fastxent's compiled kernels (private: use the fastxent package)";
  m.def("cross_entropy", &cross_entropy);  // the last argument: dtype code (-1: from the array)
  m.def("rowop", &rowop);
  m.def("isa", [] { return std::string(active_table().isa); });
  m.def("isas", &isas);
  m.def("set_isa", &select_isa);
  m.def("get_num_threads", &get_num_threads);
  m.def("set_num_threads", &set_num_threads);
}
