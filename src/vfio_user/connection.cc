#include "vfio_user/connection.h"

#include <cstring>

namespace uvfio::vfio_user {

Connection::Connection(int sock, bool busy_poll)
    : sock_(sock), spin_(busy_poll), reader_(sock), serving_thread_(std::this_thread::get_id()) {}

Result<void> Connection::send(const Header& h, std::span<const uint8_t> payload, std::span<const int> fds) {
  std::lock_guard lk(send_mu_);
  return send_message(sock_, h, payload, fds);
}

Result<void> Connection::send_error(const Header& request, int err) {
  std::lock_guard lk(send_mu_);
  return vfio_user::send_error(sock_, request, err);
}

void Connection::close() {
  std::lock_guard lk(mu_);
  closed_ = true;
  cv_.notify_all();
}

bool Connection::deliver_reply(Message& m) {
  std::lock_guard lk(mu_);
  if (!waiting_.count(m.hdr.msg_id)) return false;
  replies_[m.hdr.msg_id] = std::move(m);
  cv_.notify_all();
  return true;
}

Result<void> Connection::next_request(Message& m) {
  for (;;) {
    if (!queued_.empty()) {
      m = std::move(queued_.front());
      queued_.pop_front();
      return ok();
    }
    TRY(reader_.next_into(m, spin_));
    if ((m.hdr.flags & kFlagsTypeMask) == kTypeReply && deliver_reply(m)) {
      m = Message{};
      continue;
    }
    // A request — or a reply nobody asked for, which the session refuses.
    return ok();
  }
}

Result<Message> Connection::transact(uint16_t cmd, std::span<const uint8_t> payload) {
  uint16_t id;
  {
    std::lock_guard lk(send_mu_);
    id = next_id_++;
    {
      std::lock_guard wl(mu_);
      if (closed_) return Error(ECONNRESET, "client gone");
      waiting_.insert(id);
    }
    Header h{id, cmd, 0, kTypeCommand, 0};
    if (auto r = send_message(sock_, h, payload); !r) {
      std::lock_guard wl(mu_);
      waiting_.erase(id);
      return r.error();
    }
  }
  Message reply;
  if (std::this_thread::get_id() == serving_thread_) {
    // DMA from inside a request (the device acts synchronously): read the
    // stream ourselves, keeping the client's requests for later.
    for (;;) {
      Message m;
      auto r = reader_.next_into(m, spin_);
      if (!r) {
        std::lock_guard wl(mu_);
        waiting_.erase(id);
        return r.error();
      }
      if ((m.hdr.flags & kFlagsTypeMask) == kTypeReply && m.hdr.msg_id == id) {
        std::lock_guard wl(mu_);
        waiting_.erase(id);
        reply = std::move(m);
        break;
      }
      if ((m.hdr.flags & kFlagsTypeMask) == kTypeReply && deliver_reply(m)) continue;
      queued_.push_back(std::move(m));  // handled in order once this DMA is done
    }
  } else {
    std::unique_lock lk(mu_);
    bool got = cv_.wait_for(lk, kReplyTimeout, [&] { return closed_ || replies_.count(id); });
    waiting_.erase(id);
    if (!replies_.count(id)) return Error(got ? ECONNRESET : ETIMEDOUT, "no DMA reply");
    reply = std::move(replies_[id]);
    replies_.erase(id);
  }
  if (reply.hdr.flags & kFlagError) return Error(reply.hdr.error_no ? static_cast<int>(reply.hdr.error_no) : EIO);
  return reply;
}

Result<void> Connection::read(uint64_t iova, std::span<uint8_t> out) {
  while (!out.empty()) {
    uint64_t n = std::min<uint64_t>(out.size(), kMaxDataXfer);
    DmaRwMsg q{iova, n};
    Message r = TRY(transact(kDmaRead, std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&q), sizeof(q))));
    DmaRwMsg got;
    if (r.payload.size() != sizeof(got) + n) return Error(EIO, "bad DMA_READ reply");
    std::memcpy(&got, r.payload.data(), sizeof(got));
    if (got.address != iova || got.count != n) return Error(EIO, "DMA_READ reply for another range");
    std::memcpy(out.data(), r.payload.data() + sizeof(got), n);
    out = out.subspan(n);
    iova += n;
  }
  return ok();
}

Result<void> Connection::write(uint64_t iova, std::span<const uint8_t> in) {
  std::vector<uint8_t> p;
  while (!in.empty()) {
    uint64_t n = std::min<uint64_t>(in.size(), kMaxDataXfer);
    DmaRwMsg q{iova, n};
    p.resize(sizeof(q) + n);
    std::memcpy(p.data(), &q, sizeof(q));
    std::memcpy(p.data() + sizeof(q), in.data(), n);
    TRY(transact(kDmaWrite, p));
    in = in.subspan(n);
    iova += n;
  }
  return ok();
}

}  // namespace uvfio::vfio_user
