// Scratch memory kept from one call to the next on each thread. A fresh allocation of a few
// hundred KB comes from mmap, and faulting its pages in can cost more than the kernel itself
// (65536 x 3 logits: about 0.5 ms of page faults against 0.3 ms of work).
#pragma once
#include <cstddef>

namespace fastxent {

// Each use has its own slot, so that one call can hold several at once.
enum class ScratchSlot : int { labels, lse, row_loss, row_z, exp_row, count };

// Requests up to this many bytes are served from memory kept for the thread's next call.
constexpr size_t kKeptScratchBytes = size_t(16) << 20;

// At least `bytes` uninitialised bytes (aligned for any scalar), valid until the next request
// for the same slot on this thread; null when bytes exceed kKeptScratchBytes or memory is out.
// Never throws (the kernels call it on pool threads).
void* kept_scratch(ScratchSlot slot, size_t bytes) noexcept;

}  // namespace fastxent
