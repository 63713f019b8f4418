// Labels checked inside a call's tasks (the driver's kept_rows), instead of in a pass of their
// own before it: that pass cost a second wake-up of the threads and read every label on its
// own (65536 x 3 float32, two threads: 5-6 us of a 45 us fused call).
//
// The labels are checked in the chunks of rows the tasks run. A forward writes nothing of the
// caller's, so a task checks its own chunk and runs it if that chunk is valid. Fused and
// backward calls write the gradient, and "mean" scales it by the count of rows kept: every
// chunk is checked before any task writes. A task checks its own chunk, then the chunks after
// it not yet taken (wrapping round, so that a thread mostly reads the labels of rows it runs
// next), then waits for those still being checked by other tasks.
// Included by driver.cpp inside its anonymous namespace.
#pragma once

class LabelGate {
 public:
  // chunks: how many chunks check_all covers (0 when only check_own is used: no allocation,
  // which the small calls would otherwise pay).
  explicit LabelGate(int64_t chunks) : chunks_(chunks), taken_(size_t(chunks)) {
    for (auto& t : taken_) t.store(false, std::memory_order_relaxed);
  }

  // count(): the chunk's kept labels, or -1 when one of them is bad.
  // Forward: one task's own chunk checked; true when its labels are valid.
  template <class Count>
  bool check_own(Count&& count) {
    return record(count());
  }

  // count(k): chunk k's kept labels, or -1 when one of them is bad.
  // Fused / backward: every chunk checked (starting at chunk c); true when all labels are valid.
  template <class Count>
  bool check_all(int64_t c, Count&& count) {
    for (int64_t step = 0; step < chunks_; ++step) {
      const int64_t k = (c + step) % chunks_;
      if (taken_[size_t(k)].load(std::memory_order_relaxed) || taken_[size_t(k)].exchange(true)) continue;
      record(count(k));
      checked_.fetch_add(1, std::memory_order_release);
    }
    // The chunks others took are short (a few thousand labels): wait, yielding the core.
    while (checked_.load(std::memory_order_acquire) < chunks_) std::this_thread::yield();
    return !bad_.load(std::memory_order_relaxed);
  }

  bool bad() const { return bad_.load(); }
  int64_t kept() const { return kept_.load(); }

 private:
  bool record(int64_t kept) {
    if (kept < 0) {
      bad_.store(true, std::memory_order_relaxed);
      return false;
    }
    kept_.fetch_add(kept, std::memory_order_relaxed);
    return true;
  }

  const int64_t chunks_;
  std::vector<std::atomic<bool>> taken_;
  std::atomic<int64_t> checked_{0}, kept_{0};
  std::atomic<bool> bad_{false};
};
