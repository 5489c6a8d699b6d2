// SPDX-License-Identifier: BSD-3-Clause
#include "hw/fabric.h"

namespace uvfio::hw {

Fabric::~Fabric() {
  // Tear down in reverse address order so VFs (higher buses) and functions
  // behind bridges go before what they hang off.
  listener_ = nullptr;
  std::vector<Function*> all = functions();
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    if (owned_.count(*it)) detach(**it);
  }
}

Result<Function*> Fabric::attach(std::unique_ptr<Function> f, Bdf at) {
  if (!f) return Error(EINVAL, "no function");
  Function* raw = f.get();
  TRY(attach_borrowed(*raw, at));
  MutexLock lk(mu_);
  owned_[raw] = std::move(f);
  return raw;
}

Result<void> Fabric::attach_borrowed(Function& f, Bdf at) {
  if (at.domain() != domain_) return Error(EINVAL, "function in another PCI domain");
  MutexLock lk(mu_);
  if (routes_.count(at)) return Error(EEXIST, "PCI address in use");
  routes_[at] = &f;
  f.bdf_ = at;
  f.fabric_ = this;
  return ok();
}

void Fabric::detach(Function& f) {
  if (listener_) listener_->function_removing(f);
  std::unique_ptr<Function> doomed;
  {
    MutexLock lk(mu_);
    auto it = routes_.find(f.bdf_);
    if (it != routes_.end() && it->second == &f) routes_.erase(it);
    f.fabric_ = nullptr;
    auto o = owned_.find(&f);
    if (o != owned_.end()) {
      doomed = std::move(o->second);
      owned_.erase(o);
    }
  }
  // `doomed` dies outside the lock: a PF's destructor detaches its VFs.
}

Function* Fabric::find(Bdf bdf) const {
  MutexLock lk(mu_);
  auto it = routes_.find(bdf);
  return it == routes_.end() ? nullptr : it->second;
}

std::vector<Function*> Fabric::functions() const {
  MutexLock lk(mu_);
  std::vector<Function*> v;
  for (auto& [bdf, f] : routes_) v.push_back(f);
  return v;
}

uint32_t Fabric::config_read(Bdf bdf, uint16_t off, unsigned width) const {
  Function* f = find(bdf);
  if (!f) return width >= 4 ? 0xffffffffu : (1u << (8 * width)) - 1;
  return f->config_read(off, width);
}

void Fabric::config_write(Bdf bdf, uint16_t off, unsigned width, uint32_t value) {
  if (Function* f = find(bdf)) f->config_write(off, width, value);
}

}  // namespace uvfio::hw
