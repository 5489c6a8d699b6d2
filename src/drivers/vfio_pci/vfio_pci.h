// SPDX-License-Identifier: BSD-3-Clause
// vfio_pci: the generic VFIO driver — a thin wrapper around vfio-pci-core,
// as drivers/vfio/pci/vfio_pci.c is. Its id table is one override-only
// any-device entry: it binds only what driver_override hands it.
#pragma once

#include "bus/pci/pci.h"
#include "vfio/registry.h"

namespace uvfio::drivers::vfio_pci {

inline constexpr const char* kDriverName = "vfio-pci";  // the name Linux registers (module vfio_pci)

class VfioPciDriver : public bus::pci::PciDriver {
 public:
  // `enable_sriov`: the module parameter of the same name (off by default,
  // as in Linux): without it sriov_numvfs on a vfio_pci PF fails ENOENT.
  VfioPciDriver(vfio::Registry& registry, bool enable_sriov = false);

  Result<std::unique_ptr<driver::Binding>> probe(bus::pci::PciDevice& dev, const bus::pci::PciDeviceId& id) override;
  bool has_sriov_configure() const override { return true; }
  Result<int> sriov_configure(bus::pci::PciDevice& pf, int num_vfs) override;
  void set_enable_sriov(bool on) { enable_sriov_ = on; }

 private:
  vfio::Registry& registry_;
  bool enable_sriov_;
};

}  // namespace uvfio::drivers::vfio_pci
