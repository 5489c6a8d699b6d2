// The emulated mlx5 functions (a model of a ConnectX-like NIC, not the real
// ConnectX interface): the PF (15b3:101d) with SR-IOV, and its VF (15b3:101e).
//
// This layer defines identity, capabilities and BARs. The PF's command
// interface and the VF's work queue and device memory behaviour are built on
// top of these (docs/devices/mlx5-pf.md, mlx5-vf.md).
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "base/result.h"
#include "hw/function.h"
#include "hw/regs.h"
#include "hw/sriov.h"

namespace uvfio::hw::mlx5 {

inline constexpr uint16_t kVendorMellanox = 0x15b3;
inline constexpr uint16_t kDevicePf = 0x101d;
inline constexpr uint16_t kDeviceVf = 0x101e;
inline constexpr uint32_t kClassEthernet = 0x020000;

inline constexpr uint64_t kPfBar0Size = 1 << 20;
inline constexpr uint64_t kVfBar0Size = 64 << 10;
inline constexpr uint32_t kMsixTableOffset = 0x2000;
inline constexpr uint32_t kMsixPbaOffset = 0x3000;
inline constexpr unsigned kPfMsixVectors = 64;
inline constexpr unsigned kVfMsixVectors = 8;
inline constexpr uint64_t kDefaultDeviceMemory = 16 << 20;

struct PfParams {
  uint16_t total_vfs = 8;
  uint16_t first_vf_offset = 1;
  uint16_t vf_stride = 1;
  uint64_t vf_device_memory = kDefaultDeviceMemory;  // VF BAR2, a power of two
  uint64_t serial = 0;
};

class Vf;

// PF command interface (BAR0; docs/devices/mlx5-pf.md). The PF driver puts a
// command in a mailbox in its own memory (reached by DMA through the PF's
// IOMMU domain), writes the mailbox IOVA and rings the doorbell; the
// firmware executes it on the target VF, writes the output back into the
// mailbox, sets CMD_STATUS and raises MSI-X vector 0.
namespace pfreg {
inline constexpr uint32_t kId = 0x000, kVersion = 0x004;
inline constexpr uint32_t kCmdMailbox = 0x100, kCmdDoorbell = 0x108, kCmdStatus = 0x10c;
inline constexpr uint32_t kIdValue = 0x706c7835;  // "5xlp"
inline constexpr uint32_t kStatusBusy = 1, kStatusDone = 2;
}  // namespace pfreg

enum class FwCmd : uint16_t {
  kQueryVhcaMigrationState = 0x1,
  kSuspendVhca = 0x2,
  kResumeVhca = 0x3,
  kSaveVhcaState = 0x4,
  kLoadVhcaState = 0x5,
  kCreatePageTracker = 0x6,
  kReportPageTracker = 0x7,
  kDestroyPageTracker = 0x8,
};
// op_mod of SUSPEND/RESUME (as mlx5 maps the P2P arcs).
inline constexpr uint16_t kOpModInitiator = 0, kOpModResponder = 1;
// flags of SAVE/QUERY.
inline constexpr uint32_t kFwIncremental = 1;

struct __attribute__((packed)) FwMailbox {
  // in
  uint16_t opcode;
  uint16_t op_mod;
  uint16_t function_id;  // the VF: its index + 1
  uint16_t rsvd;
  uint32_t flags;
  uint32_t rsvd2;
  uint64_t buf_iova;  // SAVE/LOAD image, tracker ranges, report output
  uint64_t buf_len;
  uint64_t arg0, arg1;  // tracker: page size / range count; report: iova, length
  // out
  uint32_t status;  // 0 or an errno
  uint32_t rsvd3;
  uint64_t out0;  // QUERY: image size; SAVE: bytes written; REPORT: addresses written
  uint64_t out1;  // REPORT: 1 if more dirty pages remain in the range
};
static_assert(sizeof(FwMailbox) == 72);

class Pf : public Function, private RegisterHandler {
 public:
  static Result<std::unique_ptr<Pf>> create(const PfParams& p);
  ~Pf() override;
  SriovCapability& sriov() { return *sriov_; }
  const PfParams& params() const { return params_; }
  // Sees every firmware command as it starts (tests: the command sequence
  // of each migration arc). Called with the firmware lock held.
  void set_command_log(std::function<void(const FwMailbox&)> f) {
    std::lock_guard lk(fw_mu_);
    cmd_log_ = std::move(f);
  }
  const RegisterBlock* registers(unsigned bar) const override;

 protected:
  void on_config_write(uint16_t off, unsigned width, uint32_t old_value) override;
  void before_reset() override;
  void on_reset() override;
  Result<uint64_t> bar_read(unsigned bar, uint64_t off, unsigned width) override;
  Result<void> bar_write(unsigned bar, uint64_t off, unsigned width, uint64_t value) override;

 private:
  explicit Pf(const PfParams& p) : Function("mlx5-pf"), params_(p) {}
  static const RegisterBlock& registers_block();
  uint64_t reg_read(const RegDef& r) override;
  void reg_write(const RegDef& r, uint64_t value, uint64_t mask) override;
  // The firmware: one command, synchronously.
  void execute(FwMailbox& mb);
  int run(FwMailbox& mb, Vf& vf);
  Vf* target(uint16_t function_id);

  struct Tracker {
    std::mutex mu;
    uint64_t page_size = 0;
    std::vector<std::pair<uint64_t, uint64_t>> ranges;  // iova, length
    std::set<uint64_t> dirty;                           // page-aligned IOVAs; guarded by mu
  };
  PfParams params_;
  std::unique_ptr<SriovCapability> sriov_;
  std::mutex fw_mu_;  // one command at a time
  uint64_t mailbox_ = 0;
  uint32_t cmd_status_ = 0;
  std::atomic<bool> doorbell_rung_{false};  // raise the completion interrupt after the write
  std::map<uint16_t, std::shared_ptr<Tracker>> trackers_;  // by function id; guarded by fw_mu_
  std::function<void(const FwMailbox&)> cmd_log_;          // guarded by fw_mu_
};

// VF register map (BAR0; docs/devices/mlx5-vf.md). The work queue: the
// guest writes 32-byte descriptors into a ring at SQ_BASE and rings SQ_TAIL;
// the device executes them on its own thread through the VF's IOMMU domain,
// writes a 16-byte completion per descriptor to the ring at CQ_BASE and
// raises MSI-X vector IRQ_VECTOR after each batch.
namespace vfreg {
inline constexpr uint32_t kId = 0x000, kVersion = 0x004, kStatus = 0x008, kScratch = 0x00c;
inline constexpr uint32_t kSqBase = 0x010, kSqSize = 0x018, kSqTail = 0x01c, kSqHead = 0x020;
inline constexpr uint32_t kCqBase = 0x028, kCqSize = 0x030, kCqTail = 0x034, kCqHead = 0x038;
inline constexpr uint32_t kCtrl = 0x03c, kIrqVector = 0x040, kIrqCtrl = 0x044;
inline constexpr uint32_t kCountDone = 0x048, kCountErr = 0x050, kBytes = 0x058;
inline constexpr uint32_t kIdValue = 0x6d6c7835;  // "5xlm"
inline constexpr uint32_t kStatusReady = 1, kStatusQueueOn = 2, kStatusError = 4, kStatusQuiesced = 8;
inline constexpr uint32_t kCtrlEnable = 1;
inline constexpr uint32_t kMaxRing = 4096;
inline constexpr uint32_t kMaxLength = 1 << 20;
}  // namespace vfreg

enum class VfOp : uint8_t { kCopy = 1, kToDevice = 2, kFromDevice = 3, kFill = 4, kCrc32c = 5 };

struct __attribute__((packed)) VfDescriptor {
  uint8_t opcode;
  uint8_t flags;
  uint16_t rsvd;
  uint32_t length;
  uint64_t src;   // guest IOVA, or device-memory offset for kFromDevice, or the fill byte
  uint64_t dst;   // guest IOVA, or device-memory offset for kToDevice
  uint64_t cookie;
};
static_assert(sizeof(VfDescriptor) == 32);

struct __attribute__((packed)) VfCompletion {
  uint64_t cookie;
  uint32_t status;  // 0 or an errno
  uint32_t result;  // CRC32C for kCrc32c
};
static_assert(sizeof(VfCompletion) == 16);

uint32_t crc32c(uint32_t crc, const uint8_t* p, size_t n);

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

  // The VF's migratable state, as the PF's firmware saves and loads it
  // (docs/devices/mlx5-vf.md, "State image"). A full image has the queue
  // registers and every device-memory page; an incremental one the registers
  // and the pages whose contents changed since the last image. Changes are
  // found by comparing page hashes, so writes the device never sees (a
  // client's mmap of BAR2) are caught too. Save only while quiesced for the
  // final image; pre-copy images may be taken while running.
  enum class SaveMode { kFull, kIncremental };
  // ENOSPC (and nothing consumed: the next image still has those pages)
  // when the image would exceed `max_size`.
  Result<std::vector<uint8_t>> save_state(SaveMode mode, uint64_t max_size = UINT64_MAX);
  // Bytes an image would have now (registers + changed pages).
  uint64_t pending_state_bytes(SaveMode mode);
  // Applies an image (EINVAL for a malformed or foreign one; nothing is
  // applied then). The queue restarts where it stopped if it was enabled.
  Result<void> load_state(std::span<const uint8_t> image);

  const RegisterBlock* registers(unsigned bar) const override;

 protected:
  void on_reset() override;
  Result<uint64_t> bar_read(unsigned bar, uint64_t off, unsigned width) override;
  Result<void> bar_write(unsigned bar, uint64_t off, unsigned width, uint64_t value) override;

 private:
  Vf(Pf& pf, uint16_t index) : Function("mlx5-vf"), index_(index) { set_physfn(&pf); }
  static const RegisterBlock& registers_block();
  uint64_t reg_read(const RegDef& r) override;
  void reg_write(const RegDef& r, uint64_t value, uint64_t mask) override;
  void engine();
  void start_engine();
  void stop_engine();
  bool runnable_locked() const;
  // One descriptor; returns its completion.
  VfCompletion execute(const VfDescriptor& d);

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
  std::vector<uint64_t> page_hash_;  // device memory as of the last image; empty: none yet
};

}  // namespace uvfio::hw::mlx5
