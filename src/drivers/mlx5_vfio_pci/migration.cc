// SPDX-License-Identifier: BSD-3-Clause
#include "drivers/mlx5_vfio_pci/migration.h"

#include <algorithm>
#include <cstring>

#include "base/crc32c.h"
#include "drivers/mlx5_vfio_pci/mlx5_vfio_pci.h"
#include "hw/iommu.h"

namespace uvfio::drivers::mlx5_vfio_pci {

namespace {
constexpr size_t kChunk = mlx5::VfioAuxDevice::kStateChunk;
constexpr size_t kMinChunk = hw::mlx5::kFwMinChunk;
constexpr size_t kInPlace = 256 << 10;  // the smallest chunk written straight into a read
constexpr uint64_t kSmallRecord = 4096;  // every record but FW_DATA is tiny
}  // namespace

uint64_t max_record_payload() { return kChunk; }

void put_record(std::vector<uint8_t>& out, RecordTag tag, std::span<const uint8_t> payload, uint32_t flags) {
  RecordHeader h{payload.size(), flags, static_cast<uint32_t>(tag), crc32c(0, payload.data(), payload.size()), 0};
  size_t at = out.size();
  out.resize(at + sizeof(h) + payload.size());
  std::memcpy(out.data() + at, &h, sizeof(h));
  if (!payload.empty()) std::memcpy(out.data() + at + sizeof(h), payload.data(), payload.size());
}

// ---- Saving ---------------------------------------------------------------------

SaveFile::SaveFile(std::shared_ptr<PfLink> pf, uint16_t vf_device, uint64_t device_memory)
    : pf_(std::move(pf)), vf_device_(vf_device), device_memory_(device_memory) {}

Result<void> SaveFile::start(bool precopy) {
  std::lock_guard lk(mu_);
  precopy_ = precopy;
  tracked_ = precopy;  // only a pre-copy session asks for incremental images
  rec_.reserve(sizeof(RecordHeader) + kChunk);
  rec_.clear();
  StreamHeader sh{kStreamMagic, kStreamVersion, vf_device_, device_memory_};
  put_record(rec_, RecordTag::kStreamHeader, std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&sh), sizeof(sh)));
  uint64_t size = TRY(pf_->call([](mlx5::VfioAuxDevice& a) { return a.query_state_size(false); }));
  put_record(rec_, RecordTag::kStopCopySize, std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&size), 8),
             kRecordOptional);
  rec_len_ = rec_.size();
  rec_off_ = 0;
  // Without pre-copy the device is stopped already: the full image is the
  // final one.
  final_wanted_ = !precopy;
  final_started_ = !precopy;
  return ok();
}

Result<void> SaveFile::finish() {
  std::lock_guard lk(mu_);
  if (dead_) return Error(ENODEV, "session ended");
  final_wanted_ = true;  // after the image in flight: the last one, then END
  precopy_ = false;
  return ok();
}

void SaveFile::end_session() {
  std::lock_guard lk(mu_);
  dead_ = true;
  rec_len_ = rec_off_ = 0;
  rec_.clear();
  rec_.shrink_to_fit();
}

// One firmware chunk as one FW_DATA record. Where the reader's buffer has
// room for a large record, the firmware writes the chunk straight into it
// (the record leaves this file without a copy: a MIG_DATA_READ's reply
// buffer is that room). Otherwise the chunk goes to rec_ and is copied out:
// a whole chunk, or, when it only fills the tail of a large read that has
// data already, one just big enough for that tail (the next read copies the
// rest). Small reads take a whole staged chunk piece by piece, never a
// firmware command each.
Result<size_t> SaveFile::frame_chunk_locked(bool start, bool incremental, std::span<uint8_t> room, bool tail) {
  constexpr size_t kHeader = sizeof(RecordHeader);
  constexpr size_t kPage = hw::kIommuPageSize;  // the buffer is mapped for the firmware's DMA: whole pages of it
  bool in_place = room.size() >= kHeader + kInPlace;
  std::span<uint8_t> rec;
  if (in_place) {
    rec = room.first(kHeader + (std::min(kChunk, room.size() - kHeader) & ~(kPage - 1)));
  } else {
    // A chunk stops short of its buffer by up to a record (a page and its
    // index): two pages more than the tail, so that one chunk fills it.
    size_t want = ((room.size() + kPage - 1) & ~(kPage - 1)) + 2 * kPage;
    rec_.resize(kHeader + (tail ? std::clamp(want, kMinChunk, kChunk) : kChunk));
    rec = rec_;
  }
  std::span<uint8_t> body = rec.subspan(kHeader);
  auto c = TRY(pf_->call([&](mlx5::VfioAuxDevice& a) { return a.save_chunk(start, incremental, tracked_, body); }));
  // The firmware checksums the chunk as it writes it (no pass over it here).
  RecordHeader h{c.bytes, start ? kRecordFirst : 0u, static_cast<uint32_t>(RecordTag::kFwData), c.crc, 0};
  std::memcpy(rec.data(), &h, sizeof(h));
  image_left_ = c.remaining;
  image_open_ = c.remaining != 0;
  rec_off_ = 0;
  if (in_place) {
    rec_len_ = 0;
    return kHeader + c.bytes;
  }
  rec_len_ = kHeader + c.bytes;
  return 0;
}

Result<std::optional<size_t>> SaveFile::next_record_locked(std::span<uint8_t> room, bool tail) {
  if (image_open_) {  // the image in flight goes on
    size_t n = TRY(frame_chunk_locked(false, false, room, tail));
    if (!image_open_) image_initial_ = false;
    return n;
  }
  if (!took_full_) {
    took_full_ = true;
    image_initial_ = true;
    size_t n = TRY(frame_chunk_locked(true, false, room, tail));
    if (!image_open_) image_initial_ = false;
    return n;
  }
  if (final_wanted_ && !final_started_) {
    final_started_ = true;  // suspended now: this image is exact
    return TRY(frame_chunk_locked(true, true, room, tail));
  }
  if (final_started_) {
    if (end_queued_) return std::nullopt;  // the end of the stream
    end_queued_ = true;
    rec_.clear();
    put_record(rec_, RecordTag::kEnd, {});
    rec_len_ = rec_.size();
    rec_off_ = 0;
    return size_t{0};
  }
  // Pre-copy: a new incremental image if the VF has more than its registers
  // to say since the last one.
  uint64_t pending = TRY(pf_->call([](mlx5::VfioAuxDevice& a) { return a.query_state_size(true); }));
  if (pending <= 4096) return std::nullopt;
  return TRY(frame_chunk_locked(true, true, room, tail));
}

Result<size_t> SaveFile::read(std::span<uint8_t> out) {
  std::lock_guard lk(mu_);
  if (dead_) return Error(ENODEV, "session ended");
  size_t n = 0;
  while (n < out.size()) {
    if (rec_off_ == rec_len_) {
      bool tail = n > 0 && out.size() >= sizeof(RecordHeader) + kInPlace;
      auto placed = TRY(next_record_locked(out.subspan(n), tail));
      if (!placed) break;
      n += *placed;  // written into `out` already; else the record is in rec_
      continue;
    }
    size_t take = std::min(out.size() - n, rec_len_ - rec_off_);
    std::memcpy(out.data() + n, rec_.data() + rec_off_, take);
    n += take;
    rec_off_ += take;
  }
  if (n == 0 && precopy_ && !end_queued_) return Error(ENOMSG, "no data for now");
  return n;  // 0: the end of the stream
}

Result<vfio_precopy_info> SaveFile::precopy_info() {
  std::lock_guard lk(mu_);
  if (dead_ || !precopy_) return Error(EINVAL, "not in PRE_COPY");
  vfio_precopy_info i{};
  i.argsz = sizeof(i);
  uint64_t buffered = rec_len_ - rec_off_;
  if (!took_full_) {
    i.initial_bytes = buffered + TRY(pf_->call([](mlx5::VfioAuxDevice& a) { return a.query_state_size(false); }));
  } else if (image_initial_) {
    i.initial_bytes = buffered + image_left_;
  } else {
    uint64_t ahead = image_open_ ? image_left_ : 0;
    if (!image_open_) {
      uint64_t pending = TRY(pf_->call([](mlx5::VfioAuxDevice& a) { return a.query_state_size(true); }));
      if (pending > 4096) ahead = pending;
    }
    i.dirty_bytes = buffered + ahead;
  }
  return i;
}

// ---- Resuming ---------------------------------------------------------------------

ResumeFile::ResumeFile(std::shared_ptr<PfLink> pf, uint16_t vf_device, uint64_t device_memory)
    : pf_(std::move(pf)), vf_device_(vf_device), device_memory_(device_memory) {}

Result<void> ResumeFile::consume_record() {
  std::span<const uint8_t> payload(payload_.data(), payload_.size());
  if (crc32c(0, payload.data(), payload.size()) != hdr_.crc) return Error(EINVAL, "record checksum mismatch");
  if (ended_) return Error(EINVAL, "data after END");
  auto tag = static_cast<RecordTag>(hdr_.tag);
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
    case RecordTag::kFwData: {
      bool first = hdr_.flags & kRecordFirst;
      if (!first && !image_open_) return Error(EINVAL, "image chunk without its start");
      bool done = TRY(pf_->call([&](mlx5::VfioAuxDevice& a) { return a.load_chunk(payload, first); }));
      image_open_ = !done;
      break;
    }
    case RecordTag::kStopCopySize:
      break;  // a hint: nothing to pre-allocate here
    case RecordTag::kEnd:
      if (image_open_) return Error(EINVAL, "END inside an image");
      ended_ = true;
      break;
    default:
      if (!(hdr_.flags & kRecordOptional)) return Error(EOPNOTSUPP, "unknown mandatory record");
  }
  return ok();
}

Result<size_t> ResumeFile::write(std::span<const uint8_t> in) {
  std::lock_guard lk(mu_);
  if (dead_) return Error(ENODEV, "session ended");
  if (error_) return Error(error_, "stream already failed");
  size_t taken = 0;
  auto fail = [&](Error e) -> Result<size_t> {
    error_ = e.code;  // errors poison the stream
    payload_.clear();
    payload_.shrink_to_fit();
    return e;
  };
  while (taken < in.size()) {
    if (hdr_got_ < sizeof(hdr_)) {
      size_t n = std::min(sizeof(hdr_) - hdr_got_, in.size() - taken);
      std::memcpy(reinterpret_cast<uint8_t*>(&hdr_) + hdr_got_, in.data() + taken, n);
      hdr_got_ += n;
      taken += n;
      if (hdr_got_ < sizeof(hdr_)) break;
      // The size is checked before anything is allocated for it.
      uint64_t limit = hdr_.tag == static_cast<uint32_t>(RecordTag::kFwData) ? max_record_payload() : kSmallRecord;
      if (hdr_.size > limit) return fail(Error(EINVAL, "record larger than the device's chunks"));
      payload_.clear();
      payload_.reserve(hdr_.size);
    }
    size_t n = std::min<size_t>(hdr_.size - payload_.size(), in.size() - taken);
    payload_.insert(payload_.end(), in.begin() + static_cast<long>(taken), in.begin() + static_cast<long>(taken + n));
    taken += n;
    if (payload_.size() == hdr_.size) {
      if (auto r = consume_record(); !r) return fail(r.error());
      hdr_got_ = 0;
      payload_.clear();
    }
  }
  return in.size();
}

Result<void> ResumeFile::complete() {
  std::lock_guard lk(mu_);
  if (error_) return Error(error_, "stream failed");
  if (!ended_ || hdr_got_ != 0) return Error(EINVAL, "stream incomplete");
  return ok();
}

void ResumeFile::end_session() {
  std::lock_guard lk(mu_);
  dead_ = true;
  payload_.clear();
  payload_.shrink_to_fit();
}

}  // namespace uvfio::drivers::mlx5_vfio_pci
