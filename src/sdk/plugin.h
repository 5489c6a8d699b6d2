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
// interface, never the model's classes. Keep them in separate source files;
// only the file that registers both includes this header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "base/result.h"
#include "bus/auxiliary/auxiliary.h"
#include "bus/pci/pci.h"
#include "hw/function.h"
#include "sdk/model.h"
#include "sdk/version.h"
#include "vfio/registry.h"

// Bumped whenever a class of the SDK changes in a way a built plugin sees.
#define UVFIO_PLUGIN_ABI 1
// The descriptor's symbol (C linkage).
#define UVFIO_PLUGIN_SYMBOL "uvfio_plugin_v1"

namespace uvfio::sdk {

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
