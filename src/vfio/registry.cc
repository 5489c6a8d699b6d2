// SPDX-License-Identifier: BSD-3-Clause
#include "vfio/registry.h"

#include <fmt/format.h>

#include "base/log.h"

namespace uvfio::vfio {

Result<void> Registry::register_device(Device& dev, driver::Device& parent) {
  std::lock_guard ck(core_.lock());
  int minor;
  std::vector<RegistryListener*> ls;
  {
    MutexLock lk(mu_);
    if (devs_.count(&dev)) return Error(EEXIST, "vfio device registered twice");
    minor = next_minor_++;
    devs_[&dev] = {minor, &parent};
  }
  ls = begin_calls();
  driver::Tree& t = core_.tree();
  if (driver::Dir* d = parent.dir()) {
    driver::Dir* vd = d->child("vfio-dev") ? static_cast<driver::Dir*>(d->child("vfio-dev")) : *t.mkdir(d, "vfio-dev");
    if (auto r = t.mkdir(vd, fmt::format("vfio{}", minor)); r) {
      (void)t.add_file(*r, driver::Attribute{"dev", 0444, [minor]() -> Result<std::string> {
                                               return fmt::format("{}:{}\n", 511, minor);
                                             },
                                             nullptr});
      if (auto st = t.mkdir(*r, "stats"); st) add_device_stats(*st, dev);
    }
  }
  for (size_t i = 0; i < ls.size(); ++i) {
    if (auto r = ls[i]->device_added(dev, parent); !r) {
      for (size_t j = 0; j < i; ++j) ls[j]->device_removing(dev);
      end_calls();
      remove_dir({minor, &parent});
      MutexLock lk(mu_);
      devs_.erase(&dev);
      return r.error();
    }
  }
  end_calls();
  return ok();
}

std::vector<RegistryListener*> Registry::begin_calls() {
  MutexLock lk(mu_);
  ++calls_;
  return listeners_;
}

void Registry::end_calls() {
  MutexLock lk(mu_);
  if (--calls_ == 0) calls_cv_.notify_all();
}

void Registry::remove_dir(const Entry& e) {
  std::lock_guard ck(core_.lock());
  if (driver::Dir* d = e.parent->dir()) {
    if (auto* vd = d->child("vfio-dev")) {
      core_.tree().remove(static_cast<driver::Dir*>(vd), fmt::format("vfio{}", e.minor));
      if (static_cast<driver::Dir*>(vd)->children().empty()) core_.tree().remove(d, "vfio-dev");
    }
  }
}

void Registry::unregister_device(Device& dev) {
  std::vector<RegistryListener*> ls;
  Entry e;
  {
    MutexLock lk(mu_);
    auto it = devs_.find(&dev);
    if (it == devs_.end()) return;
    e = it->second;
  }
  ls = begin_calls();
  for (auto* l : ls) l->device_removing(dev);
  end_calls();
  // The cooperative unbind: ask (REQ), wait for the user to close — with
  // the driver core's lock released (the device lock stays held: only
  // stores to this device wait with us).
  core_.lock().unlocked([&] { dev.wait_released(request_interval_); });
  remove_dir(e);
  MutexLock lk(mu_);
  devs_.erase(&dev);
}

void Registry::add_listener(RegistryListener* l) {
  MutexLock lk(mu_);
  listeners_.push_back(l);
}

void Registry::subscribe(RegistryListener* l) {
  std::lock_guard ck(core_.lock());
  std::vector<std::pair<Device*, driver::Device*>> existing;
  {
    MutexLock lk(mu_);
    listeners_.push_back(l);
    for (auto& [d, e] : devs_) existing.emplace_back(d, e.parent);
  }
  for (auto& [d, p] : existing) {
    if (auto r = l->device_added(*d, *p); !r) {
      log::error(d->name(), "vfio device not served: {}", to_string(r.error()));
    }
  }
}

// The device's counters, one value per file as sysfs statistics are. The
// files go with the directory before the device does (unregister_device).
void Registry::add_device_stats(driver::Dir* dir, Device& dev) {
  driver::Tree& t = core_.tree();
  Device* d = &dev;
  auto num = [&](const char* name, auto get) {
    (void)t.add_file(dir, driver::Attribute{name, 0444, [get]() -> Result<std::string> {
                                              return fmt::format("{}\n", get());
                                            },
                                            nullptr});
  };
  num("region_bytes_read", [d] { return d->stats().region_bytes_read.get(); });
  num("region_bytes_written", [d] { return d->stats().region_bytes_written.get(); });
  num("dma_ops", [d] { return d->iommu().dma_ops(); });
  num("dma_bytes", [d] { return d->iommu().dma_bytes(); });
  num("dma_maps", [d] { return d->iommu().num_maps(); });
  num("dma_map_bytes", [d] { return d->iommu().map_bytes(); });
  num("dma_map_bytes_peak", [d] { return d->iommu().map_bytes_peak(); });
  num("interrupts", [d] { return d->stats().interrupts.get(); });
  num("interrupts_dropped", [d] { return d->stats().interrupts_dropped.get(); });
  num("migration_bytes", [d] { return d->stats().migration_bytes.get(); });
  num("last_stop_ms", [d] {
    return fmt::format("{:.3f}", static_cast<double>(d->stats().last_stop_ns.get()) / 1e6);
  });
  (void)t.add_file(dir, driver::Attribute{"migration_state", 0444, [d]() -> Result<std::string> {
                                            return std::string(to_string(d->mig_state())) + "\n";
                                          },
                                          nullptr});
}

Result<void> Registry::add_attribute(Device& dev, driver::Attribute a, std::string_view subdir) {
  std::lock_guard ck(core_.lock());
  Entry e;
  {
    MutexLock lk(mu_);
    auto it = devs_.find(&dev);
    if (it == devs_.end()) return Error(ENODEV, "not registered");
    e = it->second;
  }
  driver::Dir* d = core_.tree().find_dir(e.parent->dir()->path() + "/vfio-dev/" + fmt::format("vfio{}", e.minor) +
                                         (subdir.empty() ? "" : "/" + std::string(subdir)));
  if (!d) return Error(ENOENT, "no such vfio-dev directory");
  return core_.tree().add_file(d, std::move(a));
}


void Registry::remove_listener(RegistryListener* l) {
  MutexLock lk(mu_);
  std::erase(listeners_, l);
  lk.wait(calls_cv_, [&] {
    mu_.assert_held();
    return calls_ == 0;
  });
}

std::vector<Device*> Registry::devices() const {
  MutexLock lk(mu_);
  std::vector<Device*> v;
  for (auto& [d, e] : devs_) v.push_back(d);
  return v;
}

int Registry::minor(const Device& dev) const {
  MutexLock lk(mu_);
  auto it = devs_.find(const_cast<Device*>(&dev));
  return it == devs_.end() ? -1 : it->second.minor;
}

}  // namespace uvfio::vfio
