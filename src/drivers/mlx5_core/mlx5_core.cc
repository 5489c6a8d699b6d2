// SPDX-License-Identifier: BSD-3-Clause
#include "drivers/mlx5_core/mlx5_core.h"

#include <cstring>

#include "base/log.h"
#include "hw/mlx5/mlx5_ifc.h"

namespace uvfio::drivers::mlx5 {

using bus::pci::PciDevice;

VfioAuxDevice::VfioAuxDevice(CoreDev& core, PciDevice& pf, Bdf vf_bdf, uint16_t vf_index)
    : AuxiliaryDevice(kCoreModName, kVfioAuxName, vf_bdf.id(), pf),
      core_(&core),
      pf_bdf_(pf.bdf()),
      vf_bdf_(vf_bdf),
      vf_index_(vf_index) {}

Result<uint16_t> VfioAuxDevice::query_vf_function_id() const {
  if (!registered() || !core_->vf_enabled(vf_index_)) return Error(ENOTCONN, "VF no longer enabled on its PF");
  return static_cast<uint16_t>(vf_index_ + 1);  // firmware function id = VF index + 1
}

namespace {
using hw::mlx5::FwCmd;
using hw::mlx5::FwMailbox;
FwMailbox mailbox(FwCmd c, uint16_t fn, uint16_t op_mod = 0, uint32_t flags = 0) {
  FwMailbox m{};
  m.opcode = static_cast<uint16_t>(c);
  m.function_id = fn;
  m.op_mod = op_mod;
  m.flags = flags;
  return m;
}
}  // namespace

Result<uint64_t> VfioAuxDevice::query_state_size(bool incremental) {
  uint16_t fn = TRY(query_vf_function_id());
  FwMailbox out = TRY(core_->exec(mailbox(FwCmd::kQueryVhcaMigrationState, fn, 0, incremental ? hw::mlx5::kFwIncremental : 0)));
  return uint64_t{out.out0};
}

Result<void> VfioAuxDevice::suspend(uint16_t op_mod) {
  uint16_t fn = TRY(query_vf_function_id());
  TRY(core_->exec(mailbox(FwCmd::kSuspendVhca, fn, op_mod)));
  return ok();
}

Result<void> VfioAuxDevice::resume(uint16_t op_mod) {
  uint16_t fn = TRY(query_vf_function_id());
  TRY(core_->exec(mailbox(FwCmd::kResumeVhca, fn, op_mod)));
  return ok();
}

Result<VfioAuxDevice::SaveChunk> VfioAuxDevice::save_chunk(bool start, bool incremental, bool track,
                                                         std::span<uint8_t> out) {
  uint16_t fn = TRY(query_vf_function_id());
  if (out.size() > kStateChunk) out = out.first(kStateChunk);
  uint32_t flags = (incremental ? hw::mlx5::kFwIncremental : 0) | (start ? hw::mlx5::kFwStart : 0) |
                   (track ? hw::mlx5::kFwTrack : 0);
  FwMailbox in = mailbox(FwCmd::kSaveVhcaState, fn, 0, flags);
  FwMailbox r = TRY(core_->exec_into(in, out));
  if (r.out0 > out.size()) return Error(EIO, "firmware wrote past the buffer");
  return SaveChunk{static_cast<size_t>(r.out0), r.out1, r.out_crc};
}

Result<bool> VfioAuxDevice::load_chunk(std::span<const uint8_t> chunk, bool first) {
  uint16_t fn = TRY(query_vf_function_id());
  if (chunk.empty() || chunk.size() > kStateChunk) return Error(EINVAL, "state chunk size");
  FwMailbox r = TRY(core_->exec(mailbox(FwCmd::kLoadVhcaState, fn, 0, first ? hw::mlx5::kFwStart : 0), chunk));
  return r.out0 == 1;
}

Result<void> VfioAuxDevice::tracker_create(uint64_t page_size, const std::vector<std::pair<uint64_t, uint64_t>>& ranges) {
  uint16_t fn = TRY(query_vf_function_id());
  std::vector<uint8_t> raw(ranges.size() * 16);
  for (size_t i = 0; i < ranges.size(); ++i) {
    std::memcpy(raw.data() + 16 * i, &ranges[i].first, 8);
    std::memcpy(raw.data() + 16 * i + 8, &ranges[i].second, 8);
  }
  FwMailbox m = mailbox(FwCmd::kCreatePageTracker, fn);
  m.arg0 = page_size;
  m.arg1 = ranges.size();
  TRY(core_->exec(m, raw));
  return ok();
}

Result<std::vector<uint64_t>> VfioAuxDevice::tracker_report(uint64_t iova, uint64_t length) {
  uint16_t fn = TRY(query_vf_function_id());
  std::vector<uint64_t> all;
  for (;;) {
    FwMailbox m = mailbox(FwCmd::kReportPageTracker, fn);
    m.arg0 = iova;
    m.arg1 = length;
    std::vector<uint8_t> raw(64 << 10);
    m.buf_len = raw.size();
    FwMailbox out = TRY(core_->exec(m, {}, raw));
    for (uint64_t i = 0; i < out.out0 && (i + 1) * 8 <= raw.size(); ++i) {
      uint64_t a;
      std::memcpy(&a, raw.data() + 8 * i, 8);
      all.push_back(a);
    }
    if (!out.out1) return all;
  }
}

Result<void> VfioAuxDevice::tracker_destroy() {
  uint16_t fn = TRY(query_vf_function_id());
  TRY(core_->exec(mailbox(FwCmd::kDestroyPageTracker, fn)));
  return ok();
}

Result<void> VfioAuxDevice::add_attributes(driver::Tree& t, driver::Dir* dir) {
  Bdf b = vf_bdf_;
  return t.add_file(dir, driver::Attribute{"vf_bdf", 0444,
                                           [b]() -> Result<std::string> { return b.str() + "\n"; }, nullptr});
}

CoreDev::CoreDev(PciDevice& pf, bus::auxiliary::AuxiliaryBus& aux) : pf_(pf), aux_(aux) {}

Result<std::unique_ptr<CoreDev>> CoreDev::create(PciDevice& pf, bus::auxiliary::AuxiliaryBus& aux) {
  std::unique_ptr<CoreDev> c(new CoreDev(pf, aux));
  TRY(c->init());
  return c;
}

// The command queue: DMA memory allocated and touched once (no first-touch
// faults on the command path), CMDQ_BASE, and one MSI-X vector per slot
// (message data = the slot), as a driver's request_irq for its command EQ.
Result<void> CoreDev::init() {
  using namespace hw::mlx5;
  slot_mem_.assign(kCmdSlots * kSlotBuffer, 0);
  TRY(dma_.map_host(kQueueIova, queue_mem_.size(), queue_mem_.data(), hw::kDmaRead | hw::kDmaWrite));
  TRY(dma_.map_host(kSlotIova, slot_mem_.size(), slot_mem_.data(), hw::kDmaRead | hw::kDmaWrite));
  pf_.attach_iommu(&dma_);
  uint16_t msix = pf_.find_capability(PCI_CAP_ID_MSIX);
  if (!msix) return Error(ENODEV, "PF without MSI-X");
  uint32_t table = pf_.config_read(msix + PCI_MSIX_TABLE, 4);
  unsigned bir = table & PCI_MSIX_TABLE_BIR;
  uint64_t toff = table & PCI_MSIX_TABLE_OFFSET;
  for (unsigned i = 0; i < kCmdSlots; ++i) {
    uint64_t e = toff + uint64_t{i} * PCI_MSIX_ENTRY_SIZE;
    TRY(pf_.bar_write(bir, e + PCI_MSIX_ENTRY_LOWER_ADDR, 4, 0xfee00000));
    TRY(pf_.bar_write(bir, e + PCI_MSIX_ENTRY_UPPER_ADDR, 4, 0));
    TRY(pf_.bar_write(bir, e + PCI_MSIX_ENTRY_DATA, 4, i));
    TRY(pf_.bar_write(bir, e + PCI_MSIX_ENTRY_VECTOR_CTRL, 4, 0));  // unmasked
  }
  pf_.set_irq_sink(this);
  uint16_t ctl = static_cast<uint16_t>(pf_.config_read(msix + PCI_MSIX_FLAGS, 2));
  pf_.config_write(msix + PCI_MSIX_FLAGS, 2, (ctl | PCI_MSIX_FLAGS_ENABLE) & ~PCI_MSIX_FLAGS_MASKALL);
  irq_ready_ = true;
  TRY(pf_.bar_write(0, pfreg::kCmdqBase, 8, kQueueIova));
  if (pf_.bar_read(0, pfreg::kCmdqSlots, 4).value_or(0) < kCmdSlots) return Error(ENODEV, "PF firmware has fewer command slots");
  return ok();
}

void CoreDev::msi(uint64_t, uint32_t data) {
  if (data >= hw::mlx5::kCmdSlots) return;
  std::lock_guard lk(done_mu_);
  done_ |= 1u << data;
  done_cv_.notify_all();
}

unsigned CoreDev::acquire_slot() {
  std::unique_lock lk(slot_mu_);
  const uint32_t all = (1u << hw::mlx5::kCmdSlots) - 1;
  slot_cv_.wait(lk, [&] { return (busy_ & all) != all; });
  unsigned s = static_cast<unsigned>(__builtin_ctz(~busy_ & all));
  busy_ |= 1u << s;
  return s;
}

void CoreDev::release_slot(unsigned slot) {
  std::lock_guard lk(slot_mu_);
  busy_ &= ~(1u << slot);
  slot_cv_.notify_one();
}

// Posts `in` in `slot` (taken by the caller), waits for its completion.
// The slot stays taken on a timeout (the firmware may still write it).
Result<FwMailbox> CoreDev::run(unsigned slot, FwMailbox in) {
  using namespace hw::mlx5;
  CmdEntry e{};
  e.mb = in;
  e.owner = kOwnerFirmware;
  {
    std::lock_guard lk(done_mu_);
    done_ &= ~(1u << slot);
  }
  std::memcpy(queue_mem_.data() + slot * kCmdEntrySize, &e, sizeof(e));
  if (auto r = pf_.bar_write(0, pfreg::kCmdqDoorbell, 4, 1u << slot); !r) {
    release_slot(slot);
    return r.error();
  }
  {
    std::unique_lock lk(done_mu_);
    if (!done_cv_.wait_for(lk, kCommandTimeout, [&] { return done_ & (1u << slot); })) {
      log::error(pf_.name(), "mlx5_core: firmware command {} timed out in slot {}", unsigned{in.opcode}, slot);
      return Error(ETIMEDOUT, "firmware did not complete the command");
    }
  }
  std::memcpy(&e, queue_mem_.data() + slot * kCmdEntrySize, sizeof(e));
  if (e.owner != kOwnerDriver) return Error(EIO, "firmware did not complete the command");
  return e.mb;
}

Result<FwMailbox> CoreDev::exec(FwMailbox in, std::span<const uint8_t> data, std::span<uint8_t> out) {
  using namespace hw::mlx5;
  uint64_t len = std::max<uint64_t>(data.size(), out.size());
  if (len > kSlotBuffer) return Error(EINVAL, "command data larger than a slot buffer");
  unsigned slot = acquire_slot();
  uint8_t* buf = slot_mem_.data() + slot * kSlotBuffer;
  if (!data.empty()) std::memcpy(buf, data.data(), data.size());
  if (len) {
    in.buf_iova = kSlotIova + uint64_t{slot} * kSlotBuffer;
    if (!in.buf_len) in.buf_len = len;
  }
  auto r = run(slot, in);
  if (!r) {
    if (r.error().code != ETIMEDOUT) return r.error();  // (run released the slot on a failed doorbell)
    return Error(EIO, "firmware did not complete the command");
  }
  FwMailbox mb = *r;
  if (!out.empty()) {
    // Only what the firmware says it wrote.
    uint64_t valid = out.size();
    if (in.opcode == static_cast<uint16_t>(FwCmd::kSaveVhcaState)) valid = mb.out0;
    if (in.opcode == static_cast<uint16_t>(FwCmd::kReportPageTracker)) valid = mb.out0 * 8;
    std::memcpy(out.data(), buf, std::min<uint64_t>(valid, out.size()));
  }
  release_slot(slot);
  if (mb.status) return Error(static_cast<int>(mb.status), "firmware command failed");
  return mb;
}

Result<FwMailbox> CoreDev::exec_into(FwMailbox in, std::span<uint8_t> out) {
  if (out.empty() || out.size() > kSlotBuffer) return Error(EINVAL, "command output size");
  unsigned slot = acquire_slot();
  uint64_t iova = kDirectIova + uint64_t{slot} * kSlotBuffer;
  if (auto m = dma_.map_host(iova, out.size(), out.data(), hw::kDmaWrite); !m) {
    release_slot(slot);
    return m.error();
  }
  in.buf_iova = iova;
  in.buf_len = out.size();
  auto r = run(slot, in);
  // Unmapping waits for a DMA in progress; any later one fails.
  (void)dma_.unmap(iova, out.size());
  if (!r) {
    if (r.error().code != ETIMEDOUT) return r.error();
    return Error(EIO, "firmware did not complete the command");
  }
  release_slot(slot);
  if (r->status) return Error(static_cast<int>(r->status), "firmware command failed");
  return *r;
}

CoreDev::~CoreDev() {
  // remove(): auxiliary devices go before SR-IOV, so no VF driver can reach
  // a PF that is tearing down.
  delete_aux_devices();
  if (pf_.sriov_num_vfs()) pf_.pci_bus().disable_sriov(pf_);
  if (irq_ready_) {
    if (uint16_t msix = pf_.find_capability(PCI_CAP_ID_MSIX)) {
      uint16_t ctl = static_cast<uint16_t>(pf_.config_read(msix + PCI_MSIX_FLAGS, 2));
      pf_.config_write(msix + PCI_MSIX_FLAGS, 2, ctl & ~PCI_MSIX_FLAGS_ENABLE);
    }
  }
  pf_.set_irq_sink(nullptr);
  pf_.disable_device();
  pf_.attach_iommu(nullptr);
  log::info(pf_.name(), "mlx5_core: removed");
}

void CoreDev::delete_aux_devices() {
  while (!aux_devs_.empty()) {
    aux_.device_delete(*aux_devs_.back());
    aux_devs_.pop_back();
  }
}

Result<int> CoreDev::sriov_configure(int num_vfs) {
  if (num_vfs == 0) {
    delete_aux_devices();
    pf_.pci_bus().disable_sriov(pf_);
    return 0;
  }
  // VFs that went away under us (VF Enable cleared or the PF reset by a
  // config write) leave auxiliary devices for functions that are gone:
  // they go first, or the new ones' names would collide.
  if (!aux_devs_.empty()) {
    log::warn(pf_.name(), "mlx5_core: {} auxiliary devices outlived their VFs; removing them", aux_devs_.size());
    delete_aux_devices();
  }
  TRY(pf_.pci_bus().enable_sriov(pf_, static_cast<uint16_t>(num_vfs)));
  for (uint16_t i = 0; i < pf_.sriov_num_vfs(); ++i) {
    PciDevice* vf = pf_.virtfn(i);
    auto aux = std::make_unique<VfioAuxDevice>(*this, pf_, vf->bdf(), i);
    if (auto r = aux_.device_add(*aux); !r) {
      log::error(pf_.name(), "mlx5_core: cannot add auxiliary device for VF {}: {}", i, to_string(r.error()));
      delete_aux_devices();
      pf_.pci_bus().disable_sriov(pf_);
      return r.error();
    }
    aux_devs_.push_back(std::move(aux));
  }
  // Every VF has what mlx5_vfio_pci needs now: one it still could not take
  // fails the change (with the errno the admin should see).
  if (int e = pf_.pci_bus().vf_probe_error(pf_)) {
    delete_aux_devices();
    pf_.pci_bus().disable_sriov(pf_);
    return Error(e, "VF probe failed");
  }
  log::info(pf_.name(), "mlx5_core: {} VFs enabled", num_vfs);
  return num_vfs;
}

Mlx5CoreDriver::Mlx5CoreDriver(bus::auxiliary::AuxiliaryBus& aux)
    : PciDriver(kCoreModName, {bus::pci::PciDeviceId{hw::mlx5::kVendorMellanox, hw::mlx5::kDevicePf}}), aux_(aux) {}

Result<std::unique_ptr<driver::Binding>> Mlx5CoreDriver::probe(PciDevice& dev, const bus::pci::PciDeviceId&) {
  if (dev.is_virtfn() || !dev.sriov_cap()) return Error(ENODEV, "mlx5_core drives PFs only");
  // A PF that already has VFs was left that way by another driver: refuse,
  // as the VFs' owners would not be ours.
  if (dev.sriov_num_vfs()) return Error(EBUSY, "VFs already enabled");
  dev.enable_device();
  auto core = CoreDev::create(dev, aux_);
  if (!core) {
    dev.disable_device();
    return core.error();
  }
  log::info(dev.name(), "mlx5_core: probed, {} VFs supported", dev.sriov_total_vfs());
  return std::unique_ptr<driver::Binding>(std::move(*core));
}

Result<int> Mlx5CoreDriver::sriov_configure(PciDevice& pf, int num_vfs) {
  auto* core = pf.binding_as<CoreDev>();
  if (!core) return Error(ENODEV, "PF not bound to mlx5_core");
  return core->sriov_configure(num_vfs);
}

}  // namespace uvfio::drivers::mlx5
