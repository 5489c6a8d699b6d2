// SPDX-License-Identifier: BSD-3-Clause
#include "vfio/device.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include "base/log.h"

namespace uvfio::vfio {

// ---- Capability chains ------------------------------------------------------

void append_cap(std::vector<uint8_t>& caps, size_t base, uint16_t id, uint16_t version,
                std::span<const uint8_t> body) {
  // Link the previous capability's `next` to this one.
  size_t at = caps.size();
  if (at) {
    size_t prev = 0;
    for (;;) {
      vfio_info_cap_header h;
      std::memcpy(&h, caps.data() + prev, sizeof(h));
      if (!h.next) break;
      prev = h.next - base;
    }
    vfio_info_cap_header h;
    std::memcpy(&h, caps.data() + prev, sizeof(h));
    h.next = static_cast<uint32_t>(base + at);
    std::memcpy(caps.data() + prev, &h, sizeof(h));
  }
  vfio_info_cap_header h{id, version, 0};
  caps.resize(at + sizeof(h) + body.size());
  std::memcpy(caps.data() + at, &h, sizeof(h));
  if (!body.empty()) std::memcpy(caps.data() + at + sizeof(h), body.data(), body.size());
  // Keep every capability 8-byte aligned.
  caps.resize((caps.size() + 7) & ~size_t{7});
}

std::vector<uint8_t> encode_region_info(const RegionInfo& r, uint32_t argsz) {
  vfio_region_info info = r.info;
  size_t full = sizeof(info) + r.caps.size();
  std::vector<uint8_t> out;
  if (!r.caps.empty()) {
    info.flags |= VFIO_REGION_INFO_FLAG_CAPS;
    if (argsz >= full) {
      info.cap_offset = sizeof(info);
    } else {
      info.cap_offset = 0;  // the caller retries with argsz
    }
  }
  info.argsz = static_cast<uint32_t>(r.caps.empty() ? sizeof(info) : full);
  bool with_caps = !r.caps.empty() && argsz >= full;
  out.resize(with_caps ? full : sizeof(info));
  std::memcpy(out.data(), &info, sizeof(info));
  if (with_caps) std::memcpy(out.data() + sizeof(info), r.caps.data(), r.caps.size());
  return out;
}

// ---- Device -------------------------------------------------------------------

Device::Device(std::string name) : name_(std::move(name)) {}
Device::~Device() = default;

Result<void> Device::check_open() const {
  if (!open_.load(std::memory_order_acquire)) return Error(EBADF, "device not open");
  return ok();
}

Result<void> Device::open(const OpenArgs& args) {
  std::lock_guard lk(dev_mu_);
  // One user at a time, as a group file or device cdev: the devices are not
  // shareable between VMMs.
  if (open_) return Error(EBUSY, "device already open");
  TRY(match_device(args));
  TRY(open_device(args));
  open_ = true;
  {
    std::lock_guard ml(mig_mu_);
    mig_state_ = MigState::kRunning;
  }
  return ok();
}

Result<void> Device::match(const OpenArgs& args) { return match_device(args); }

Result<void> Device::match_device(const OpenArgs& args) {
  if (args.vf_token) return Error(EINVAL, "VF token for a device that takes none");
  return ok();
}

void Device::close() {
  std::lock_guard lk(dev_mu_);
  if (!open_) return;
  if (has_dma_logging()) (void)log_stop();
  close_device();
  iommu_.unmap_all();
  open_ = false;
  // Notify under the lock: the unbinding thread may destroy this device as
  // soon as it sees open_ false, so nothing may touch it after the unlock.
  released_.notify_all();
}

void Device::release_user_resources() {
  {
    std::lock_guard lk(igate_);
    release_irqs();
  }
  // DMA logging the user started ends with the user, as on close.
  if (has_dma_logging()) (void)log_stop();
  iommu_.unmap_all();
}

bool Device::is_open() const { return open_.load(std::memory_order_acquire); }

void Device::wait_released(std::chrono::milliseconds interval) {
  std::unique_lock lk(dev_mu_);
  unsigned count = 0;
  while (open_) {
    lk.unlock();
    request(count);
    if (count == 0) log::info(name_, "device in use: waiting for the user to release it");
    ++count;
    lk.lock();
    released_.wait_for(lk, interval, [&] { return !open_; });
  }
}

Result<vfio_device_info> Device::get_info() {
  TRY(check_open());
  return info();
}

Result<RegionInfo> Device::get_region_info(uint32_t index) {
  TRY(check_open());
  return region_info(index);
}

Result<size_t> Device::region_read(uint32_t index, uint64_t offset, std::span<uint8_t> out) {
  TRY(check_open());
  size_t n = TRY(read(index, offset, out));
  stats_.region_bytes_read.add(n);
  return n;
}

Result<size_t> Device::region_write(uint32_t index, uint64_t offset, std::span<const uint8_t> in) {
  TRY(check_open());
  size_t n = TRY(write(index, offset, in));
  stats_.region_bytes_written.add(n);
  return n;
}

Result<MmapArea> Device::region_mmap(uint32_t index) {
  TRY(check_open());
  return mmap(index);
}

Result<vfio_irq_info> Device::get_irq_info(uint32_t index) {
  TRY(check_open());
  return irq_info(index);
}

// vfio_set_irqs_validate_and_prepare() and the action dispatch.
Result<void> Device::set_irqs(IrqSet req) {
  TRY(check_open());
  if (req.index >= kPciNumIrqs) return Error(EINVAL, "IRQ index out of range");
  if (req.flags & ~(VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK))
    return Error(EINVAL, "unknown SET_IRQS flags");
  size_t need;
  switch (req.flags & VFIO_IRQ_SET_DATA_TYPE_MASK) {
    case VFIO_IRQ_SET_DATA_NONE: need = 0; break;
    case VFIO_IRQ_SET_DATA_BOOL: need = req.bools.size(); break;
    case VFIO_IRQ_SET_DATA_EVENTFD: need = req.fds.size(); break;
    default: return Error(EINVAL, "exactly one SET_IRQS data type");
  }
  vfio_irq_info ii = TRY(irq_info(req.index));
  uint32_t max = ii.count;
  if (req.count >= UINT32_MAX - req.start || req.count > max || req.start >= max || req.start + req.count > max)
    return Error(EINVAL, "SET_IRQS start/count out of range");
  if ((req.flags & (VFIO_IRQ_SET_DATA_BOOL | VFIO_IRQ_SET_DATA_EVENTFD)) && need < req.count)
    return Error(EINVAL, "SET_IRQS data shorter than count");
  uint32_t action = req.flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
  if (action != VFIO_IRQ_SET_ACTION_MASK && action != VFIO_IRQ_SET_ACTION_UNMASK &&
      action != VFIO_IRQ_SET_ACTION_TRIGGER)
    return Error(ENOTTY, "exactly one SET_IRQS action");
  std::lock_guard lk(igate_);
  return irqs(req);
}

Result<void> Device::reset() {
  TRY(check_open());
  std::lock_guard lk(igate_);
  TRY(do_reset());
  mig_reset_to_running();
  return ok();
}

void Device::mig_reset_to_running() {
  std::lock_guard lk(mig_mu_);
  mig_state_ = MigState::kRunning;
}

void Device::mig_set_error() {
  std::lock_guard lk(mig_mu_);
  mig_state_ = MigState::kError;
}

MigState Device::mig_state() const {
  std::lock_guard lk(mig_mu_);
  return mig_state_;
}

Result<int> check_feature(uint32_t flags, std::span<const uint8_t> payload, uint32_t supported, size_t minsz) {
  if ((flags & VFIO_DEVICE_FEATURE_GET) && !(supported & VFIO_DEVICE_FEATURE_GET))
    return Error(EINVAL, "feature has no GET");
  if ((flags & VFIO_DEVICE_FEATURE_SET) && !(supported & VFIO_DEVICE_FEATURE_SET))
    return Error(EINVAL, "feature has no SET");
  if (flags & VFIO_DEVICE_FEATURE_PROBE) return 0;
  if (!(flags & (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET))) return Error(EINVAL, "neither GET nor SET");
  if (payload.size() < minsz) return Error(EINVAL, "feature payload too short");
  return 1;
}

// vfio_ioctl_device_feature().
Result<FeatureReply> Device::device_feature(uint32_t flags, std::span<const uint8_t> payload) {
  TRY(check_open());
  if (flags & ~kFeatureFlagsMask) return Error(EINVAL, "unknown feature flags");
  if (!(flags & VFIO_DEVICE_FEATURE_PROBE) && (flags & VFIO_DEVICE_FEATURE_SET) && (flags & VFIO_DEVICE_FEATURE_GET))
    return Error(EINVAL, "GET and SET together without PROBE");
  uint32_t id = flags & VFIO_DEVICE_FEATURE_MASK;
  switch (id) {
    case VFIO_DEVICE_FEATURE_MIGRATION:
    case VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE:
    case VFIO_DEVICE_FEATURE_MIG_DATA_SIZE:
      if (!migration_flags()) return Error(ENOTTY, "device does not migrate");
      return mig_feature(flags, payload);
    case VFIO_DEVICE_FEATURE_DMA_LOGGING_START:
    case VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP:
    case VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT:
      if (!has_dma_logging()) return Error(ENOTTY, "device has no DMA logging");
      return logging_feature(id, flags, payload);
    default:
      return feature(flags, payload);
  }
}

Result<FeatureReply> Device::feature(uint32_t, std::span<const uint8_t>) { return Error(ENOTTY, "unknown feature"); }

template <class T>
static std::vector<uint8_t> bytes_of(const T& v) {
  std::vector<uint8_t> b(sizeof(T));
  std::memcpy(b.data(), &v, sizeof(T));
  return b;
}

Result<FeatureReply> Device::mig_feature(uint32_t flags, std::span<const uint8_t> payload) {
  uint32_t id = flags & VFIO_DEVICE_FEATURE_MASK;
  if (id == VFIO_DEVICE_FEATURE_MIGRATION) {
    if (TRY(check_feature(flags, payload, VFIO_DEVICE_FEATURE_GET, sizeof(vfio_device_feature_migration))) == 0)
      return FeatureReply{};
    vfio_device_feature_migration m{migration_flags()};
    return FeatureReply{bytes_of(m), nullptr};
  }
  if (id == VFIO_DEVICE_FEATURE_MIG_DATA_SIZE) {
    if (TRY(check_feature(flags, payload, VFIO_DEVICE_FEATURE_GET, sizeof(vfio_device_feature_mig_data_size))) == 0)
      return FeatureReply{};
    std::lock_guard lk(mig_mu_);
    vfio_device_feature_mig_data_size s{TRY(migration_data_size())};
    return FeatureReply{bytes_of(s), nullptr};
  }
  // MIG_DEVICE_STATE
  if (TRY(check_feature(flags, payload, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET,
                        sizeof(vfio_device_feature_mig_state))) == 0)
    return FeatureReply{};
  std::lock_guard lk(mig_mu_);
  vfio_device_feature_mig_state st{};
  if (flags & VFIO_DEVICE_FEATURE_GET) {
    st.device_state = static_cast<uint32_t>(mig_state_);
    st.data_fd = -1;
    return FeatureReply{bytes_of(st), nullptr};
  }
  std::memcpy(&st, payload.data(), sizeof(st));
  MigState target = static_cast<MigState>(st.device_state);
  std::shared_ptr<MigrationFile> file;
  // The driver loop (mlx5vf_pci_step_device_state & co): one arc at a time.
  while (mig_state_ != target) {
    MigState next = TRY(mig_next_state(mig_state_, target, migration_flags()));
    auto r = migration_arc(mig_state_, next);
    if (!r) {
      log::warn(name_, "migration arc {} -> {} failed: {}", to_string(mig_state_), to_string(next),
                to_string(r.error()));
      return r.error();  // the device stays in the last state reached (or ERROR, if the driver said so)
    }
    // How long the device stays stopped (out of RUNNING/PRE_COPY): on a
    // migration source, the downtime it caused.
    auto running = [](MigState s) { return s == MigState::kRunning || s == MigState::kPreCopy; };
    if (running(mig_state_) && !running(next)) stopped_at_ = std::chrono::steady_clock::now();
    if (!running(mig_state_) && next == MigState::kRunning && stopped_at_.time_since_epoch().count()) {
      auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - stopped_at_);
      stats_.last_stop_ns.set(static_cast<uint64_t>(ns.count()));  // nothing with --no-stats, as every counter
    }
    mig_state_ = next;
    file = std::move(*r);
    if (file && mig_state_ != target) return Error(EINVAL, "a stream opened mid-path");  // a driver bug
  }
  st.data_fd = -1;
  return FeatureReply{bytes_of(st), file};
}

Result<std::shared_ptr<MigrationFile>> Device::migration_arc(MigState, MigState) {
  return Error(ENOTTY, "no migration");
}

namespace {
bool is_pow2(uint64_t v) { return v && !(v & (v - 1)); }
}  // namespace

// DMA logging (vfio_ioctl_device_feature_logging_*). Payload layouts are the
// vfio-user ones (ranges and bitmap inline, no user pointers):
//   START  {u64 page_size, u32 num_ranges, u32 rsvd} {u64 iova, u64 length}[]
//   REPORT {u64 iova, u64 length, u64 page_size} -> the same + u64 bitmap[]
Result<FeatureReply> Device::logging_feature(uint32_t id, uint32_t flags, std::span<const uint8_t> payload) {
  if (id == VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP) {
    if (TRY(check_feature(flags, payload, VFIO_DEVICE_FEATURE_SET, 0)) == 0) return FeatureReply{};
    TRY(log_stop());
    return FeatureReply{};
  }
  if (id == VFIO_DEVICE_FEATURE_DMA_LOGGING_START) {
    // The core's checks (vfio_ioctl_device_feature_logging_start): too many
    // ranges E2BIG, a range not a multiple of page_size EINVAL, one that
    // wraps EOVERFLOW, overlapping ranges EINVAL. Where vfio-user and the
    // kernel differ, the vfio-user peers win: zero ranges means all of the
    // device's DMA (the spec; libvfio-user's client starts logging so). The
    // kernel refuses neither an empty range (it covers nothing) nor a page
    // size that is not a power of two (the driver picks its granule and
    // writes it back: the next power of two here, as mlx5 rounds).
    if (TRY(check_feature(flags, payload, VFIO_DEVICE_FEATURE_SET, 16)) == 0) return FeatureReply{};
    uint64_t page_size;
    uint32_t n;
    std::memcpy(&page_size, payload.data(), 8);
    std::memcpy(&n, payload.data() + 8, 4);
    if (n > kDmaLoggingMaxRanges) return Error(E2BIG, "too many ranges");
    if (payload.size() < 16 + size_t{n} * 16) return Error(EINVAL, "ranges missing");
    if (page_size == 0 || page_size > (uint64_t{1} << 62)) return Error(EINVAL, "page size");
    std::vector<DmaRange> ranges;
    for (uint32_t i = 0; i < n; ++i) {
      DmaRange r;
      std::memcpy(&r.iova, payload.data() + 16 + 16 * i, 8);
      std::memcpy(&r.length, payload.data() + 24 + 16 * i, 8);
      if (r.iova % page_size || r.length % page_size) return Error(EINVAL, "range not page aligned");
      if (r.iova + r.length < r.iova) return Error(EOVERFLOW, "range wraps");
      if (r.length) ranges.push_back(r);
    }
    uint64_t granule = std::bit_ceil(page_size);
    if (n == 0) {
      ranges.push_back(DmaRange{0, 0 - granule});  // all of the IOVA space but its last granule
    } else if (ranges.empty()) {
      return Error(EINVAL, "every range is empty");
    }
    auto sorted = ranges;
    std::sort(sorted.begin(), sorted.end(), [](auto& a, auto& b) { return a.iova < b.iova; });
    for (size_t i = 1; i < sorted.size(); ++i)
      if (sorted[i - 1].iova + sorted[i - 1].length > sorted[i].iova) return Error(EINVAL, "ranges overlap");
    TRY(log_start(granule, ranges));
    std::vector<uint8_t> out(payload.begin(), payload.end());
    std::memcpy(out.data(), &granule, 8);  // the granularity the device chose
    return FeatureReply{out, nullptr};
  }
  // REPORT
  if (TRY(check_feature(flags, payload, VFIO_DEVICE_FEATURE_GET, 24)) == 0) return FeatureReply{};
  uint64_t iova, length, page_size;
  std::memcpy(&iova, payload.data(), 8);
  std::memcpy(&length, payload.data() + 8, 8);
  std::memcpy(&page_size, payload.data() + 16, 8);
  if (!length || page_size < 4096 || !is_pow2(page_size)) return Error(EINVAL, "bad report range or page size");
  if (iova + length < iova) return Error(EOVERFLOW, "report range wraps");
  uint64_t pages = (length + page_size - 1) / page_size;
  // The bitmap comes back inline: it must fit in the caller's buffer (for
  // vfio-user, the request's argsz), checked before anything is allocated.
  if (pages > (uint64_t{1} << 32) || 24 + (pages + 63) / 64 * 8 > payload.size())
    return Error(EINVAL, "bitmap larger than the buffer");
  std::vector<uint64_t> bitmap((pages + 63) / 64, 0);
  TRY(log_read_and_clear(iova, length, page_size, bitmap));
  std::vector<uint8_t> out(24 + bitmap.size() * 8);
  std::memcpy(out.data(), payload.data(), 24);
  std::memcpy(out.data() + 24, bitmap.data(), bitmap.size() * 8);
  return FeatureReply{out, nullptr};
}

Result<void> Device::log_start(uint64_t&, const std::vector<DmaRange>&) { return Error(ENOTTY); }
Result<void> Device::log_stop() { return Error(ENOTTY); }
Result<void> Device::log_read_and_clear(uint64_t, uint64_t, uint64_t, std::vector<uint64_t>&) {
  return Error(ENOTTY);
}

}  // namespace uvfio::vfio
