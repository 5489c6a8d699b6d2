// SPDX-License-Identifier: BSD-3-Clause
// vfio-pci-core lifecycle, regions, reset, features and the VF token
// (drivers/vfio/pci/vfio_pci_core.c; reference §1.2-1.3, §1.8, §5).
#include "vfio/pci_core/core.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <random>

#include "base/log.h"

namespace uvfio::vfio::pci {

using bus::pci::PciDevice;

namespace {
Uuid random_uuid() {
  Uuid u;
  std::random_device rd;
  for (auto& b : u) b = static_cast<uint8_t>(rd());
  u[6] = (u[6] & 0x0f) | 0x40;  // version 4
  u[8] = (u[8] & 0x3f) | 0x80;  // variant 1
  return u;
}
uint64_t index_to_offset(uint32_t index) { return uint64_t{index} << 40; }  // VFIO_PCI_INDEX_TO_OFFSET
}  // namespace

CoreDevice::CoreDevice(PciDevice& pdev, const driver::Driver& drv, Registry& registry)
    : Device(pdev.name()), pdev_(pdev), drv_(drv), registry_(registry) {}

CoreDevice::~CoreDevice() { unregister_device(); }

Result<void> CoreDevice::register_device() {
  if (pdev_.is_bridge()) return Error(EINVAL, "vfio-pci-core drives type 0 functions only");
  if (pdev_.sriov_cap()) {
    if (pdev_.sriov_num_vfs()) return Error(EBUSY, "PF already has VFs enabled");
    vf_token_ = std::make_unique<VfToken>();
    vf_token_->uuid = random_uuid();
    // VFs this PF creates bind to its vfio driver, not to host drivers.
    driver::DriverCore& core = pdev_.pci_bus().core();
    std::string drv = drv_.name();
    PciDevice* pf = &pdev_;
    pf_notifier_ = core.add_notifier(pdev_.pci_bus(), [pf, &core, drv](driver::BusEvent ev, driver::Device& d) {
      auto* vf = dynamic_cast<PciDevice*>(&d);
      if (!vf || vf->physfn() != pf) return;
      if (ev == driver::BusEvent::kAddDevice && !drv.empty()) (void)core.set_driver_override(*vf, drv);
      if (ev == driver::BusEvent::kBoundDriver && vf->driver() && vf->driver()->name() != drv)
        log::warn(pf->name(), "VF {} bound to {}: not protected by the VF token", vf->name(), vf->driver()->name());
    });
  }
  if (pdev_.is_virtfn()) {
    // vfio_pci_vf_init(): the VF token applies when the PF is bound to any
    // vfio-pci-core driver (the kernel's list of vfio PFs), not only this one.
    PciDevice* pf = pdev_.physfn();
    if (pf && pf->driver()) sriov_pf_ = pf->binding_as<CoreDevice>();
    if (sriov_pf_ && !sriov_pf_->vf_token_) sriov_pf_ = nullptr;
  }
  reset_works_ = pdev_.has_flr();
  TRY(registry_.register_device(*this, pdev_));
  registered_ = true;
  return ok();
}

void CoreDevice::unregister_device() {
  if (!registered_) return;
  registered_ = false;
  if (vf_token_) {
    // vfio_pci_core_unregister_device(): SR-IOV off first; the VFs' devices
    // (which point at this PF's token) go before the PF does.
    if (pdev_.sriov_num_vfs()) pdev_.pci_bus().disable_sriov(pdev_);
    pdev_.pci_bus().core().remove_notifier(pf_notifier_);
  }
  registry_.unregister_device(*this);  // waits for the user to close
}

Result<int> CoreDevice::sriov_configure(int num_vfs) {
  if (num_vfs == 0) {
    pdev_.pci_bus().disable_sriov(pdev_);
    return 0;
  }
  TRY(pdev_.pci_bus().enable_sriov(pdev_, static_cast<uint16_t>(num_vfs)));
  if (int e = pdev_.pci_bus().vf_probe_error(pdev_)) {
    pdev_.pci_bus().disable_sriov(pdev_);
    return Error(e, "VF probe failed");
  }
  return num_vfs;
}

// ---- Open / close -------------------------------------------------------------

Result<void> CoreDevice::match_token(const OpenArgs& args) {
  const std::optional<Uuid>& uuid = args.vf_token;
  if (pdev_.is_virtfn()) {
    if (!sriov_pf_) {
      if (!uuid) return ok();
      log::info(name(), "VF token incorrectly provided, PF not bound to vfio-pci");
      return Error(EINVAL, "VF token provided for a VF whose PF is not vfio-owned");
    }
    if (!uuid) {
      log::info(name(), "VF token required to access device");
      return Error(EACCES, "VF token required");
    }
    std::lock_guard lk(sriov_pf_->vf_token_->mu);
    if (*uuid != sriov_pf_->vf_token_->uuid) {
      log::info(name(), "Incorrect VF token provided for device");
      return Error(EACCES, "incorrect VF token");
    }
    return ok();
  }
  if (vf_token_) {
    std::lock_guard lk(vf_token_->mu);
    if (vf_token_->users) {
      if (!uuid) return Error(EACCES, "VF token required: VFs are in use");
      if (*uuid != vf_token_->uuid) return Error(EACCES, "incorrect VF token");
    } else if (uuid) {
      vf_token_->uuid = *uuid;  // the PF's user sets the token
    }
    return ok();
  }
  if (uuid) {
    log::info(name(), "VF token incorrectly provided, not a PF or VF");
    return Error(EINVAL, "VF token for a device that is neither PF nor VF");
  }
  return ok();
}

Result<void> CoreDevice::match_device(const OpenArgs& args) { return match_token(args); }

Result<void> CoreDevice::open_device(const OpenArgs&) {
  TRY(enable());
  finish_enable();
  return ok();
}

void CoreDevice::close_device() { disable(); }

Result<void> CoreDevice::enable() {
  // vfio_pci_core_enable(): D0, bus master off, a function reset if the
  // device has one, the saved state, the virtual config space.
  power_state_ = 0;
  uint16_t cmd = static_cast<uint16_t>(pdev_.config_read(PCI_COMMAND, 2));
  pdev_.config_write(PCI_COMMAND, 2, cmd & ~PCI_COMMAND_MASTER);
  if (reset_works_) {
    saved_ = {};
    save_state();
    (void)pdev_.flr();
    restore_state();
  }
  pdev_.enable_device();
  cmd = static_cast<uint16_t>(pdev_.config_read(PCI_COMMAND, 2));
  pdev_.config_write(PCI_COMMAND, 2, cmd & ~PCI_COMMAND_MASTER);
  for (unsigned i = 0; i < bus::pci::kNumBars; ++i)
    saved_bars_[i] = pdev_.config_read(static_cast<uint16_t>(PCI_BASE_ADDRESS_0 + 4 * i), 4);
  save_state();
  // pci_store_saved_state(): what close restores, whatever resets the user
  // does in between (each saves over saved_).
  open_saved_ = saved_;
  // A PCI 2.3 device (INTx Disable implemented) is handed over with INTx
  // enabled: vfio masks INTx virtually (pci_intx_mask_supported()).
  if (pdev_.intx_mask_supported()) {
    cmd = static_cast<uint16_t>(pdev_.config_read(PCI_COMMAND, 2));
    if (cmd & PCI_COMMAND_INTX_DISABLE) pdev_.config_write(PCI_COMMAND, 2, cmd & ~PCI_COMMAND_INTX_DISABLE);
  }
  TRY(config_init());
  pdev_.attach_iommu(&iommu());
  pdev_.set_irq_sink(this);
  irq_type_ = -1;
  return ok();
}

void CoreDevice::finish_enable() {
  // Where the MSI-X table lives, so BAR access can keep off it.
  msix_bar_ = ~0u;
  if (uint16_t cap = pdev_.find_capability(PCI_CAP_ID_MSIX)) {
    uint32_t t = pdev_.config_read(cap + PCI_MSIX_TABLE, 4);
    msix_bar_ = t & PCI_MSIX_TABLE_BIR;
    msix_table_off_ = t & PCI_MSIX_TABLE_OFFSET;
    msix_table_len_ = uint64_t{pdev_.msix_vec_count()} * PCI_MSIX_ENTRY_SIZE;
  }
  if (sriov_pf_) {
    std::lock_guard lk(sriov_pf_->vf_token_->mu);
    sriov_pf_->vf_token_->users++;
  }
}

void CoreDevice::disable() {
  // vfio_pci_core_disable(): interrupts off, the device reset and restored,
  // nothing of this user left behind.
  irqs_disable_all();
  pdev_.set_irq_sink(nullptr);
  pdev_.attach_iommu(nullptr);
  if (uint16_t pm = pdev_.find_capability(PCI_CAP_ID_PM)) {
    uint16_t ctrl = static_cast<uint16_t>(pdev_.config_read(pm + PCI_PM_CTRL, 2));
    pdev_.config_write(pm + PCI_PM_CTRL, 2, ctrl & ~PCI_PM_CTRL_STATE_MASK);
  }
  power_state_ = 0;
  // vfio_pci_core_disable(): Command = INTx Disable alone (no decode, no
  // bus master) across the reset, then the state saved at open back —
  // never one a user's reset saved later (which may have bus master on).
  pdev_.config_write(PCI_COMMAND, 2, PCI_COMMAND_INTX_DISABLE);
  if (reset_works_) (void)pdev_.flr();
  saved_ = open_saved_;
  restore_state();
  pdev_.disable_device();
  config_free();
  if (sriov_pf_) {
    std::lock_guard lk(sriov_pf_->vf_token_->mu);
    sriov_pf_->vf_token_->users--;
  }
}

// pci_save_state()/pci_restore_state() (the bus's) for what an FLR clears:
// the standard header (BARs, command, cache line) and the capabilities'
// control registers (a PF's VFs live through its FLR). MSI and MSI-X are reprogrammed from the user's interrupt
// state below.
void CoreDevice::save_state() { saved_ = pdev_.save_state(false); }

void CoreDevice::restore_state() {
  if (saved_.config.empty()) return;
  pdev_.restore_state(saved_, false);
  uint16_t msix = pdev_.find_capability(PCI_CAP_ID_MSIX);
  // The host's interrupt programming, as the user last set it up.
  if (irq_type_ == VFIO_PCI_MSI_IRQ_INDEX || irq_type_ == VFIO_PCI_MSIX_IRQ_INDEX) {
    bool is_msix = irq_type_ == VFIO_PCI_MSIX_IRQ_INDEX;
    std::vector<bool> attached;
    {
      std::lock_guard lk(irq_mu_);
      for (auto& t : msi_triggers_) attached.push_back(static_cast<bool>(t));
    }
    std::vector<UniqueFd> keep;
    {
      std::lock_guard lk(irq_mu_);
      keep = std::move(msi_triggers_);
    }
    (void)msi_enable(static_cast<unsigned>(keep.size()), is_msix);
    {
      std::lock_guard lk(irq_mu_);
      msi_triggers_ = std::move(keep);
    }
    // Unmasking may deliver what pended, into msi(): not under irq_mu_.
    if (is_msix) {
      uint32_t t = pdev_.config_read(msix + PCI_MSIX_TABLE, 4);
      for (size_t v = 0; v < attached.size(); ++v)
        if (attached[v])
          (void)pdev_.bar_write(t & PCI_MSIX_TABLE_BIR,
                             (t & PCI_MSIX_TABLE_OFFSET) + v * PCI_MSIX_ENTRY_SIZE + PCI_MSIX_ENTRY_VECTOR_CTRL, 4, 0);
    }
  }
}

Result<void> CoreDevice::function_reset() {
  // pci_dev_save_and_disable(): the function is woken to D0 before its
  // state is saved (the PM registers default to D0 after a reset, and a
  // register restore does not return to a lower state anyway).
  if (uint16_t pm = pdev_.find_capability(PCI_CAP_ID_PM)) {
    uint16_t ctrl = static_cast<uint16_t>(pdev_.config_read(pm + PCI_PM_CTRL, 2));
    if (ctrl & PCI_PM_CTRL_STATE_MASK) pdev_.config_write(pm + PCI_PM_CTRL, 2, ctrl & ~PCI_PM_CTRL_STATE_MASK);
  }
  power_state_ = 0;
  save_state();
  TRY(pdev_.flr());
  restore_state();
  pci_reset_done();
  return ok();
}

void CoreDevice::pci_reset_done() {
  reset_done();
  mig_reset_to_running();
}

Result<void> CoreDevice::do_reset() {
  if (!reset_works_) return Error(EINVAL, "device has no function reset");
  power_state_ = 0;
  return function_reset();
}

// ---- Info and regions -----------------------------------------------------------

Result<vfio_device_info> CoreDevice::info() {
  vfio_device_info i{};
  i.argsz = sizeof(i);
  i.flags = VFIO_DEVICE_FLAGS_PCI | (reset_works_ ? VFIO_DEVICE_FLAGS_RESET : 0);
  i.num_regions = kPciNumRegions + static_cast<uint32_t>(extra_regions().size());
  i.num_irqs = kPciNumIrqs;
  return i;
}

Result<RegionInfo> CoreDevice::region_info(uint32_t index) {
  RegionInfo r;
  vfio_region_info& i = r.info;
  i.argsz = sizeof(i);
  i.index = index;
  i.offset = index_to_offset(index);
  if (index <= VFIO_PCI_BAR5_REGION_INDEX) {
    i.size = pdev_.resource(index).size();
    if (!i.size) return r;  // flags 0: no BAR here
    i.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    if (pdev_.bar_mapping(index)) {
      i.flags |= VFIO_REGION_INFO_FLAG_MMAP;
      if (index == msix_bar_) append_cap(r.caps, sizeof(i), VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, 1, {});
    }
    return r;
  }
  if (index == VFIO_PCI_ROM_REGION_INDEX) {
    i.size = 0;  // no option ROM on these functions
    return r;
  }
  if (index == VFIO_PCI_CONFIG_REGION_INDEX) {
    i.size = pdev_.cfg_size();
    i.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    return r;
  }
  if (index == VFIO_PCI_VGA_REGION_INDEX) return Error(EINVAL, "not a VGA device");
  auto extras = extra_regions();
  if (index - kPciNumRegions >= extras.size()) return Error(EINVAL, "region index out of range");
  const ExtraRegion& x = extras[index - kPciNumRegions];
  i.size = x.size;
  i.flags = x.flags;
  vfio_region_info_cap_type t{};
  t.type = x.type;
  t.subtype = x.subtype;
  append_cap(r.caps, sizeof(i), VFIO_REGION_INFO_CAP_TYPE, 1,
             std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&t) + sizeof(t.header), sizeof(t) - sizeof(t.header)));
  return r;
}

Result<size_t> CoreDevice::extra_region_rw(uint32_t, uint64_t, std::span<uint8_t>, bool) {
  return Error(EINVAL, "no such region");
}

Result<size_t> CoreDevice::read(uint32_t index, uint64_t offset, std::span<uint8_t> out) {
  if (index <= VFIO_PCI_BAR5_REGION_INDEX) return bar_rw(index, offset, out, false);
  if (index == VFIO_PCI_CONFIG_REGION_INDEX) return config_rw(offset, out, false);
  if (index == VFIO_PCI_ROM_REGION_INDEX || index == VFIO_PCI_VGA_REGION_INDEX) return Error(EINVAL, "no such region");
  return extra_region_rw(index, offset, out, false);
}

Result<size_t> CoreDevice::write(uint32_t index, uint64_t offset, std::span<const uint8_t> in) {
  std::span<uint8_t> buf(const_cast<uint8_t*>(in.data()), in.size());  // written from, never to
  if (index <= VFIO_PCI_BAR5_REGION_INDEX) return bar_rw(index, offset, buf, true);
  if (index == VFIO_PCI_CONFIG_REGION_INDEX) return config_rw(offset, buf, true);
  if (index == VFIO_PCI_ROM_REGION_INDEX) return Error(EINVAL, "the ROM is read-only");
  if (index == VFIO_PCI_VGA_REGION_INDEX) return Error(EINVAL, "no such region");
  return extra_region_rw(index, offset, buf, true);
}

Result<MmapArea> CoreDevice::mmap(uint32_t index) {
  if (index > VFIO_PCI_BAR5_REGION_INDEX) return Error(EINVAL, "region cannot be mmapped");
  auto m = pdev_.bar_mapping(index);
  if (!m || !pdev_.resource(index).size()) return Error(EINVAL, "region cannot be mmapped");
  return MmapArea{m->fd, m->offset, m->size};
}

// ---- Features -------------------------------------------------------------------

Result<FeatureReply> CoreDevice::feature(uint32_t flags, std::span<const uint8_t> payload) {
  switch (flags & VFIO_DEVICE_FEATURE_MASK) {
    case VFIO_DEVICE_FEATURE_PCI_VF_TOKEN: {
      if (!vf_token_) return Error(ENOTTY, "not a PF with a VF token");
      // SET only: a GET would leak the previous user's secret.
      if (TRY(check_feature(flags, payload, VFIO_DEVICE_FEATURE_SET, sizeof(Uuid))) == 0) return FeatureReply{};
      std::lock_guard lk(vf_token_->mu);
      std::memcpy(vf_token_->uuid.data(), payload.data(), sizeof(Uuid));
      return FeatureReply{};
    }
    default:
      return Error(ENOTTY, "unknown feature");
  }
}

}  // namespace uvfio::vfio::pci
