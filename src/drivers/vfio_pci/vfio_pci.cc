// SPDX-License-Identifier: BSD-3-Clause
#include "drivers/vfio_pci/vfio_pci.h"

#include "vfio/pci_core/core.h"

namespace uvfio::drivers::vfio_pci {

using bus::pci::kPciAnyId;

VfioPciDriver::VfioPciDriver(vfio::Registry& registry, bool enable_sriov)
    : PciDriver(kDriverName, {bus::pci::PciDeviceId{kPciAnyId, kPciAnyId, kPciAnyId, kPciAnyId, 0, 0, true}}),
      registry_(registry),
      enable_sriov_(enable_sriov) {}

Result<std::unique_ptr<driver::Binding>> VfioPciDriver::probe(bus::pci::PciDevice& dev, const bus::pci::PciDeviceId&) {
  auto core = std::make_unique<vfio::pci::CoreDevice>(dev, *this, registry_);
  TRY(core->register_device());
  return std::unique_ptr<driver::Binding>(std::move(core));
}

Result<int> VfioPciDriver::sriov_configure(bus::pci::PciDevice& pf, int num_vfs) {
  if (!enable_sriov_) return Error(ENOENT, "vfio_pci: enable_sriov is off");
  auto* core = pf.binding_as<vfio::pci::CoreDevice>();
  if (!core) return Error(ENODEV, "not bound to vfio_pci");
  return core->sriov_configure(num_vfs);
}

}  // namespace uvfio::drivers::vfio_pci
