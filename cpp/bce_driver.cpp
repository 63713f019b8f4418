#include "bce_driver.h"

#include <vector>

#include "dispatch.h"
#include "thread_pool.h"

namespace fastxent {
namespace {

// Elements per task: enough to hide the task hand-out, small enough to balance two threads.
constexpr int64_t kTaskElements = 1 << 15;
// Below this many elements a call runs on the calling thread: waking workers costs more.
constexpr int64_t kMinParallelElements = 1 << 16;

}  // namespace

double run_bce(const BceArgs& a) {
  if (a.n <= 0) return 0.0;
  const KernelTable& table = active_table();
  const int64_t chunk = a.period * (kTaskElements / a.period > 1 ? kTaskElements / a.period : 1);
  const int64_t tasks = (a.n + chunk - 1) / chunk;
  std::vector<double> partial(size_t(tasks), 0.0);
  auto task = [&](int64_t k) {
    const int64_t e0 = k * chunk;
    partial[size_t(k)] = table.bce_range(a, e0, e0 + chunk < a.n ? e0 + chunk : a.n);
  };
  if (get_num_threads() == 1 || a.n < kMinParallelElements) {
    for (int64_t k = 0; k < tasks; ++k) task(k);
  } else {
    parallel_run(tasks, task);
  }
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

}  // namespace fastxent
