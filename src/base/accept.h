// SPDX-License-Identifier: BSD-3-Clause
// accept4() for a listener that must not spin when the process is out of
// file descriptors. With EMFILE/ENFILE the pending connection stays in the
// backlog and a level-triggered poll reports it again at once: a loop at
// 100% CPU until an fd frees. The classic way out: keep one fd in reserve;
// at EMFILE close it, accept the connection, tell the peer why (`shed`),
// close it, and take the reserve back. If the reserve cannot be taken back
// (another thread took the slot first), the caller is told to pause the
// listener for a while (kBackoff) rather than retry at once.
#pragma once

#include <chrono>
#include <functional>

#include "base/result.h"
#include "base/unique_fd.h"

namespace uvfio {

class Acceptor {
 public:
  static constexpr std::chrono::milliseconds kBackoff{100};

  Acceptor();
  // A connection; EAGAIN when none is pending; EMFILE (or ENFILE) when one
  // was shed (`shed` got its fd first, to say why before it is closed) or
  // none could be: then `pause` is set and the caller should stop polling
  // the listener for kBackoff. Other errors as accept4().
  Result<UniqueFd> accept(int listen_fd, int flags, const std::function<void(int)>& shed, bool* pause);
  // True at most once a second: whether an EMFILE now is worth a log line
  // (a flood of refused connections must not flood the log).
  bool warn_due();

 private:
  UniqueFd reserve_;
  std::chrono::steady_clock::time_point last_warn_{};
};

}  // namespace uvfio
