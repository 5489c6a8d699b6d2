// SPDX-License-Identifier: BSD-3-Clause
#include "base/eventfd.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "base/log.h"

namespace uvfio {

namespace {

// A real-time signal nothing else in the process uses. Its handler does
// nothing: what matters is that it is installed without SA_RESTART, so a
// write it lands in returns EINTR. Each signalling thread keeps it blocked
// except around its guarded write, so it can never interrupt anything else
// (one sent late waits, and is taken harmlessly before the next write).
int guard_signo() { return SIGRTMIN + 4; }

void on_guard(int) {}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// A thread that signals eventfds, as the watchdog sees it.
struct Writer {
  std::atomic<int64_t> since_ns{0};  // when its guarded write began; 0: not writing
  pthread_t thread = pthread_self();
  sigset_t guard_set;
  Writer();
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;
};

// Never destroyed: threads may unregister after static destruction.
std::mutex& writers_mu() {
  static auto* mu = new std::mutex;
  return *mu;
}
std::vector<Writer*>& writers() {
  static auto* v = new std::vector<Writer*>;
  return *v;
}

// One thread for the process: every kWatchdogTick it interrupts the writes
// that have waited longer than kGuardInterval. It costs the signalling path
// two atomic stores; the ticks cost about nothing (a wake-up per tick).
void watchdog() {
  for (;;) {
    std::this_thread::sleep_for(kWatchdogTick);
    int64_t now = now_ns();
    std::lock_guard lk(writers_mu());  // a writer's thread cannot exit meanwhile
    for (Writer* w : writers()) {
      int64_t since = w->since_ns.load(std::memory_order_acquire);
      if (since && now - since > std::chrono::nanoseconds(kGuardInterval).count())
        pthread_kill(w->thread, guard_signo());
    }
  }
}

void start_watchdog() {
  struct sigaction sa {};
  sa.sa_handler = on_guard;
  sa.sa_flags = 0;  // no SA_RESTART
  sigemptyset(&sa.sa_mask);
  sigaction(guard_signo(), &sa, nullptr);
  try {
    // The watchdog itself never takes the signal.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    std::thread(watchdog).detach();
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
  } catch (const std::system_error& e) {
    log::warn("uvfiod", "eventfd guard: no watchdog thread ({}): a full client eventfd is only polled", e.what());
  }
}

Writer::Writer() {
  eventfd_guard_start();
  sigemptyset(&guard_set);
  sigaddset(&guard_set, guard_signo());
  pthread_sigmask(SIG_BLOCK, &guard_set, nullptr);  // taken only inside the guarded write
  std::lock_guard lk(writers_mu());
  writers().push_back(this);
}

Writer::~Writer() {
  std::lock_guard lk(writers_mu());
  std::erase(writers(), this);
}

std::atomic<void (*)(int)> g_race_hook{nullptr};

}  // namespace

void eventfd_guard_start() {
  static std::once_flag once;
  std::call_once(once, start_watchdog);
}

namespace testing {
void set_eventfd_race_hook(void (*hook)(int)) { g_race_hook = hook; }
}  // namespace testing

EventfdSignal eventfd_signal(int fd) {
  if (fd < 0) return EventfdSignal::kBadFd;
  pollfd p{fd, POLLOUT, 0};
  int n = ::poll(&p, 1, 0);
  if (n < 0 || (p.revents & (POLLERR | POLLNVAL | POLLHUP))) return EventfdSignal::kBadFd;
  if (!(p.revents & POLLOUT)) return EventfdSignal::kOverflow;
  thread_local Writer self;
  uint64_t one = 1;
  pthread_sigmask(SIG_UNBLOCK, &self.guard_set, nullptr);
  self.since_ns.store(now_ns(), std::memory_order_release);
  if (auto hook = g_race_hook.load(std::memory_order_relaxed)) hook(fd);
  ssize_t w = ::write(fd, &one, sizeof(one));
  int err = errno;
  self.since_ns.store(0, std::memory_order_release);
  pthread_sigmask(SIG_BLOCK, &self.guard_set, nullptr);
  if (w == static_cast<ssize_t>(sizeof(one))) return EventfdSignal::kDelivered;
  if (err == EAGAIN || err == EINTR) return EventfdSignal::kOverflow;
  return EventfdSignal::kBadFd;
}

}  // namespace uvfio
