#include "base/eventfd.h"

#include <poll.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <mutex>

#include "base/log.h"

#ifndef sigev_notify_thread_id
#define sigev_notify_thread_id _sigev_un._tid
#endif

namespace uvfio {

namespace {

// A real-time signal nothing else in the process uses; its handler does
// nothing: what matters is that it is installed without SA_RESTART, so the
// write it lands in returns EINTR.
int guard_signo() { return SIGRTMIN + 4; }

void on_guard(int) {}

void install_guard() {
  struct sigaction sa {};
  sa.sa_handler = on_guard;
  sa.sa_flags = 0;  // no SA_RESTART
  sigemptyset(&sa.sa_mask);
  sigaction(guard_signo(), &sa, nullptr);
}

// One timer per thread that signals, aimed at that thread alone.
struct GuardTimer {
  timer_t id{};
  bool ok = false;
  GuardTimer() {
    static std::once_flag once;
    std::call_once(once, install_guard);
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, guard_signo());
    pthread_sigmask(SIG_UNBLOCK, &s, nullptr);  // a daemon thread may block everything else
    sigevent sev{};
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = guard_signo();
    sev.sigev_notify_thread_id = static_cast<pid_t>(gettid());
    ok = timer_create(CLOCK_MONOTONIC, &sev, &id) == 0;
    if (!ok) log::warn("uvfiod", "eventfd guard timer: timer_create failed; a full client eventfd is only polled");
  }
  ~GuardTimer() {
    if (ok) timer_delete(id);
  }
  GuardTimer(const GuardTimer&) = delete;
  GuardTimer& operator=(const GuardTimer&) = delete;
  void arm(bool on) {
    if (!ok) return;
    itimerspec t{};
    if (on) t.it_value.tv_nsec = std::chrono::nanoseconds(kGuardInterval).count();
    timer_settime(id, 0, &t, nullptr);
  }
};

std::atomic<void (*)(int)> g_race_hook{nullptr};

}  // namespace

namespace testing {
void set_eventfd_race_hook(void (*hook)(int)) { g_race_hook = hook; }
}  // namespace testing

EventfdSignal eventfd_signal(int fd) {
  if (fd < 0) return EventfdSignal::kBadFd;
  pollfd p{fd, POLLOUT, 0};
  int n = ::poll(&p, 1, 0);
  if (n < 0 || (p.revents & (POLLERR | POLLNVAL | POLLHUP))) return EventfdSignal::kBadFd;
  if (!(p.revents & POLLOUT)) return EventfdSignal::kOverflow;
  thread_local GuardTimer guard;
  uint64_t one = 1;
  guard.arm(true);
  if (auto hook = g_race_hook.load(std::memory_order_relaxed)) hook(fd);
  ssize_t w = ::write(fd, &one, sizeof(one));
  int err = errno;
  guard.arm(false);
  if (w == static_cast<ssize_t>(sizeof(one))) return EventfdSignal::kDelivered;
  if (err == EAGAIN || err == EINTR) return EventfdSignal::kOverflow;
  return EventfdSignal::kBadFd;
}

}  // namespace uvfio
