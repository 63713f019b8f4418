// The float16 / bfloat16 kernels of the avx2 instruction set: the same kernel body in its own
// translation unit, compiled with the same flags (see the end of kernel_body.h for why).
#define FASTXENT_KERNELS_HALF
#include "isa_avx2.cpp"
