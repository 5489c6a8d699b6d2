// SPDX-License-Identifier: BSD-3-Clause
// Signalling an eventfd that belongs to someone else (a client's interrupt
// trigger), as the kernel's eventfd_signal() does it: never waits.
//
// A write(2) to an eventfd blocks while the counter cannot take one more
// (a client can raise it to 0xfffffffffffffffe and leave it there), unless
// the file is O_NONBLOCK — and the file description is the client's, shared
// with its process, so its flags are not ours to change. Here: poll(POLLOUT,
// 0) first (a full counter drops the signal at once), then the write, marked
// as in progress; a watchdog thread interrupts (EINTR, a signal the thread
// takes only inside that write) a write that has waited longer than
// kGuardInterval, should the client have filled the counter between the
// two. A signal that cannot be delivered is dropped and reported; the caller
// counts it. The worst a hostile client can cost the calling thread is
// about one watchdog tick per signal it wins that race on.
//
// (A per-thread timer armed around each write bounded it tighter, but
// arming and disarming a timer costs ~9 µs in a VM, 50x the write:
// bench/eventfd_bench.)
#pragma once

#include <chrono>

namespace uvfio {

enum class EventfdSignal {
  kDelivered,
  kOverflow,  // the counter is full (or filled while we wrote): dropped
  kBadFd,     // not writable at all (an error the caller may log)
};

inline constexpr std::chrono::microseconds kGuardInterval{200};
inline constexpr std::chrono::milliseconds kWatchdogTick{10};

EventfdSignal eventfd_signal(int fd);

// Starts the watchdog thread now rather than at the first signal (idempotent):
// a daemon calls it at start-up, so the thread is there from the beginning
// instead of appearing under the first client.
void eventfd_guard_start();

namespace testing {
// Called between the poll and the write (the window a racing client
// aims at), so a test can fill the counter there. nullptr: none.
void set_eventfd_race_hook(void (*hook)(int fd));
}  // namespace testing

}  // namespace uvfio
