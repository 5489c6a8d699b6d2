// SPDX-License-Identifier: BSD-3-Clause
#include "daemon/system.h"

#include <fmt/format.h>

#include "base/log.h"
#include "hw/bridge.h"
#include "hw/endpoint.h"
#include "hw/mlx5/pf.h"

namespace uvfio::daemon {

Result<std::unique_ptr<System>, TopologyError> System::create(const TopologySpec& spec, const SystemOptions& opts) {
  std::unique_ptr<System> s(new System());
  s->spec_ = spec;
  s->opts_ = opts;
  if (auto r = validate_topology(spec, "<topology>"); !r) return r.error();
  if (auto r = s->build_hardware(); !r) return r.error();
  if (auto r = s->start_software(); !r) return r.error();  // ~System tears down
  return s;
}

Result<void, TopologyError> System::build_hardware() {
  fabric_ = std::make_unique<hw::Fabric>(0);
  auto fail = [](const DeviceSpec& d, const Error& e) {
    return TopologyError{fmt::format("{} ({}): cannot build: {}", d.address.str(), to_string(d.model), to_string(e))};
  };
  for (const DeviceSpec& d : spec_.devices) {
    Result<std::unique_ptr<hw::Function>> f = Error(EINVAL);
    switch (d.model) {
      case Model::kRootPort:
      case Model::kSwitchUpstream:
      case Model::kSwitchDownstream: {
        hw::BridgeKind k = d.model == Model::kRootPort         ? hw::BridgeKind::kRootPort
                           : d.model == Model::kSwitchUpstream ? hw::BridgeKind::kSwitchUpstream
                                                               : hw::BridgeKind::kSwitchDownstream;
        auto b = hw::Bridge::create(k);
        if (b) f = std::unique_ptr<hw::Function>(std::move(*b)); else f = b.error();
        break;
      }
      case Model::kMlx5Pf: {
        hw::mlx5::PfParams p;
        p.total_vfs = d.total_vfs;
        p.first_vf_offset = d.first_vf_offset;
        p.vf_stride = d.vf_stride;
        p.vf_device_memory = d.device_memory;
        p.serial = 0xe41d2d0300000000ull | d.address.id();
        auto pf = hw::mlx5::Pf::create(p);
        if (pf) f = std::unique_ptr<hw::Function>(std::move(*pf)); else f = pf.error();
        if (!d.vf_driver_override.empty()) vf_override_[d.address] = d.vf_driver_override;
        break;
      }
      case Model::kEndpoint: {
        hw::EndpointParams p;
        p.ids.vendor = d.vendor;
        p.ids.device = d.device;
        p.ids.class_code = d.class_code;
        auto e = hw::GenericEndpoint::create(p);
        if (e) f = std::unique_ptr<hw::Function>(std::move(*e)); else f = e.error();
        break;
      }
    }
    if (!f) return fail(d, f.error());
    auto placed = fabric_->attach(std::move(*f), d.address);
    if (!placed) return fail(d, placed.error());
    // Firmware's job: bus numbers on bridges.
    if (d.model == Model::kRootPort || d.model == Model::kSwitchUpstream || d.model == Model::kSwitchDownstream) {
      (*placed)->config_write(PCI_PRIMARY_BUS, 1, d.address.bus());
      (*placed)->config_write(PCI_SECONDARY_BUS, 1, d.secondary_bus);
      (*placed)->config_write(PCI_SUBORDINATE_BUS, 1, d.subordinate_bus);
    }
  }
  // Multi-function devices announce themselves in function 0's header type.
  for (const DeviceSpec& d : spec_.devices) {
    if (d.address.fn() == 0) continue;
    if (hw::Function* f0 = fabric_->find(Bdf(0, d.address.bus(), d.address.dev(), 0))) f0->set_multifunction(true);
  }
  return {};
}

Result<void, TopologyError> System::start_software() {
  auto fail = [](const std::string& what, const Error& e) {
    return TopologyError{fmt::format("{}: {}", what, to_string(e))};
  };
  core_ = std::make_unique<driver::DriverCore>();
  pci_ = std::make_unique<bus::pci::PciBus>(*core_, *fabric_);
  aux_ = std::make_unique<bus::auxiliary::AuxiliaryBus>(*core_);
  if (auto r = core_->register_bus(*pci_); !r) return fail("register bus pci", r.error());
  if (auto r = aux_->register_bus(); !r) return fail("register bus auxiliary", r.error());
  // VFs of a PF with vf_driver_override get it before they are probed, as
  // vfio-pci-core's bus notifier does for VFs of a vfio-owned PF.
  core_->add_notifier(*pci_, [this](driver::BusEvent ev, driver::Device& d) {
    auto* dev = dynamic_cast<bus::pci::PciDevice*>(&d);
    if (ev != driver::BusEvent::kAddDevice || !dev || !dev->physfn()) return;
    auto it = vf_override_.find(dev->physfn()->bdf());
    if (it != vf_override_.end()) (void)core_->set_driver_override(*dev, it->second);
  });
  // Functions with a driver_override in the topology get it the same way.
  core_->add_notifier(*pci_, [this](driver::BusEvent ev, driver::Device& d) {
    auto* dev = dynamic_cast<bus::pci::PciDevice*>(&d);
    if (ev != driver::BusEvent::kAddDevice || !dev || dev->physfn()) return;
    for (const DeviceSpec& s : spec_.devices)
      if (s.address == dev->bdf() && !s.driver_override.empty()) (void)core_->set_driver_override(*dev, s.driver_override);
  });
  registry_ = std::make_unique<vfio::Registry>(*core_);
  mlx5_core_ = std::make_unique<drivers::mlx5::Mlx5CoreDriver>(*aux_);
  mlx5_vfio_ = std::make_unique<drivers::mlx5_vfio_pci::Mlx5VfioPci>(*pci_, *aux_, *registry_);
  vfio_pci_ = std::make_unique<drivers::vfio_pci::VfioPciDriver>(*registry_, opts_.vfio_pci_enable_sriov);
  if (auto r = core_->register_driver(*pci_, *mlx5_core_); !r) return fail("register mlx5_core", r.error());
  if (auto r = core_->register_driver(*pci_, *vfio_pci_); !r) return fail("register vfio_pci", r.error());
  if (auto r = mlx5_vfio_->register_drivers(); !r) return fail("register mlx5_vfio_pci", r.error());
  if (auto r = pci_->scan(); !r) return fail("PCI scan", r.error());
  for (const DeviceSpec& d : spec_.devices) {
    if (d.model != Model::kMlx5Pf || d.num_vfs == 0) continue;
    std::string path = fmt::format("bus/pci/devices/{}/sriov_numvfs", d.address.str());
    if (auto r = core_->tree().write(path, fmt::format("{}\n", d.num_vfs)); !r)
      return fail(fmt::format("{}: sriov_numvfs={}", d.address.str(), d.num_vfs), r.error());
  }
  return {};
}

vfio::Device* System::vfio_device(Bdf bdf) {
  for (vfio::Device* d : registry_->devices())
    if (d->name() == bdf.str()) return d;
  return nullptr;
}

System::~System() {
  if (pci_) pci_->remove_all();
  if (mlx5_vfio_) mlx5_vfio_->unregister_drivers();
  if (core_ && vfio_pci_) core_->unregister_driver(*vfio_pci_);
  if (core_ && mlx5_core_) core_->unregister_driver(*mlx5_core_);
  if (core_ && aux_) core_->unregister_bus(*aux_);
  if (core_ && pci_) core_->unregister_bus(*pci_);
  mlx5_vfio_.reset();
  vfio_pci_.reset();
  mlx5_core_.reset();
  registry_.reset();
  aux_.reset();
  pci_.reset();
  core_.reset();
  fabric_.reset();
}

}  // namespace uvfio::daemon
