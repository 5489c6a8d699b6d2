// mlx5_vfio_pci's migration: the v2 arcs turned into PF firmware commands
// (reference/kernel-vfio.md §3.6), and the device-state stream.
//
// Stream (docs/migration-stream.md): records, little-endian, each
// `u64 size, u32 flags (bit0 optional), u32 tag, u32 crc32c(payload),
// u32 0` + payload. The first is STREAM_HEADER (magic, version, the VF's
// device id and device-memory size: a destination refuses a foreign
// stream); then an optional STOP_COPY_SIZE hint, FW_DATA images (the
// firmware's VF images, full first then incremental), and END. A resuming
// side refuses a corrupt record (checksum), an unknown mandatory tag, and —
// at RESUMING→STOP — a stream without END.
#pragma once

#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "base/result.h"
#include "vfio/migration.h"

namespace uvfio::drivers::mlx5_vfio_pci {

class PfLink;

enum class RecordTag : uint32_t { kFwData = 0, kStopCopySize = 1, kStreamHeader = 2, kEnd = 3 };
inline constexpr uint32_t kRecordOptional = 1;
inline constexpr uint32_t kStreamMagic = 0x534d5655;  // "UVMS"
inline constexpr uint16_t kStreamVersion = 1;

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

// Appends one record to `out`.
void put_record(std::vector<uint8_t>& out, RecordTag tag, std::span<const uint8_t> payload, uint32_t flags = 0);

// The saving side's stream. PRE_COPY: the header and an initial full image,
// then incremental images as the device dirties state; STOP_COPY: a final
// image and END, then end of stream.
class SaveFile : public vfio::MigrationFile {
 public:
  SaveFile(std::shared_ptr<PfLink> pf, uint16_t vf_device, uint64_t device_memory);
  // Starts the session: header, size hint, full image.
  Result<void> start(bool precopy);
  // Leaves pre-copy: the final image (incremental if one was taken) + END.
  Result<void> finish();
  void end_session();  // the fd is dead: reads fail with ENODEV

  Result<size_t> read(std::span<uint8_t> out) override;
  Result<vfio_precopy_info> precopy_info() override;

 private:
  Result<void> enqueue_image(bool incremental);
  std::shared_ptr<PfLink> pf_;
  uint16_t vf_device_;
  uint64_t device_memory_;
  std::mutex mu_;
  // Records waiting to be read, as whole buffers (no per-byte queue).
  void push(std::vector<uint8_t> chunk);
  std::deque<std::vector<uint8_t>> queue_;  // guarded by mu_
  size_t front_off_ = 0;                    // bytes of queue_.front() already read
  uint64_t queued_ = 0;                     // bytes not read yet
  uint64_t initial_left_ = 0;   // bytes of the initial image not read yet
  bool precopy_ = false, final_ = false, dead_ = false, took_full_ = false;
};

// The resuming side: reassembles records from any segmentation and loads
// each FW_DATA image into the VF through the PF.
class ResumeFile : public vfio::MigrationFile {
 public:
  ResumeFile(std::shared_ptr<PfLink> pf, uint16_t vf_device, uint64_t device_memory);
  Result<size_t> write(std::span<const uint8_t> in) override;
  // RESUMING→STOP: the stream must have ended cleanly.
  Result<void> complete();
  void end_session();

 private:
  Result<void> consume();
  std::shared_ptr<PfLink> pf_;
  uint16_t vf_device_;
  uint64_t device_memory_;
  std::mutex mu_;
  std::vector<uint8_t> pending_;  // guarded by mu_
  bool header_seen_ = false, ended_ = false, dead_ = false;
  int error_ = 0;  // a failed stream stays failed
};

}  // namespace uvfio::drivers::mlx5_vfio_pci
