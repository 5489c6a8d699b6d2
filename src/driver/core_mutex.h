// SPDX-License-Identifier: BSD-3-Clause
// CoreMutex: the driver core's lock. Recursive (probe() and remove() run
// with it held and register or remove further devices), held only for
// short, non-blocking work: it is released entirely — at whatever depth the
// thread holds it — while a thread waits, for another thread's device lock
// (wait()) or for a user to let go of a device (unlocked()).
//
// Device locks (Linux's device_lock()) are built on it: see DevLock in
// attr_tree.h and DriverCore::lock_device().
#pragma once

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "base/thread_annotations.h"

namespace uvfio::driver {

class CAPABILITY("mutex") CoreMutex {
 public:
  void lock() ACQUIRE() {
    if (owner_.load(std::memory_order_relaxed) == std::this_thread::get_id()) {
      ++depth_;
      return;
    }
    m_.lock();
    owner_.store(std::this_thread::get_id(), std::memory_order_relaxed);
    depth_ = 1;
  }
  void unlock() RELEASE() {
    if (--depth_ == 0) {
      owner_.store(std::thread::id(), std::memory_order_relaxed);
      m_.unlock();
    }
  }
  // The calling thread holds it.
  bool held() const { return owner_.load(std::memory_order_relaxed) == std::this_thread::get_id(); }
  // For the analysis: the caller holds it (code reached only under it).
  void assert_held() const ASSERT_CAPABILITY(this) {}

  // Waits, released entirely, until notify_all() (or spuriously): callers
  // re-check what they wait for, and re-validate every pointer they hold
  // that another thread may have removed meanwhile.
  void wait() REQUIRES(this) {
    unsigned d = depth_;
    depth_ = 0;
    owner_.store(std::thread::id(), std::memory_order_relaxed);
    std::unique_lock ul(m_, std::adopt_lock);
    cv_.wait(ul);
    ul.release();
    owner_.store(std::this_thread::get_id(), std::memory_order_relaxed);
    depth_ = d;
  }
  void notify_all() { cv_.notify_all(); }

  // Runs `fn` with the lock released entirely (if the caller holds it),
  // taking it back at the same depth after.
  template <class F>
  void unlocked(F&& fn) NO_THREAD_SAFETY_ANALYSIS {
    if (!held()) {
      fn();
      return;
    }
    unsigned d = depth_;
    depth_ = 0;
    owner_.store(std::thread::id(), std::memory_order_relaxed);
    m_.unlock();
    fn();
    m_.lock();
    owner_.store(std::this_thread::get_id(), std::memory_order_relaxed);
    depth_ = d;
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  std::atomic<std::thread::id> owner_{};
  unsigned depth_ = 0;  // by the owner only
};

// Holds a CoreMutex for a scope (the analysis sees it held).
class SCOPED_CAPABILITY CoreLock {
 public:
  explicit CoreLock(CoreMutex& m) ACQUIRE(m) : m_(m) { m_.lock(); }
  ~CoreLock() RELEASE() { m_.unlock(); }
  CoreLock(const CoreLock&) = delete;
  CoreLock& operator=(const CoreLock&) = delete;

 private:
  CoreMutex& m_;
};

}  // namespace uvfio::driver
