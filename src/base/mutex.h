// SPDX-License-Identifier: BSD-3-Clause
// Mutex and MutexLock: std::mutex and std::unique_lock with thread-safety
// annotations, so clang checks that data marked GUARDED_BY(mu_) is only
// touched with mu_ held. Condition waits go through the MutexLock, which
// releases the mutex while waiting.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "base/thread_annotations.h"

namespace uvfio {

class CAPABILITY("mutex") Mutex {
 public:
  void lock() ACQUIRE() { m_.lock(); }
  void unlock() RELEASE() { m_.unlock(); }
  bool try_lock() TRY_ACQUIRE(true) { return m_.try_lock(); }
  // For the analysis: the caller holds this mutex (a callback run under it).
  void assert_held() const ASSERT_CAPABILITY(this) {}

 private:
  friend class MutexLock;
  std::mutex m_;
};

class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& m) ACQUIRE(m) : ul_(m.m_) {}
  ~MutexLock() RELEASE() {}
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

  // Drops the lock for a moment (e.g. around a call that may wait).
  void unlock() RELEASE() { ul_.unlock(); }
  void lock() ACQUIRE() { ul_.lock(); }

  // Waits on `cv` (the mutex released meanwhile) until `pred`.
  template <class Pred>
  void wait(std::condition_variable& cv, Pred pred) {
    cv.wait(ul_, pred);
  }
  void wait(std::condition_variable& cv) { cv.wait(ul_); }
  template <class Rep, class Period, class Pred>
  bool wait_for(std::condition_variable& cv, std::chrono::duration<Rep, Period> d, Pred pred) {
    return cv.wait_for(ul_, d, pred);
  }
  template <class Clock, class Dur, class Pred>
  bool wait_until(std::condition_variable& cv, std::chrono::time_point<Clock, Dur> t, Pred pred) {
    return cv.wait_until(ul_, t, pred);
  }
  template <class Clock, class Dur>
  std::cv_status wait_until(std::condition_variable& cv, std::chrono::time_point<Clock, Dur> t) {
    return cv.wait_until(ul_, t);
  }

 private:
  std::unique_lock<std::mutex> ul_;
};

}  // namespace uvfio
