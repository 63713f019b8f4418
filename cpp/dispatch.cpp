#include "dispatch.h"

#include "portable.h"
#if FASTXENT_MSVC && (defined(__x86_64__) || defined(_M_X64))
#include <intrin.h>     // __cpuidex
#include <immintrin.h>  // _xgetbv
#endif

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <stdexcept>

namespace fastxent {
namespace {

#if (defined(__x86_64__) || defined(_M_X64)) && FASTXENT_MSVC
// CPUID feature bits, and XGETBV for whether the OS saves the wide registers (the check GCC's
// __builtin_cpu_supports makes too).
bool cpu_has(const char* isa) {
  int leaf1[4], leaf7[4];
  __cpuidex(leaf1, 1, 0);
  __cpuidex(leaf7, 7, 0);
  const bool osxsave = (leaf1[2] >> 27) & 1;
  const unsigned long long xcr0 = osxsave ? _xgetbv(0) : 0;
  const bool ymm_saved = (xcr0 & 0x6) == 0x6;    // SSE + AVX state
  const bool zmm_saved = (xcr0 & 0xE6) == 0xE6;  // + opmask, ZMM0-15 upper, ZMM16-31
  const bool avx = (leaf1[2] >> 28) & 1, fma = (leaf1[2] >> 12) & 1, f16c = (leaf1[2] >> 29) & 1;
  const bool avx2 = (leaf7[1] >> 5) & 1, avx512f = (leaf7[1] >> 16) & 1, avx512dq = (leaf7[1] >> 17) & 1;
  if (std::string(isa) == "avx2") return ymm_saved && avx && avx2 && fma && f16c;
  if (std::string(isa) == "avx512") return zmm_saved && avx512f && avx512dq && fma;
  return false;
}
#elif defined(__x86_64__) || defined(_M_X64)
bool cpu_has(const char* isa) {
  __builtin_cpu_init();
  // F16C (float16 rows) comes with every AVX2 CPU; checked anyway, the avx2 kernels use it.
  if (std::string(isa) == "avx2") {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
  }
  if (std::string(isa) == "avx512") {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("fma");
  }
  return false;
}
#endif

std::atomic<const KernelTable*> g_active{nullptr};
std::mutex g_select_mu;

const KernelTable* find(const std::string& name) {
  for (const KernelTable* t : supported_tables())
    if (name == t->isa) return t;
  return nullptr;
}

std::string names() {
  std::string out;
  for (const KernelTable* t : supported_tables()) out += std::string(out.empty() ? "" : ", ") + t->isa;
  return out;
}

}  // namespace

std::vector<const KernelTable*> supported_tables() {
  std::vector<const KernelTable*> tables{&kTableScalar};
#if defined(FASTXENT_HAVE_AVX2)
  if (cpu_has("avx2")) tables.push_back(&kTableAvx2);
#endif
#if defined(FASTXENT_HAVE_AVX512)
  if (cpu_has("avx512")) tables.push_back(&kTableAvx512);
#endif
#if defined(FASTXENT_HAVE_NEON)
  tables.push_back(&kTableNeon);  // NEON is part of the aarch64 baseline
#endif
  return tables;
}

const KernelTable& active_table() {
  const KernelTable* t = g_active.load(std::memory_order_acquire);
  if (t) return *t;
  std::lock_guard<std::mutex> lk(g_select_mu);
  if ((t = g_active.load()) != nullptr) return *t;
  const char* env = std::getenv("FASTXENT_ISA");
  if (env && *env) {
    t = find(env);
    if (!t) {
      throw std::invalid_argument("FASTXENT_ISA='" + std::string(env) +
                                  "' is not compiled in or not supported by this CPU; choose one of: " +
                                  names());
    }
  } else {
    t = supported_tables().back();
  }
  g_active.store(t, std::memory_order_release);
  return *t;
}

void select_isa(const std::string& name) {
  const KernelTable* t = find(name);
  if (!t) throw std::invalid_argument("isa '" + name + "' is not available here; choose one of: " + names());
  std::lock_guard<std::mutex> lk(g_select_mu);
  g_active.store(t, std::memory_order_release);
}

}  // namespace fastxent
