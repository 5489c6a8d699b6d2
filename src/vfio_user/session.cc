// SPDX-License-Identifier: BSD-3-Clause
#include "vfio_user/session.h"

#include <nlohmann/json.hpp>

#include <cstring>

#include "base/log.h"

namespace uvfio::vfio_user {

using nlohmann::json;

namespace {

template <class T>
Result<T> take(const Message& m, size_t at = 0) {
  if (m.payload.size() < at + sizeof(T)) return Error(EINVAL, "payload too short");
  T v;
  std::memcpy(&v, m.payload.data() + at, sizeof(T));
  return v;
}

template <class T>
void put(ReplyBytes& out, const T& v) {
  size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &v, sizeof(T));
}

Result<void> no_fds(const Message& m) {
  if (!m.fds.empty()) return Error(EINVAL, "fds where none are expected");
  return ok();
}

}  // namespace

Result<void> Session::handle(Message& m, Reply& r) {
  r.payload.clear();
  r.fds.clear();
  r.close_after = false;
  uint32_t type = m.hdr.flags & kFlagsTypeMask;
  if (type != kTypeCommand) return Error(EINVAL, "not a command");
  if (m.hdr.flags & ~(kFlagsTypeMask | kFlagNoReply)) return Error(EINVAL, "unknown header flags");
  if (m.fds.size() > kMaxMsgFds) return Error(EINVAL, "more fds than max_msg_fds");
  if (m.fds_lost) return Error(EMFILE, "the daemon had no fd for the client's fds");
  if (!negotiated_ && m.hdr.command != kVersion) return Error(EINVAL, "VERSION must come first");
  switch (m.hdr.command) {
    case kVersion: return version(m, r);
    case kDmaMap: return dma_map(m, r);
    case kDmaUnmap: return dma_unmap(m, r);
    case kDeviceGetInfo: return get_info(m, r);
    case kDeviceGetRegionInfo: return get_region_info(m, r);
    case kDeviceGetRegionIoFds: return get_region_io_fds(m, r);
    case kDeviceGetIrqInfo: return get_irq_info(m, r);
    case kDeviceSetIrqs: return set_irqs(m, r);
    case kRegionRead: return region_read(m, r);
    case kRegionWrite: return region_write(m, r);
    case kDeviceReset: return reset(m, r);
    case kRegionWriteMulti: return region_write_multi(m, r);
    case kDeviceFeature: return device_feature(m, r);
    case kMigDataRead: return mig_data_read(m, r);
    case kMigDataWrite: return mig_data_write(m, r);
    case kDmaRead:
    case kDmaWrite:
      return Error(EINVAL, "DMA_READ/WRITE go from server to client");
    default:
      return Error(ENOSYS, "unknown command");
  }
}

// VERSION: major 0, minor 0; the capabilities a client acts on, stated
// explicitly, and nothing the client did not propose (twin_socket). QEMU
// wants the reply no larger than its request and NUL-terminated. Our
// extension: "vf_token" (a UUID string) presents the VF token, as the
// kernel's "vf_token=" in VFIO_GROUP_GET_DEVICE_FD (docs/vfio-user.md).
Result<void> Session::version(Message& m, Reply& r) {
  TRY(no_fds(m));
  if (negotiated_) return Error(EINVAL, "VERSION was already negotiated");
  VersionMsg v = TRY(take<VersionMsg>(m));
  if (v.major != 0) {
    r.close_after = true;  // no compatible version: the spec closes
    return Error(ENOTSUP, "unsupported major version");
  }
  Negotiated n;
  if (m.payload.size() > sizeof(VersionMsg)) {
    std::string_view js(reinterpret_cast<const char*>(m.payload.data()) + sizeof(VersionMsg),
                        m.payload.size() - sizeof(VersionMsg));
    if (js.back() != '\0') return Error(EINVAL, "VERSION JSON not NUL-terminated");
    js.remove_suffix(1);
    json j = json::parse(js, nullptr, false);
    if (j.is_discarded() || !j.is_object()) return Error(EINVAL, "VERSION JSON malformed");
    if (j.contains("capabilities")) {
      const json& c = j["capabilities"];
      if (!c.is_object()) return Error(EINVAL, "capabilities is not an object");
      if (c.contains("max_msg_fds")) {
        if (!c["max_msg_fds"].is_number_unsigned()) return Error(EINVAL, "max_msg_fds");
        n.client_max_fds = static_cast<uint32_t>(std::min<uint64_t>(c["max_msg_fds"].get<uint64_t>(), kMaxMsgFds));
      }
      if (c.contains("max_data_xfer_size")) {
        if (!c["max_data_xfer_size"].is_number_unsigned()) return Error(EINVAL, "max_data_xfer_size");
        uint64_t x = c["max_data_xfer_size"].get<uint64_t>();
        if (x < 512) return Error(EINVAL, "max_data_xfer_size below 512 bytes");
        n.client_max_xfer = static_cast<uint32_t>(std::min<uint64_t>(x, kMaxDataXfer));
      }
      if (c.contains("write_multiple")) {
        if (!c["write_multiple"].is_boolean()) return Error(EINVAL, "write_multiple");
        n.write_multiple = c["write_multiple"].get<bool>();
      }
      if (c.contains("pgsizes")) {
        if (!c["pgsizes"].is_number_unsigned() || !(c["pgsizes"].get<uint64_t>() & kPgSizes))
          return Error(EINVAL, "pgsizes without 4 KiB");
      }
      if (c.contains("vf_token")) {
        if (!c["vf_token"].is_string()) return Error(EINVAL, "vf_token is not a string");
        n.open.vf_token = TRY(vfio::parse_uuid(c["vf_token"].get<std::string>()));
      }
    }
  }
  if (on_version_) {
    if (auto h = on_version_(n); !h) {
      r.close_after = true;  // the device refused this client (busy, VF token)
      return h.error();
    }
  }
  json caps = {{"max_msg_fds", kMaxMsgFds}, {"max_data_xfer_size", kMaxDataXfer}, {"pgsizes", kPgSizes},
               {"max_dma_maps", kMaxDmaMaps}};
  if (n.write_multiple) caps["write_multiple"] = true;
  std::string s = json{{"capabilities", caps}}.dump();
  VersionMsg out{0, 0};
  put(r.payload, out);
  r.payload.insert(r.payload.end(), s.begin(), s.end());
  r.payload.push_back('\0');
  neg_ = n;
  negotiated_ = true;
  return ok();
}

Result<void> Session::dma_map(Message& m, Reply&) {
  DmaMapMsg d = TRY(take<DmaMapMsg>(m));
  if (d.argsz < sizeof(d)) return Error(EINVAL, "DMA_MAP argsz");
  if (d.flags & ~(kDmaFlagRead | kDmaFlagWrite)) return Error(EINVAL, "DMA_MAP flags");
  if (m.fds.size() > 1) return Error(EINVAL, "DMA_MAP with more than one fd");
  uint32_t prot = ((d.flags & kDmaFlagRead) ? uint32_t{hw::kDmaRead} : 0u) |
                  ((d.flags & kDmaFlagWrite) ? uint32_t{hw::kDmaWrite} : 0u);
  if (m.fds.size() == 1) {
    TRY(dev_.iommu().map_fd(d.address, d.size, std::move(m.fds[0]), d.offset, prot));
  } else {
    // No fd: the memory is reachable only through DMA_READ/DMA_WRITE
    // messages. The range is reserved (overlaps refused) so unmaps match.
    TRY(dev_.iommu().map_remote(d.address, d.size, prot));
  }
  return ok();
}

Result<void> Session::dma_unmap(Message& m, Reply& r) {
  TRY(no_fds(m));
  DmaUnmapMsg d = TRY(take<DmaUnmapMsg>(m));
  if (d.argsz < sizeof(d)) return Error(EINVAL, "DMA_UNMAP argsz");
  if (d.flags & ~kDmaUnmapAll) return Error(EINVAL, "DMA_UNMAP flags");
  if (d.flags & kDmaUnmapAll) {
    if (d.address || d.size) return Error(EINVAL, "unmap-all with a range");
    dev_.iommu().unmap_all();
  } else {
    // type1's rules: every map inside the range goes, one that would be
    // split is EINVAL, a range with no map succeeds (QEMU's guest-IOMMU path
    // unmaps ranges that cover several maps, or none).
    TRY(dev_.iommu().unmap(d.address, d.size));
  }
  put(r.payload, d);
  return ok();
}

// The spec's 16 bytes (QEMU sends and can receive only these); a longer
// request (the kernel's 20-byte struct) is accepted, the reply stays 16.
Result<void> Session::get_info(Message& m, Reply& r) {
  TRY(no_fds(m));
  DeviceInfoMsg in = TRY(take<DeviceInfoMsg>(m));
  if (in.argsz < sizeof(in)) return Error(EINVAL, "GET_INFO argsz below 16");
  vfio_device_info info = TRY(dev_.get_info());
  DeviceInfoMsg out{sizeof(DeviceInfoMsg), info.flags, info.num_regions, info.num_irqs};
  put(r.payload, out);
  return ok();
}

Result<void> Session::get_region_info(Message& m, Reply& r) {
  TRY(no_fds(m));
  RegionInfoMsg in = TRY(take<RegionInfoMsg>(m));
  if (in.argsz < sizeof(in)) return Error(EINVAL, "GET_REGION_INFO argsz below 32");
  vfio::RegionInfo ri = TRY(dev_.get_region_info(in.index));
  if (ri.info.flags & VFIO_REGION_INFO_FLAG_MMAP) {
    vfio::MmapArea a = TRY(dev_.region_mmap(in.index));
    ri.info.offset = a.fd_offset;  // where the client maps the fd
    r.fds.push_back(a.fd);
  } else {
    ri.info.offset = 0;
  }
  std::vector<uint8_t> info = vfio::encode_region_info(ri, in.argsz);
  r.payload.assign(info.begin(), info.end());
  return ok();
}

// No region of ours has ioeventfds or ioregionfds to offer: every valid
// region answers with zero sub-regions (and so no fds).
Result<void> Session::get_region_io_fds(Message& m, Reply& r) {
  TRY(no_fds(m));
  RegionIoFdsMsg in = TRY(take<RegionIoFdsMsg>(m));
  if (in.argsz < sizeof(in)) return Error(EINVAL, "GET_REGION_IO_FDS argsz below 16");
  if (in.flags || in.count) return Error(EINVAL, "GET_REGION_IO_FDS flags and count must be 0");
  TRY(dev_.get_region_info(in.index));
  RegionIoFdsMsg out{sizeof(RegionIoFdsMsg), 0, in.index, 0};
  put(r.payload, out);
  return ok();
}

Result<void> Session::get_irq_info(Message& m, Reply& r) {
  TRY(no_fds(m));
  IrqInfoMsg in = TRY(take<IrqInfoMsg>(m));
  if (in.argsz < sizeof(in)) return Error(EINVAL, "GET_IRQ_INFO argsz below 16");
  vfio_irq_info info = TRY(dev_.get_irq_info(in.index));
  info.argsz = sizeof(info);
  put(r.payload, info);
  return ok();
}

Result<void> Session::set_irqs(Message& m, Reply&) {
  IrqSetMsg hdr = TRY(take<IrqSetMsg>(m));
  if (hdr.argsz < sizeof(IrqSetMsg)) return Error(EINVAL, "SET_IRQS argsz below 20");
  vfio::IrqSet s;
  s.flags = hdr.flags;
  s.index = hdr.index;
  s.start = hdr.start;
  s.count = hdr.count;
  size_t extra = m.payload.size() - sizeof(IrqSetMsg);
  switch (hdr.flags & VFIO_IRQ_SET_DATA_TYPE_MASK) {
    case VFIO_IRQ_SET_DATA_NONE:
      if (!m.fds.empty() || extra) return Error(EINVAL, "SET_IRQS DATA_NONE with data");
      break;
    case VFIO_IRQ_SET_DATA_BOOL:
      if (!m.fds.empty() || extra != hdr.count) return Error(EINVAL, "SET_IRQS bools do not match count");
      s.bools.assign(m.payload.begin() + sizeof(IrqSetMsg), m.payload.end());
      break;
    case VFIO_IRQ_SET_DATA_EVENTFD:
      if (extra) return Error(EINVAL, "SET_IRQS eventfds travel as fds");
      if (m.fds.empty()) {
        // No fds: de-assign those vectors. The count is checked against the
        // index before anything is sized by it (found by the fuzzer).
        vfio_irq_info ii = TRY(dev_.get_irq_info(hdr.index));
        if (hdr.count > ii.count) return Error(EINVAL, "SET_IRQS count beyond the index's vectors");
        s.fds.resize(hdr.count);
      } else if (m.fds.size() != hdr.count) {
        return Error(EINVAL, "SET_IRQS fd count does not match count");
      } else {
        s.fds = std::move(m.fds);
      }
      break;
    default:
      return Error(EINVAL, "SET_IRQS data type");
  }
  TRY(dev_.set_irqs(std::move(s)));
  return ok();
}

Result<void> Session::region_read(Message& m, Reply& r) {
  TRY(no_fds(m));
  RegionAccessMsg a = TRY(take<RegionAccessMsg>(m));
  if (m.payload.size() != sizeof(a)) return Error(EINVAL, "REGION_READ payload is not 16 bytes");
  if (a.count > kMaxDataXfer) return Error(EINVAL, "REGION_READ count above max_data_xfer_size");
  r.payload.resize(sizeof(a) + a.count);
  size_t n = TRY(dev_.region_read(a.region, a.offset, std::span<uint8_t>(r.payload.data() + sizeof(a), a.count)));
  a.count = static_cast<uint32_t>(n);
  std::memcpy(r.payload.data(), &a, sizeof(a));
  r.payload.resize(sizeof(a) + n);
  return ok();
}

Result<void> Session::region_write(Message& m, Reply& r) {
  TRY(no_fds(m));
  RegionAccessMsg a = TRY(take<RegionAccessMsg>(m));
  if (a.count > kMaxDataXfer) return Error(EINVAL, "REGION_WRITE count above max_data_xfer_size");
  if (m.payload.size() != sizeof(a) + a.count) return Error(EINVAL, "REGION_WRITE size does not match count");
  TRY(dev_.region_write(a.region, a.offset, std::span<const uint8_t>(m.payload.data() + sizeof(a), a.count)));
  put(r.payload, a);
  return ok();
}

Result<void> Session::region_write_multi(Message& m, Reply& r) {
  TRY(no_fds(m));
  if (!neg_.write_multiple) return Error(EINVAL, "write_multiple was not negotiated");
  uint64_t n = TRY(take<uint64_t>(m));
  if (n == 0 || n > kMaxWriteMulti) return Error(EINVAL, "REGION_WRITE_MULTI count");
  if (m.payload.size() != 8 + n * sizeof(RegionWriteMultiEntry)) return Error(EINVAL, "REGION_WRITE_MULTI size");
  for (uint64_t i = 0; i < n; ++i) {
    RegionWriteMultiEntry e = TRY(take<RegionWriteMultiEntry>(m, 8 + i * sizeof(RegionWriteMultiEntry)));
    if (e.count == 0 || e.count > 8) return Error(EINVAL, "REGION_WRITE_MULTI entry count");
    TRY(dev_.region_write(e.region, e.offset, std::span<const uint8_t>(e.data, e.count)));
  }
  put(r.payload, n);
  return ok();
}

Result<void> Session::reset(Message& m, Reply&) {
  TRY(no_fds(m));
  if (!m.payload.empty()) return Error(EINVAL, "DEVICE_RESET has no payload");
  TRY(dev_.reset());
  mig_.reset();
  return ok();
}

// The request's data is the in/out buffer of the kernel's ioctl: what the
// client sent, with room up to argsz for what GET returns. So a GET that
// sends no data (MIGRATION) still has its argsz worth of room, and a reply
// never exceeds argsz (reference §1, "argsz").
Result<void> Session::device_feature(Message& m, Reply& r) {
  TRY(no_fds(m));
  DeviceFeatureMsg f = TRY(take<DeviceFeatureMsg>(m));
  if (f.argsz < sizeof(f)) return Error(EINVAL, "DEVICE_FEATURE argsz below 8");
  std::span<const uint8_t> in(m.payload.data() + sizeof(f), m.payload.size() - sizeof(f));
  bool get = (f.flags & VFIO_DEVICE_FEATURE_GET) && !(f.flags & VFIO_DEVICE_FEATURE_PROBE);
  // SET and PROBE echo the request: argsz must hold it.
  if (!get && f.argsz < m.payload.size()) return Error(EINVAL, "DEVICE_FEATURE argsz below the request");
  // Room for the reply, bounded by what one message may carry.
  size_t room = std::min<size_t>(f.argsz - sizeof(f), kMaxMessage - sizeof(Header) - sizeof(f));
  std::span<const uint8_t> buf = in;
  if (get && room > in.size()) {
    io_.assign(in.begin(), in.end());
    io_.resize(room, 0);
    buf = io_;
  }
  vfio::FeatureReply fr = TRY(dev_.device_feature(f.flags, buf));
  uint32_t id = f.flags & VFIO_DEVICE_FEATURE_MASK;
  if (id == VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE && (f.flags & VFIO_DEVICE_FEATURE_SET) &&
      !(f.flags & VFIO_DEVICE_FEATURE_PROBE)) {
    // A new session's stream replaces the last; leaving the saving or
    // resuming states ends it.
    vfio::MigState now = dev_.mig_state();
    if (fr.file) mig_ = fr.file;
    else if (now == vfio::MigState::kRunning || now == vfio::MigState::kStop || now == vfio::MigState::kRunningP2P ||
             now == vfio::MigState::kError)
      mig_.reset();
  }
  if (get) {
    if (fr.data.size() > room) return Error(EINVAL, "feature data larger than argsz allows");
    DeviceFeatureMsg out{static_cast<uint32_t>(sizeof(out) + fr.data.size()), f.flags};
    put(r.payload, out);
    r.payload.insert(r.payload.end(), fr.data.begin(), fr.data.end());
  } else if (!fr.data.empty() && fr.data.size() == in.size()) {
    // SET whose data the device updated (DMA_LOGGING_START's page size).
    put(r.payload, f);
    r.payload.insert(r.payload.end(), fr.data.begin(), fr.data.end());
  } else {
    r.payload.assign(m.payload.begin(), m.payload.end());  // SET and PROBE echo the request
  }
  return ok();
}

Result<void> Session::mig_data_read(Message& m, Reply& r) {
  TRY(no_fds(m));
  MigDataMsg d = TRY(take<MigDataMsg>(m));
  if (d.size > kMaxDataXfer) return Error(EINVAL, "MIG_DATA_READ size above max_data_xfer_size");
  // argsz covers the struct at least. QEMU sends 8 + size; libvfio-user
  // (the reference server, and its own tests) and an earlier revision of the
  // spec use the 8-byte struct alone: both are accepted, and the reply is
  // bounded by `size` either way.
  if (d.argsz < sizeof(d)) return Error(EINVAL, "MIG_DATA_READ argsz below 8");
  vfio::MigState s = dev_.mig_state();
  if (!mig_ || (s != vfio::MigState::kPreCopy && s != vfio::MigState::kPreCopyP2P && s != vfio::MigState::kStopCopy))
    return Error(EINVAL, "not in a saving state");
  r.payload.resize(sizeof(d) + d.size);
  size_t n = TRY(mig_->read(std::span<uint8_t>(r.payload.data() + sizeof(d), d.size)));
  dev_.stats().migration_bytes.add(n);
  MigDataMsg out{static_cast<uint32_t>(sizeof(d) + n), static_cast<uint32_t>(n)};
  std::memcpy(r.payload.data(), &out, sizeof(out));
  r.payload.resize(sizeof(d) + n);
  return ok();
}

Result<void> Session::mig_data_write(Message& m, Reply&) {
  TRY(no_fds(m));
  MigDataMsg d = TRY(take<MigDataMsg>(m));
  if (d.argsz < sizeof(d) || d.size > kMaxDataXfer || m.payload.size() != sizeof(d) + d.size)
    return Error(EINVAL, "MIG_DATA_WRITE arguments");
  if (!mig_ || dev_.mig_state() != vfio::MigState::kResuming) return Error(EINVAL, "not RESUMING");
  std::span<const uint8_t> data(m.payload.data() + sizeof(d), d.size);
  while (!data.empty()) {
    size_t n = TRY(mig_->write(data));
    if (n == 0) return Error(EIO, "migration stream refused data");
    dev_.stats().migration_bytes.add(n);
    data = data.subspan(n);
  }
  return ok();
}

}  // namespace uvfio::vfio_user
