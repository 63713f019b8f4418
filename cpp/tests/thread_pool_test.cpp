// parallel_run runs every task exactly once, whatever the thread and task counts, also when
// one thread is held up inside a task (the others then take what is left of its share), and
// from two callers at once (the second runs its tasks inline). Exit status 0 when all hold.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "thread_pool.h"

using namespace fastxent;

namespace {

int g_failures = 0;
constexpr int kWatchdog = 60;  // seconds

// Runs n_tasks tasks on `threads` threads, task `slow` (if any) sleeping 3 ms; every task must
// have run once.
void check_once_each(int threads, int64_t n_tasks, int64_t slow) {
  set_num_threads(threads);
  std::vector<std::atomic<int>> runs(static_cast<size_t>(n_tasks));
  for (auto& r : runs) r.store(0);
  parallel_run(n_tasks, [&](int64_t k) {
    if (k == slow) std::this_thread::sleep_for(std::chrono::milliseconds(3));
    runs[size_t(k)].fetch_add(1);
  });
  for (int64_t k = 0; k < n_tasks; ++k) {
    if (runs[size_t(k)].load() != 1 && ++g_failures <= 20) {
      std::printf("FAIL threads=%d tasks=%lld slow=%lld: task %lld ran %d times\n", threads,
                  (long long)n_tasks, (long long)slow, (long long)k, runs[size_t(k)].load());
    }
  }
}

}  // namespace

int main() {
  // A lost or doubled task leaves a call waiting for its count forever: fail instead of hanging.
  std::thread([] {
    std::this_thread::sleep_for(std::chrono::seconds(kWatchdog));
    std::printf("thread_pool_test: FAIL: still running after %d s (a call never finished)\n", kWatchdog);
    std::fflush(stdout);
    std::_Exit(2);
  }).detach();
  int calls = 0;
  for (int threads : {1, 2, 3, 5}) {
    for (int64_t n_tasks : {0, 1, 2, 3, 4, 7, 8, 9, 31, 1000}) {
      for (int64_t slow : {int64_t(-1), int64_t(0), n_tasks - 1}) {
        check_once_each(threads, n_tasks, slow);
        ++calls;
      }
    }
  }
  // Back-to-back calls (workers still spinning from the last one) and two callers at once.
  set_num_threads(2);
  for (int i = 0; i < 2000; ++i, ++calls) check_once_each(2, 8, -1);
  std::thread other([] {
    for (int i = 0; i < 500; ++i) check_once_each(2, 8, i % 50 == 0 ? 3 : -1);
  });
  for (int i = 0; i < 500; ++i, ++calls) check_once_each(2, 8, -1);
  other.join();
  std::printf("thread_pool_test: %d calls, %d failures\n", calls + 500, g_failures);
  return g_failures == 0 ? 0 : 1;
}
