#include "drivers/mlx5_core/mlx5_core.h"

#include "base/log.h"
#include "hw/mlx5/mlx5.h"

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

Result<void> VfioAuxDevice::add_attributes(driver::Tree& t, driver::Dir* dir) {
  Bdf b = vf_bdf_;
  return t.add_file(dir, driver::Attribute{"vf_bdf", 0444,
                                           [b]() -> Result<std::string> { return b.str() + "\n"; }, nullptr});
}

CoreDev::~CoreDev() {
  // remove(): auxiliary devices go before SR-IOV, so no VF driver can reach
  // a PF that is tearing down.
  delete_aux_devices();
  if (pf_.sriov_num_vfs()) pf_.pci_bus().disable_sriov(pf_);
  pf_.disable_device();
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
  log::info(pf_.name(), "mlx5_core: {} VFs enabled", num_vfs);
  return num_vfs;
}

Mlx5CoreDriver::Mlx5CoreDriver(bus::auxiliary::AuxiliaryBus& aux)
    : PciDriver("mlx5_core", {bus::pci::PciDeviceId{hw::mlx5::kVendorMellanox, hw::mlx5::kDevicePf}}), aux_(aux) {}

Result<std::unique_ptr<driver::Binding>> Mlx5CoreDriver::probe(PciDevice& dev, const bus::pci::PciDeviceId&) {
  if (dev.is_virtfn() || !dev.sriov_cap()) return Error(ENODEV, "mlx5_core drives PFs only");
  // A PF that already has VFs was left that way by another driver: refuse,
  // as the VFs' owners would not be ours.
  if (dev.sriov_num_vfs()) return Error(EBUSY, "VFs already enabled");
  dev.enable_device();
  log::info(dev.name(), "mlx5_core: probed, {} VFs supported", dev.sriov_total_vfs());
  return std::unique_ptr<driver::Binding>(std::make_unique<CoreDev>(dev, aux_));
}

Result<int> Mlx5CoreDriver::sriov_configure(PciDevice& pf, int num_vfs) {
  auto* core = pf.binding_as<CoreDev>();
  if (!core) return Error(ENODEV, "PF not bound to mlx5_core");
  return core->sriov_configure(num_vfs);
}

}  // namespace uvfio::drivers::mlx5
