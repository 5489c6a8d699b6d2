// SPDX-License-Identifier: BSD-3-Clause
// mlx5_vfio_pci's migration: the v2 arcs turned into PF firmware commands
// (reference/kernel-vfio.md §3.6), and the device-state stream.
//
// Stream (docs/migration-stream.md), version 2: records, little-endian, each
// `u64 size, u32 flags, u32 tag, u32 crc32c(payload), u32 0` + payload. The
// first is STREAM_HEADER (magic, version, the VF's device id and
// device-memory size: a destination refuses a foreign stream); then an
// optional STOP_COPY_SIZE hint, the firmware's VF images as FW_DATA records
// of at most one chunk each (FIRST marks an image's first chunk), and END.
//
// Both sides are bounded whatever the device-memory size: the saving side
// holds one record (a firmware chunk, read from the device as the stream is
// read); the resuming side one record, whose size is checked against the
// largest a chunk can be before anything is allocated.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "base/result.h"
#include "vfio/migration.h"

namespace uvfio::drivers::mlx5_vfio_pci {

class PfLink;

enum class RecordTag : uint32_t { kFwData = 0, kStopCopySize = 1, kStreamHeader = 2, kEnd = 3 };
inline constexpr uint32_t kRecordOptional = 1;  // a reader that does not know the tag skips it
inline constexpr uint32_t kRecordFirst = 2;     // FW_DATA: the first chunk of an image
inline constexpr uint32_t kStreamMagic = 0x534d5655;  // "UVMS"
inline constexpr uint16_t kStreamVersion = 2;

struct __attribute__((packed)) RecordHeader {
  uint64_t size;
  uint32_t flags;
  uint32_t tag;
  uint32_t crc;
  uint32_t rsvd;
};

struct __attribute__((packed)) StreamHeader {
  uint32_t magic;
  uint16_t version;
  uint16_t vf_device;
  uint64_t device_memory;
};

// The largest payload a record may have (a firmware chunk).
uint64_t max_record_payload();

// Appends one record to `out`.
void put_record(std::vector<uint8_t>& out, RecordTag tag, std::span<const uint8_t> payload, uint32_t flags = 0);

// The saving side's stream. PRE_COPY: the header, an initial full image,
// then incremental images as the device dirties state; STOP_COPY: the image
// in flight is finished, a final image and END follow, then the end of the
// stream. Every image leaves the device chunk by chunk as it is read.
class SaveFile : public vfio::MigrationFile {
 public:
  SaveFile(std::shared_ptr<PfLink> pf, uint16_t vf_device, uint64_t device_memory);
  // Starts the session: the header and the size hint; the images follow as
  // the stream is read.
  Result<void> start(bool precopy);
  // Leaves pre-copy (the VF is suspended): after the image in flight, a
  // final one (exact now) and END.
  Result<void> finish();
  void end_session();  // the fd is dead: reads fail with ENODEV

  Result<size_t> read(std::span<uint8_t> out) override;
  Result<vfio_precopy_info> precopy_info() override;

 private:
  // The stream's next record: written into `room` (its size returned) or
  // put in rec_ (0 returned); nullopt when there is none now (pre-copy:
  // nothing new; otherwise the stream has ended). `tail`: the read has data
  // already, `room` is what is left of it.
  Result<std::optional<size_t>> next_record_locked(std::span<uint8_t> room, bool tail);
  Result<size_t> frame_chunk_locked(bool start, bool incremental, std::span<uint8_t> room, bool tail);
  std::shared_ptr<PfLink> pf_;
  uint16_t vf_device_;
  uint64_t device_memory_;
  std::mutex mu_;
  std::vector<uint8_t> rec_;  // the record being read (allocated once); guarded by mu_
  size_t rec_len_ = 0, rec_off_ = 0;
  bool image_open_ = false;      // the firmware has more chunks of the current image
  uint64_t image_left_ = 0;      // bytes of the current image not yet taken from the firmware
  bool image_initial_ = false;   // the current image is the initial (full) one
  bool took_full_ = false, precopy_ = false, final_wanted_ = false, final_started_ = false;
  bool tracked_ = false;  // the session started with pre-copy: images are tracked for incremental ones
  bool end_queued_ = false, dead_ = false;
};

// The resuming side: reassembles records from any segmentation (one record
// at a time) and loads each FW_DATA chunk into the VF through the PF.
class ResumeFile : public vfio::MigrationFile {
 public:
  ResumeFile(std::shared_ptr<PfLink> pf, uint16_t vf_device, uint64_t device_memory);
  Result<size_t> write(std::span<const uint8_t> in) override;
  // RESUMING→STOP: the stream must have ended cleanly.
  Result<void> complete();
  void end_session();

 private:
  Result<void> consume_record();
  std::shared_ptr<PfLink> pf_;
  uint16_t vf_device_;
  uint64_t device_memory_;
  std::mutex mu_;
  RecordHeader hdr_{};           // guarded by mu_
  size_t hdr_got_ = 0;           // header bytes received
  std::vector<uint8_t> payload_;  // the record's payload so far
  bool header_seen_ = false, ended_ = false, dead_ = false, image_open_ = false;
  int error_ = 0;  // a failed stream stays failed
};

}  // namespace uvfio::drivers::mlx5_vfio_pci
