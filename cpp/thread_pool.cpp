#include "thread_pool.h"

#include "portable.h"

#if !FASTXENT_MSVC
#include <pthread.h>  // pthread_atfork (Windows has no fork)
#include <sched.h>
#endif

#include <atomic>
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

class Pool {
 public:
  explicit Pool(int threads) : threads_(threads) {
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this] { worker_loop(); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
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
    {
      std::lock_guard<std::mutex> lk(mu_);
      task_ = &task;
      n_tasks_ = n_tasks;
      next_.store(0);
      pending_ = int(workers_.size());
      ++generation_;
    }
    start_cv_.notify_all();
    drain();
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [this] { return pending_ == 0; });
    task_ = nullptr;
  }

 private:
  void drain() {
    for (int64_t k; (k = next_.fetch_add(1)) < n_tasks_;) (*task_)(k);
  }
  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        start_cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      drain();
      std::lock_guard<std::mutex> lk(mu_);
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }

  const int threads_;
  std::vector<std::thread> workers_;
  std::mutex run_mu_, mu_;
  std::condition_variable start_cv_, done_cv_;
  const std::function<void(int64_t)>* task_ = nullptr;
  int64_t n_tasks_ = 0;
  std::atomic<int64_t> next_{0};
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
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
