// Signalling an eventfd that belongs to someone else (a client's interrupt
// trigger), as the kernel's eventfd_signal() does it: never waits.
//
// A write(2) to an eventfd blocks while the counter cannot take one more
// (a client can raise it to 0xfffffffffffffffe and leave it there), unless
// the file is O_NONBLOCK — and the file description is the client's, shared
// with its process, so its flags are not ours to change. Here: poll(POLLOUT,
// 0) first (a full counter drops the signal at once), then the write under a
// per-thread guard timer that interrupts it (EINTR) should the client fill
// the counter between the two. A signal that cannot be delivered is dropped
// and reported; the caller counts it. The worst a hostile client can cost
// the calling thread is one guard interval per signal (kGuardInterval).
#pragma once

#include <chrono>

namespace uvfio {

enum class EventfdSignal {
  kDelivered,
  kOverflow,  // the counter is full (or filled while we wrote): dropped
  kBadFd,     // not writable at all (an error the caller may log)
};

inline constexpr std::chrono::microseconds kGuardInterval{200};

EventfdSignal eventfd_signal(int fd);

namespace testing {
// Called between the poll and the write (the window a racing client
// aims at), so a test can fill the counter there. nullptr: none.
void set_eventfd_race_hook(void (*hook)(int fd));
}  // namespace testing

}  // namespace uvfio
