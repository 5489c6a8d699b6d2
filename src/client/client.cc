// SPDX-License-Identifier: BSD-3-Clause
#include "client/client.h"

#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cstring>

namespace uvfio::client {

using namespace vfio_user;

namespace {
template <class T>
std::vector<uint8_t> bytes(const T& v) {
  std::vector<uint8_t> b(sizeof(T));
  std::memcpy(b.data(), &v, sizeof(T));
  return b;
}
}  // namespace

Result<std::unique_ptr<Client>> Client::connect(const std::string& path, const ConnectOptions& opts) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof(a.sun_path)) return Error(ENAMETOOLONG, "socket path too long");
  std::memcpy(a.sun_path, path.data(), path.size());
  UniqueFd s(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s) return Error(errno, "socket");
  if (::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) < 0) return Error(errno, "connect");
  std::unique_ptr<Client> c(new Client(std::move(s)));
  std::string js = R"({"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"write_multiple":true)";
  if (opts.vf_token) js += R"(,"vf_token":")" + vfio::uuid_string(*opts.vf_token) + "\"";
  js += "}}";
  std::vector<uint8_t> p(sizeof(VersionMsg));
  VersionMsg v{0, 0};
  std::memcpy(p.data(), &v, sizeof(v));
  p.insert(p.end(), js.begin(), js.end());
  p.push_back('\0');
  Message r = TRY(c->call(kVersion, p));
  if (r.payload.size() < sizeof(VersionMsg)) return Error(EPROTO, "short VERSION reply");
  std::memcpy(&v, r.payload.data(), sizeof(v));
  if (v.major != 0) return Error(EPROTO, "server speaks another major version");
  if (r.payload.size() > sizeof(VersionMsg))
    c->caps_.assign(reinterpret_cast<const char*>(r.payload.data()) + sizeof(VersionMsg),
                    strnlen(reinterpret_cast<const char*>(r.payload.data()) + sizeof(VersionMsg),
                            r.payload.size() - sizeof(VersionMsg)));
  return c;
}

Result<Message> Client::call(uint16_t cmd, std::span<const uint8_t> payload, std::span<const int> fds, bool no_reply) {
  if (no_reply) {
    std::lock_guard lk(mu_);
    Header h{next_id_++, cmd, 0, kTypeCommand | kFlagNoReply, 0};
    TRY(send_message(sock_.get(), h, payload, fds));
    return Message{};
  }
  Message m;
  TRY(call_into(cmd, payload, m, fds));
  return m;
}

Result<void> Client::call_into(uint16_t cmd, std::span<const uint8_t> payload, Message& m, std::span<const int> fds) {
  std::lock_guard lk(mu_);
  Header h{next_id_++, cmd, 0, kTypeCommand, 0};
  if (auto sent = send_message(sock_.get(), h, payload, fds); !sent) {
    // The server may have refused the connection (EBUSY, id 0) and closed
    // it before our request got there: its reason is still ours to read.
    if (sent.error().code == EPIPE && reader_.next_into(m, false) && m.hdr.msg_id == 0 &&
        (m.hdr.flags & kFlagError) && m.hdr.error_no)
      return Error(static_cast<int>(m.hdr.error_no), "connection refused by the server");
    return sent.error();
  }
  for (;;) {
    TRY(reader_.next_into(m, busy_poll_));
    if ((m.hdr.flags & kFlagsTypeMask) != kTypeReply) {
      // A server->client request (DMA_READ/WRITE) while we wait.
      TRY(serve_dma(m));
      continue;
    }
    if (m.hdr.msg_id != h.msg_id) {
      // A connection-level refusal carries no request's id.
      if (m.hdr.msg_id == 0 && (m.hdr.flags & kFlagError) && m.hdr.error_no) return Error(static_cast<int>(m.hdr.error_no));
      return Error(EPROTO, "reply to another request");
    }
    if (m.hdr.flags & kFlagError) return Error(m.hdr.error_no ? static_cast<int>(m.hdr.error_no) : EIO);
    return ok();
  }
}

Result<void> Client::dma_map(uint64_t iova, uint64_t size, int fd, uint64_t offset, bool writable) {
  DmaMapMsg d{sizeof(DmaMapMsg), kDmaFlagRead | (writable ? kDmaFlagWrite : 0u), fd >= 0 ? offset : 0, iova, size};
  int fds[1] = {fd};
  TRY(call(kDmaMap, bytes(d), fd >= 0 ? std::span<const int>(fds, 1) : std::span<const int>()));
  return ok();
}

Result<void> Client::dma_map_local(uint64_t iova, uint64_t size, void* mem, bool writable) {
  TRY(dma_map(iova, size, -1, 0, writable));
  std::lock_guard lk(mu_);
  local_[iova] = LocalMap{size, static_cast<uint8_t*>(mem), writable};
  return ok();
}

Result<void> Client::dma_unmap(uint64_t iova, uint64_t size) {
  DmaUnmapMsg d{sizeof(DmaUnmapMsg), 0, iova, size};
  TRY(call(kDmaUnmap, bytes(d)));
  std::lock_guard lk(mu_);
  local_.erase(iova);
  return ok();
}

// DMA_READ / DMA_WRITE from the server, spec layout ({u64 address, u64
// count} + data), answered from the local maps. Called with mu_ held.
Result<void> Client::serve_dma(const Message& m) {
  auto fail = [&](int e) {
    Header h{m.hdr.msg_id, m.hdr.command, 0, kTypeReply | kFlagError, static_cast<uint32_t>(e)};
    return send_message(sock_.get(), h, {});
  };
  if ((m.hdr.command != kDmaRead && m.hdr.command != kDmaWrite) || m.payload.size() < sizeof(DmaRwMsg) ||
      !m.fds.empty())
    return fail(m.hdr.command == kDmaRead || m.hdr.command == kDmaWrite ? EINVAL : ENOSYS);
  DmaRwMsg q;
  std::memcpy(&q, m.payload.data(), sizeof(q));
  bool write = m.hdr.command == kDmaWrite;
  if (q.count > kMaxDataXfer || (write && m.payload.size() != sizeof(q) + q.count)) return fail(EINVAL);
  auto it = local_.upper_bound(q.address);
  if (it == local_.begin()) return fail(EFAULT);
  --it;
  if (q.address + q.count < q.address || q.address + q.count > it->first + it->second.size) return fail(EFAULT);
  uint8_t* p = it->second.mem + (q.address - it->first);
  if (write) {
    if (!it->second.writable) return fail(EPERM);
    std::memcpy(p, m.payload.data() + sizeof(q), q.count);
    struct __attribute__((packed)) {
      uint64_t address;
      uint32_t count;
    } rep{q.address, static_cast<uint32_t>(q.count)};
    Header h{m.hdr.msg_id, m.hdr.command, 0, kTypeReply, 0};
    return send_message(sock_.get(), h, std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&rep), sizeof(rep)));
  }
  std::vector<uint8_t> rep(sizeof(q) + q.count);
  std::memcpy(rep.data(), &q, sizeof(q));
  std::memcpy(rep.data() + sizeof(q), p, q.count);
  Header h{m.hdr.msg_id, m.hdr.command, 0, kTypeReply, 0};
  return send_message(sock_.get(), h, rep);
}

Result<void> Client::dma_unmap_all() {
  DmaUnmapMsg d{sizeof(DmaUnmapMsg), kDmaUnmapAll, 0, 0};
  TRY(call(kDmaUnmap, bytes(d)));
  return ok();
}

Result<vfio_device_info> Client::get_info() {
  DeviceInfoMsg q{sizeof(DeviceInfoMsg), 0, 0, 0};
  Message m = TRY(call(kDeviceGetInfo, bytes(q)));
  if (m.payload.size() != sizeof(q)) return Error(EPROTO, "GET_INFO reply is not 16 bytes");
  std::memcpy(&q, m.payload.data(), sizeof(q));
  vfio_device_info i{};
  i.argsz = sizeof(i);
  i.flags = q.flags;
  i.num_regions = q.num_regions;
  i.num_irqs = q.num_irqs;
  return i;
}

Result<RegionInfo> Client::get_region_info(uint32_t index) {
  uint32_t argsz = sizeof(vfio_region_info);
  for (int attempt = 0; attempt < 2; ++attempt) {
    vfio_region_info q{};
    q.argsz = argsz;
    q.index = index;
    Message m = TRY(call(kDeviceGetRegionInfo, bytes(q)));
    if (m.payload.size() < sizeof(q) || m.payload.size() > argsz) return Error(EPROTO, "bad GET_REGION_INFO reply");
    RegionInfo r;
    std::memcpy(&r.info, m.payload.data(), sizeof(r.info));
    if (m.fds.size() > 1) return Error(EPROTO, "more than one fd with region info");
    if (!m.fds.empty()) r.mmap_fd = std::move(m.fds[0]);
    if ((r.info.flags & VFIO_REGION_INFO_FLAG_CAPS) && r.info.cap_offset == 0 && r.info.argsz > argsz) {
      argsz = r.info.argsz;  // the server asks for more room
      continue;
    }
    r.caps.assign(m.payload.begin() + sizeof(r.info), m.payload.end());
    return r;
  }
  return Error(EPROTO, "region info does not settle");
}

Result<size_t> Client::region_read(uint32_t index, uint64_t offset, std::span<uint8_t> out) {
  RegionAccessMsg a{offset, index, static_cast<uint32_t>(out.size())};
  Message& m = reply_;
  TRY(call_into(kRegionRead, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&a), sizeof(a)), m));
  if (m.payload.size() < sizeof(a)) return Error(EPROTO, "short REGION_READ reply");
  RegionAccessMsg got;
  std::memcpy(&got, m.payload.data(), sizeof(got));
  size_t n = m.payload.size() - sizeof(a);
  if (got.count != n || n > out.size()) return Error(EPROTO, "REGION_READ reply count");
  std::memcpy(out.data(), m.payload.data() + sizeof(a), n);
  return n;
}

Result<void> Client::region_write(uint32_t index, uint64_t offset, std::span<const uint8_t> in) {
  request_.resize(sizeof(RegionAccessMsg) + in.size());
  RegionAccessMsg a{offset, index, static_cast<uint32_t>(in.size())};
  std::memcpy(request_.data(), &a, sizeof(a));
  std::memcpy(request_.data() + sizeof(a), in.data(), in.size());
  return call_into(kRegionWrite, request_, reply_);
}

Result<void> Client::region_write_posted(uint32_t index, uint64_t offset, std::span<const uint8_t> in) {
  std::vector<uint8_t> p(sizeof(RegionAccessMsg) + in.size());
  RegionAccessMsg a{offset, index, static_cast<uint32_t>(in.size())};
  std::memcpy(p.data(), &a, sizeof(a));
  std::memcpy(p.data() + sizeof(a), in.data(), in.size());
  TRY(call(kRegionWrite, p, {}, true));
  return ok();
}

Result<vfio_irq_info> Client::get_irq_info(uint32_t index) {
  vfio_irq_info i{};
  i.argsz = sizeof(i);
  i.index = index;
  Message m = TRY(call(kDeviceGetIrqInfo, bytes(i)));
  if (m.payload.size() < sizeof(i)) return Error(EPROTO, "short GET_IRQ_INFO reply");
  std::memcpy(&i, m.payload.data(), sizeof(i));
  return i;
}

Result<void> Client::set_irqs(uint32_t flags, uint32_t index, uint32_t start, uint32_t count,
                              std::span<const int> fds, std::span<const uint8_t> bools) {
  vfio_irq_set s{};
  s.argsz = static_cast<uint32_t>(sizeof(s) + bools.size());
  s.flags = flags;
  s.index = index;
  s.start = start;
  s.count = count;
  std::vector<uint8_t> p = bytes(s);
  p.resize(sizeof(vfio_irq_set));
  p.insert(p.end(), bools.begin(), bools.end());
  bool any_fd = std::any_of(fds.begin(), fds.end(), [](int f) { return f >= 0; });
  bool all_fd = std::all_of(fds.begin(), fds.end(), [](int f) { return f >= 0; });
  if (any_fd && !all_fd) return Error(EINVAL, "send runs of -1 as their own call (as QEMU chunks them)");
  TRY(call(kDeviceSetIrqs, p, any_fd ? fds : std::span<const int>()));
  return ok();
}

Result<void> Client::reset() {
  TRY(call(kDeviceReset, {}));
  return ok();
}

Result<std::vector<uint8_t>> Client::device_feature(uint32_t flags, std::span<const uint8_t> data,
                                                    size_t reply_room) {
  std::vector<uint8_t> p(sizeof(DeviceFeatureMsg));
  DeviceFeatureMsg f{static_cast<uint32_t>(sizeof(f) + std::max(data.size(), reply_room)), flags};
  std::memcpy(p.data(), &f, sizeof(f));
  p.insert(p.end(), data.begin(), data.end());
  Message m = TRY(call(kDeviceFeature, p));
  if (m.payload.size() < sizeof(f)) return Error(EPROTO, "short DEVICE_FEATURE reply");
  return std::vector<uint8_t>(m.payload.begin() + sizeof(f), m.payload.end());
}

Result<void> Client::set_mig_state(vfio::MigState s) {
  vfio_device_feature_mig_state st{static_cast<uint32_t>(s), -1};
  TRY(device_feature(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, bytes(st)));
  return ok();
}

Result<vfio::MigState> Client::get_mig_state() {
  vfio_device_feature_mig_state st{};
  auto d = TRY(device_feature(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, bytes(st)));
  if (d.size() < sizeof(st)) return Error(EPROTO, "short state");
  std::memcpy(&st, d.data(), sizeof(st));
  return static_cast<vfio::MigState>(st.device_state);
}

Result<size_t> Client::mig_data_read(std::span<uint8_t> out) {
  MigDataMsg q{static_cast<uint32_t>(sizeof(MigDataMsg) + out.size()), static_cast<uint32_t>(out.size())};
  Message m = TRY(call(kMigDataRead, bytes(q)));
  if (m.payload.size() < sizeof(q)) return Error(EPROTO, "short MIG_DATA_READ reply");
  size_t n = m.payload.size() - sizeof(q);
  if (n > out.size()) return Error(EPROTO, "MIG_DATA_READ reply too long");
  std::memcpy(out.data(), m.payload.data() + sizeof(q), n);
  return n;
}

Result<void> Client::mig_data_write(std::span<const uint8_t> in) {
  std::vector<uint8_t> p(sizeof(MigDataMsg) + in.size());
  MigDataMsg q{static_cast<uint32_t>(sizeof(MigDataMsg)), static_cast<uint32_t>(in.size())};
  std::memcpy(p.data(), &q, sizeof(q));
  std::memcpy(p.data() + sizeof(q), in.data(), in.size());
  TRY(call(kMigDataWrite, p));
  return ok();
}

}  // namespace uvfio::client
