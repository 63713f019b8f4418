#include "scratch.h"

#include <cstdlib>

namespace fastxent {
namespace {

struct Kept {
  void* data = nullptr;
  size_t bytes = 0;
  ~Kept() { std::free(data); }
};

thread_local Kept kept[int(ScratchSlot::count)];

}  // namespace

void* kept_scratch(ScratchSlot slot, size_t bytes) noexcept {
  if (bytes > kKeptScratchBytes) return nullptr;
  Kept& k = kept[int(slot)];
  if (k.bytes < bytes || k.data == nullptr) {
    std::free(k.data);
    k.data = std::malloc(bytes > 0 ? bytes : 1);
    k.bytes = k.data ? bytes : 0;
  }
  return k.data;
}

}  // namespace fastxent
