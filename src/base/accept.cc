// SPDX-License-Identifier: BSD-3-Clause
#include "base/accept.h"

#include <fcntl.h>
#include <sys/socket.h>

#include <cerrno>

namespace uvfio {

namespace {
UniqueFd open_reserve() { return UniqueFd(::open("/dev/null", O_RDONLY | O_CLOEXEC)); }
}  // namespace

Acceptor::Acceptor() : reserve_(open_reserve()) {}

Result<UniqueFd> Acceptor::accept(int listen_fd, int flags, const std::function<void(int)>& shed, bool* pause) {
  *pause = false;
  for (;;) {
    UniqueFd fd(::accept4(listen_fd, nullptr, nullptr, flags));
    if (fd) {
      if (!reserve_) reserve_ = open_reserve();  // taken back at the first chance
      return fd;
    }
    int err = errno;
    if (err == EINTR || err == ECONNABORTED) continue;
    if (err != EMFILE && err != ENFILE) return Error(err, "accept");
    if (!reserve_) {
      reserve_ = open_reserve();
      *pause = true;
      return Error(err, "out of file descriptors");
    }
    reserve_.reset();
    UniqueFd victim(::accept4(listen_fd, nullptr, nullptr, flags));
    bool got = static_cast<bool>(victim);
    if (got && shed) shed(victim.get());
    victim.reset();
    reserve_ = open_reserve();
    *pause = !got || !reserve_;
    return Error(err, "out of file descriptors: connection shed");
  }
}

bool Acceptor::warn_due() {
  auto now = std::chrono::steady_clock::now();
  if (now - last_warn_ < std::chrono::seconds(1)) return false;
  last_warn_ = now;
  return true;
}

}  // namespace uvfio
