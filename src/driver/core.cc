// SPDX-License-Identifier: BSD-3-Clause
#include "driver/core.h"

#include <algorithm>
#include <cstdlib>

#include "base/log.h"

namespace uvfio::driver {

std::string_view chomp(std::string_view s) {
  if (!s.empty() && s.back() == '\n') s.remove_suffix(1);
  return s;
}

Device::~Device() {
  // Destroying a registered device is a bug in the code that owns it.
  if (registered_) std::abort();
}

DriverCore::DriverCore() : tree_(mu_) {
  devices_dir_ = *tree_.mkdir(tree_.root(), "devices");
  bus_dir_ = *tree_.mkdir(tree_.root(), "bus");
}

DriverCore::~DriverCore() = default;

Result<void> DriverCore::register_bus(Bus& bus) {
  CoreLock lk(mu_);
  if (bus.core_) return Error(EBUSY, "bus already registered");
  Dir* d = TRY(tree_.mkdir(bus_dir_, bus.name()));
  TRY(tree_.mkdir(d, "devices"));
  TRY(tree_.mkdir(d, "drivers"));
  Bus* b = &bus;
  TRY(tree_.add_file(d, Attribute{"drivers_autoprobe", 0644,
                                  [b]() -> Result<std::string> { return std::string(b->autoprobe_ ? "1\n" : "0\n"); },
                                  [b](std::string_view v) -> Result<void> {
                                    b->autoprobe_ = !(v.size() && v[0] == '0');
                                    return ok();
                                  }}));
  TRY(tree_.add_file(d, Attribute{"drivers_probe", 0200, nullptr, [this, b](std::string_view v) -> Result<void> {
                                    Device* dev = lock_named(*b, chomp(v));
                                    if (!dev) return Error(ENODEV, "no such device");
                                    auto r = drivers_probe(*dev);
                                    unlock_device(*dev);
                                    return r;
                                  }}));
  TRY(tree_.add_file(d, Attribute{"uevent", 0200, nullptr, [](std::string_view) { return ok(); }}));
  bus.core_ = this;
  bus.dir_ = d;
  buses_.push_back(&bus);
  return ok();
}

void DriverCore::unregister_bus(Bus& bus) {
  CoreLock lk(mu_);
  if (bus.core_ != this) return;
  while (!bus.drivers_.empty()) unregister_driver(*bus.drivers_.back());
  std::erase_if(notifiers_, [&](const Notifier& n) { return n.bus == &bus; });
  tree_.remove(bus_dir_, bus.name());
  std::erase(buses_, &bus);
  bus.core_ = nullptr;
  bus.dir_ = nullptr;
}

int DriverCore::add_notifier(Bus& bus, BusNotifier fn) {
  CoreLock lk(mu_);
  int id = next_notifier_++;
  notifiers_.push_back({id, &bus, std::move(fn)});
  return id;
}

void DriverCore::remove_notifier(int id) {
  CoreLock lk(mu_);
  std::erase_if(notifiers_, [&](const Notifier& n) { return n.id == id; });
}

void DriverCore::notify(Bus& bus, BusEvent ev, Device& dev) {
  auto copy = notifiers_;  // a notifier may add or remove notifiers
  for (auto& n : copy)
    if (n.bus == &bus) n.fn(ev, dev);
}

Result<void> DriverCore::add_driver_dir(Bus& bus, Driver& drv) {
  Dir* drivers = tree_.find_dir(bus.dir_->path() + "/drivers");
  Dir* d = TRY(tree_.mkdir(drivers, drv.name()));
  Driver* dp = &drv;
  // The device is found by name and locked (waiting for another thread's
  // bind or unbind of it, with the core lock released), then looked up
  // again: the driver's bus is checked after the wait too.
  TRY(tree_.add_file(d, Attribute{"bind", 0200, nullptr, [this, dp](std::string_view v) -> Result<void> {
                                    if (!dp->bus()) return Error(ENODEV, "driver unregistered");
                                    Device* dev = lock_named(*dp->bus(), chomp(v));
                                    if (!dev) return Error(ENODEV, "no such device");
                                    auto r = dp->bus() ? bind(*dp, *dev) : Result<void>(Error(ENODEV, "driver unregistered"));
                                    unlock_device(*dev);
                                    return r;
                                  }}));
  TRY(tree_.add_file(d, Attribute{"unbind", 0200, nullptr, [this, dp](std::string_view v) -> Result<void> {
                                    if (!dp->bus()) return Error(ENODEV, "driver unregistered");
                                    Device* dev = lock_named(*dp->bus(), chomp(v));
                                    if (!dev) return Error(ENODEV, "no such device");
                                    auto r = unbind(*dp, *dev);
                                    unlock_device(*dev);
                                    return r;
                                  }}));
  TRY(tree_.add_file(d, Attribute{"uevent", 0200, nullptr, [](std::string_view) { return ok(); }}));
  drv.dir_ = d;
  return ok();
}

Result<void> DriverCore::register_driver(Bus& bus, Driver& drv) {
  CoreLock lk(mu_);
  if (bus.core_ != this) return Error(EINVAL, "bus not registered");
  if (drv.bus_) return Error(EBUSY, "driver already registered");
  if (find_driver(bus, drv.name())) return Error(EEXIST, "driver name in use");
  TRY(add_driver_dir(bus, drv));
  drv.bus_ = &bus;
  bus.drivers_.push_back(&drv);
  if (auto r = bus.add_driver_attributes(drv); !r) {
    unregister_driver(drv);
    return r.error();
  }
  if (bus.autoprobe_) {
    // driver_attach(): offer the new driver every unbound device it
    // matches, each under its device lock (the list is re-checked after
    // every wait for one).
    auto devs = bus.devices_;
    for (Device* dev : devs) {
      if (!lock_if_present(bus, dev)) continue;
      if (!dev->driver_ && dev->registered_ && drv.bus_ == &bus && bus.match(*dev, drv)) (void)really_probe(*dev, drv);
      unlock_device(*dev);
    }
  }
  return ok();
}

void DriverCore::unregister_driver(Driver& drv) {
  CoreLock lk(mu_);
  Bus* bus = drv.bus_;
  if (!bus) return;
  // Unbind every device bound to it, last first, each under its device
  // lock; the list is scanned again after each (a wait releases the core
  // lock: devices may have come and gone).
  for (;;) {
    Device* target = nullptr;
    for (auto it = bus->devices_.rbegin(); it != bus->devices_.rend(); ++it)
      if ((*it)->driver_ == &drv) {
        target = *it;
        break;
      }
    if (!target) break;
    if (!lock_if_present(*bus, target)) continue;
    if (target->driver_ == &drv) detach(*target);
    unlock_device(*target);
  }
  if (drv.dir_) tree_.remove(drv.dir_->parent(), drv.name());
  std::erase(bus->drivers_, &drv);
  drv.bus_ = nullptr;
  drv.dir_ = nullptr;
}

Result<void> DriverCore::add_core_attributes(Device& dev) {
  Device* d = &dev;
  TRY(tree_.add_file(dev.dir_, Attribute{"uevent", 0644,
                                         [d]() -> Result<std::string> {
                                           std::string s;
                                           if (d->driver_) s += "DRIVER=" + d->driver_->name() + "\n";
                                           if (d->bus_)
                                             for (auto& l : d->bus_->uevent(*d)) s += l + "\n";
                                           return s;
                                         },
                                         [](std::string_view) { return ok(); }}));
  if (dev.bus_) TRY(tree_.add_link(dev.dir_, "subsystem", dev.bus_->dir_->path()));
  return ok();
}

Result<void> DriverCore::device_add(Device& dev, Bus* bus) {
  CoreLock lk(mu_);
  if (dev.registered_) return Error(EBUSY, "device already registered");
  if (dev.parent_ && !dev.parent_->registered_) return Error(EINVAL, "parent not registered");
  if (bus && bus->core_ != this) return Error(EINVAL, "bus not registered");
  if (bus && find_device(*bus, dev.name())) return Error(EEXIST, "device name in use on bus");
  Dir* parent_dir = dev.parent_ ? dev.parent_->dir_ : devices_dir_;
  dev.dir_ = TRY(tree_.mkdir(parent_dir, dev.name()));
  dev.dir_->set_devlock(dev.lock_);
  dev.bus_ = bus;
  dev.registered_ = true;
  if (dev.parent_) dev.parent_->children_++;
  auto undo = [&] {
    if (bus) {
      std::erase(bus->devices_, &dev);
      tree_.remove(tree_.find_dir(bus->dir_->path() + "/devices"), dev.name());
    }
    tree_.remove(parent_dir, dev.name());
    if (dev.parent_) dev.parent_->children_--;
    dev.registered_ = false;
    dev.bus_ = nullptr;
    dev.dir_ = nullptr;
  };
  if (auto r = add_core_attributes(dev); !r) { undo(); return r.error(); }
  if (bus) {
    bus->devices_.push_back(&dev);
    if (auto r = tree_.add_link(tree_.find_dir(bus->dir_->path() + "/devices"), dev.name(), dev.dir_->path()); !r) {
      undo();
      return r.error();
    }
    if (auto r = bus->add_device_attributes(dev); !r) { undo(); return r.error(); }
    notify(*bus, BusEvent::kAddDevice, dev);
    if (bus->autoprobe_ && dev.registered_ && bus->autoprobe_device(dev)) {
      lock_device(dev);  // new: nobody else holds it
      (void)attach(dev);
      unlock_device(dev);
    }
  }
  return ok();
}

void DriverCore::device_del(Device& dev) {
  CoreLock lk(mu_);
  if (!dev.registered_) return;
  // Parents outlive children: whoever registered the children removes them
  // first. Anything else is a bug in our code, not bad input.
  if (dev.children_ != 0) {
    log::error(dev.name(), "removed with {} registered children", dev.children_);
    std::abort();
  }
  // The device lock: waits for a bind or unbind of it in progress (the
  // caller owns `dev`, so it is still there after the wait).
  lock_device(dev);
  if (!dev.registered_) {
    unlock_device(dev);
    return;
  }
  Bus* bus = dev.bus_;
  if (bus) notify(*bus, BusEvent::kDelDevice, dev);
  detach(dev);
  std::erase(deferred_, &dev);
  dev.deferred_ = false;
  if (bus) {
    tree_.remove(tree_.find_dir(bus->dir_->path() + "/devices"), dev.name());
    std::erase(bus->devices_, &dev);
  }
  tree_.remove(dev.dir_->parent(), dev.name());
  if (dev.parent_) dev.parent_->children_--;
  dev.registered_ = false;
  dev.bus_ = nullptr;
  dev.dir_ = nullptr;
  unlock_device(dev);
}

Result<void> DriverCore::really_probe(Device& dev, Driver& drv) {
  if (dev.probing_) return Error(EBUSY, "probe in progress");
  dev.probing_ = true;
  auto r = dev.bus_->probe(dev, drv);
  dev.probing_ = false;
  if (!r) {
    int code = r.error().code;
    if (code == kEProbeDefer) {
      if (!dev.deferred_) {
        dev.deferred_ = true;
        deferred_.push_back(&dev);
      }
      log::info(dev.name(), "{}: probe deferred", drv.name());
    } else {
      dev.probe_error_ = code;
      log::warn(dev.name(), "probe with driver {} failed: {}", drv.name(), to_string(r.error()));
    }
    return r.error();
  }
  if (!dev.registered_) {
    // The probe removed its own device: nothing to bind.
    return Error(ENODEV, "device went away during probe");
  }
  dev.binding_ = std::move(*r);
  dev.driver_ = &drv;
  dev.probe_error_ = 0;
  if (dev.deferred_) {
    dev.deferred_ = false;
    std::erase(deferred_, &dev);
  }
  (void)tree_.add_link(dev.dir_, "driver", drv.dir_->path());
  (void)tree_.add_link(drv.dir_, dev.name(), dev.dir_->path());
  notify(*dev.bus_, BusEvent::kBoundDriver, dev);
  trigger_deferred();
  return ok();
}

Result<void> DriverCore::attach(Device& dev) {
  if (dev.driver_ || !dev.bus_) return ok();
  Bus& bus = *dev.bus_;
  struct Cand { int score; size_t order; Driver* drv; };
  std::vector<Cand> cands;
  for (size_t i = 0; i < bus.drivers_.size(); ++i)
    if (auto m = bus.match(dev, *bus.drivers_[i])) cands.push_back({*m, i, bus.drivers_[i]});
  std::stable_sort(cands.begin(), cands.end(), [](const Cand& a, const Cand& b) { return a.score > b.score; });
  for (auto& c : cands) {
    auto r = really_probe(dev, *c.drv);
    if (r) return ok();
    if (r.error().code == kEProbeDefer) return r.error();
    if (!dev.registered_ || dev.driver_) return ok();
  }
  return ok();
}

void DriverCore::detach(Device& dev) {
  if (!dev.driver_) return;
  Driver* drv = dev.driver_;
  notify(*dev.bus_, BusEvent::kUnbindDriver, dev);
  tree_.remove(dev.dir_, "driver");
  if (drv->dir_) tree_.remove(drv->dir_, dev.name());
  dev.binding_.reset();  // the driver's remove()
  dev.driver_ = nullptr;
  notify(*dev.bus_, BusEvent::kUnboundDriver, dev);
}

void DriverCore::trigger_deferred() {
  if (retrying_) {
    retry_again_ = true;
    return;
  }
  retrying_ = true;
  do {
    retry_again_ = false;
    auto list = deferred_;
    for (Device* dev : list) {
      if (std::find(deferred_.begin(), deferred_.end(), dev) == deferred_.end()) continue;
      // A device another thread is binding or removing is left to it (it
      // stays on the list for the next trigger).
      if (!tree_.try_lock_dev(*dev->lock_)) continue;
      if (dev->registered_ && !dev->driver_ && dev->bus_ && dev->bus_->autoprobe_ &&
          dev->bus_->autoprobe_device(*dev))
        (void)attach(*dev);
      unlock_device(*dev);
    }
  } while (retry_again_);
  retrying_ = false;
}

namespace {
// Holds a device lock for a scope.
class Locked {
 public:
  Locked(DriverCore& c, Device& d) : c_(c), d_(d) { c_.lock_device(d_); }
  ~Locked() { c_.unlock_device(d_); }
  Locked(const Locked&) = delete;
  Locked& operator=(const Locked&) = delete;

 private:
  DriverCore& c_;
  Device& d_;
};
}  // namespace

void DriverCore::lock_device(Device& dev) {
  CoreLock lk(mu_);
  auto l = dev.lock_;  // alive through the wait whatever happens to dev
  tree_.lock_dev(*l);
}

void DriverCore::unlock_device(Device& dev) {
  CoreLock lk(mu_);
  tree_.unlock_dev(*dev.lock_);
}

bool DriverCore::on_bus(const Bus& bus, const Device* dev) const {
  return std::find(bus.devices_.begin(), bus.devices_.end(), dev) != bus.devices_.end();
}

bool DriverCore::lock_if_present(Bus& bus, Device* dev) {
  CoreLock lk(mu_);
  for (;;) {
    if (!on_bus(bus, dev)) return false;
    if (tree_.try_lock_dev(*dev->lock_)) return true;
    mu_.wait();
  }
}

Device* DriverCore::lock_named(Bus& bus, std::string_view name) {
  CoreLock lk(mu_);
  for (;;) {
    Device* dev = find_device(bus, name);
    if (!dev) return nullptr;
    if (tree_.try_lock_dev(*dev->lock_)) return dev;
    mu_.wait();
  }
}

Result<void> DriverCore::bind(Driver& drv, Device& dev) {
  CoreLock lk(mu_);
  Locked dl(*this, dev);
  if (!dev.registered_ || dev.bus_ != drv.bus_ || !drv.bus_) return Error(ENODEV, "no such device");
  if (!drv.bus_->match(dev, drv)) return Error(ENODEV, "driver does not match device");
  if (dev.driver_) return Error(EBUSY, "device already has a driver");
  auto r = really_probe(dev, drv);
  if (!r && r.error().code == kEProbeDefer) return Error(EAGAIN, "probe deferred");
  return r;
}

Result<void> DriverCore::unbind(Driver& drv, Device& dev) {
  CoreLock lk(mu_);
  Locked dl(*this, dev);
  if (!dev.registered_ || dev.driver_ != &drv) return Error(ENODEV, "device not bound to this driver");
  detach(dev);
  return ok();
}

Result<void> DriverCore::release_driver(Device& dev) {
  CoreLock lk(mu_);
  Locked dl(*this, dev);
  if (!dev.driver_) return Error(ENODEV, "device has no driver");
  detach(dev);
  return ok();
}

Result<void> DriverCore::drivers_probe(Device& dev) {
  CoreLock lk(mu_);
  Locked dl(*this, dev);
  if (!dev.registered_) return Error(ENODEV, "no such device");
  if (!dev.driver_) (void)attach(dev);
  return ok();
}

Result<void> DriverCore::set_driver_override(Device& dev, std::string_view value) {
  CoreLock lk(mu_);
  Locked dl(*this, dev);
  // drivers/base/driver.c driver_set_override(): one byte is kept for the
  // newline that show() adds, so a page minus one is already too long.
  if (value.size() >= 4096 - 1) return Error(EINVAL, "driver_override too long");
  size_t nl = value.find('\n');
  if (nl != std::string_view::npos) value = value.substr(0, nl);
  dev.driver_override_ = std::string(value);
  return ok();
}

Device* DriverCore::find_device(Bus& bus, std::string_view name) const {
  for (Device* d : bus.devices_)
    if (d->name() == name) return d;
  return nullptr;
}

Driver* DriverCore::find_driver(Bus& bus, std::string_view name) const {
  for (Driver* d : bus.drivers_)
    if (d->name() == name) return d;
  return nullptr;
}

std::vector<Device*> DriverCore::deferred_devices() const { return deferred_; }

}  // namespace uvfio::driver
