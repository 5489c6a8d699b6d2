// SPDX-License-Identifier: BSD-3-Clause
// eventfd_signal: a client's eventfd whose counter is full (or filled while
// we write) costs a dropped signal, never a blocked thread.
#include "base/eventfd.h"

#include <fcntl.h>
#include <poll.h>
#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "base/unique_fd.h"

namespace uvfio {
namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kFull = 0xfffffffffffffffeULL;  // the most a write can leave

uint64_t drain(int fd) {
  uint64_t v = 0;
  EXPECT_EQ(::read(fd, &v, sizeof(v)), static_cast<ssize_t>(sizeof(v)));
  return v;
}

TEST(EventfdSignal, DeliversOnePerCall) {
  UniqueFd fd(eventfd(0, EFD_CLOEXEC));
  EXPECT_EQ(eventfd_signal(fd.get()), EventfdSignal::kDelivered);
  EXPECT_EQ(eventfd_signal(fd.get()), EventfdSignal::kDelivered);
  EXPECT_EQ(drain(fd.get()), 2u);
}

// A blocking eventfd (the client's file, its flags untouched) with a full
// counter: write(2) would sleep until the client reads; we drop at once.
TEST(EventfdSignal, FullCounterOnABlockingEventfdIsDroppedAtOnce) {
  UniqueFd fd(eventfd(0, EFD_CLOEXEC));
  ASSERT_EQ(::write(fd.get(), &kFull, sizeof(kFull)), static_cast<ssize_t>(sizeof(kFull)));
  auto t0 = Clock::now();
  for (int i = 0; i < 100; ++i) EXPECT_EQ(eventfd_signal(fd.get()), EventfdSignal::kOverflow);
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(2));
  EXPECT_EQ(fcntl(fd.get(), F_GETFL) & O_NONBLOCK, 0) << "the client's file flags were changed";
  EXPECT_EQ(drain(fd.get()), kFull);  // nothing added, nothing lost
  EXPECT_EQ(eventfd_signal(fd.get()), EventfdSignal::kDelivered);
}

TEST(EventfdSignal, NotAnEventfd) {
  EXPECT_EQ(eventfd_signal(-1), EventfdSignal::kBadFd);
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  close(p[1]);
  EXPECT_EQ(eventfd_signal(p[0]), EventfdSignal::kBadFd);  // read end: not writable
  close(p[0]);
}

// The client fills the counter between our check and our write, again and
// again (one thread empties it, another fills it to the top, as a hostile
// client would): every call still returns within a watchdog tick (plus
// scheduling), delivered or dropped.
TEST(EventfdSignal, AClientRacingTheCounterNeverBlocksTheCaller) {
  UniqueFd fd(eventfd(0, EFD_CLOEXEC));
  std::atomic<bool> stop{false}, filling{true};
  std::atomic<int> left{2};
  // The emptier outlives the filler (a filler blocked on a non-empty counter
  // needs its reads); the main thread only ever signals, never reads, so no
  // blocking read of ours can be left waiting at the end.
  std::thread emptier([&] {
    uint64_t v;
    while (!stop.load() || filling.load()) (void)!::read(fd.get(), &v, sizeof(v));
    left.fetch_sub(1);
  });
  std::thread filler([&] {
    while (!stop.load()) (void)!::write(fd.get(), &kFull, sizeof(kFull));
    filling = false;
    left.fetch_sub(1);
  });
  Clock::duration worst{};
  int delivered = 0, dropped = 0;
  for (int i = 0; i < 3000; ++i) {
    auto t0 = Clock::now();
    auto r = eventfd_signal(fd.get());
    worst = std::max(worst, Clock::now() - t0);
    (r == EventfdSignal::kDelivered ? delivered : dropped)++;
  }
  stop = true;
  // A signal (never blocking) wakes an emptier waiting on an empty counter;
  // the emptier's reads let a waiting filler's write in.
  while (left.load()) {
    (void)eventfd_signal(fd.get());
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  emptier.join();
  filler.join();
  EXPECT_EQ(delivered + dropped, 3000);
  RecordProperty("delivered", delivered);
  RecordProperty("dropped", dropped);
  EXPECT_LT(worst, std::chrono::milliseconds(500)) << "a signal waited on the client";
}

// The window itself, made certain: the counter fills after our check and
// before our write. The write would sleep until the client reads; the guard
// timer ends it.
TEST(EventfdSignal, TheGuardEndsAWriteTheClientFilledUnderUs) {
  UniqueFd fd(eventfd(0, EFD_CLOEXEC));
  testing::set_eventfd_race_hook([](int f) { (void)!::write(f, &kFull, sizeof(kFull)); });
  auto t0 = Clock::now();
  auto r = eventfd_signal(fd.get());
  auto took = Clock::now() - t0;
  testing::set_eventfd_race_hook(nullptr);
  EXPECT_EQ(r, EventfdSignal::kOverflow);
  EXPECT_LT(took, std::chrono::milliseconds(500));
  EXPECT_EQ(drain(fd.get()), kFull);
  // The thread's guard is disarmed: a later blocking read is not interrupted.
  std::thread late([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    uint64_t one = 1;
    (void)!::write(fd.get(), &one, sizeof(one));
  });
  EXPECT_EQ(drain(fd.get()), 1u);
  late.join();
}

}  // namespace
}  // namespace uvfio
