// nanobind bindings: NumPy arrays in, pointers and strides out to cpp/, GIL released while the
// kernels run. Shapes and dtypes are checked by the Python layer before it calls here; label
// values are checked in cross_entropy_call.cpp, before anything is written.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../cpp/bce_driver.h"
#include "../cpp/huge_pages.h"
#include "../cpp/dispatch.h"
#include "../cpp/driver.h"
#include "../cpp/thread_pool.h"
#include "array_view.h"
#include "call_checks.h"
#include "cross_entropy_call.h"
#include "numpy_fast_path.h"

namespace nb = nanobind;
using namespace fastxent;

using Matrix = nb::ndarray<nb::ro, nb::ndim<2>, nb::device::cpu>;
using Vector = nb::ndarray<nb::ro, nb::ndim<1>, nb::device::cpu>;
using DoubleVector = nb::ndarray<nb::ro, double, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using OutMatrix = nb::ndarray<nb::ndim<2>, nb::device::cpu>;
using OutDoubles = nb::ndarray<double, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using OutVector = nb::ndarray<nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using OutFlags = nb::ndarray<uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

namespace {

template <class Array>
std::optional<ArrayView> view_of(const std::optional<Array>& a) {
  if (!a) return std::nullopt;
  return fastxent::view_of(*a);
}

// fastxent._core.cross_entropy: positional arguments (see CrossEntropyCall for their meaning).
// Returns (loss, rows not ignored, z-loss terms summed): see CallResult.
std::tuple<double, int64_t, double> cross_entropy(int mode_code, const Matrix& logits, const Vector& labels,
                     std::optional<DoubleVector> weight, int64_t ignore_index, double smoothing,
                     int reduction, double grad_output, std::optional<DoubleVector> grad_rows,
                     std::optional<Vector> lse, std::optional<OutVector> row_loss,
                     std::optional<OutMatrix> grad, int dtype_code, std::optional<Matrix> targets,
                     double z_loss, double softcap, std::optional<OutDoubles> row_z,
                     std::optional<OutFlags> correct) {
  CrossEntropyCall call;
  call.mode = CeMode(mode_code);
  call.logits = fastxent::view_of(logits);
  call.labels = fastxent::view_of(labels);
  call.weight = view_of(weight);
  call.ignore_index = ignore_index;
  call.smoothing = smoothing;
  call.reduction = reduction;
  call.grad_output = grad_output;
  call.grad_rows = view_of(grad_rows);
  call.lse = view_of(lse);
  call.row_loss = view_of(row_loss);
  call.grad = view_of(grad);
  call.dtype_code = dtype_code;
  call.targets = view_of(targets);
  call.z_loss = z_loss;
  call.softcap = softcap;
  call.row_z = view_of(row_z);
  call.correct = view_of(correct);
  const CallResult result = run_cross_entropy_call(call);
  return {result.loss, result.kept_rows, result.z_sum};
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
  if (a.grad && a.grad != a.logits) advise_huge_pages(a.grad, grad->nbytes());
  nb::gil_scoped_release release;
  return run_bce(a);
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "fastxent's compiled kernels (private: use the fastxent package)";
  // The dtype code argument: -1 reads the dtype from the array.
  m.def("cross_entropy", &cross_entropy);
  add_numpy_fast_path(m);  // fast_cross_entropy
  m.def("rowop", &rowop);
  m.def("isa", [] { return std::string(active_table().isa); });
  m.def("isas", &isas);
  m.def("set_isa", &select_isa);
  m.def("get_num_threads", &get_num_threads);
  m.def("set_num_threads", &set_num_threads);
  m.def("bce", &bce);  // the last argument: dtype code (-1: from the array)
}
