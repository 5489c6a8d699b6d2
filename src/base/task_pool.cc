// SPDX-License-Identifier: BSD-3-Clause
#include "base/task_pool.h"

namespace uvfio {

TaskPool::TaskPool(size_t max_threads, std::chrono::milliseconds idle) : max_(max_threads ? max_threads : 1), idle_(idle) {}

TaskPool::~TaskPool() {
  MutexLock lk(mu_);
  stopping_ = true;
  cv_.notify_all();
  lk.wait(exited_, [&] {
    mu_.assert_held();
    return alive_ == 0;
  });
}

void TaskPool::submit(std::function<void()> task) {
  MutexLock lk(mu_);
  tasks_.push_back(std::move(task));
  if (idle_threads_ > 0) {
    cv_.notify_one();
  } else if (alive_ < max_) {
    ++alive_;
    // Detached: the destructor waits for every worker to say it left.
    std::thread([this] { worker(); }).detach();
  }
}

size_t TaskPool::threads() const {
  MutexLock lk(mu_);
  return alive_;
}

void TaskPool::worker() {
  MutexLock lk(mu_);
  for (;;) {
    if (tasks_.empty()) {
      if (stopping_) break;
      ++idle_threads_;
      bool got = lk.wait_for(cv_, idle_, [&] {
        mu_.assert_held();
        return !tasks_.empty() || stopping_;
      });
      --idle_threads_;
      if (!got) break;  // idle long enough: leave
      continue;
    }
    auto task = std::move(tasks_.front());
    tasks_.pop_front();
    lk.unlock();
    task();
    lk.lock();
  }
  --alive_;
  // The last one out wakes the destructor; notify under the lock: the pool
  // may be gone the moment it is released.
  exited_.notify_all();
}

}  // namespace uvfio
