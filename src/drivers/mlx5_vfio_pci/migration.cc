#include "drivers/mlx5_vfio_pci/migration.h"

#include <cstring>

#include "drivers/mlx5_vfio_pci/mlx5_vfio_pci.h"
#include "hw/mlx5/mlx5.h"

namespace uvfio::drivers::mlx5_vfio_pci {

void put_record(std::vector<uint8_t>& out, RecordTag tag, std::span<const uint8_t> payload, uint32_t flags) {
  RecordHeader h{payload.size(), flags, static_cast<uint32_t>(tag), hw::mlx5::crc32c(0, payload.data(), payload.size()), 0};
  size_t at = out.size();
  out.resize(at + sizeof(h) + payload.size());
  std::memcpy(out.data() + at, &h, sizeof(h));
  if (!payload.empty()) std::memcpy(out.data() + at + sizeof(h), payload.data(), payload.size());
}

// ---- Saving ---------------------------------------------------------------------

SaveFile::SaveFile(std::shared_ptr<PfLink> pf, uint16_t vf_device, uint64_t device_memory)
    : pf_(std::move(pf)), vf_device_(vf_device), device_memory_(device_memory) {}

void SaveFile::push(std::vector<uint8_t> chunk) {
  if (chunk.empty()) return;
  queued_ += chunk.size();
  queue_.push_back(std::move(chunk));
}

Result<void> SaveFile::enqueue_image(bool incremental) {
  auto img = TRY(pf_->call([&](mlx5::VfioAuxDevice& a) { return a.save_state(incremental); }));
  // The record header, then the image itself (no copy of the image).
  RecordHeader h{img.size(), 0, static_cast<uint32_t>(RecordTag::kFwData), hw::mlx5::crc32c(0, img.data(), img.size()), 0};
  std::vector<uint8_t> head(sizeof(h));
  std::memcpy(head.data(), &h, sizeof(h));
  push(std::move(head));
  push(std::move(img));
  if (!incremental) took_full_ = true;
  return ok();
}

Result<void> SaveFile::start(bool precopy) {
  std::lock_guard lk(mu_);
  precopy_ = precopy;
  std::vector<uint8_t> head;
  StreamHeader sh{kStreamMagic, kStreamVersion, vf_device_, device_memory_};
  put_record(head, RecordTag::kStreamHeader, std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&sh), sizeof(sh)));
  uint64_t size = TRY(pf_->call([](mlx5::VfioAuxDevice& a) { return a.query_state_size(false); }));
  put_record(head, RecordTag::kStopCopySize, std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&size), 8),
             kRecordOptional);
  push(std::move(head));
  TRY(enqueue_image(false));
  if (precopy) {
    initial_left_ = queued_;
  } else {
    std::vector<uint8_t> end;
    put_record(end, RecordTag::kEnd, {});
    push(std::move(end));
    final_ = true;
  }
  return ok();
}

Result<void> SaveFile::finish() {
  std::lock_guard lk(mu_);
  if (dead_) return Error(ENODEV, "session ended");
  // Quiesced now: the last image is exact.
  TRY(enqueue_image(took_full_));
  std::vector<uint8_t> end;
  put_record(end, RecordTag::kEnd, {});
  push(std::move(end));
  final_ = true;
  precopy_ = false;
  initial_left_ = 0;
  return ok();
}

void SaveFile::end_session() {
  std::lock_guard lk(mu_);
  dead_ = true;
  queue_.clear();
  queued_ = 0;
  front_off_ = 0;
}

Result<size_t> SaveFile::read(std::span<uint8_t> out) {
  std::lock_guard lk(mu_);
  if (dead_) return Error(ENODEV, "session ended");
  if (queue_.empty() && precopy_) {
    // Anything new since the last image? Then take the next one now.
    uint64_t pending = TRY(pf_->call([](mlx5::VfioAuxDevice& a) { return a.query_state_size(true); }));
    if (pending > 4096) TRY(enqueue_image(true));
    if (queue_.empty()) return Error(ENOMSG, "no data for now");
  }
  if (queue_.empty()) return size_t{0};  // end of stream (STOP_COPY)
  size_t n = 0;
  while (n < out.size() && !queue_.empty()) {
    std::vector<uint8_t>& c = queue_.front();
    size_t take = std::min(out.size() - n, c.size() - front_off_);
    std::memcpy(out.data() + n, c.data() + front_off_, take);
    n += take;
    front_off_ += take;
    if (front_off_ == c.size()) {
      queue_.pop_front();
      front_off_ = 0;
    }
  }
  queued_ -= n;
  initial_left_ = initial_left_ > n ? initial_left_ - n : 0;
  return n;
}

Result<vfio_precopy_info> SaveFile::precopy_info() {
  std::lock_guard lk(mu_);
  if (dead_ || !precopy_) return Error(EINVAL, "not in PRE_COPY");
  vfio_precopy_info i{};
  i.argsz = sizeof(i);
  i.initial_bytes = initial_left_;
  uint64_t queued_dirty = queued_ - std::min<uint64_t>(queued_, initial_left_);
  uint64_t pending = TRY(pf_->call([](mlx5::VfioAuxDevice& a) { return a.query_state_size(true); }));
  i.dirty_bytes = queued_dirty + (pending > 4096 ? pending : 0);
  return i;
}

// ---- Resuming ---------------------------------------------------------------------

ResumeFile::ResumeFile(std::shared_ptr<PfLink> pf, uint16_t vf_device, uint64_t device_memory)
    : pf_(std::move(pf)), vf_device_(vf_device), device_memory_(device_memory) {}

Result<void> ResumeFile::consume() {
  size_t at = 0;
  while (pending_.size() - at >= sizeof(RecordHeader)) {
    RecordHeader h;
    std::memcpy(&h, pending_.data() + at, sizeof(h));
    if (h.size > (uint64_t{1} << 36)) return Error(ENOMEM, "record larger than the device can load");
    if (pending_.size() - at - sizeof(h) < h.size) break;  // wait for the rest
    std::span<const uint8_t> payload(pending_.data() + at + sizeof(h), h.size);
    if (hw::mlx5::crc32c(0, payload.data(), payload.size()) != h.crc) return Error(EINVAL, "record checksum mismatch");
    if (ended_) return Error(EINVAL, "data after END");
    auto tag = static_cast<RecordTag>(h.tag);
    if (!header_seen_ && tag != RecordTag::kStreamHeader) return Error(EINVAL, "stream without a header");
    switch (tag) {
      case RecordTag::kStreamHeader: {
        StreamHeader sh;
        if (header_seen_ || payload.size() != sizeof(sh)) return Error(EINVAL, "bad stream header");
        std::memcpy(&sh, payload.data(), sizeof(sh));
        if (sh.magic != kStreamMagic || sh.version != kStreamVersion) return Error(EINVAL, "not a uvfio mlx5 stream");
        if (sh.vf_device != vf_device_ || sh.device_memory != device_memory_)
          return Error(EINVAL, "stream of another kind of device");
        header_seen_ = true;
        break;
      }
      case RecordTag::kFwData:
        TRY(pf_->call([&](mlx5::VfioAuxDevice& a) { return a.load_state(payload); }));
        break;
      case RecordTag::kStopCopySize:
        break;  // a hint: nothing to pre-allocate here
      case RecordTag::kEnd:
        ended_ = true;
        break;
      default:
        if (!(h.flags & kRecordOptional)) return Error(EOPNOTSUPP, "unknown mandatory record");
    }
    at += sizeof(h) + h.size;
  }
  pending_.erase(pending_.begin(), pending_.begin() + static_cast<long>(at));
  return ok();
}

Result<size_t> ResumeFile::write(std::span<const uint8_t> in) {
  std::lock_guard lk(mu_);
  if (dead_) return Error(ENODEV, "session ended");
  if (error_) return Error(error_, "stream already failed");
  pending_.insert(pending_.end(), in.begin(), in.end());
  if (auto r = consume(); !r) {
    error_ = r.error().code;  // errors poison the stream
    return r.error();
  }
  return in.size();
}

Result<void> ResumeFile::complete() {
  std::lock_guard lk(mu_);
  if (error_) return Error(error_, "stream failed");
  if (!ended_ || !pending_.empty()) return Error(EINVAL, "stream incomplete");
  return ok();
}

void ResumeFile::end_session() {
  std::lock_guard lk(mu_);
  dead_ = true;
  pending_.clear();
}

}  // namespace uvfio::drivers::mlx5_vfio_pci
