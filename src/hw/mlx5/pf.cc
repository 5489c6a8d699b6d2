// The mlx5 PF model: identity and capabilities, the command queue registers,
// and the firmware running each slot's command on its own thread.
#include "hw/mlx5/pf.h"

#include <cstring>

#include "base/log.h"
#include "hw/capabilities.h"
#include "hw/iommu.h"
#include "hw/mlx5/vf.h"

namespace uvfio::hw::mlx5 {

// The largest chunk a SAVE or LOAD moves in one command.
inline constexpr uint64_t kFwMaxChunk = 16 << 20;

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
  SriovCapability::Vfs gone;
  {
    std::unique_lock vl(vfs_mu_);
    gone = sriov_->take_vfs();
  }
  SriovCapability::release_vfs(std::move(gone));
}

Pf::~Pf() {
  stop_firmware();
  // Trackers hold write observers on VF domains: drop them first.
  std::lock_guard lk(trackers_mu_);
  for (auto& [id, t] : trackers_)
    if (Vf* vf = target(id); vf && vf->iommu()) vf->iommu()->set_write_observer(nullptr);
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

// ---- Firmware ---------------------------------------------------------------------

void Pf::stop_firmware() {
  std::array<std::thread, kCmdSlots> threads;
  {
    std::lock_guard lk(fw_mu_);
    stopping_ = true;
    fw_cv_.notify_all();
    threads.swap(slots_);
  }
  for (auto& t : threads)
    if (t.joinable()) t.join();
  std::lock_guard lk(fw_mu_);
  stopping_ = false;
  pending_ = running_ = 0;
}

std::mutex& Pf::function_lock(uint16_t function_id) {
  std::lock_guard lk(fw_mu_);
  auto& m = fn_mu_[function_id];
  if (!m) m = std::make_unique<std::mutex>();
  return *m;
}

void Pf::slot_thread(unsigned slot) {
  const uint32_t bit = 1u << slot;
  for (;;) {
    uint64_t base;
    {
      std::unique_lock lk(fw_mu_);
      fw_cv_.wait(lk, [&] { return stopping_ || (pending_ & bit); });
      if (stopping_) return;
      pending_ &= ~bit;
      running_ |= bit;
      base = cmdq_base_;
    }
    IommuDomain* dom = iommu();
    CmdEntry e{};
    uint64_t at = base + uint64_t{slot} * kCmdEntrySize;
    bool fetched = dom && dom->read(at, std::span<uint8_t>(reinterpret_cast<uint8_t*>(&e), sizeof(e)));
    if (!fetched) {
      log::warn("mlx5-pf", "firmware: command slot {} unreachable at {:#x}", slot, at);
    } else if (e.owner == kOwnerFirmware) {
      execute(e.mb);
      e.owner = kOwnerDriver;
      (void)dom->write(at, std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&e), sizeof(e)));
    }
    {
      std::lock_guard lk(fw_mu_);
      running_ &= ~bit;
    }
    if (fetched) raise_irq(slot);  // this slot's completion vector
  }
}

Vf* Pf::target(uint16_t function_id) {
  if (function_id == 0 || function_id > sriov_->num_enabled()) return nullptr;
  return static_cast<Vf*>(sriov_->vf(static_cast<uint16_t>(function_id - 1)));
}

void Pf::execute(FwMailbox& mb) {
  {
    std::lock_guard lk(log_mu_);
    if (cmd_log_) cmd_log_(mb);
  }
  mb.status = 0;
  mb.out0 = mb.out1 = 0;
  std::shared_lock vl(vfs_mu_);  // the VF stays while its command runs
  Vf* vf = target(mb.function_id);
  if (!vf) {
    mb.status = ENODEV;  // no such VF (or SR-IOV off)
    return;
  }
  std::lock_guard fl(function_lock(mb.function_id));  // one command per VF at a time, in order
  mb.status = static_cast<uint32_t>(run(mb, *vf));
}

int Pf::run(FwMailbox& mb, Vf& vf) {
  IommuDomain* pf_dom = iommu();
  if (!pf_dom) return EFAULT;
  auto mode = (mb.flags & kFwIncremental) ? Vf::SaveMode::kIncremental : Vf::SaveMode::kFull;
  switch (static_cast<FwCmd>(mb.opcode)) {
    case FwCmd::kQueryVhcaMigrationState:
      mb.out0 = vf.pending_state_bytes(mode);
      return 0;
    case FwCmd::kSuspendVhca:
      if (mb.op_mod != kOpModInitiator && mb.op_mod != kOpModResponder) return EINVAL;
      vf.quiesce();
      return 0;
    case FwCmd::kResumeVhca:
      if (mb.op_mod == kOpModInitiator) vf.resume();
      else if (mb.op_mod != kOpModResponder) return EINVAL;
      return 0;
    case FwCmd::kSaveVhcaState: {
      // The next chunk of the VF's image, written where the driver said.
      if (mb.buf_len < kFwMinChunk || mb.buf_len > kFwMaxChunk) return EINVAL;
      if (mb.flags & kFwStart) {
        auto r = vf.save_begin(mode);
        if (!r) return r.error().code;
      }
      uint64_t remaining = 0;
      auto n = pf_dom->produce(mb.buf_iova, mb.buf_len, [&](std::span<uint8_t> out) -> Result<size_t> {
        Vf::Chunk c = TRY(vf.save_next(out));
        remaining = c.remaining;
        return c.bytes;
      });
      if (!n) return n.error().code;
      mb.out0 = *n;
      mb.out1 = remaining;
      return 0;
    }
    case FwCmd::kLoadVhcaState: {
      if (mb.buf_len == 0 || mb.buf_len > kFwMaxChunk) return EINVAL;
      bool done = false;
      auto r = pf_dom->consume(mb.buf_iova, mb.buf_len, [&](std::span<const uint8_t> in) -> Result<void> {
        done = TRY(vf.load_chunk(in, mb.flags & kFwStart));
        return ok();
      });
      if (!r) return r.error().code;
      mb.out0 = done ? 1 : 0;
      return 0;
    }
    case FwCmd::kCreatePageTracker: {
      uint64_t page = mb.arg0, n = mb.arg1;
      if (page < 4096 || (page & (page - 1)) || n == 0 || n > 256 || mb.buf_len < n * 16) return EINVAL;
      std::lock_guard lk(trackers_mu_);
      if (trackers_.count(mb.function_id)) return EBUSY;
      if (!vf.iommu()) return EINVAL;  // nobody has the VF open: nothing to track
      auto t = std::make_shared<Tracker>();
      t->page_size = page;
      std::vector<uint8_t> raw(n * 16);
      if (auto r = pf_dom->read(mb.buf_iova, raw); !r) return r.error().code;
      for (uint64_t i = 0; i < n; ++i) {
        uint64_t iova, len;
        std::memcpy(&iova, raw.data() + 16 * i, 8);
        std::memcpy(&len, raw.data() + 16 * i + 8, 8);
        if (!len || iova + len < iova) return EINVAL;
        t->ranges.emplace_back(iova, len);
      }
      // The VF's DMA writes, as its IOMMU sees them.
      vf.iommu()->set_write_observer([t](uint64_t iova, uint64_t len) {
        std::lock_guard lk(t->mu);
        for (auto& [base, size] : t->ranges) {
          uint64_t lo = std::max(iova, base), hi = std::min(iova + len, base + size);
          for (uint64_t p = lo & ~(t->page_size - 1); p < hi; p += t->page_size) t->dirty.insert(p);
        }
      });
      trackers_[mb.function_id] = t;
      return 0;
    }
    case FwCmd::kReportPageTracker: {
      std::shared_ptr<Tracker> tp;
      {
        std::lock_guard lk(trackers_mu_);
        auto it = trackers_.find(mb.function_id);
        if (it == trackers_.end()) return EINVAL;
        tp = it->second;
      }
      Tracker& t = *tp;
      uint64_t iova = mb.arg0, len = mb.arg1, room = mb.buf_len / 8;
      std::vector<uint64_t> out;
      {
        std::lock_guard lk(t.mu);
        auto b = t.dirty.lower_bound(iova & ~(t.page_size - 1));
        while (b != t.dirty.end() && *b < iova + len && out.size() < room) {
          out.push_back(*b);
          b = t.dirty.erase(b);  // report-and-clear
        }
        mb.out1 = (b != t.dirty.end() && *b < iova + len) ? 1 : 0;
      }
      if (!out.empty())
        if (auto r = pf_dom->write(mb.buf_iova, std::span<const uint8_t>(reinterpret_cast<uint8_t*>(out.data()),
                                                                           out.size() * 8));
            !r)
          return r.error().code;
      mb.out0 = out.size();
      return 0;
    }
    case FwCmd::kDestroyPageTracker: {
      std::lock_guard lk(trackers_mu_);
      if (!trackers_.erase(mb.function_id)) return EINVAL;
      if (vf.iommu()) vf.iommu()->set_write_observer(nullptr);
      return 0;
    }
  }
  return EOPNOTSUPP;
}

}  // namespace uvfio::hw::mlx5
