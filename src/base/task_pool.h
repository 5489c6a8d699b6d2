// SPDX-License-Identifier: BSD-3-Clause
// TaskPool: runs tasks that may block (a device reset, a migration arc
// waiting for firmware) off the threads that must never block (the
// vfio-user reactors). Threads are started when tasks wait and none is idle,
// up to a cap, and leave after a while without work: an idle daemon has
// none. Tasks run in submission order per pool, concurrently across
// threads; callers that need ordering submit one task at a time.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "base/mutex.h"

namespace uvfio {

class TaskPool {
 public:
  explicit TaskPool(size_t max_threads = 64, std::chrono::milliseconds idle = std::chrono::seconds(5));
  // Runs every task already submitted, then joins the threads.
  ~TaskPool();
  TaskPool(const TaskPool&) = delete;
  TaskPool& operator=(const TaskPool&) = delete;

  void submit(std::function<void()> task);
  // Threads alive now (tests, diagnostics).
  size_t threads() const;

 private:
  void worker();
  const size_t max_;
  const std::chrono::milliseconds idle_;
  mutable Mutex mu_;
  std::condition_variable cv_, exited_;
  std::deque<std::function<void()>> tasks_ GUARDED_BY(mu_);
  size_t alive_ GUARDED_BY(mu_) = 0;
  size_t idle_threads_ GUARDED_BY(mu_) = 0;
  bool stopping_ GUARDED_BY(mu_) = false;
};

}  // namespace uvfio
