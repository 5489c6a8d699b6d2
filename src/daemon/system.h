// SPDX-License-Identifier: BSD-3-Clause
// System: everything uvfiod hosts, assembled from a topology — the emulated
// fabric, the driver core with its PCI and auxiliary buses, and the drivers —
// with an orderly teardown (devices unbound and removed children first,
// drivers unregistered, hardware last).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/result.h"
#include "bus/auxiliary/auxiliary.h"
#include "bus/pci/pci.h"
#include "daemon/plugins.h"
#include "daemon/topology.h"
#include "driver/core.h"
#include "drivers/mlx5_core/mlx5_core.h"
#include "drivers/mlx5_vfio_pci/mlx5_vfio_pci.h"
#include "drivers/vfio_pci/vfio_pci.h"
#include "vfio/registry.h"
#include "hw/fabric.h"

namespace uvfio::daemon {

struct SystemOptions {
  bool vfio_pci_enable_sriov = false;  // vfio_pci's enable_sriov module parameter
};

class System {
 public:
  // Loads the plugins (each one's init registers its models and drivers),
  // builds the hardware, binds drivers and applies each PF's num_vfs
  // through sriov_numvfs, as an admin would. On any failure everything
  // built so far is torn down and the error says what failed (and which
  // plugin).
  static Result<std::unique_ptr<System>, TopologyError> create(const TopologySpec& spec,
                                                                const SystemOptions& opts = {});
  ~System();

  hw::Fabric& fabric() { return *fabric_; }
  driver::DriverCore& core() { return *core_; }
  bus::pci::PciBus& pci() { return *pci_; }
  bus::auxiliary::AuxiliaryBus& aux() { return *aux_; }
  drivers::mlx5::Mlx5CoreDriver& mlx5_core() { return *mlx5_core_; }
  drivers::mlx5_vfio_pci::Mlx5VfioPci& mlx5_vfio_pci() { return *mlx5_vfio_; }
  drivers::vfio_pci::VfioPciDriver& vfio_pci() { return *vfio_pci_; }
  vfio::Registry& vfio_registry() { return *registry_; }
  // The registered VFIO device of a function, or nullptr.
  vfio::Device* vfio_device(Bdf bdf);
  const TopologySpec& spec() const { return spec_; }
  // The loaded plugins' labels ("name (path)"), in load order.
  std::vector<std::string> plugins() const;

 private:
  class PluginHost;
  System();
  Result<void, TopologyError> load_plugins();
  Result<void, TopologyError> build_hardware();
  Result<std::unique_ptr<hw::Function>, TopologyError> build_plugin_model(const DeviceSpec& d);
  Result<void, TopologyError> start_software();

  TopologySpec spec_;
  SystemOptions opts_;
  // First, so last to go: the plugins' code outlives everything it made.
  std::vector<PluginHandle> plugins_;
  // Declaration order is teardown order reversed: hardware outlives the
  // buses, the buses outlive the drivers' registrations.
  std::unique_ptr<hw::Fabric> fabric_;
  std::unique_ptr<driver::DriverCore> core_;
  std::unique_ptr<bus::pci::PciBus> pci_;
  std::unique_ptr<bus::auxiliary::AuxiliaryBus> aux_;
  std::unique_ptr<vfio::Registry> registry_;
  std::unique_ptr<drivers::mlx5::Mlx5CoreDriver> mlx5_core_;
  std::unique_ptr<drivers::vfio_pci::VfioPciDriver> vfio_pci_;
  std::unique_ptr<drivers::mlx5_vfio_pci::Mlx5VfioPci> mlx5_vfio_;
  std::unique_ptr<PluginHost> host_;  // the plugins' models and drivers
  std::map<Bdf, std::string> vf_override_;  // PF address -> driver_override for its VFs
};

}  // namespace uvfio::daemon
