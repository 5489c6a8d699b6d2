// SPDX-License-Identifier: BSD-3-Clause
#include "daemon/system.h"

#include <fmt/format.h>

#include "base/log.h"
#include "hw/bridge.h"
#include "hw/endpoint.h"
#include "hw/mlx5/pf.h"

namespace uvfio::daemon {

// What a plugin's init() registers with; it keeps the models and drivers
// until the system builds and registers them.
class System::PluginHost : public sdk::Host {
 public:
  explicit PluginHost(System& s) : s_(s) {}

  struct Model {
    sdk::ModelFactory factory;
    std::string plugin;
  };
  template <class D>
  struct Owned {
    std::unique_ptr<D> driver;
    std::string plugin;
    bool registered = false;
  };
  std::string current;  // the label of the plugin whose init runs
  std::string failure;  // what the last refused registration was
  std::map<std::string, Model> models;
  std::vector<Owned<bus::pci::PciDriver>> pci_drivers;
  std::vector<Owned<bus::auxiliary::AuxiliaryDriver>> aux_drivers;

  Result<void> add_model(const std::string& name, sdk::ModelFactory factory) override {
    if (name.empty() || !factory) return refuse(EINVAL, "a model needs a name and a factory", name);
    if (is_builtin_model(name)) return refuse(EEXIST, "model '{}' is one of uvfiod's own", name);
    if (auto it = models.find(name); it != models.end())
      return refuse(EEXIST, "model '{}' is already provided by " + it->second.plugin, name);
    models[name] = Model{std::move(factory), current};
    return ok();
  }
  Result<void> add_pci_driver(std::unique_ptr<bus::pci::PciDriver> d) override {
    if (!d) return refuse(EINVAL, "no driver", "");
    TRY(check_driver_name(d->name()));
    pci_drivers.push_back({std::move(d), current});
    return ok();
  }
  Result<void> add_auxiliary_driver(std::unique_ptr<bus::auxiliary::AuxiliaryDriver> d) override {
    if (!d) return refuse(EINVAL, "no driver", "");
    TRY(check_driver_name(d->name()));
    aux_drivers.push_back({std::move(d), current});
    return ok();
  }
  bus::pci::PciBus& pci_bus() override { return *s_.pci_; }
  bus::auxiliary::AuxiliaryBus& auxiliary_bus() override { return *s_.aux_; }
  vfio::Registry& vfio_registry() override { return *s_.registry_; }

 private:
  Error refuse(int code, const std::string& why, const std::string& name) {
    failure = fmt::format(fmt::runtime(why), name);
    return Error(code, "refused by uvfiod");
  }
  Result<void> check_driver_name(const std::string& name) {
    if (name.empty()) return refuse(EINVAL, "a driver needs a name", name);
    for (const char* own : {drivers::vfio_pci::kDriverName, drivers::mlx5::kCoreModName,
                            drivers::mlx5_vfio_pci::kDriverName})
      if (name == own) return refuse(EEXIST, "driver '{}' is one of uvfiod's own", name);
    for (auto& d : pci_drivers)
      if (d.driver->name() == name) return refuse(EEXIST, "driver '{}' is already provided by " + d.plugin, name);
    for (auto& d : aux_drivers)
      if (d.driver->name() == name) return refuse(EEXIST, "driver '{}' is already provided by " + d.plugin, name);
    return ok();
  }
  System& s_;
};

System::System() = default;

Result<std::unique_ptr<System>, TopologyError> System::create(const TopologySpec& spec, const SystemOptions& opts) {
  std::unique_ptr<System> s(new System());
  s->spec_ = spec;
  s->opts_ = opts;
  if (auto r = validate_topology(spec, "<topology>"); !r) return r.error();
  // The platform first (an empty fabric, the buses, the VFIO registry), so
  // plugins' drivers can be made; then the plugins; then the hardware.
  s->fabric_ = std::make_unique<hw::Fabric>(0);
  s->core_ = std::make_unique<driver::DriverCore>();
  s->pci_ = std::make_unique<bus::pci::PciBus>(*s->core_, *s->fabric_);
  s->aux_ = std::make_unique<bus::auxiliary::AuxiliaryBus>(*s->core_);
  s->registry_ = std::make_unique<vfio::Registry>(*s->core_);
  if (auto r = s->load_plugins(); !r) return r.error();
  if (auto r = s->build_hardware(); !r) return r.error();
  if (auto r = s->start_software(); !r) return r.error();  // ~System tears down
  return s;
}

Result<void, TopologyError> System::load_plugins() {
  host_ = std::make_unique<PluginHost>(*this);
  for (const std::string& path : spec_.plugins) {
    auto p = PluginHandle::open(path);
    if (!p) return p.error();
    plugins_.push_back(std::move(*p));
    const PluginHandle& ph = plugins_.back();
    host_->current = ph.label();
    host_->failure.clear();
    char err[256] = {};
    int rc;
    try {
      rc = ph.descriptor().init(host_.get(), err, sizeof(err));
    } catch (const std::exception& e) {
      return TopologyError{fmt::format("{}: init threw: {}", ph.label(), e.what())};
    } catch (...) {
      return TopologyError{fmt::format("{}: init threw", ph.label())};
    }
    err[sizeof(err) - 1] = '\0';
    if (rc != 0 || !host_->failure.empty()) {
      std::string why = err[0] ? std::string(err) : host_->failure;
      if (why.empty()) why = errno_name(rc);
      else if (rc) why = errno_name(rc) + ": " + why;
      return TopologyError{fmt::format("{}: init failed: {}", ph.label(), why)};
    }
    log::info("uvfiod", "loaded {}", ph.label());
  }
  return {};
}

std::vector<std::string> System::plugins() const {
  std::vector<std::string> out;
  for (const PluginHandle& p : plugins_) out.push_back(p.label());
  return out;
}

Result<std::unique_ptr<hw::Function>, TopologyError> System::build_plugin_model(const DeviceSpec& d) {
  auto it = host_->models.find(d.plugin_model);
  if (it == host_->models.end()) {
    std::string known;
    for (auto& [name, m] : host_->models) known += (known.empty() ? "" : ", ") + name;
    return TopologyError{fmt::format("{}: unknown model '{}' (built-in: root-port, switch-upstream, "
                                     "switch-downstream, mlx5-pf, endpoint; from plugins: {})",
                                     d.address.str(), d.plugin_model, known.empty() ? "none" : known)};
  }
  sdk::ModelParams params(d.params);
  std::string who = fmt::format("{} ({} from {})", d.address.str(), d.plugin_model, it->second.plugin);
  Result<std::unique_ptr<hw::Function>> f = Error(EINVAL);
  try {
    f = it->second.factory(params);
  } catch (const std::exception& e) {
    return TopologyError{fmt::format("{}: cannot build: the factory threw: {}", who, e.what())};
  } catch (...) {
    return TopologyError{fmt::format("{}: cannot build: the factory threw", who)};
  }
  if (!f)
    return TopologyError{fmt::format("{}: cannot build: {}{}", who, to_string(f.error()),
                                     params.failed_key().empty() ? "" : " (key " + params.failed_key() + ")")};
  if (!*f) return TopologyError{fmt::format("{}: cannot build: the factory returned no function", who)};
  if (auto unused = params.unused(); !unused.empty())
    return TopologyError{fmt::format("{}: unknown key '{}' for model {}", who, unused.front(), d.plugin_model)};
  return std::move(*f);
}

Result<void, TopologyError> System::build_hardware() {
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
      case Model::kPlugin: {
        auto built = build_plugin_model(d);
        if (!built) return built.error();
        f = std::move(*built);
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
  mlx5_core_ = std::make_unique<drivers::mlx5::Mlx5CoreDriver>(*aux_);
  mlx5_vfio_ = std::make_unique<drivers::mlx5_vfio_pci::Mlx5VfioPci>(*pci_, *aux_, *registry_);
  vfio_pci_ = std::make_unique<drivers::vfio_pci::VfioPciDriver>(*registry_, opts_.vfio_pci_enable_sriov);
  if (auto r = core_->register_driver(*pci_, *mlx5_core_); !r) return fail("register mlx5_core", r.error());
  if (auto r = core_->register_driver(*pci_, *vfio_pci_); !r) return fail("register vfio_pci", r.error());
  if (auto r = mlx5_vfio_->register_drivers(); !r) return fail("register mlx5_vfio_pci", r.error());
  for (auto& d : host_->pci_drivers) {
    if (auto r = core_->register_driver(*pci_, *d.driver); !r)
      return fail(fmt::format("{}: register PCI driver {}", d.plugin, d.driver->name()), r.error());
    d.registered = true;
  }
  for (auto& d : host_->aux_drivers) {
    if (auto r = aux_->register_driver(*d.driver); !r)
      return fail(fmt::format("{}: register auxiliary driver {}", d.plugin, d.driver->name()), r.error());
    d.registered = true;
  }
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
  if (host_) {
    for (auto& d : host_->aux_drivers)
      if (d.registered) aux_->unregister_driver(*d.driver);
    for (auto& d : host_->pci_drivers)
      if (d.registered) core_->unregister_driver(*d.driver);
  }
  if (mlx5_vfio_) mlx5_vfio_->unregister_drivers();
  if (core_ && vfio_pci_) core_->unregister_driver(*vfio_pci_);
  if (core_ && mlx5_core_) core_->unregister_driver(*mlx5_core_);
  if (core_ && aux_) core_->unregister_bus(*aux_);
  if (core_ && pci_) core_->unregister_bus(*pci_);
  mlx5_vfio_.reset();
  vfio_pci_.reset();
  mlx5_core_.reset();
  host_.reset();  // the plugins' drivers and factories
  registry_.reset();
  aux_.reset();
  pci_.reset();
  core_.reset();
  fabric_.reset();
}

}  // namespace uvfio::daemon
