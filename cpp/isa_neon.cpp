// The kernel body compiled for the neon instruction set (flags set per file in CMakeLists.txt).
// System headers first: the ISA headers below are included inside a namespace.
#include <cstdint>
#include <type_traits>
#include <utility>
#include <arm_neon.h>

#include "kernel_table.h"
#include "portable.h"
#include "scratch.h"

namespace fastxent {
namespace isa_neon {

#include "simd/vec_scalar.h"
#include "simd/vec_neon.h"
#include "vexp.h"
#include "vlog.h"
#include "vtanh.h"
#include "kernel_body.h"
#include "bce_body.h"

}  // namespace isa_neon

#if !defined(FASTXENT_KERNELS_HALF)  // the table is in the main file only
const KernelTable kTableNeon = {"neon",           isa_neon::forward_rows, isa_neon::fused_rows,
                              isa_neon::backward_rows, isa_neon::slice_stats,
                              isa_neon::slice_grad,    isa_neon::rowop_rows, isa_neon::bce_range,
                              isa_neon::count_kept_labels,
                              isa_neon::widen_kept_labels};
#endif

}  // namespace fastxent
