// A fixed pool of compute workers for the CPU backend. run() splits a job into tasks that
// the caller and the workers take from a shared counter; it returns when all are done.
//
// Workers spin briefly between jobs (a forward pass issues dozens of jobs back to back, and
// waking a sleeping thread costs tens of microseconds), then sleep on the job counter.
// Only one thread may call run() at a time (the executor's step loop owns the pool).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

namespace tutti {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);  // n_threads counts the calling thread
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return int(workers_.size()) + 1; }
  // Calls fn(task, thread) for every task in [0, n_tasks); thread is in [0, size()).
  void run(int n_tasks, const std::function<void(int task, int thread)>& fn);

 private:
  void worker_main(int thread);
  void work(int thread);

  std::vector<std::thread> workers_;
  const std::function<void(int, int)>* job_ = nullptr;
  int n_tasks_ = 0;
  std::atomic<int> next_task_{0};
  std::atomic<int> busy_workers_{0};
  std::atomic<uint32_t> generation_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace tutti
