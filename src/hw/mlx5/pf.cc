// SPDX-License-Identifier: BSD-3-Clause
// The mlx5 PF model: identity and capabilities, the command queue
// registers, SR-IOV. The firmware that runs the commands is firmware.cc.
#include "hw/mlx5/pf.h"

#include <cstring>

#include "base/log.h"
#include "hw/capabilities.h"
#include "hw/iommu.h"
#include "hw/mlx5/vf.h"

namespace uvfio::hw::mlx5 {

Result<std::unique_ptr<Pf>> Pf::create(const PfParams& p) {
  std::unique_ptr<Pf> pf(new Pf(p));
  ConfigSpace& c = pf->config();
  pf->set_ids(FunctionIds{kVendorMellanox, kDevicePf, kClassEthernet, 0, kVendorMellanox, 0x0001});
  c.set_rw(PCI_COMMAND, 2, PCI_COMMAND_MASTER | PCI_COMMAND_SERR | PCI_COMMAND_INTX_DISABLE);
  c.set_rw1c(PCI_STATUS, 2, PCI_STATUS_SIG_SYSTEM_ERROR | PCI_STATUS_DETECTED_PARITY |
                                PCI_STATUS_REC_MASTER_ABORT);
  c.set_rw(PCI_CACHE_LINE_SIZE, 1, 0xff);
  c.set_rw(PCI_INTERRUPT_LINE, 1, 0xff);
  c.raw_write(PCI_INTERRUPT_PIN, 1, 1);
  TRY(pf->define_bar(0, BarDesc{BarKind::kMem64, kPfBar0Size, true}));
  TRY(add_pm_cap(*pf));
  PcieParams pp;
  pp.flr = true;
  TRY(add_pcie_cap(*pf, pp));
  TRY(add_msix_cap(*pf, MsixParams{kPfMsixVectors, 0, kMsixTableOffset, 0, kMsixPbaOffset}));
  SriovParams sp;
  sp.total_vfs = p.total_vfs;
  sp.first_vf_offset = p.first_vf_offset;
  sp.vf_stride = p.vf_stride;
  sp.vf_device = kDeviceVf;
  sp.vf_bars[0] = BarDesc{BarKind::kMem64, kVfBar0Size, true};
  sp.vf_bars[2] = BarDesc{BarKind::kMem64, p.vf_device_memory, true, true};  // device memory
  Pf* raw = pf.get();
  pf->sriov_ = TRY(SriovCapability::add(*pf, sp, [raw](uint16_t i) -> Result<std::unique_ptr<Function>> {
    return std::unique_ptr<Function>(TRY(Vf::create(*raw, i)));
  }));
  TRY(add_ari_cap(*pf, 0));
  TRY(add_dsn_cap(*pf, p.serial));
  pf->finish_build();
  return pf;
}

void Pf::on_config_write(uint16_t off, unsigned width, uint32_t) {
  // VF Enable may create or destroy VFs: not under a running command.
  if (!overlaps(off, width, sriov_->offset(), PCI_EXT_CAP_SRIOV_SIZEOF)) return;
  SriovCapability::Vfs gone;
  {
    std::unique_lock vl(vfs_mu_);
    gone = sriov_->config_written(off, width);
  }
  // The firmware no longer finds them; their devices go now, unlocked.
  SriovCapability::release_vfs(std::move(gone));
}

void Pf::before_reset() {
  stop_firmware();
  // The firmware's state goes with it: its dirty-page trackers.
  drop_trackers();
  if (vfs_survive_flr() && sriov_->num_enabled()) {
    std::shared_lock vl(vfs_mu_);
    survive_regs_ = sriov_->save_regs();
    sriov_->reset_vfs_in_place();
    return;
  }
  SriovCapability::Vfs gone;
  {
    std::unique_lock vl(vfs_mu_);
    gone = sriov_->take_vfs();
  }
  SriovCapability::release_vfs(std::move(gone));
}

void Pf::on_reset() {
  if (survive_regs_.empty()) return;
  sriov_->restore_regs(survive_regs_);
  survive_regs_.clear();
}

Pf::~Pf() {
  stop_firmware();
  drop_trackers();
}

void Pf::drop_trackers() {
  // Trackers hold write observers on VF domains: those go with them.
  std::lock_guard lk(trackers_mu_);
  for (auto& [id, t] : trackers_)
    if (Vf* vf = target(id); vf && vf->iommu()) vf->iommu()->set_write_observer(nullptr);
  trackers_.clear();
}

// ---- Registers ------------------------------------------------------------------

const RegisterBlock& Pf::registers_block() {
  using enum RegAccess;
  static const RegisterBlock b({
      {pfreg::kId, 4, kRO, "ID"},
      {pfreg::kVersion, 4, kRO, "VERSION"},
      {pfreg::kCmdqBase, 8, kRW, "CMDQ_BASE"},
      {pfreg::kCmdqDoorbell, 4, kWO, "CMDQ_DOORBELL"},
      {pfreg::kCmdqSlots, 4, kRO, "CMDQ_SLOTS"},
  });
  return b;
}

const RegisterBlock* Pf::registers(unsigned bar) const { return bar == 0 ? &registers_block() : nullptr; }

Result<uint64_t> Pf::bar_read(unsigned bar, uint64_t off, unsigned width) {
  if (bar != 0 || !registers_block().covers(off, width)) return Function::bar_read(bar, off, width);
  return registers_block().read(off, width, *this, bar_memory(0));
}

Result<void> Pf::bar_write(unsigned bar, uint64_t off, unsigned width, uint64_t value) {
  if (bar != 0 || !registers_block().covers(off, width)) return Function::bar_write(bar, off, width, value);
  return registers_block().write(off, width, value, *this, bar_memory(0));
}

uint64_t Pf::reg_read(const RegDef& r) {
  std::lock_guard lk(fw_mu_);
  switch (r.offset) {
    case pfreg::kId: return pfreg::kIdValue;
    case pfreg::kVersion: return pfreg::kVersionValue;
    case pfreg::kCmdqBase: return cmdq_base_;
    case pfreg::kCmdqSlots: return kCmdSlots;
  }
  return 0;
}

void Pf::reg_write(const RegDef& r, uint64_t value, uint64_t mask) {
  std::lock_guard lk(fw_mu_);
  if (r.offset == pfreg::kCmdqBase) {
    cmdq_base_ = merge(cmdq_base_, value, mask);
    return;
  }
  if (r.offset != pfreg::kCmdqDoorbell || stopping_) return;
  // Each bit hands one slot's entry to the firmware; a slot still running
  // its last command ignores its bit (the driver's mistake, not ours).
  uint32_t bits = static_cast<uint32_t>(value & mask) & ((1u << kCmdSlots) - 1) & ~(pending_ | running_);
  pending_ |= bits;
  for (unsigned i = 0; i < kCmdSlots; ++i)
    if ((bits >> i & 1) && !slots_[i].joinable()) slots_[i] = std::thread([this, i] { slot_thread(i); });
  fw_cv_.notify_all();
}

}  // namespace uvfio::hw::mlx5
