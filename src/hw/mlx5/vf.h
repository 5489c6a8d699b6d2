// SPDX-License-Identifier: BSD-3-Clause
// The emulated mlx5 VF (15b3:101e): BAR0 registers (a RegisterBlock), the
// work queue executed on the device's own thread through its IOMMU domain,
// BAR2 device memory, MSI-X; and its migratable state as the PF's firmware
// saves and loads it, in bounded chunks (docs/devices/mlx5-vf.md).
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "base/result.h"
#include "hw/function.h"
#include "hw/mlx5/mlx5_ifc.h"
#include "hw/regs.h"

namespace uvfio::hw::mlx5 {

class Pf;

// Test-only: N when UVFIO_TEST_FAULT_VF_COPY=N makes every Nth COPY of a VF
// fail with EIO (docs/devices/mlx5-vf.md), else 0.
unsigned vf_copy_fault_every();

class Vf : public Function, private RegisterHandler {
 public:
  static Result<std::unique_ptr<Vf>> create(Pf& pf, uint16_t index);
  ~Vf() override;
  uint16_t index() const { return index_; }

  // For the PF's firmware: stop taking new descriptors and wait until the
  // one in progress is done (SUSPEND); take them again (RESUME).
  void quiesce();
  void resume();
  bool quiesced() const;
  // Wait until every doorbelled descriptor is done (tests, tools).
  bool wait_idle(std::chrono::milliseconds timeout);

  // ---- State images, in chunks (the firmware's SAVE/LOAD) ------------------
  //
  // An image is the queue registers and device-memory pages: every page
  // (full) or the pages whose contents changed since the last image
  // (incremental: found by page hashes, so writes the device never sees —
  // a client's mmap of BAR2 — are caught too). It leaves the device in
  // chunks of whole records written straight into the caller's buffer, so
  // no more than a chunk is ever held, whatever the device-memory size.
  // Pre-copy images may be taken while running; the final one while
  // quiesced, which makes it exact.
  enum class SaveMode { kFull, kIncremental };
  // Bytes an image taken now would have (an incremental one: one hashing
  // pass over device memory).
  uint64_t pending_state_bytes(SaveMode mode);
  // Starts an image (abandoning one in progress: the next then is full).
  // Returns its size.
  // `track`: record what this image holds, so a later incremental image
  // sends only what changed (costs a hash per page); untracked, the next
  // image is full.
  Result<uint64_t> save_begin(SaveMode mode, bool track = true);
  struct Chunk {
    size_t bytes = 0;        // written into the buffer
    uint64_t remaining = 0;  // of the image still to come; 0: complete
    uint32_t crc = 0;        // CRC32C of the bytes written, computed as they were
  };
  // The image's next whole records, up to out.size() (at least
  // kFwMinChunk). EINVAL if no image is in progress.
  Result<Chunk> save_next(std::span<uint8_t> out);
  // Loads an image chunk by chunk, as save_next() cut it (whole records).
  // The first chunk (with `first`) is validated whole — magic, version,
  // device-memory size, registers — before anything is applied; every
  // later record before it is applied. Device memory is written as the
  // chunks come; registers and the queue only at the image's end (returns
  // true then). EINVAL for anything malformed or foreign: the load ends and
  // the queue stays stopped until the next complete image or a reset.
  Result<bool> load_chunk(std::span<const uint8_t> chunk, bool first);

  const RegisterBlock* registers(unsigned bar) const override;

 protected:
  void on_reset() override;
  Result<uint64_t> bar_read(unsigned bar, uint64_t off, unsigned width) override;
  Result<void> bar_write(unsigned bar, uint64_t off, unsigned width, uint64_t value) override;

 private:
  Vf(Pf& pf, uint16_t index);
  static const RegisterBlock& registers_block();
  uint64_t reg_read(const RegDef& r) override;
  void reg_write(const RegDef& r, uint64_t value, uint64_t mask) override;
  void engine();
  void start_engine();
  void stop_engine();
  bool runnable_locked() const;
  // Descriptors fetched with one read, their completions written together.
  static constexpr uint32_t kBatch = 64;
  // Why a descriptor cannot run (its completion's errno), 0 if it can.
  uint32_t refusal(const VfDescriptor& d);
  // UVFIO_TEST_FAULT_VF_COPY: this COPY fails (engine thread only).
  bool copy_fault();
  // One descriptor; returns its completion.
  VfCompletion execute(const VfDescriptor& d);
  // A batch through a domain with remote maps, pipelined (vf.cc); appends
  // the completions of the descriptors run (all, unless `go` turns false).
  void run_pipelined(IommuDomain& dom, std::span<const VfDescriptor> descs, std::vector<VfCompletion>& comps,
                     const std::function<bool()>& go);
  // Guest bytes read and written per wave (a COPY counts once; one descriptor may take all).
  static constexpr uint64_t kWaveBytes = 2 << 20;
  // Marks the pages an incremental image carries (a hashing pass); returns
  // how many.
  uint64_t scan_changed();

  uint16_t index_;
  mutable std::mutex mu_;  // the queue registers and engine state
  std::condition_variable cv_;
  uint64_t sq_base_ = 0, cq_base_ = 0;
  uint32_t sq_size_ = 0, sq_tail_ = 0, sq_head_ = 0;
  uint32_t cq_size_ = 0, cq_tail_ = 0, cq_head_ = 0;
  uint32_t ctrl_ = 0, irq_vector_ = 0, irq_ctrl_ = 0, status_ = vfreg::kStatusReady;
  uint64_t done_ = 0, errors_ = 0, bytes_ = 0;
  bool quiesce_ = false, busy_ = false, stop_ = false;
  std::atomic<bool> start_pending_{false};  // CTRL.ENABLE set: start the engine after the write
  std::thread thread_;

  // The hash of every device-memory page as of the last image sent, in
  // blocks of 512 pages allocated only where a page was not zeros: a large,
  // mostly untouched device costs a pointer per 2 MiB.
  class PageHashes {
   public:
    void reset(uint64_t pages);  // all zero pages, valid
    void clear() { blocks_.clear(), valid_ = false; }
    bool valid() const { return valid_; }
    uint64_t get(uint64_t page) const;
    void set(uint64_t page, uint64_t hash);

   private:
    static constexpr uint64_t kBlock = 512;
    std::vector<std::unique_ptr<uint64_t[]>> blocks_;
    bool valid_ = false;
  };

  // Image state: one save and one load at a time (the firmware serializes
  // commands per function); guarded by img_mu_.
  std::vector<uint8_t> scratch_;  // the engine's buffer (engine thread only)
  std::vector<uint8_t> wave_rbuf_, wave_wbuf_;  // a pipelined wave's data (engine thread only)
  uint64_t copies_ = 0;           // COPY descriptors run (engine thread only; fault injection)
  std::mutex img_mu_;
  PageHashes page_hash_;  // not valid: no image sent yet (the next one is full)
  struct Save {
    bool active = false, header_done = false, trailer_done = false, full = true, track = true;
    uint64_t next_page = 0, pages_left = 0, bytes_left = 0;
    std::vector<uint8_t> regs;        // the registers, snapshotted at begin
    std::vector<uint64_t> changed;    // incremental: bitmap of the pages to send
    // What the last SEEK_DATA/SEEK_HOLE said, kept across chunks (a SEEK_HOLE
    // over populated memory walks it all: once per extent, not per chunk).
    uint64_t hole_from = 1, data_start = 0, data_end = 0;
  } save_;
  struct Load {
    bool active = false;
    std::vector<uint8_t> regs;  // applied at the image's end
  } load_;
};

}  // namespace uvfio::hw::mlx5
