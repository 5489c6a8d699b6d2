// SPDX-License-Identifier: BSD-3-Clause
// Registry: where bound VFIO devices are announced to frontends (the
// vfio-user server) and shown in sysfs as vfio-dev/vfio<N>, and where an
// unbinding driver waits for the user to let go (reference §5.2).
#pragma once

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "base/result.h"
#include "driver/core.h"
#include "vfio/device.h"
#include "base/mutex.h"

namespace uvfio::vfio {

class RegistryListener {
 public:
  virtual ~RegistryListener() = default;
  // `dev` is usable until device_removing() returns for it. A failure (the
  // frontend cannot serve the device: no socket, ...) fails the
  // registration with its errno, after the listeners that took the device
  // have been told of its removal.
  virtual Result<void> device_added(Device& dev, driver::Device& parent) = 0;
  // Stop accepting new users of `dev`; the current one is asked to leave.
  virtual void device_removing(Device& dev) = 0;
};

class Registry {
 public:
  // `core` outlives the registry.
  explicit Registry(driver::DriverCore& core) : core_(core) {}

  // vfio_register_group_dev(): numbers the device, adds
  // <parent>/vfio-dev/vfio<N>, tells listeners. Runs under the core lock
  // (from a driver's probe()). Fails, leaving nothing behind, if a listener
  // cannot take the device.
  Result<void> register_device(Device& dev, driver::Device& parent);
  // vfio_unregister_group_dev(): tells listeners, then blocks until the user
  // has closed the device, signalling REQ every `request_interval`.
  void unregister_device(Device& dev);

  void add_listener(RegistryListener* l);
  // Adds `l` and tells it of every device already registered, atomically
  // with respect to registrations. A device it cannot take is logged and
  // left without it (the device is bound already).
  void subscribe(RegistryListener* l);
  // An attribute in <parent>/vfio-dev/vfio<N>/, or in a subdirectory of it
  // ("stats": the frontend's counters beside the device's own). Takes the
  // core lock (recursive: the caller may hold it).
  Result<void> add_attribute(Device& dev, driver::Attribute a, std::string_view subdir = {});
  // Returns once no call to `l` is in progress: it may be destroyed then.
  void remove_listener(RegistryListener* l);
  std::vector<Device*> devices() const;
  int minor(const Device& dev) const;  // N of vfio<N>, -1 if unknown
  void set_request_interval(std::chrono::milliseconds i) { request_interval_ = i; }

 private:
  driver::DriverCore& core_;
  mutable Mutex mu_;
  struct Entry {
    int minor;
    driver::Device* parent;
  };
  std::map<Device*, Entry> devs_ GUARDED_BY(mu_);
  std::vector<RegistryListener*> listeners_ GUARDED_BY(mu_);
  // Listener calls in progress (made without mu_): remove_listener waits
  // for them.
  int calls_ GUARDED_BY(mu_) = 0;
  std::condition_variable calls_cv_;
  // Copies the listeners and counts a call in progress; done_calls() ends it.
  std::vector<RegistryListener*> begin_calls();
  void end_calls();
  int next_minor_ = 0;
  void remove_dir(const Entry& e);
  void add_device_stats(driver::Dir* dir, Device& dev);
  std::chrono::milliseconds request_interval_{10000};  // the kernel's 10 s
};

}  // namespace uvfio::vfio
