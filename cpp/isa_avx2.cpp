// The kernel body compiled for the avx2 instruction set (flags set per file in CMakeLists.txt).
// System headers first: the ISA headers below are included inside a namespace.
#include <cstdint>
#include <type_traits>
#include <utility>
#include <immintrin.h>

#include "kernel_table.h"
#include "portable.h"
#include "scratch.h"

namespace fastxent {
namespace isa_avx2 {

#include "simd/vec_scalar.h"
#include "simd/vec_avx2.h"
#include "vexp.h"
#include "vlog.h"
#include "vtanh.h"
#include "kernel_body.h"
#include "bce_body.h"

}  // namespace isa_avx2

#if !defined(FASTXENT_KERNELS_HALF)  // the table is in the main file only
const KernelTable kTableAvx2 = {"avx2",           isa_avx2::forward_rows, isa_avx2::fused_rows,
                              isa_avx2::backward_rows, isa_avx2::slice_stats,
                              isa_avx2::slice_grad,    isa_avx2::rowop_rows, isa_avx2::bce_range,
                              isa_avx2::count_kept_labels,
                              isa_avx2::widen_kept_labels};
#endif

}  // namespace fastxent
