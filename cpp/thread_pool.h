// A small persistent thread pool: the caller and (threads - 1) workers share the tasks of one
// parallel call. One call at a time: a second concurrent caller runs its tasks inline rather
// than oversubscribing the cores.
#pragma once
#include <cstdint>
#include <functional>

namespace fastxent {

int get_num_threads();
// n >= 1. Restarts the workers.
void set_num_threads(int n);
// Runs task(k) for k in [0, n_tasks); returns when all have finished.
void parallel_run(int64_t n_tasks, const std::function<void(int64_t)>& task);

}  // namespace fastxent
