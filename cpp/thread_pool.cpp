#include "thread_pool.h"

#include "portable.h"

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64) || defined(_M_IX86)
#include <immintrin.h>  // _mm_pause
#endif
#if !FASTXENT_MSVC
#include <pthread.h>  // pthread_atfork (Windows has no fork)
#include <sched.h>
#endif

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <cstdlib>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace fastxent {
namespace {

int default_num_threads() {
  if (const char* env = std::getenv("FASTXENT_NUM_THREADS")) {
    char* end = nullptr;
    long n = std::strtol(env, &end, 10);
    if (end == env || *end != '\0' || n < 1 || n > 4096) {
      throw std::invalid_argument("FASTXENT_NUM_THREADS must be a positive integer, got '" +
                                  std::string(env) + "'");
    }
    return int(n);
  }
#ifdef __linux__
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set) > 0 ? CPU_COUNT(&set) : 1;
#endif
  unsigned n = std::thread::hardware_concurrency();
  return n ? int(n) : 1;
}

// A hint to the core that this thread is spinning (x86 pause, Arm yield).
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64) || defined(_M_IX86)
  _mm_pause();
#elif defined(__aarch64__) || defined(__arm__)
  __asm__ __volatile__("yield");
#endif
}

// Spins until ready() or `micros` have passed; true when ready. The clock is read once per 64
// checks.
template <class Ready>
bool spin_until(Ready&& ready, int64_t micros) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(micros);
  for (int i = 1;; ++i) {
    if (ready()) return true;
    cpu_relax();
    if (i % 64 == 0 && std::chrono::steady_clock::now() > deadline) return ready();
  }
}

// Waking a sleeping thread costs 40 us on the KVM machines here (an empty two-thread call
// took 83 us: the caller waited for the worker to wake, then was woken itself), more than a
// whole call on 65536 x 3 logits. So:
// - a call is over when its tasks are (a counter), not when every worker has woken: a worker
//   that wakes after the caller has done all the tasks finds none;
// - the caller spins while the last tasks finish, and workers spin this long after a call
//   before they sleep, so that back-to-back calls find them awake (OpenMP runtimes do the same:
//   libgomp spins for a while by default, Intel's for 200 ms).
constexpr int64_t kWorkerSpinMicros = 100;
constexpr int64_t kCallerSpinMicros = 2000;

class Pool {
 public:
  explicit Pool(int threads) : threads_(threads), shares_(new Share[size_t(threads)]) {
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_.store(true);
    }
    start_cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int threads() const { return threads_; }

  void run(int64_t n_tasks, const std::function<void(int64_t)>& task) {
    std::unique_lock<std::mutex> busy(run_mu_, std::try_to_lock);
    if (!busy.owns_lock() || workers_.empty() || n_tasks <= 1) {
      for (int64_t k = 0; k < n_tasks; ++k) task(k);
      return;
    }
    bool wake = false;
    {
      std::lock_guard<std::mutex> lk(mu_);
      task_ = &task;
      n_tasks_ = n_tasks;
      for (int t = 0; t < threads_; ++t) {
        shares_[t].next.store(n_tasks * t / threads_);
        shares_[t].end = n_tasks * (t + 1) / threads_;
      }
      finished_.store(0);
      generation_.fetch_add(1, std::memory_order_release);
      wake = sleeping_ > 0;
    }
    if (wake) start_cv_.notify_all();  // (spinning workers see the generation change)
    drain(task, n_tasks, 0);
    // The tasks' writes are visible once finished_ (release per task) reads n_tasks.
    const auto all_done = [&] { return finished_.load(std::memory_order_acquire) == n_tasks; };
    if (!spin_until(all_done, kCallerSpinMicros)) {
      std::unique_lock<std::mutex> lk(mu_);
      caller_waiting_ = true;
      done_cv_.wait(lk, all_done);
      caller_waiting_ = false;
    }
    // Close the call; workers that joined it are leaving drain() (no task left) and must be out
    // before the next call resets the shares.
    {
      std::lock_guard<std::mutex> lk(mu_);
      task_ = nullptr;
    }
    const auto none_active = [&] { return active_.load(std::memory_order_acquire) == 0; };
    // (Yielding after a while: a worker descheduled inside drain() needs the core to leave it.)
    if (!spin_until(none_active, kCallerSpinMicros)) {
      while (!none_active()) std::this_thread::yield();
    }
  }

 private:
  // Thread `self` runs its own share of the tasks first, in order, then takes what is left of
  // the others' shares. Each thread thus keeps the same rows from call to call, and their
  // logits, gradient and labels stay in its own L2 between calls (65536 x 3: the whole call's
  // data is 2 MB); a thread that falls behind still has its tasks taken by the others.
  void drain(const std::function<void(int64_t)>& task, int64_t n_tasks, int self) {
    for (int step = 0; step < threads_; ++step) {
      Share& share = shares_[(self + step) % threads_];
      for (int64_t k; (k = share.next.fetch_add(1)) < share.end;) {
        task(k);
        if (finished_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_tasks) {
          std::lock_guard<std::mutex> lk(mu_);
          if (caller_waiting_) done_cv_.notify_one();
        }
      }
    }
  }
  void worker_loop(int self) {
    uint64_t seen = 0;
    for (;;) {
      const auto called = [&] {
        return stop_.load(std::memory_order_acquire) || generation_.load(std::memory_order_acquire) != seen;
      };
      spin_until(called, kWorkerSpinMicros);
      std::unique_lock<std::mutex> lk(mu_);
      if (!called()) {
        ++sleeping_;
        start_cv_.wait(lk, called);
        --sleeping_;
      }
      if (stop_.load()) return;
      seen = generation_.load();
      if (task_ == nullptr) continue;  // that call is over already
      const std::function<void(int64_t)>* task = task_;
      const int64_t n_tasks = n_tasks_;
      active_.fetch_add(1);
      lk.unlock();
      drain(*task, n_tasks, self);
      active_.fetch_sub(1, std::memory_order_release);
    }
  }

  const int threads_;
  std::vector<std::thread> workers_;
  std::mutex run_mu_, mu_;
  std::condition_variable start_cv_, done_cv_;
  // Under mu_: the running call (task_ null between calls), sleepers, a caller asleep.
  const std::function<void(int64_t)>* task_ = nullptr;
  int64_t n_tasks_ = 0;
  int sleeping_ = 0;
  bool caller_waiting_ = false;
  // Written under mu_, read by spinning workers without it.
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
  // Thread t's share of a call's tasks: [first, end), next the first not yet taken (set under
  // mu_ before the call's generation is published). A cache line each.
  struct alignas(64) Share {
    std::atomic<int64_t> next{0};
    int64_t end = 0;
  };
  std::unique_ptr<Share[]> shares_;
  std::atomic<int64_t> finished_{0};
  std::atomic<int> active_{0};  // workers inside drain()
};

std::mutex g_pool_mu;
// Shared so that a running call keeps its pool alive while set_num_threads replaces it.
std::shared_ptr<Pool>* g_pool = nullptr;
int g_requested = 0;  // 0: not chosen yet

// After fork() only the forking thread exists in the child: abandon the parent's pool
// (its threads and possibly-held locks are gone) and build a new one on first use.
[[maybe_unused]] void forget_pool_in_child() {
  new (&g_pool_mu) std::mutex();  // it may have been held by a thread that is gone
  g_pool = nullptr;
}

std::shared_ptr<Pool> pool() {
  std::lock_guard<std::mutex> lk(g_pool_mu);
  if (!g_pool) {
#if !FASTXENT_MSVC
    static bool atfork_registered = false;
    if (!atfork_registered) {
      pthread_atfork(nullptr, nullptr, forget_pool_in_child);
      atfork_registered = true;
    }
#endif
    if (g_requested == 0) g_requested = default_num_threads();
    g_pool = new std::shared_ptr<Pool>(std::make_shared<Pool>(g_requested));
  }
  return *g_pool;
}

}  // namespace

int get_num_threads() { return pool()->threads(); }

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("num_threads must be >= 1, got " + std::to_string(n));
  std::lock_guard<std::mutex> lk(g_pool_mu);
  g_requested = n;
  if (g_pool && (*g_pool)->threads() != n) {
    delete g_pool;  // the old pool is destroyed once its last running call returns
    g_pool = nullptr;
  }
}

void parallel_run(int64_t n_tasks, const std::function<void(int64_t)>& task) {
  pool()->run(n_tasks, task);
}

}  // namespace fastxent
