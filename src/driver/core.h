// SPDX-License-Identifier: BSD-3-Clause
// DriverCore: registers buses, devices and drivers, matches them, probes,
// binds and unbinds, and keeps the attribute tree in step — the parts of
// Linux's drivers/base (bus.c, dd.c, core.c) that uvfio needs.
//
// Rules kept from Linux (reference/kernel-vfio.md §8.2):
//  - driver_override names the only driver a device may bind to; an
//    override-only id entry matches only through it (the bus's match()).
//  - bind: ENODEV unless the device exists and matches; EBUSY if it has a
//    driver; probe errors returned (a deferred probe as EAGAIN).
//  - unbind: ENODEV unless bound to that driver.
//  - drivers_autoprobe: "0" stops automatic probing on add.
//  - A probe may ask to be deferred (kEProbeDefer); deferred devices are
//    retried whenever some other device binds a driver.
//  - Removing a device unbinds it first; a device's Binding is destroyed
//    before the device; a device with registered children cannot go.
//
// Locking (docs/architecture.md, "Locks"): the core's CoreMutex (lock())
// serializes the structure — buses, the device and driver lists, the
// attribute tree — and every attribute callback runs with it held. It is
// recursive, so probe()/remove() may register or remove further devices
// (SR-IOV, auxiliary devices), and it is released entirely while a thread
// waits.
//
// Each device also has a device lock (Linux's device_lock()): bind, unbind,
// probe, remove and driver_override hold it, as does every store to one of
// the device's attributes. A thread that must wait — for another thread's
// device lock, or for a VFIO user to close a device being unbound — waits
// with the CoreMutex released and its device locks kept: an unbind stuck on
// a client blocks stores to that device (and to its parent, if the parent's
// operation is what waits), never reads, and never any other device.
// Order: a parent's device lock before its children's.
#pragma once

#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "driver/attr_tree.h"
#include "driver/device.h"

namespace uvfio::driver {

using BusNotifier = std::function<void(BusEvent, Device&)>;

class DriverCore {
 public:
  DriverCore();
  ~DriverCore();
  DriverCore(const DriverCore&) = delete;
  DriverCore& operator=(const DriverCore&) = delete;

  CoreMutex& lock() { return mu_; }
  // The device lock (core lock held, or taken here): waits, with the core
  // lock released, while another thread holds it. The caller keeps `dev`
  // alive (it owns it, or holds the lock of its parent).
  void lock_device(Device& dev);
  void unlock_device(Device& dev);
  Tree& tree() { return tree_; }
  Dir* devices_dir() const { return devices_dir_; }

  // Buses: creates bus/<name>/{devices,drivers,drivers_probe,drivers_autoprobe}.
  Result<void> register_bus(Bus& bus);
  // All devices and drivers must be gone first.
  void unregister_bus(Bus& bus);
  int add_notifier(Bus& bus, BusNotifier fn);
  void remove_notifier(int id);

  // Drivers: registering probes every matching unbound device (if autoprobe).
  Result<void> register_driver(Bus& bus, Driver& drv);
  void unregister_driver(Driver& drv);  // unbinds every device bound to it

  // Devices: `bus` may be null (a plain node such as the PCI host bridge
  // "pci0000:00"). The device's directory goes under its parent's, or under
  // devices/. EEXIST for a duplicate name on the bus.
  Result<void> device_add(Device& dev, Bus* bus);
  void device_del(Device& dev);

  // The sysfs operations, with Linux's errno rules.
  Result<void> bind(Driver& drv, Device& dev);
  Result<void> unbind(Driver& drv, Device& dev);
  Result<void> release_driver(Device& dev);  // unbind whatever is bound
  Result<void> drivers_probe(Device& dev);   // autoprobe one device now
  Result<void> set_driver_override(Device& dev, std::string_view value);

  Device* find_device(Bus& bus, std::string_view name) const;
  Driver* find_driver(Bus& bus, std::string_view name) const;
  const std::vector<Device*>& devices(const Bus& bus) const { return bus.devices_; }
  const std::vector<Driver*>& drivers(const Bus& bus) const { return bus.drivers_; }
  std::vector<Device*> deferred_devices() const;

 private:
  Result<void> really_probe(Device& dev, Driver& drv);
  Result<void> attach(Device& dev);  // try the matching drivers, most specific first
  void detach(Device& dev);
  // Finds `name` on `bus` and locks it, waiting while another thread holds
  // it and looking it up again after each wait (it may be gone); null if
  // there is no such device.
  Device* lock_named(Bus& bus, std::string_view name);
  // Locks `dev` if it is still on `bus` (pointer compared before use);
  // false if it went away while waiting.
  bool lock_if_present(Bus& bus, Device* dev);
  bool on_bus(const Bus& bus, const Device* dev) const;
  void notify(Bus& bus, BusEvent ev, Device& dev);
  void trigger_deferred();
  Result<void> add_core_attributes(Device& dev);
  Result<void> add_driver_dir(Bus& bus, Driver& drv);

  CoreMutex mu_;
  Tree tree_;
  Dir* devices_dir_ = nullptr;
  Dir* bus_dir_ = nullptr;
  std::vector<Bus*> buses_;
  std::vector<Device*> deferred_;
  struct Notifier { int id; Bus* bus; BusNotifier fn; };
  std::vector<Notifier> notifiers_;
  int next_notifier_ = 1;
  bool retrying_ = false;
  bool retry_again_ = false;
};

// Strip one trailing newline, as sysfs_streq() ignores it.
std::string_view chomp(std::string_view s);

}  // namespace uvfio::driver
