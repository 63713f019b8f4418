// The kernel body compiled for the avx512 instruction set (flags set per file in CMakeLists.txt).
// System headers first: the ISA headers below are included inside a namespace.
#include <cstdint>
#include <type_traits>
#include <utility>
#include <immintrin.h>

#include "kernel_table.h"
#include "portable.h"
#include "scratch.h"

#define FX_DOUBLE_TABLES 1  // VecD's table exp and log (vec_scalar.h)

namespace fastxent {
namespace isa_avx512 {

#include "simd/vec_scalar.h"
#include "simd/vec_avx512.h"
#include "vexp.h"
#include "vlog.h"
#include "vtanh.h"
#include "kernel_body.h"
#include "bce_body.h"

}  // namespace isa_avx512

#if !defined(FASTXENT_KERNELS_HALF)  // the table is in the main file only
const KernelTable kTableAvx512 = {"avx512",           isa_avx512::forward_rows, isa_avx512::fused_rows,
                              isa_avx512::backward_rows, isa_avx512::slice_stats,
                              isa_avx512::slice_grad,    isa_avx512::rowop_rows, isa_avx512::bce_range,
                              isa_avx512::count_kept_labels,
                              isa_avx512::widen_kept_labels};
#endif

}  // namespace fastxent
