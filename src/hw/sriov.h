// SPDX-License-Identifier: BSD-3-Clause
// SR-IOV extended capability (PCIe SR-IOV 1.1 §3.3) and the VFs it creates.
//
// The PF model owns one SriovCapability. Setting VF Enable in SR-IOV Control
// creates NumVFs VF functions through the model's factory and routes them on
// the fabric at RID(i) = PF RID + First VF Offset + i * VF Stride; clearing it
// removes them (the fabric's listener hears of each first). NumVFs is
// read-only while VFs are enabled. The VF BAR registers size like ordinary
// BARs and give the per-VF size; VF i's BAR k lives at VF BAR k + i * size.
#pragma once

#include <array>
#include <functional>
#include <memory>
#include <vector>

#include "base/result.h"
#include "hw/bar.h"
#include "hw/function.h"

namespace uvfio::hw {

struct SriovParams {
  uint16_t total_vfs = 8;
  uint16_t first_vf_offset = 1;
  uint16_t vf_stride = 1;
  uint16_t vf_device = 0;
  std::array<BarDesc, kNumBars> vf_bars{};
};

class SriovCapability {
 public:
  using VfFactory = std::function<Result<std::unique_ptr<Function>>(uint16_t vf_index)>;

  // Lays out the capability in `pf` and validates the parameters (EINVAL for
  // offset 0, stride 0 with more than one VF, or VF BARs that cannot decode).
  static Result<std::unique_ptr<SriovCapability>> add(Function& pf, const SriovParams& p,
                                                      VfFactory factory);
  ~SriovCapability();

  uint16_t offset() const { return off_; }
  const SriovParams& params() const { return params_; }
  uint16_t num_enabled() const { return static_cast<uint16_t>(vfs_.size()); }
  Function* vf(uint16_t i) const { return i < vfs_.size() ? vfs_[i].get() : nullptr; }

  // Routing id of VF `index` given the current offset/stride registers.
  static uint32_t vf_rid(uint16_t pf_rid, uint16_t offset, uint16_t stride, uint16_t index) {
    return uint32_t{pf_rid} + offset + uint32_t{index} * stride;
  }

  // PF hooks: config writes (VF Enable transitions) and FLR (VFs go away).
  // VFs that go away are handed back, still routable, to be released with
  // release_vfs() once the caller has dropped its own locks: releasing tells
  // the fabric's listener (the PCI bus, which removes their devices and may
  // wait for their drivers), which must never run under a model's lock.
  using Vfs = std::vector<std::unique_ptr<Function>>;
  [[nodiscard]] Vfs config_written(uint16_t off, unsigned width);
  [[nodiscard]] Vfs take_vfs();
  static void release_vfs(Vfs vfs);
  // A PF FLR the OS restores at once (Function::set_vfs_survive_flr): the
  // capability's registers as they are (save_regs) are put back after the
  // PF's config space returns to power-on values (restore_regs), and each
  // VF goes through its own FLR (reset_vfs_in_place).
  std::vector<uint32_t> save_regs() const;
  void restore_regs(const std::vector<uint32_t>& regs);
  void reset_vfs_in_place();
  void teardown() { release_vfs(take_vfs()); }

 private:
  SriovCapability(Function& pf, uint16_t off, SriovParams p, VfFactory f)
      : pf_(pf), off_(off), params_(p), factory_(std::move(f)) {}
  void enable_vfs();

  Function& pf_;  // owns this capability
  uint16_t off_;
  SriovParams params_;
  VfFactory factory_;
  std::vector<std::unique_ptr<Function>> vfs_;
  bool enabled_ = false;
};

}  // namespace uvfio::hw
