// SPDX-License-Identifier: BSD-3-Clause
#include "bus/auxiliary/auxiliary.h"

#include <fmt/format.h>

namespace uvfio::bus::auxiliary {

AuxiliaryDevice::AuxiliaryDevice(std::string_view modname, std::string_view devname, uint32_t id,
                                 driver::Device& parent)
    : Device(fmt::format("{}.{}.{}", modname, devname, id), &parent),
      match_name_(fmt::format("{}.{}", modname, devname)),
      id_(id) {}

AuxiliaryDevice::~AuxiliaryDevice() = default;

AuxiliaryDriver::AuxiliaryDriver(std::string_view modname, std::string_view name,
                                 std::vector<AuxiliaryDeviceId> ids)
    : Driver(name.empty() ? std::string(modname) : fmt::format("{}.{}", modname, name)), ids_(std::move(ids)) {}

AuxiliaryBus::AuxiliaryBus(driver::DriverCore& core) : Bus("auxiliary"), core_(core) {}

AuxiliaryBus::~AuxiliaryBus() { core_.unregister_bus(*this); }

Result<void> AuxiliaryBus::device_add(AuxiliaryDevice& dev) {
  if (!dev.parent() || !dev.parent()->registered()) return Error(EINVAL, "auxiliary device needs a parent");
  if (dev.match_name().empty() || dev.match_name().front() == '.' || dev.match_name().back() == '.')
    return Error(EINVAL, "auxiliary device needs a name");
  return core_.device_add(dev, this);
}

void AuxiliaryBus::device_delete(AuxiliaryDevice& dev) { core_.device_del(dev); }

Result<void> AuxiliaryBus::register_driver(AuxiliaryDriver& drv) {
  if (drv.id_table().empty()) return Error(EINVAL, "auxiliary driver without id table");
  return core_.register_driver(*this, drv);
}

const AuxiliaryDeviceId* AuxiliaryBus::find_id(AuxiliaryDevice& dev, AuxiliaryDriver& drv) const {
  // The device's name up to (not including) its last '.', compared whole.
  const std::string& name = dev.name();
  size_t dot = name.rfind('.');
  if (dot == std::string::npos) return nullptr;
  std::string_view prefix(name.data(), dot);
  for (const auto& id : drv.id_table())
    if (id.name == prefix) return &id;
  return nullptr;
}

std::optional<int> AuxiliaryBus::match(driver::Device& d, driver::Driver& drv) {
  auto* dev = dynamic_cast<AuxiliaryDevice*>(&d);
  auto* adrv = dynamic_cast<AuxiliaryDriver*>(&drv);
  if (!dev || !adrv || !find_id(*dev, *adrv)) return std::nullopt;
  return 0;
}

Result<std::unique_ptr<driver::Binding>> AuxiliaryBus::probe(driver::Device& d, driver::Driver& drv) {
  auto* dev = dynamic_cast<AuxiliaryDevice*>(&d);
  auto* adrv = dynamic_cast<AuxiliaryDriver*>(&drv);
  const AuxiliaryDeviceId* id = dev && adrv ? find_id(*dev, *adrv) : nullptr;
  if (!id) return Error(ENODEV, "no matching auxiliary id");
  return adrv->probe(*dev, *id);
}

std::vector<std::string> AuxiliaryBus::uevent(driver::Device& d) {
  auto* dev = dynamic_cast<AuxiliaryDevice*>(&d);
  if (!dev) return {};
  return {"MODALIAS=auxiliary:" + dev->match_name()};
}

Result<void> AuxiliaryBus::add_device_attributes(driver::Device& d) {
  auto* dev = dynamic_cast<AuxiliaryDevice*>(&d);
  if (!dev) return ok();
  return dev->add_attributes(core_.tree(), dev->dir());
}

}  // namespace uvfio::bus::auxiliary
