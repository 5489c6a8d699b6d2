// SPDX-License-Identifier: BSD-3-Clause
// The auxiliary bus (drivers/base/auxiliary.c): devices named
// "<modname>.<devname>.<id>" that a parent driver registers to hand part of
// its device to a driver in another module; drivers match the name up to its
// last '.'.
//
// Lifetime rules (reference/kernel-vfio.md §4.4): the registering driver owns
// the AuxiliaryDevice (usually a subclass carrying shared data and ops) and
// must delete it before its own remove() completes; the parent must be a
// registered device; an aux driver may use the shared data only while it is
// bound (its Binding exists).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/result.h"
#include "driver/core.h"

namespace uvfio::bus::auxiliary {

class AuxiliaryDevice : public driver::Device {
 public:
  // `parent` must stay registered while this device is.
  AuxiliaryDevice(std::string_view modname, std::string_view devname, uint32_t id, driver::Device& parent);
  ~AuxiliaryDevice() override;

  const std::string& match_name() const { return match_name_; }  // "modname.devname"
  uint32_t id() const { return id_; }

  // Extra attributes of a subclass (e.g. mlx5's vf_bdf), added on register.
  virtual Result<void> add_attributes(driver::Tree&, driver::Dir*) { return ok(); }

 private:
  std::string match_name_;
  uint32_t id_;
};

struct AuxiliaryDeviceId {
  std::string name;  // "modname.devname"
  uintptr_t driver_data = 0;
};

class AuxiliaryDriver : public driver::Driver {
 public:
  // Registered with the driver core as "<modname>.<name>".
  AuxiliaryDriver(std::string_view modname, std::string_view name, std::vector<AuxiliaryDeviceId> ids);
  const std::vector<AuxiliaryDeviceId>& id_table() const { return ids_; }
  virtual Result<std::unique_ptr<driver::Binding>> probe(AuxiliaryDevice& dev, const AuxiliaryDeviceId& id) = 0;

 private:
  std::vector<AuxiliaryDeviceId> ids_;
};

class AuxiliaryBus : public driver::Bus {
 public:
  // `core` outlives the bus.
  explicit AuxiliaryBus(driver::DriverCore& core);
  ~AuxiliaryBus() override;

  driver::DriverCore& core() const { return core_; }
  Result<void> register_bus() { return core_.register_bus(*this); }

  // auxiliary_device_init() + auxiliary_device_add(): EINVAL without a
  // registered parent or with an empty name; EEXIST for a duplicate name.
  Result<void> device_add(AuxiliaryDevice& dev);
  // auxiliary_device_delete(): unbinds the driver (its remove()) and unregisters.
  void device_delete(AuxiliaryDevice& dev);

  // auxiliary_driver_register(): EINVAL for an empty id table.
  Result<void> register_driver(AuxiliaryDriver& drv);
  void unregister_driver(AuxiliaryDriver& drv) { core_.unregister_driver(drv); }

  // driver::Bus
  std::optional<int> match(driver::Device& dev, driver::Driver& drv) override;
  Result<std::unique_ptr<driver::Binding>> probe(driver::Device& dev, driver::Driver& drv) override;
  std::vector<std::string> uevent(driver::Device& dev) override;
  Result<void> add_device_attributes(driver::Device& dev) override;

 private:
  const AuxiliaryDeviceId* find_id(AuxiliaryDevice& dev, AuxiliaryDriver& drv) const;
  driver::DriverCore& core_;
};

}  // namespace uvfio::bus::auxiliary
