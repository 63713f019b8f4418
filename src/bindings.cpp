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
#include <utility>
#include <vector>

#include "../cpp/bce_driver.h"
#include "../cpp/dispatch.h"
#include "../cpp/driver.h"
#include "../cpp/scratch.h"
#include "../cpp/thread_pool.h"

namespace nb = nanobind;
using namespace fastxent;

using Matrix = nb::ndarray<nb::ro, nb::ndim<2>, nb::device::cpu>;
using Vector = nb::ndarray<nb::ro, nb::ndim<1>, nb::device::cpu>;
using DoubleVector = nb::ndarray<nb::ro, double, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using OutMatrix = nb::ndarray<nb::ndim<2>, nb::device::cpu>;
using OutDoubles = nb::ndarray<double, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using OutFlags = nb::ndarray<uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

namespace {

// Room for n values of T for this call: memory kept between calls on this thread
// (cpp/scratch.h), or, when too large to keep, owned by `owner` for the call.
template <class T>
T* call_scratch(ScratchSlot slot, size_t n, std::unique_ptr<unsigned char[]>& owner) {
  if (void* kept = kept_scratch(slot, n * sizeof(T))) return static_cast<T*>(kept);
  owner.reset(new unsigned char[n * sizeof(T)]);  // (std::bad_alloc: MemoryError)
  return reinterpret_cast<T*>(owner.get());
}

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

// The bytes [first, last) a 2-D array spans (strides in elements, either sign).
template <class A>
std::pair<const char*, const char*> byte_span(const A& a) {
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
void check_no_partial_overlap(const Matrix& logits, const OutMatrix& grad) {
  const auto [x0, x1] = byte_span(logits);
  const auto [g0, g1] = byte_span(grad);
  if (x0 == x1 || g0 == g1 || g1 <= x0 || x1 <= g0) return;
  const bool same = logits.data() == grad.data() && logits.stride(0) == grad.stride(0) &&
                    logits.stride(1) == grad.stride(1) && logits.itemsize() == grad.itemsize();
  if (!same) throw nb::value_error("grad overlaps logits (other than element for element)");
}

// Options beyond torch's cross_entropy: probability targets (rows in the compute type, replacing
// labels), z-loss, soft-capping; per-row outputs of the z-loss term and of accuracy.
struct Extras {
  std::optional<Matrix> targets;
  double z_loss = 0, softcap = 0;
  std::optional<OutDoubles> row_z;
  std::optional<OutFlags> correct;
};

// Calls smaller than this keep the GIL: releasing and retaking it costs more than they take.
constexpr int64_t kKeepGilLogits = 1024;

// One cross-entropy call. Returns the reduced loss (mean/sum; with the z-loss term) or NaN for
// "none" (the per-row losses, z-loss included, are then in row_loss). lse is written by
// forward/fused (None: into a scratch buffer) and read by backward. labels is ignored when extras.targets is given.
double cross_entropy(int mode_code, const Matrix& logits, const Vector& labels,
                     std::optional<DoubleVector> weight, int64_t ignore_index, double smoothing,
                     int reduction, double grad_output, std::optional<DoubleVector> grad_rows,
                     std::optional<Vector> lse, std::optional<OutDoubles> row_loss,
                     std::optional<OutMatrix> grad, int dtype_code, std::optional<Matrix> targets,
                     double z_loss, double softcap, std::optional<OutDoubles> row_z,
                     std::optional<OutFlags> correct) {
  const Extras extras{targets, z_loss, softcap, row_z, correct};
  const CeMode mode = CeMode(mode_code);
  CeArgs a;
  a.dtype = float_dtype(logits.dtype(), dtype_code, "logits");
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
  a.smoothing = smoothing;

  // Scratch, not std::vector: its zero-filling would be a whole extra pass.
  std::unique_ptr<unsigned char[]> labels64, own_row_z, own_lse, own_row_loss;
  int64_t kept_rows = a.rows;  // rows whose label is not ignore_index
  if (extras.targets) {
    const Matrix& t = *extras.targets;
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
      kept_rows = check_labels(a.labels, a.rows, a.classes, ignore_index);
    } else {
      int64_t* widened = call_scratch<int64_t>(ScratchSlot::labels, size_t(a.rows), labels64);
      kept_rows = read_labels(labels.data(), type, a.rows, stride, a.classes, ignore_index, widened);
      a.labels = widened;
    }
  }
  a.z_loss = extras.z_loss;
  a.softcap = extras.softcap;
  auto check_rows = [&](size_t n, const char* name) {
    if (int64_t(n) != a.rows) throw nb::value_error((std::string(name) + " must have one entry per row").c_str());
  };
  if (a.z_loss != 0.0 && mode != CeMode::backward) {
    if (extras.row_z) {
      check_rows(extras.row_z->shape(0), "row_z");
      a.row_z = extras.row_z->data();
    } else {
      a.row_z = call_scratch<double>(ScratchSlot::row_z, size_t(a.rows), own_row_z);  // all rows written
    }
  }
  if (extras.correct && mode != CeMode::backward) {
    if (a.targets) throw nb::value_error("accuracy needs class-index labels");
    check_rows(extras.correct->shape(0), "correct");
    a.correct = extras.correct->data();
  }

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
  // "mean" divides the cross-entropy by the summed target weight (the row count for probability
  // targets) and the z-loss term by the number of rows not ignored.
  double denom = 1.0, z_denom = 1.0;
  if (reduction == kMean) {
    z_denom = double(kept_rows);
    denom = w && !a.targets ? target_weight_sum(a.labels, a.rows, ignore_index, w) : z_denom;
  }
  a.grad_scale = grad_output / denom;
  a.z_grad_scale = grad_output / z_denom;
  a.grad_rows = grad_rows ? grad_rows->data() : nullptr;
  if (lse) {
    a.lse = const_cast<void*>(lse->data());
  } else {  // as doubles: enough room for a.rows floats or doubles
    a.lse = call_scratch<double>(ScratchSlot::lse, size_t(a.rows), own_lse);
  }
  if (mode != CeMode::backward) {
    if (row_loss) {
      a.row_loss = row_loss->data();
    } else {  // every row is written by the kernels
      a.row_loss = call_scratch<double>(ScratchSlot::row_loss, size_t(a.rows), own_row_loss);
    }
  }
  if (mode != CeMode::forward) {
    a.grad = grad->data();
    a.grad_stride = a.rows > 1 ? int64_t(grad->stride(0)) : a.classes;
  }
  LossSums sums;
  if (a.rows * a.classes < kKeepGilLogits) {
    sums = run_cross_entropy(a, mode, reduction != kNone);  // done before a release would pay off
  } else {
    nb::gil_scoped_release release;
    sums = run_cross_entropy(a, mode, reduction != kNone);
  }
  if (mode == CeMode::backward) return NAN;
  if (reduction == kNone) {
    if (a.row_z) for (int64_t i = 0; i < a.rows; ++i) a.row_loss[i] += a.row_z[i];
    return NAN;
  }
  return sums.loss / denom + (a.row_z ? sums.z / z_denom : 0.0);
}

// The small-call fast path (fastxent._api): no options but the reduction and a scalar
// grad_output, float32/float64 rows; fewer arguments to convert than cross_entropy's.
double plain_cross_entropy(int mode_code, const Matrix& logits, const Vector& labels, int reduction,
                           double grad_output, std::optional<OutMatrix> grad) {
  return cross_entropy(mode_code, logits, labels, std::nullopt, -100, 0.0, reduction, grad_output,
                       std::nullopt, std::nullopt, std::nullopt, std::move(grad), -1, std::nullopt,
                       0.0, 0.0, std::nullopt, std::nullopt);
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

// ---- binary cross-entropy with logits: flat contiguous arrays (the Python layer tiles weights).
using Flat = nb::ndarray<nb::ro, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using OutFlat = nb::ndarray<nb::ndim<1>, nb::c_contig, nb::device::cpu>;

// Returns the summed loss (0 without want_total); writes loss / grad when given.
double bce(const Flat& logits, const Flat& targets, const Flat& weight, bool weight_full,
           const Flat& pos_weight, bool pos_weight_full, int64_t period,
           std::optional<Flat> grad_elems, double grad_scale, bool want_total,
           std::optional<OutFlat> loss, std::optional<OutFlat> grad, int dtype_code) {
  BceArgs a;
  a.dtype = float_dtype(logits.dtype(), dtype_code, "logits");
  const DType compute = a.dtype == DType::f64 ? DType::f64 : DType::f32;
  a.n = int64_t(logits.shape(0));
  if (period < 1) throw nb::value_error("period must be positive");
  a.period = period;
  auto check = [&](const nb::dlpack::dtype& dt, size_t size, DType want, bool full, const char* name) {
    check_same_storage(dt, want, name);
    if (int64_t(size) != (full ? a.n : period)) throw nb::value_error((std::string(name) + " has the wrong length").c_str());
  };
  check(targets.dtype(), targets.shape(0), a.dtype, true, "targets");
  check(weight.dtype(), weight.shape(0), compute, weight_full, "weight");
  check(pos_weight.dtype(), pos_weight.shape(0), compute, pos_weight_full, "pos_weight");
  if (grad_elems) check(grad_elems->dtype(), grad_elems->shape(0), compute, true, "grad_output");
  if (loss) check(loss->dtype(), loss->shape(0), a.dtype, true, "loss");
  if (grad) check(grad->dtype(), grad->shape(0), a.dtype, true, "grad");
  a.logits = logits.data();
  a.targets = targets.data();
  a.weight = weight.data();
  a.weight_full = weight_full;
  a.pos_weight = pos_weight.data();
  a.pos_weight_full = pos_weight_full;
  a.grad_elems = grad_elems ? grad_elems->data() : nullptr;
  a.grad_scale = grad_scale;
  a.want_total = want_total;
  a.loss = loss ? loss->data() : nullptr;
  a.grad = grad ? grad->data() : nullptr;
  nb::gil_scoped_release release;
  return run_bce(a);
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "fastxent's compiled kernels (private: use the fastxent package)";
  // The dtype code argument: -1 reads the dtype from the array.
  m.def("cross_entropy", &cross_entropy);
  m.def("plain_cross_entropy", &plain_cross_entropy);
  m.def("rowop", &rowop);
  m.def("isa", [] { return std::string(active_table().isa); });
  m.def("isas", &isas);
  m.def("set_isa", &select_isa);
  m.def("get_num_threads", &get_num_threads);
  m.def("set_num_threads", &set_num_threads);
  m.def("bce", &bce);  // the last argument: dtype code (-1: from the array)
}
