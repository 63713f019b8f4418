// What GCC/Clang and MSVC spell differently, in one place. Included at global scope (by every
// isa_*.cpp before its ISA namespace, and by the driver files): the kernel headers use these
// macros inside the ISA namespaces.
//
// The kernels call the C library's exp/log/malloc/... (GCC: its builtins), never an inline
// std:: function: an inline function compiled in an AVX-512 file could otherwise be the copy
// the linker keeps for every file, and run on a CPU without AVX-512.
#pragma once

// FASTXENT_CHECK_MSVC_PATHS compiles the MSVC branches with another compiler, to check them
// where no MSVC is at hand (see tools/check_msvc_paths.sh).
#if (defined(_MSC_VER) && !defined(__clang__)) || defined(FASTXENT_CHECK_MSVC_PATHS)
#define FASTXENT_MSVC 1
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#define FX_ALWAYS_INLINE __forceinline
#define FX_EXP(x) ::exp(double(x))
#define FX_LOG(x) ::log(double(x))
#define FX_LOG1P(x) ::log1p(double(x))
#define FX_INF (std::numeric_limits<double>::infinity())
#define FX_NAN (std::numeric_limits<double>::quiet_NaN())
#define FX_MALLOC(n) ::malloc(n)
#define FX_FREE(p) ::free(p)
#define FX_MEMCPY(dst, src, n) ::memcpy(dst, src, n)
#if defined(_M_ARM64)
#include <intrin.h>  // __prefetch (MSVC declares the ARM64-specific intrinsics there)
#define FX_PREFETCH(p) __prefetch(static_cast<const void*>(p))
#define FX_PREFETCH_L2(p) __prefetch(static_cast<const void*>(p))
#define FX_PREFETCH_W(p) __prefetch(static_cast<const void*>(p))
#else
#include <intrin.h>  // _m_prefetchw
#include <xmmintrin.h>
#define FX_PREFETCH(p) _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0)
#define FX_PREFETCH_L2(p) _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T1)
#define FX_PREFETCH_W(p) _m_prefetchw(static_cast<const void*>(p))
#endif
#define FX_UNROLL  // (MSVC unrolls short fixed loops itself)
#else
#define FASTXENT_MSVC 0
// Unroll the next loop fully (fixed trip counts over a few vectors: their values then stay
// in registers instead of a stack array indexed by the loop counter).
#if defined(__clang__)
#define FX_UNROLL _Pragma("unroll")
#else
#define FX_UNROLL _Pragma("GCC unroll 16")
#endif
#define FX_ALWAYS_INLINE inline __attribute__((always_inline))
#define FX_EXP(x) __builtin_exp(x)
#define FX_LOG(x) __builtin_log(x)
#define FX_LOG1P(x) __builtin_log1p(x)
#define FX_INF (__builtin_inf())
#define FX_NAN (__builtin_nan(""))
#define FX_MALLOC(n) __builtin_malloc(n)
#define FX_FREE(p) __builtin_free(p)
#define FX_MEMCPY(dst, src, n) __builtin_memcpy(dst, src, n)
// A hint to start loading a cache line (never faults, so it may point past an array's end).
#define FX_PREFETCH(p) __builtin_prefetch(static_cast<const void*>(p), 0, 3)
// The same into the level-2 cache (not level 1): data for later, such as the next row.
#define FX_PREFETCH_L2(p) __builtin_prefetch(static_cast<const void*>(p), 0, 2)
// A line about to be read and then written (in-place gradients): fetched for ownership at once,
// not shared first and then claimed from the other cores by the store. x86: PREFETCHW, spelled
// in assembly because the compilers emit it only under -mprfchw (CPUs without it, Intel before
// Broadwell, run its encoding as a no-op); ARM: PRFM PSTL1KEEP.
#if defined(__x86_64__) || defined(__i386__)
#define FX_PREFETCH_W(p) __asm__ volatile("prefetchw %0" : : "m"(*static_cast<const char*>(static_cast<const void*>(p))))
#else
#define FX_PREFETCH_W(p) __builtin_prefetch(static_cast<const void*>(p), 1, 3)
#endif
#endif
