// SPDX-License-Identifier: BSD-3-Clause
// Reading and writing vfio-user messages on a stream socket: a message is
// sent with one sendmsg (its fds with it); received with its fds taken from
// the first recvmsg (the header), then the rest of its bytes.
#pragma once

#include <span>
#include <vector>

#include "base/result.h"
#include "base/unique_fd.h"
#include "vfio_user/wire.h"

namespace uvfio::vfio_user {

struct Message {
  Header hdr{};
  std::vector<uint8_t> payload;
  std::vector<UniqueFd> fds;
  // The client attached fds the daemon could not take (out of fds: the
  // kernel dropped them, MSG_CTRUNC). The bytes are intact; the request is
  // answered EMFILE.
  bool fds_lost = false;
};

// ECONNRESET at EOF; EPROTO when the header's size is below 16 or above
// `max_size` (the stream cannot be trusted after that: close it); EMSGSIZE
// when more fds arrived than the control buffer holds (all are closed).
Result<Message> recv_message(int sock, size_t max_size = kMaxMessage);
Result<void> send_message(int sock, const Header& hdr, std::span<const uint8_t> payload,
                          std::span<const int> fds = {});
// Reads messages from a stream socket with one recvmsg per message in the
// common case (a 64 KiB buffer; big messages take more). fds belong to the
// last message that starts in the chunk they came with: the kernel ends a
// read after a segment that carries fds, and our peers send each message,
// fds included, with one sendmsg. Not thread-safe.
class MessageReader {
 public:
  explicit MessageReader(int sock, size_t max_size = kMaxMessage) : sock_(sock), max_(max_size) {}
  // Blocks for a whole message. `spin`: busy-poll (MSG_DONTWAIT in a loop)
  // instead of sleeping in the kernel. Errors as recv_message().
  Result<Message> next(bool spin = false);
  // The same, into `m` (its buffers reused: no allocation once warm).
  Result<void> next_into(Message& m, bool spin = false);
  // Non-blocking: a message if one is complete after at most one recvmsg
  // (MSG_DONTWAIT; none if `may_read` is false: buffered bytes only);
  // false if not yet. ECONNRESET at EOF.
  Result<bool> try_next_into(Message& m, bool may_read = true);
  // The last recvmsg returned less than it had room for: the socket had
  // nothing more then (another read would likely find nothing).
  bool drained() const { return drained_; }
  // Bytes received but not yet returned as messages.
  size_t buffered() const { return end_ - start_; }
  // Bytes received in all (progress, for a stall timeout).
  uint64_t received() const { return received_; }

 private:
  Result<void> fill(bool spin, bool nonblock = false);
  // Takes the message at start_ if it is complete.
  Result<bool> take(Message& m);
  int sock_;
  size_t max_;
  std::vector<uint8_t> buf_ = std::vector<uint8_t>(64 << 10);
  size_t start_ = 0, end_ = 0;
  uint64_t received_ = 0;
  bool drained_ = true;
  std::vector<UniqueFd> pending_fds_;   // came with the chunk being parsed
  bool pending_lost_ = false;           // ... and some were dropped (no fd to install them)
  size_t pending_owner_ = SIZE_MAX;     // buffer offset of the header they belong to
};

// A header-only error reply.
Result<void> send_error(int sock, const Header& request, int err);

}  // namespace uvfio::vfio_user
