// SPDX-License-Identifier: BSD-3-Clause
// The plugin interface of the uvfio device SDK (docs/sdk.md).
//
// A plugin is a shared object uvfiod loads at start, named in the topology
// file ([[plugin]] path = "..."). It exports one symbol, made by
// UVFIO_PLUGIN(name, init): a descriptor with the plugin ABI and the uvfio
// version it was built against, its name, and its init function. uvfiod
// refuses a plugin built for another ABI or another uvfio version (the SDK
// is C++: classes, virtual tables and the standard library cross the
// boundary, so a plugin is built against the uvfio it runs in, with the
// same compiler family and standard library).
//
// init() registers what the plugin brings through the Host:
//   - device models, usable in the topology as `model = "<name>"`; the
//     [[device]] table's other keys reach the factory as ModelParams;
//   - drivers for the PCI and auxiliary buses, a VFIO variant driver among
//     them (a PciDriver whose probe() registers a vfio::pci::CoreDevice).
// Nothing is built or bound until every plugin's init has succeeded; a
// failure anywhere stops uvfiod with a message naming the plugin.
//
// The layering rules of uvfio's own tree hold here too: a model sees the
// hardware headers (hw/), a driver sees the driver core, the buses and
// vfio-pci-core (driver/, bus/, vfio/) and a device's programming
// interface, never the model's classes. Keep them in separate source files.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "base/result.h"
#include "sdk/version.h"

namespace uvfio {
namespace hw {
class Function;
}
namespace bus::pci {
class PciBus;
class PciDriver;
}  // namespace bus::pci
namespace bus::auxiliary {
class AuxiliaryBus;
class AuxiliaryDriver;
}  // namespace bus::auxiliary
namespace vfio {
class Registry;
}
}  // namespace uvfio

// Bumped whenever a class of the SDK changes in a way a built plugin sees.
#define UVFIO_PLUGIN_ABI 1
// The descriptor's symbol (C linkage).
#define UVFIO_PLUGIN_SYMBOL "uvfio_plugin_v1"

namespace uvfio::sdk {

// The [[device]] table of a plugin's model: every key but `address`,
// `model` and `driver_override`. Each accessor checks the type and range and
// marks the key used; uvfiod refuses a device with a key its factory never
// asked for (a typo is an error, as for the built-in models).
class ModelParams {
 public:
  using Value = std::variant<int64_t, std::string, bool>;
  explicit ModelParams(std::map<std::string, Value> values = {}) : values_(std::move(values)) {}

  Result<int64_t> integer(const std::string& key, int64_t lo, int64_t hi, int64_t dflt) const {
    used_.insert(key);
    auto it = values_.find(key);
    if (it == values_.end()) return dflt;
    const int64_t* v = std::get_if<int64_t>(&it->second);
    if (!v) return fail(key, Error(EINVAL, "expected an integer"));
    if (*v < lo || *v > hi) return fail(key, Error(ERANGE, "out of range"));
    return *v;
  }
  Result<std::string> string(const std::string& key, const std::string& dflt) const {
    used_.insert(key);
    auto it = values_.find(key);
    if (it == values_.end()) return dflt;
    const std::string* v = std::get_if<std::string>(&it->second);
    if (!v) return fail(key, Error(EINVAL, "expected a string"));
    return *v;
  }
  Result<bool> boolean(const std::string& key, bool dflt) const {
    used_.insert(key);
    auto it = values_.find(key);
    if (it == values_.end()) return dflt;
    const bool* v = std::get_if<bool>(&it->second);
    if (!v) return fail(key, Error(EINVAL, "expected true or false"));
    return *v;
  }
  // The key of the last accessor that failed ("" if none did): uvfiod names
  // it in its error.
  const std::string& failed_key() const { return failed_key_; }
  // Keys present that no accessor asked for.
  std::vector<std::string> unused() const {
    std::vector<std::string> out;
    for (auto& [k, v] : values_)
      if (!used_.count(k)) out.push_back(k);
    return out;
  }

 private:
  Error fail(const std::string& key, Error e) const {
    failed_key_ = key;
    return e;
  }
  std::map<std::string, Value> values_;
  mutable std::set<std::string> used_;
  mutable std::string failed_key_;
};

// Builds one function of a model (a PF, an endpoint: anything placed at an
// address of the topology). VFs are made by the PF's SR-IOV capability.
using ModelFactory = std::function<Result<std::unique_ptr<hw::Function>>(const ModelParams&)>;

// What uvfiod offers a plugin's init(). Names are unique across uvfiod and
// every plugin: a model or driver name already taken is EEXIST.
class Host {
 public:
  virtual ~Host() = default;
  virtual Result<void> add_model(const std::string& name, ModelFactory factory) = 0;
  // Registered after the built-in drivers, before the PCI bus is scanned.
  virtual Result<void> add_pci_driver(std::unique_ptr<bus::pci::PciDriver> driver) = 0;
  virtual Result<void> add_auxiliary_driver(std::unique_ptr<bus::auxiliary::AuxiliaryDriver> driver) = 0;
  // For the drivers' constructors: the buses and the VFIO device registry
  // (what a variant driver's CoreDevice registers with).
  virtual bus::pci::PciBus& pci_bus() = 0;
  virtual bus::auxiliary::AuxiliaryBus& auxiliary_bus() = 0;
  virtual vfio::Registry& vfio_registry() = 0;
};

}  // namespace uvfio::sdk

extern "C" {
struct uvfio_plugin_descriptor {
  uint32_t abi;               // UVFIO_PLUGIN_ABI the plugin was built with
  const char* uvfio_version;  // UVFIO_VERSION_STRING the plugin was built against
  const char* name;
  // Registers the plugin's models and drivers. 0, or an errno with a
  // message of at most err_size bytes in `err`.
  int (*init)(uvfio::sdk::Host* host, char* err, size_t err_size);
};
}

#define UVFIO_PLUGIN(plugin_name, init_fn)                                                    \
  extern "C" __attribute__((visibility("default"))) const uvfio_plugin_descriptor uvfio_plugin_v1 = { \
      UVFIO_PLUGIN_ABI, UVFIO_VERSION_STRING, plugin_name, init_fn}
