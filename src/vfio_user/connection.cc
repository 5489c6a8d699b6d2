// SPDX-License-Identifier: BSD-3-Clause
#include "vfio_user/connection.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "base/log.h"

namespace uvfio::vfio_user {

namespace {
thread_local bool t_reactor = false;
}  // namespace

void Connection::set_reactor_thread(bool on) { t_reactor = on; }

const char* to_string(DmaLayoutMode m) {
  switch (m) {
    case DmaLayoutMode::kAuto: return "auto";
    case DmaLayoutMode::kSpec: return "spec";
    case DmaLayoutMode::kQemu: return "qemu";
  }
  return "?";
}

Result<DmaLayoutMode> parse_dma_layout(std::string_view s) {
  if (s == "auto") return DmaLayoutMode::kAuto;
  if (s == "spec") return DmaLayoutMode::kSpec;
  if (s == "qemu") return DmaLayoutMode::kQemu;
  return Error(EINVAL, "DMA layout: auto, spec or qemu");
}

Connection::Connection(UniqueFd sock, DmaLayoutMode layout, std::string name, std::function<void()> kick)
    : sock_(std::move(sock)), name_(std::move(name)), mode_(layout), kick_(std::move(kick)), reader_(sock_.get()) {
  int fl = fcntl(sock_.get(), F_GETFL);
  if (fl >= 0) fcntl(sock_.get(), F_SETFL, fl | O_NONBLOCK);
  int sb = static_cast<int>(kMaxDataXfer + (64 << 10));
  if (setsockopt(sock_.get(), SOL_SOCKET, SO_SNDBUFFORCE, &sb, sizeof(sb)) != 0)
    (void)setsockopt(sock_.get(), SOL_SOCKET, SO_SNDBUF, &sb, sizeof(sb));
  if (mode_ == DmaLayoutMode::kSpec) layout_ = DmaLayout::kSpec;
  if (mode_ == DmaLayoutMode::kQemu) layout_ = DmaLayout::kQemu;
  out_progress_ = std::chrono::steady_clock::now();
}

// ---- Output ------------------------------------------------------------------------

namespace {

// One non-blocking sendmsg of bytes [off, ...) of a message, with its fds if
// nothing of it has gone yet. Bytes sent, or -1 with errno.
ssize_t send_part(int sock, std::span<const uint8_t> a, std::span<const uint8_t> b, size_t off,
                  std::span<const int> fds) {
  iovec iov[2];
  int n = 0;
  if (off < a.size()) {
    iov[n++] = {const_cast<uint8_t*>(a.data()) + off, a.size() - off};
    if (!b.empty()) iov[n++] = {const_cast<uint8_t*>(b.data()), b.size()};
  } else {
    size_t boff = off - a.size();
    iov[n++] = {const_cast<uint8_t*>(b.data()) + boff, b.size() - boff};
  }
  msghdr mh{};
  mh.msg_iov = iov;
  mh.msg_iovlen = static_cast<size_t>(n);
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxMsgFds)];
  if (off == 0 && !fds.empty()) {
    mh.msg_control = control;
    mh.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t r;
  do {
    r = sendmsg(sock, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (r < 0 && errno == EINTR);
  return r;
}

bool would_block(int e) { return e == EAGAIN || e == EWOULDBLOCK; }

}  // namespace

Result<void> Connection::send(const Header& hdr, std::span<const uint8_t> payload, std::span<const int> fds) {
  if (fds.size() > kMaxMsgFds) return Error(EINVAL, "too many fds for one message");
  Header h = hdr;
  h.msg_size = static_cast<uint32_t>(sizeof(Header) + payload.size());
  std::span<const uint8_t> head(reinterpret_cast<const uint8_t*>(&h), sizeof(h));
  bool pending;
  {
    MutexLock lk(send_mu_);
    size_t total = h.msg_size, sent = 0;
    if (out_.empty()) {
      // The common case: the whole message goes now, nothing is copied.
      ssize_t n = send_part(sock_.get(), head, payload, 0, fds);
      if (n < 0 && !would_block(errno)) return Error(errno, "sendmsg");
      sent = n < 0 ? 0 : static_cast<size_t>(n);
      // All out: output_progress() says "now" while nothing waits, so
      // there is no clock to read here.
      if (sent == total) return ok();
    }
    if (out_bytes_.load(std::memory_order_relaxed) + (total - sent) > kMaxOutput)
      return Error(ENOBUFS, "the client does not read its replies");
    Out o;
    o.bytes.resize(total);
    std::memcpy(o.bytes.data(), &h, sizeof(h));
    if (!payload.empty()) std::memcpy(o.bytes.data() + sizeof(h), payload.data(), payload.size());
    o.off = sent;
    if (sent == 0)
      for (int fd : fds) o.fds.emplace_back(fcntl(fd, F_DUPFD_CLOEXEC, 0));
    out_bytes_.fetch_add(total - sent, std::memory_order_release);
    out_.push_back(std::move(o));
    pending = true;
  }
  if (pending && kick_) kick_();  // the reactor sends the rest when the socket takes it
  return ok();
}

Result<void> Connection::send_error(const Header& request, int err) {
  Header h{};
  h.msg_id = request.msg_id;
  h.command = request.command;
  h.flags = kTypeReply | kFlagError;
  h.error_no = static_cast<uint32_t>(err);
  return send(h, {});
}

Result<void> Connection::flush_locked() {
  while (!out_.empty()) {
    Out& o = out_.front();
    std::vector<int> fds;
    for (auto& f : o.fds) fds.push_back(f.get());
    ssize_t n = send_part(sock_.get(), o.bytes, {}, o.off, fds);
    if (n < 0) {
      if (would_block(errno)) return ok();
      return Error(errno, "sendmsg");
    }
    out_progress_ = std::chrono::steady_clock::now();
    o.off += static_cast<size_t>(n);
    out_bytes_.fetch_sub(static_cast<size_t>(n), std::memory_order_release);
    if (o.off > 0) o.fds.clear();  // they went with the first byte
    if (o.off == o.bytes.size()) out_.pop_front();
  }
  return ok();
}

Result<void> Connection::flush() {
  MutexLock lk(send_mu_);
  return flush_locked();
}

size_t Connection::output_bytes() const { return out_bytes_.load(std::memory_order_acquire); }

std::chrono::steady_clock::time_point Connection::output_progress() const {
  MutexLock lk(send_mu_);
  return out_bytes_.load(std::memory_order_relaxed) ? out_progress_ : std::chrono::steady_clock::now();
}

void Connection::close() {
  MutexLock lk(mu_);
  closed_ = true;
  cv_.notify_all();
}

// ---- Input (the reactor) -----------------------------------------------------------

bool Connection::deliver_reply(Message& m) {
  MutexLock lk(mu_);
  if (cancelled_.erase(m.hdr.msg_id)) {
    waiting_.erase(m.hdr.msg_id);
    return true;  // the answer to a cancelled DMA: dropped
  }
  if (!waiting_.count(m.hdr.msg_id)) return false;
  uint16_t id = m.hdr.msg_id;
  replies_[id] = std::move(m);
  if (wake_on_.count(id)) cv_.notify_all();
  return true;
}

Result<bool> Connection::next_request(Message& m, bool may_read) {
  for (;;) {
    if (!TRY(reader_.try_next_into(m, may_read))) return false;
    if ((m.hdr.flags & kFlagsTypeMask) == kTypeReply && deliver_reply(m)) continue;
    // A request — or a reply nobody asked for, which the session refuses.
    return true;
  }
}

// ---- Server-initiated requests (device threads) --------------------------------------

void Connection::cancel() {
  MutexLock lk(mu_);
  for (uint16_t id : waiting_) cancelled_.insert(id);
  cv_.notify_all();
}

std::optional<DmaLayout> Connection::layout() const {
  MutexLock lk(layout_mu_);
  return layout_;
}

Result<uint16_t> Connection::begin(uint16_t cmd, std::span<const uint8_t> payload) {
  // The reactor reads the answers: waiting on it from itself never ends.
  if (t_reactor) return Error(EDEADLK, "device DMA from the reactor thread");
  uint16_t id;
  {
    MutexLock lk(send_mu_);
    id = next_id_++;
  }
  {
    MutexLock lk(mu_);
    if (closed_) return Error(ECONNRESET, "client gone");
    waiting_.insert(id);
  }
  Header h{id, cmd, 0, kTypeCommand, 0};
  if (auto r = send(h, payload); !r) {
    MutexLock lk(mu_);
    waiting_.erase(id);
    return r.error();
  }
  return id;
}

Result<Message> Connection::finish(uint16_t id, std::chrono::steady_clock::time_point deadline, bool probe) {
  Message reply;
  {
    MutexLock lk(mu_);
    auto at = wake_on_.insert(id);  // replies to others do not wake us
    bool got = lk.wait_until(cv_, deadline, [&] {
      mu_.assert_held();
      return closed_ || replies_.count(id) || cancelled_.count(id);
    });
    wake_on_.erase(at);
    if (!replies_.count(id) && cancelled_.count(id)) return Error(ECANCELED, "DMA cancelled (function reset)");
    waiting_.erase(id);
    if (!replies_.count(id)) {
      // Timed out: a late answer is dropped rather than taken for a request.
      if (!got) cancelled_.insert(id);
      return Error(got ? ECONNRESET : ETIMEDOUT, "no DMA reply");
    }
    reply = std::move(replies_[id]);
    replies_.erase(id);
  }
  if ((reply.hdr.flags & kFlagError) && !probe)
    return Error(reply.hdr.error_no ? static_cast<int>(reply.hdr.error_no) : EIO, "client refused the DMA");
  if (!reply.fds.empty()) return Error(EIO, "DMA reply with fds");
  return reply;
}

Result<Message> Connection::transact(uint16_t cmd, std::span<const uint8_t> payload, bool probe) {
  uint16_t id = TRY(begin(cmd, payload));
  return finish(id, std::chrono::steady_clock::now() + kReplyTimeout, probe);
}

// The probe (auto mode): a DMA_READ of n ≤ 8 bytes at `iova`, whose count
// field says 2^32 + n. Both layouts put the request's address at 0 and the
// low half of the count at 8, so the request means the same to both but for
// the count's high half: a client of the spec's layout reads a count of 4 GiB
// + n, beyond any max_data_xfer_size, and refuses it; QEMU 10.x reads only
// the u32 at 8 and answers n bytes in its own layout. Nothing is written.
Result<DmaLayout> Connection::decide_layout(uint64_t iova, uint64_t len) {
  MutexLock lk(layout_mu_);
  for (;;) {
    if (layout_) return *layout_;
    if (!probing_) break;
    // Another thread's probe is in flight: wait for its answer (the reactor
    // delivers it).
    if (!lk.wait_for(layout_cv_, 2 * kReplyTimeout, [&] {
          layout_mu_.assert_held();
          return layout_ || !probing_;
        }))
      return Error(ETIMEDOUT, "DMA layout probe");
  }
  probing_ = true;
  lk.unlock();
  uint64_t n = std::min<uint64_t>(8, len);
  DmaRwMsg q{iova, (uint64_t{1} << 32) | n};
  auto r = transact(kDmaRead, std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&q), sizeof(q)), true);
  lk.lock();
  probing_ = false;
  layout_cv_.notify_all();
  if (!r) return r.error();  // undecided: the next DMA probes again
  const Message& m = *r;
  QemuDmaRwMsg got{};
  if (m.payload.size() >= sizeof(got)) std::memcpy(&got, m.payload.data(), sizeof(got));
  if (!(m.hdr.flags & kFlagError) && m.payload.size() == 16 + n && got.offset == iova && got.count == n) {
    layout_ = DmaLayout::kQemu;
    log::info(name_, "vfio-user: DMA layout: QEMU's (u32 count, data at 12): the client answered a read of "
                     "2^32+{} bytes with {}",
              n, n);
  } else if (m.hdr.flags & kFlagError) {
    layout_ = DmaLayout::kSpec;
    log::info(name_, "vfio-user: DMA layout: the spec's (u64 count, data at 16): the client refused a read of "
                     "2^32+{} bytes ({})",
              n, errno_name(m.hdr.error_no ? static_cast<int>(m.hdr.error_no) : EIO));
  } else {
    layout_ = DmaLayout::kSpec;
    log::warn(name_, "vfio-user: DMA layout: the spec's, by default: unexpected answer to the probe ({} bytes)",
              m.payload.size());
  }
  return *layout_;
}

namespace {

// A DMA_READ's answer for [iova, iova + n) into `out`. Spec: {u64 address,
// u64 count, data}; QEMU: {u64 offset, u32 count, data, 4 bytes}. Both are
// 16 + n bytes; the data starts at 16 or 12.
Result<void> take_read_reply(const Message& r, DmaLayout lay, uint64_t iova, std::span<uint8_t> out) {
  uint64_t n = out.size();
  if (r.payload.size() != 16 + n) return Error(EIO, "DMA_READ reply of the wrong size");
  uint64_t addr, count;
  std::memcpy(&addr, r.payload.data(), 8);
  size_t data_at;
  if (lay == DmaLayout::kSpec) {
    std::memcpy(&count, r.payload.data() + 8, 8);
    data_at = 16;
  } else {
    uint32_t c32;
    std::memcpy(&c32, r.payload.data() + 8, 4);
    count = c32;
    data_at = 12;
  }
  if (addr != iova || count != n) return Error(EIO, "DMA_READ reply for another range");
  std::memcpy(out.data(), r.payload.data() + data_at, n);
  return ok();
}

// A DMA_WRITE's payload for `in` at `iova`, in `buf`.
void put_write_request(std::vector<uint8_t>& buf, DmaLayout lay, uint64_t iova, std::span<const uint8_t> in) {
  uint64_t n = in.size();
  if (lay == DmaLayout::kSpec) {
    buf.resize(sizeof(DmaRwMsg) + n);
    DmaRwMsg q{iova, n};
    std::memcpy(buf.data(), &q, sizeof(q));
    std::memcpy(buf.data() + sizeof(q), in.data(), n);
  } else {
    // QEMU checks count <= size - sizeof(VFIOUserDMARW), a struct of 32
    // bytes with the header: the data is followed by 4 bytes of padding.
    buf.assign(sizeof(QemuDmaRwMsg) + n + 4, 0);
    QemuDmaRwMsg q{iova, static_cast<uint32_t>(n)};
    std::memcpy(buf.data(), &q, sizeof(q));
    std::memcpy(buf.data() + sizeof(q), in.data(), n);
  }
}

// Spec: {u64 address, u32 count}; QEMU answers with the header alone.
Result<void> check_write_reply(const Message& r, uint64_t iova, uint64_t n) {
  if (r.payload.size() == sizeof(DmaWriteReplyMsg)) {
    DmaWriteReplyMsg got;
    std::memcpy(&got, r.payload.data(), sizeof(got));
    if (got.address != iova || got.count != n) return Error(EIO, "DMA_WRITE reply for another range");
  } else if (!r.payload.empty()) {
    return Error(EIO, "DMA_WRITE reply of the wrong size");
  }
  return ok();
}

}  // namespace

Result<void> Connection::read(uint64_t iova, std::span<uint8_t> out) {
  DmaLayout lay = TRY(decide_layout(iova, out.size()));
  uint64_t max = max_xfer_.load();
  while (!out.empty()) {
    uint64_t n = std::min<uint64_t>(out.size(), max);
    DmaRwMsg q{iova, n};  // the same request in both layouts (count < 2^32)
    Message r = TRY(transact(kDmaRead, std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&q), sizeof(q))));
    TRY(take_read_reply(r, lay, iova, out.first(n)));
    out = out.subspan(n);
    iova += n;
  }
  return ok();
}

Result<void> Connection::write(uint64_t iova, std::span<const uint8_t> in) {
  DmaLayout lay = TRY(decide_layout(iova, in.size()));
  uint64_t max = max_xfer_.load();
  thread_local std::vector<uint8_t> wbuf;  // per thread: no lock held while the client answers
  while (!in.empty()) {
    uint64_t n = std::min<uint64_t>(in.size(), max);
    put_write_request(wbuf, lay, iova, in.first(n));
    Message r = TRY(transact(kDmaWrite, wbuf));
    TRY(check_write_reply(r, iova, n));
    in = in.subspan(n);
    iova += n;
  }
  return ok();
}

// Pipelined: the segments cut at the client's max_data_xfer_size, and up to
// kPipeline requests (kPipelineBytes of data) sent before the first answer
// is waited for; the client answers them in order. One deadline per window,
// so a client that stops answering costs kReplyTimeout, not one per request.
template <bool kWrite>
void Connection::many(std::span<Seg> segs) {
  if (segs.empty()) return;
  auto lay = decide_layout(segs.front().iova, segs.front().buf.size());
  if (!lay) {
    for (Seg& s : segs) s.err = lay.error().code;
    return;
  }
  uint64_t max = max_xfer_.load();
  struct Piece {
    size_t seg;
    uint64_t off, n;
    uint16_t id;
  };
  std::vector<Piece> window;
  thread_local std::vector<uint8_t> wbuf;
  size_t si = 0;
  uint64_t off = 0;
  bool cancelled = false;  // a function reset cancelled a window: the rest is not sent
  while (si < segs.size()) {
    if (cancelled) {
      for (; si < segs.size(); ++si)
        if (!segs[si].err) segs[si].err = ECANCELED;
      return;
    }
    window.clear();
    uint64_t bytes = 0;
    // Send a window.
    while (si < segs.size() && window.size() < kPipeline && bytes < kPipelineBytes) {
      Seg& s = segs[si];
      if (s.err || off >= s.buf.size()) {
        ++si;
        off = 0;
        continue;
      }
      uint64_t n = std::min<uint64_t>(s.buf.size() - off, max);
      Result<uint16_t> id = Error(EIO);
      if constexpr (kWrite) {
        put_write_request(wbuf, *lay, s.iova + off, s.buf.subspan(off, n));
        id = begin(kDmaWrite, wbuf);
      } else {
        DmaRwMsg q{s.iova + off, n};
        id = begin(kDmaRead, std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&q), sizeof(q)));
      }
      if (!id) {
        s.err = id.error().code;
      } else {
        window.push_back(Piece{si, off, n, *id});
        bytes += n;
      }
      off += n;
    }
    // Take its answers.
    auto deadline = std::chrono::steady_clock::now() + kReplyTimeout;
    for (const Piece& p : window) {
      Seg& s = segs[p.seg];
      auto r = finish(p.id, deadline);
      Result<void> done = ok();
      if (!r) done = r.error();
      else if constexpr (kWrite) done = check_write_reply(*r, s.iova + p.off, p.n);
      else done = take_read_reply(*r, *lay, s.iova + p.off, s.buf.subspan(p.off, p.n));
      if (!done && !s.err) s.err = done.error().code;
      if (!done && done.error().code == ECANCELED) cancelled = true;
    }
  }
}

void Connection::read_many(std::span<Seg> segs) { many<false>(segs); }
void Connection::write_many(std::span<Seg> segs) { many<true>(segs); }

}  // namespace uvfio::vfio_user
