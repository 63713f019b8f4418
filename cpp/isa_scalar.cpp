// The kernel body compiled for the scalar instruction set (flags set per file in CMakeLists.txt).
// System headers first: the ISA headers below are included inside a namespace.
#include <cstdint>
#include <type_traits>
#include <utility>

#include "kernel_table.h"
#include "portable.h"
#include "scratch.h"

namespace fastxent {
namespace isa_scalar {

#include "simd/vec_scalar.h"
using VecF = Vec1<float>;
using VecD = Vec1<double>;
#include "vexp.h"
#include "vlog.h"
#include "vtanh.h"
#include "kernel_body.h"
#include "bce_body.h"

}  // namespace isa_scalar

#if !defined(FASTXENT_KERNELS_HALF)  // the table is in the main file only
const KernelTable kTableScalar = {"scalar",           isa_scalar::forward_rows, isa_scalar::fused_rows,
                              isa_scalar::backward_rows, isa_scalar::slice_stats,
                              isa_scalar::slice_grad,    isa_scalar::rowop_rows, isa_scalar::bce_range,
                              isa_scalar::count_kept_labels,
                              isa_scalar::widen_kept_labels};
#endif

}  // namespace fastxent
