// SPDX-License-Identifier: BSD-3-Clause
#include "vfio_user/message.h"

#include <sys/socket.h>

#include <cstring>

namespace uvfio::vfio_user {

const char* command_name(uint16_t cmd) {
  switch (cmd) {
    case kVersion: return "VERSION";
    case kDmaMap: return "DMA_MAP";
    case kDmaUnmap: return "DMA_UNMAP";
    case kDeviceGetInfo: return "DEVICE_GET_INFO";
    case kDeviceGetRegionInfo: return "DEVICE_GET_REGION_INFO";
    case kDeviceGetRegionIoFds: return "DEVICE_GET_REGION_IO_FDS";
    case kDeviceGetIrqInfo: return "DEVICE_GET_IRQ_INFO";
    case kDeviceSetIrqs: return "DEVICE_SET_IRQS";
    case kRegionRead: return "REGION_READ";
    case kRegionWrite: return "REGION_WRITE";
    case kDmaRead: return "DMA_READ";
    case kDmaWrite: return "DMA_WRITE";
    case kDeviceReset: return "DEVICE_RESET";
    case kRegionWriteMulti: return "REGION_WRITE_MULTI";
    case kDeviceFeature: return "DEVICE_FEATURE";
    case kMigDataRead: return "MIG_DATA_READ";
    case kMigDataWrite: return "MIG_DATA_WRITE";
  }
  return "UNKNOWN";
}

namespace {

Result<void> read_exact(int sock, uint8_t* p, size_t n) {
  while (n) {
    ssize_t r = recv(sock, p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return Error(errno, "recv");
    if (r == 0) return Error(ECONNRESET, "peer closed mid-message");
    p += r;
    n -= static_cast<size_t>(r);
  }
  return ok();
}

constexpr size_t kCmsgFds = 64;  // room for more than anyone may send, so excess is seen and closed

}  // namespace

Result<Message> recv_message(int sock, size_t max_size) {
  Message m;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kCmsgFds)];
  iovec iov{&m.hdr, sizeof(m.hdr)};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = control;
  mh.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return Error(errno, "recvmsg");
  if (n == 0) return Error(ECONNRESET, "peer closed");
  // Take ownership of every fd at once, whatever happens next.
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      m.fds.emplace_back(fd);
    }
  }
  bool truncated = mh.msg_flags & MSG_CTRUNC;
  if (static_cast<size_t>(n) < sizeof(m.hdr))
    TRY(read_exact(sock, reinterpret_cast<uint8_t*>(&m.hdr) + n, sizeof(m.hdr) - static_cast<size_t>(n)));
  if (m.hdr.msg_size < sizeof(Header) || m.hdr.msg_size > max_size) return Error(EPROTO, "bad message size");
  m.payload.resize(m.hdr.msg_size - sizeof(Header));
  TRY(read_exact(sock, m.payload.data(), m.payload.size()));
  if (truncated) return Error(EMSGSIZE, "too many fds");
  return m;
}

Result<void> send_message(int sock, const Header& hdr, std::span<const uint8_t> payload, std::span<const int> fds) {
  Header h = hdr;
  h.msg_size = static_cast<uint32_t>(sizeof(Header) + payload.size());
  iovec iov[2] = {{&h, sizeof(h)}, {const_cast<uint8_t*>(payload.data()), payload.size()}};
  msghdr mh{};
  mh.msg_iov = iov;
  mh.msg_iovlen = payload.empty() ? 1 : 2;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxMsgFds)];
  if (!fds.empty()) {
    if (fds.size() > kMaxMsgFds) return Error(EINVAL, "too many fds for one message");
    mh.msg_control = control;
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  size_t total = h.msg_size, sent = 0;
  while (sent < total) {
    ssize_t n = sendmsg(sock, &mh, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error(errno, "sendmsg");
    sent += static_cast<size_t>(n);
    if (sent >= total) break;
    // A partial send: the fds went with the first part; send the rest plainly.
    mh.msg_control = nullptr;
    mh.msg_controllen = 0;
    size_t skip = static_cast<size_t>(n);
    for (int i = 0; i < 2 && skip; ++i) {
      size_t take = std::min(skip, iov[i].iov_len);
      iov[i].iov_base = static_cast<uint8_t*>(iov[i].iov_base) + take;
      iov[i].iov_len -= take;
      skip -= take;
    }
    if (iov[0].iov_len == 0) {
      mh.msg_iov = &iov[1];
      mh.msg_iovlen = 1;
    }
  }
  return ok();
}

Result<void> MessageReader::fill(bool spin, bool nonblock) {
  if (start_ > 0 && start_ == end_) start_ = end_ = 0;
  if (end_ == buf_.size()) {
    // Make room: move what is left to the front, or grow for a big message.
    if (start_ > 0) {
      std::memmove(buf_.data(), buf_.data() + start_, end_ - start_);
      if (pending_owner_ != SIZE_MAX) pending_owner_ -= start_;
      end_ -= start_;
      start_ = 0;
    } else {
      buf_.resize(std::min(buf_.size() * 2, max_ + sizeof(Header)));
      if (end_ == buf_.size()) return Error(EPROTO, "message too large");
    }
  }
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kCmsgFds)];
  iovec iov{buf_.data() + end_, buf_.size() - end_};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = control;
  mh.msg_controllen = sizeof(control);
  ssize_t n;
  for (;;) {
    n = recvmsg(sock_, &mh, MSG_CMSG_CLOEXEC | ((spin || nonblock) ? MSG_DONTWAIT : 0));
    if (n < 0 && (errno == EINTR || (spin && !nonblock && (errno == EAGAIN || errno == EWOULDBLOCK)))) continue;
    break;
  }
  if (n < 0) return Error(errno, "recvmsg");
  if (n == 0) return Error(ECONNRESET, "peer closed");
  std::vector<UniqueFd> fds;
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      fds.emplace_back(fd);
    }
  }
  // Truncated: more fds than the buffer holds (abuse: the stream goes), or
  // fewer because the process has no fd left to install them in (the
  // request they came with is refused, the stream is fine).
  bool lost = false;
  if (mh.msg_flags & MSG_CTRUNC) {
    if (fds.size() >= kCmsgFds) return Error(EMSGSIZE, "too many fds");
    lost = true;
    fds.clear();
  }
  size_t chunk_start = end_;
  drained_ = static_cast<size_t>(n) < iov.iov_len;
  end_ += static_cast<size_t>(n);
  received_ += static_cast<uint64_t>(n);
  if (!fds.empty() || lost) {
    // Find the last message header that starts inside this chunk.
    size_t at = start_, owner = SIZE_MAX;
    while (at + sizeof(Header) <= end_ || at < end_) {
      if (at >= chunk_start) owner = at;
      if (at + sizeof(Header) > end_) break;
      Header h;
      std::memcpy(&h, buf_.data() + at, sizeof(h));
      if (h.msg_size < sizeof(Header) || h.msg_size > max_) break;
      at += h.msg_size;
    }
    if (owner == SIZE_MAX) return Error(EPROTO, "fds without a message");
    pending_fds_ = std::move(fds);
    pending_lost_ = lost;
    pending_owner_ = owner;
  }
  return ok();
}

Result<Message> MessageReader::next(bool spin) {
  Message m;
  TRY(next_into(m, spin));
  return m;
}

Result<void> MessageReader::next_into(Message& m, bool spin) {
  for (;;) {
    if (TRY(take(m))) return ok();
    TRY(fill(spin));
  }
}

Result<bool> MessageReader::try_next_into(Message& m, bool may_read) {
  if (TRY(take(m))) return true;
  if (!may_read) return false;
  auto r = fill(false, true);
  if (!r) {
    if (r.error().code == EAGAIN || r.error().code == EWOULDBLOCK) return false;
    return r.error();
  }
  return take(m);
}

Result<bool> MessageReader::take(Message& m) {
  if (end_ - start_ < sizeof(Header)) return false;
  Header h;
  std::memcpy(&h, buf_.data() + start_, sizeof(h));
  if (h.msg_size < sizeof(Header) || h.msg_size > max_) return Error(EPROTO, "bad message size");
  if (end_ - start_ < h.msg_size) return false;
  m.fds.clear();
  m.fds_lost = false;
  m.hdr = h;
  m.payload.assign(buf_.begin() + static_cast<long>(start_ + sizeof(Header)), buf_.begin() + static_cast<long>(start_ + h.msg_size));
  if (pending_owner_ == start_) {
    m.fds = std::move(pending_fds_);
    m.fds_lost = pending_lost_;
    pending_fds_.clear();
    pending_lost_ = false;
    pending_owner_ = SIZE_MAX;
  }
  start_ += h.msg_size;
  return true;
}

Result<void> send_error(int sock, const Header& request, int err) {
  Header h{};
  h.msg_id = request.msg_id;
  h.command = request.command;
  h.flags = kTypeReply | kFlagError;
  h.error_no = static_cast<uint32_t>(err);
  return send_message(sock, h, {});
}

}  // namespace uvfio::vfio_user
