// SPDX-License-Identifier: BSD-3-Clause
// Fabric: one PCI segment (domain) — the routing table from requester ids to
// emulated functions, as config cycles see it. A config read of an absent
// function returns all-ones, like a master abort.
//
// Owns the functions a topology places; VFs are owned by their PF and only
// routed here while VF Enable is set. A listener (the PCI bus layer) is told
// before any function leaves the fabric, so no software object outlives the
// hardware it drives (surprise removal, e.g. a PF's FLR taking its VFs away).
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "base/bdf.h"
#include "base/result.h"
#include "hw/function.h"
#include "base/mutex.h"

namespace uvfio::hw {

class FabricListener {
 public:
  virtual ~FabricListener() = default;
  // `f` is still valid during the call and gone after it.
  virtual void function_removing(Function& f) = 0;
};

class Fabric {
 public:
  explicit Fabric(uint16_t domain = 0) : domain_(domain) {}
  ~Fabric();
  Fabric(const Fabric&) = delete;
  Fabric& operator=(const Fabric&) = delete;

  uint16_t domain() const { return domain_; }

  // Places a function the fabric owns. EEXIST if the address is taken, EINVAL
  // for another domain.
  Result<Function*> attach(std::unique_ptr<Function> f, Bdf at);
  // Routes a function owned elsewhere (a VF, owned by its PF).
  Result<void> attach_borrowed(Function& f, Bdf at);
  // Takes a function out of routing after telling the listener. Destroys it
  // if the fabric owns it.
  void detach(Function& f);

  Function* find(Bdf bdf) const;
  std::vector<Function*> functions() const;  // in address order

  uint32_t config_read(Bdf bdf, uint16_t off, unsigned width) const;
  void config_write(Bdf bdf, uint16_t off, unsigned width, uint32_t value);

  // The listener must outlive the fabric or be reset to nullptr first.
  void set_listener(FabricListener* l) { listener_ = l; }

 private:
  uint16_t domain_;
  mutable Mutex mu_;
  std::map<Bdf, Function*> routes_ GUARDED_BY(mu_);
  std::map<Function*, std::unique_ptr<Function>> owned_ GUARDED_BY(mu_);
  FabricListener* listener_ = nullptr;
};

}  // namespace uvfio::hw
