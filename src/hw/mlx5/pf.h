// SPDX-License-Identifier: BSD-3-Clause
// The emulated mlx5 PF (15b3:101d): SR-IOV capability (it creates its VFs),
// BAR0 with the command queue (mlx5_ifc.h), and the firmware that runs the
// commands: migration of its VFs (suspend/resume, state images in chunks),
// page trackers of their DMA writes (docs/devices/mlx5-pf.md).
//
// The firmware runs each command slot on its own thread (started at the
// slot's first command): commands for different VFs go in parallel, those
// for one VF in order, so a VF whose suspend waits on its client's DMA holds
// up only that VF. Nothing of the firmware's is locked while a command runs.
#pragma once

#include <array>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <thread>
#include <vector>

#include "base/result.h"
#include "hw/function.h"
#include "hw/mlx5/mlx5_ifc.h"
#include "hw/regs.h"
#include "hw/sriov.h"

namespace uvfio::hw::mlx5 {

class Vf;

struct PfParams {
  uint16_t total_vfs = 8;
  uint16_t first_vf_offset = 1;
  uint16_t vf_stride = 1;
  uint64_t vf_device_memory = kDefaultDeviceMemory;  // VF BAR2, a power of two
  uint64_t serial = 0;
};

class Pf : public Function, private RegisterHandler {
 public:
  static Result<std::unique_ptr<Pf>> create(const PfParams& p);
  ~Pf() override;
  SriovCapability& sriov() { return *sriov_; }
  const PfParams& params() const { return params_; }
  // Sees every firmware command as it starts (tests: the command sequence
  // of each migration arc). Called from the firmware's threads.
  void set_command_log(std::function<void(const FwMailbox&)> f) {
    std::lock_guard lk(log_mu_);
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

  // ---- Firmware -------------------------------------------------------------
  void slot_thread(unsigned slot);
  void stop_firmware();
  // Every dirty-page tracker gone, its write observer removed (FLR, teardown).
  void drop_trackers();
  // One command on its VF; the entry's output fields are filled in.
  void execute(FwMailbox& mb);
  int run(FwMailbox& mb, Vf& vf);
  Vf* target(uint16_t function_id);
  std::mutex& function_lock(uint16_t function_id);

  struct Tracker {
    std::mutex mu;
    uint64_t page_size = 0;
    std::vector<std::pair<uint64_t, uint64_t>> ranges;  // iova, length
    std::set<uint64_t> dirty;                           // page-aligned IOVAs; guarded by mu
  };
  PfParams params_;
  std::unique_ptr<SriovCapability> sriov_;

  std::mutex fw_mu_;  // registers and the slots' state; never held while a command runs
  std::condition_variable fw_cv_;
  uint64_t cmdq_base_ = 0;                        // guarded by fw_mu_
  uint32_t pending_ = 0;                          // slots rung, not yet taken; guarded by fw_mu_
  uint32_t running_ = 0;                          // slots taken, not yet done; guarded by fw_mu_
  bool stopping_ = false;                         // guarded by fw_mu_
  std::array<std::thread, kCmdSlots> slots_;      // guarded by fw_mu_
  std::map<uint16_t, std::unique_ptr<std::mutex>> fn_mu_;  // per function: its commands in order; guarded by fw_mu_
  // Held shared by a running command, exclusive while the VFs are torn
  // down (SR-IOV off, FLR), so no command ever sees a VF that is going.
  std::shared_mutex vfs_mu_;
  std::vector<uint32_t> survive_regs_;  // SR-IOV registers across an FLR the VFs survive

  std::mutex trackers_mu_;
  std::map<uint16_t, std::shared_ptr<Tracker>> trackers_;  // by function id; guarded by trackers_mu_
  std::mutex log_mu_;
  std::function<void(const FwMailbox&)> cmd_log_;  // guarded by log_mu_
};

}  // namespace uvfio::hw::mlx5
