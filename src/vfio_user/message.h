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
};

// ECONNRESET at EOF; EPROTO when the header's size is below 16 or above
// `max_size` (the stream cannot be trusted after that: close it); EMSGSIZE
// when more fds arrived than the control buffer holds (all are closed).
Result<Message> recv_message(int sock, size_t max_size = kMaxMessage);
Result<void> send_message(int sock, const Header& hdr, std::span<const uint8_t> payload,
                          std::span<const int> fds = {});
// A header-only error reply.
Result<void> send_error(int sock, const Header& request, int err);

}  // namespace uvfio::vfio_user
