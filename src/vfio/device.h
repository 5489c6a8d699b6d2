// SPDX-License-Identifier: BSD-3-Clause
// vfio::Device: the VFIO device contract of <linux/vfio.h> as C++ calls —
// what the kernel's vfio_main.c does for every driver (open counting,
// argument validation, VFIO_DEVICE_FEATURE dispatch, the migration v2 state
// loop, DMA-logging checks) around the per-driver operations below.
//
// A frontend (the vfio-user server, tests) calls the public methods; a
// driver (vfio-pci-core and its variants) implements the protected ops.
//
// Concurrency: one user at a time (open() is exclusive). Calls from that
// user may come from any thread; each public method serializes against the
// others of its kind (dev_mu_: lifecycle, igate_: IRQs, mig_mu_: migration).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/result.h"
#include "base/stats.h"
#include "base/unique_fd.h"
#include "hw/iommu.h"
#include "vfio/migration.h"
#include "vfio/uapi.h"

namespace uvfio::vfio {

using Uuid = std::array<uint8_t, 16>;
// "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (either case), as the kernel's
// uuid_parse() takes the vf_token= of a group path. EINVAL otherwise.
Result<Uuid> parse_uuid(std::string_view s);
std::string uuid_string(const Uuid& u);

struct OpenArgs {
  std::optional<Uuid> vf_token;  // "vf_token=<uuid>" of the group path
};

// GET_REGION_INFO: the fixed struct and its capability chain. `caps` is laid
// out as it follows the struct: each header's `next` counts from the start of
// the struct (encode_region_info() applies the argsz rule).
struct RegionInfo {
  vfio_region_info info{};
  std::vector<uint8_t> caps;
};

// Appends a capability to a chain being built after a struct of `base` bytes.
void append_cap(std::vector<uint8_t>& caps, size_t base, uint16_t id, uint16_t version,
                std::span<const uint8_t> body);

// The reply for a caller that offered `argsz` bytes: everything if it fits;
// otherwise the fixed struct with FLAG_CAPS, cap_offset 0 and the argsz that
// would fit (the caller retries).
std::vector<uint8_t> encode_region_info(const RegionInfo& r, uint32_t argsz);

// Where a client can mmap a region: the fd to map and the offset of the
// region in it. The fd stays owned by the device.
struct MmapArea {
  int fd = -1;
  uint64_t fd_offset = 0;
  uint64_t size = 0;
};

// SET_IRQS with its data: bools for DATA_BOOL, eventfds for DATA_EVENTFD
// (an invalid UniqueFd stands for -1). The device takes the fds it keeps.
struct IrqSet {
  uint32_t flags = 0;
  uint32_t index = 0;
  uint32_t start = 0;
  uint32_t count = 0;
  std::vector<uint8_t> bools;
  std::vector<UniqueFd> fds;
};

// VFIO_DEVICE_FEATURE: `data` is what GET returns; a SET of MIG_DEVICE_STATE
// whose last arc opened a session returns the stream in `file`.
struct FeatureReply {
  std::vector<uint8_t> data;
  std::shared_ptr<MigrationFile> file;
};

struct DmaRange {
  uint64_t iova;
  uint64_t length;
};

class Device {
 public:
  explicit Device(std::string name);
  virtual ~Device();
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  const std::string& name() const { return name_; }

  // ---- Lifecycle (vfio_main.c) -----------------------------------------
  // Exclusive: EBUSY while open (like a group file, one user at a time).
  // Checks `args` with match() first, then runs open_device()
  // (vfio-pci-core: enable).
  Result<void> open(const OpenArgs& args = {});
  // May a user presenting `args` have this device (the driver's match op:
  // vfio-pci-core checks the VF token)? The vfio-user server asks this for
  // every client of a device it keeps open across clients.
  Result<void> match(const OpenArgs& args);
  // The last close runs close_device() (disable) and releases DMA maps.
  void close();
  bool is_open() const;
  // A vfio-user client went away: drop what it set up (DMA maps, interrupt
  // eventfds) but keep the device open and its state for the next client.
  void release_user_resources();
  // Unregistration waits for the user to close, asking with request(n) every
  // `interval` (the REQ protocol of reference §5.2).
  void wait_released(std::chrono::milliseconds interval);

  // ---- The device fd's ioctls (EBADF unless open) ------------------------
  Result<vfio_device_info> get_info();
  Result<RegionInfo> get_region_info(uint32_t index);
  Result<size_t> region_read(uint32_t index, uint64_t offset, std::span<uint8_t> out);
  Result<size_t> region_write(uint32_t index, uint64_t offset, std::span<const uint8_t> in);
  Result<MmapArea> region_mmap(uint32_t index);
  Result<vfio_irq_info> get_irq_info(uint32_t index);
  Result<void> set_irqs(IrqSet req);
  Result<void> reset();
  Result<FeatureReply> device_feature(uint32_t flags, std::span<const uint8_t> payload);

  // The I/O address space the device's DMA uses; the user's DMA maps go here.
  hw::IommuDomain& iommu() { return iommu_; }

  // What the device did, for the attribute tree (vfio-dev/vfioN/stats/).
  struct Stats {
    Counter region_bytes_read, region_bytes_written;
    Counter interrupts;       // eventfd signals for device interrupts
    Counter interrupts_dropped;  // signals the client's eventfd could not take (counter full)
    Counter migration_bytes;  // device state read or written (the frontend counts)
    Counter last_stop_ns;     // how long the device was last out of RUNNING/PRE_COPY
  };
  Stats& stats() { return stats_; }

  // Migration state as last reached (for tests and the frontend's GET).
  MigState mig_state() const;

 protected:
  // ---- Driver operations (vfio_device_ops) ------------------------------
  // The match op; by default a device takes no arguments (a VF token is
  // refused with EINVAL).
  virtual Result<void> match_device(const OpenArgs& args);
  virtual Result<void> open_device(const OpenArgs& args) = 0;
  virtual void close_device() = 0;
  virtual Result<vfio_device_info> info() = 0;
  virtual Result<RegionInfo> region_info(uint32_t index) = 0;
  virtual Result<size_t> read(uint32_t index, uint64_t offset, std::span<uint8_t> out) = 0;
  virtual Result<size_t> write(uint32_t index, uint64_t offset, std::span<const uint8_t> in) = 0;
  virtual Result<MmapArea> mmap(uint32_t index) = 0;
  virtual Result<vfio_irq_info> irq_info(uint32_t index) = 0;
  // Called with a request that passed the common checks.
  virtual Result<void> irqs(IrqSet& req) = 0;
  virtual Result<void> do_reset() = 0;
  // Features other than the migration and logging ones. ENOTTY if unknown.
  virtual Result<FeatureReply> feature(uint32_t flags, std::span<const uint8_t> payload);
  // Tear down every interrupt the user set up (release_user_resources()).
  virtual void release_irqs() {}
  // The unbind path asks the user to release the device (REQ irq).
  virtual void request(unsigned count) { (void)count; }

  // ---- Migration ops (mig_ops); a driver without them has migration_flags() 0.
  virtual uint64_t migration_flags() const { return 0; }
  // Performs exactly one arc of the graph; returns the session's stream when
  // the arc opens one (RUNNING→PRE_COPY, RUNNING_P2P→PRE_COPY_P2P,
  // STOP→STOP_COPY, STOP→RESUMING), else nullptr.
  virtual Result<std::shared_ptr<MigrationFile>> migration_arc(MigState from, MigState to);
  virtual Result<uint64_t> migration_data_size() { return Error(ENOTTY); }
  // A reset puts migration back to RUNNING (the driver's reset_done).
  void mig_reset_to_running();
  // The device can no longer be migrated from where it was (its PF went away
  // mid-migration): ERROR, which only a reset leaves.
  void mig_set_error();

  // ---- DMA logging ops (log_ops); has_dma_logging() false without them.
  virtual bool has_dma_logging() const { return false; }
  virtual Result<void> log_start(uint64_t& page_size, const std::vector<DmaRange>& ranges);
  virtual Result<void> log_stop();
  // Sets the bits of dirty pages in `bitmap` (bit n = iova + n * page_size)
  // and clears the device's log for the range.
  virtual Result<void> log_read_and_clear(uint64_t iova, uint64_t length, uint64_t page_size,
                                          std::vector<uint64_t>& bitmap);

 private:
  Result<FeatureReply> mig_feature(uint32_t flags, std::span<const uint8_t> payload);
  Result<FeatureReply> logging_feature(uint32_t id, uint32_t flags, std::span<const uint8_t> payload);
  Result<void> check_open() const;

  std::string name_;
  hw::IommuDomain iommu_;
  mutable std::mutex dev_mu_;
  std::condition_variable released_;
  // Changed under dev_mu_; read without it by the per-request open check
  // (the lock would order nothing more: a close may follow the check either way).
  std::atomic<bool> open_{false};
  std::mutex igate_;         // serializes set_irqs (the kernel's igate)
  mutable std::mutex mig_mu_;  // the driver's state mutex
  MigState mig_state_ = MigState::kRunning;  // guarded by mig_mu_
  std::chrono::steady_clock::time_point stopped_at_{};  // guarded by mig_mu_
  Stats stats_;
};

// The feature checks every driver shares (vfio_check_feature()): returns 1
// to execute, 0 for a successful PROBE, or an error. `supported` is the
// GET/SET bits the feature accepts, `minsz` its smallest payload.
Result<int> check_feature(uint32_t flags, std::span<const uint8_t> payload, uint32_t supported, size_t minsz);

}  // namespace uvfio::vfio
