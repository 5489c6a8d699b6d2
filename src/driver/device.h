// SPDX-License-Identifier: BSD-3-Clause
// Device, Driver, Bus, Binding: the objects of the driver core, after Linux's
// struct device, device_driver, bus_type and drvdata.
//
// Ownership: a bus implementation (or a registering driver, for auxiliary
// devices) owns its Device objects; drivers are owned by whoever registers
// them. The DriverCore only refers to them, between register and unregister.
// A driver's probe() returns a Binding; destroying the Binding is remove().
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "driver/attr_tree.h"

namespace uvfio::driver {

class Bus;
class Device;
class Dir;
class DriverCore;
class Driver;

// Per-device state a driver creates in probe(). Its destructor is remove():
// it runs while the device is still registered and before the device object
// goes away.
class Binding {
 public:
  virtual ~Binding() = default;
};

class Driver {
 public:
  explicit Driver(std::string name) : name_(std::move(name)) {}
  virtual ~Driver() = default;
  Driver(const Driver&) = delete;
  Driver& operator=(const Driver&) = delete;

  const std::string& name() const { return name_; }
  Bus* bus() const { return bus_; }
  Dir* dir() const { return dir_; }

 private:
  friend class DriverCore;
  std::string name_;
  Bus* bus_ = nullptr;  // set while registered
  Dir* dir_ = nullptr;
};

class Device {
 public:
  // `parent` must outlive this device's registration.
  Device(std::string name, Device* parent) : name_(std::move(name)), parent_(parent) {}
  virtual ~Device();
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  const std::string& name() const { return name_; }
  Device* parent() const { return parent_; }
  Bus* bus() const { return bus_; }
  Driver* driver() const { return driver_; }
  Binding* binding() const { return binding_.get(); }
  template <class T> T* binding_as() const { return dynamic_cast<T*>(binding_.get()); }
  bool registered() const { return registered_; }
  Dir* dir() const { return dir_; }
  // Empty when unset.
  const std::string& driver_override() const { return driver_override_; }
  // The errno of the last probe that failed (0 if none since the last
  // bind): how a caller that added the device learns why no driver took it.
  int probe_error() const { return probe_error_; }

 private:
  friend class DriverCore;
  std::string name_;
  Device* parent_;
  Bus* bus_ = nullptr;
  Driver* driver_ = nullptr;
  std::unique_ptr<Binding> binding_;
  std::string driver_override_;
  bool registered_ = false;
  bool deferred_ = false;
  bool probing_ = false;
  int children_ = 0;
  int probe_error_ = 0;  // errno of the last failed probe (not a deferral); 0 after a bind
  Dir* dir_ = nullptr;
  std::shared_ptr<DevLock> lock_ = std::make_shared<DevLock>();
};

// Events a bus notifier hears (BUS_NOTIFY_* in Linux).
enum class BusEvent { kAddDevice, kDelDevice, kBoundDriver, kUnbindDriver, kUnboundDriver };

class Bus {
 public:
  explicit Bus(std::string name) : name_(std::move(name)) {}
  virtual ~Bus() = default;
  Bus(const Bus&) = delete;
  Bus& operator=(const Bus&) = delete;

  const std::string& name() const { return name_; }
  DriverCore* core() const { return core_; }
  Dir* dir() const { return dir_; }

  // Does `drv` handle `dev`? nullopt: no. Otherwise how specific the matching
  // id entry is (higher wins when autoprobing picks among drivers).
  virtual std::optional<int> match(Device& dev, Driver& drv) = 0;
  // Calls the bus-typed probe of `drv` (which matched `dev`).
  virtual Result<std::unique_ptr<Binding>> probe(Device& dev, Driver& drv) = 0;
  // Lines of the device's uevent file beyond DRIVER= (e.g. MODALIAS=).
  virtual std::vector<std::string> uevent(Device&) { return {}; }
  // Bus-specific attributes, added when a device registers (lock held).
  virtual Result<void> add_device_attributes(Device&) { return ok(); }
  // May this device be probed automatically when it is added? (Linux: a VF
  // of a PF whose sriov_drivers_autoprobe is 0 is not.)
  virtual bool autoprobe_device(Device&) { return true; }
  // Bus-specific attributes on a registered driver's directory.
  virtual Result<void> add_driver_attributes(Driver&) { return ok(); }

 private:
  friend class DriverCore;
  std::string name_;
  DriverCore* core_ = nullptr;  // set while registered; outlives the bus registration
  Dir* dir_ = nullptr;
  std::vector<Device*> devices_;  // registration order
  std::vector<Driver*> drivers_;  // registration order
  bool autoprobe_ = true;
};

}  // namespace uvfio::driver
