// SPDX-License-Identifier: BSD-3-Clause
// mlx5_vfio_pci: the variant driver of the seed. It binds each VF twice — a
// PCI driver for the VF itself (override-only id table: 15b3:101e binds only
// through driver_override) and an auxiliary driver for the PF's
// "mlx5_core.vfio_pci.<id>" device — and pairs the two halves per VF,
// whichever binds first. The VF half reaches the PF's services only through
// a PfLink, which the aux half connects and disconnects: once the aux device
// goes (PF unbind, SR-IOV disable) every PF service fails with ENOTCONN and
// the VF half is told (VfBinding::pf_detached()).
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>

#include "base/bdf.h"
#include "base/result.h"
#include "bus/auxiliary/auxiliary.h"
#include "bus/pci/pci.h"
#include "drivers/mlx5_core/mlx5_core.h"
#include "drivers/mlx5_vfio_pci/migration.h"
#include "vfio/pci_core/core.h"
#include "vfio/registry.h"

namespace uvfio::drivers::mlx5_vfio_pci {

inline constexpr const char* kDriverName = "mlx5_vfio_pci";
inline constexpr const char* kAuxDriverName = "vfio_pci_ex";  // the RFC v2 name

// The VF half's handle to its PF. Shared between the VF's binding and any
// operation in flight on another thread, hence a shared_ptr; the aux device
// pointer inside is valid only while connected, under mu_.
class PfLink {
 public:
  bool connected() const;
  Result<Bdf> pf_bdf() const;
  Result<uint16_t> vf_function_id() const;  // through mlx5_core's PF services
  // Runs `fn` on the PF's services while they are connected (the aux device
  // cannot go away meanwhile); ENOTCONN once they are gone.
  template <class F>
  auto call(F&& fn) -> decltype(fn(std::declval<mlx5::VfioAuxDevice&>())) {
    std::lock_guard lk(mu_);
    if (!aux_) return Error(ENOTCONN, "PF services not connected");
    return fn(*aux_);
  }

 private:
  friend class Mlx5VfioPci;
  mutable std::mutex mu_;
  mlx5::VfioAuxDevice* aux_ = nullptr;  // guarded by mu_
};

class Mlx5VfioPci;

// The VF half: a VFIO device built on vfio-pci-core. It overrides only what
// the variant changes — migration (STOP_COPY, P2P, PRE_COPY) and DMA logging
// through the PF's firmware, reached over the auxiliary device — and what it
// learns from its PF; the rest is the core's.
class VfDevice : public vfio::pci::CoreDevice {
 public:
  VfDevice(Mlx5VfioPci& mod, bus::pci::PciDevice& vf, const driver::Driver& drv, vfio::Registry& registry);
  ~VfDevice() override;
  bus::pci::PciDevice& vf() const { return pdev(); }
  const std::shared_ptr<PfLink>& pf_link() const { return link_; }
  // How many times the PF side went away while this VF was bound.
  int pf_detach_count() const { return detaches_; }
  // The aux half connected us (or disconnected us) to the PF.
  void pf_attached();
  // The PF's services are gone: a migration in flight ends in ERROR and an
  // open user is asked to release the device.
  void pf_detached();

 protected:
  uint64_t migration_flags() const override;
  Result<std::shared_ptr<vfio::MigrationFile>> migration_arc(vfio::MigState from, vfio::MigState to) override;
  Result<uint64_t> migration_data_size() override;
  bool has_dma_logging() const override { return true; }
  Result<void> log_start(uint64_t& page_size, const std::vector<vfio::DmaRange>& ranges) override;
  Result<void> log_stop() override;
  Result<void> log_read_and_clear(uint64_t iova, uint64_t length, uint64_t page_size,
                                  std::vector<uint64_t>& bitmap) override;
  void reset_done() override;

 private:
  void end_sessions();
  std::mutex sess_mu_;
  std::shared_ptr<SaveFile> save_;      // guarded by sess_mu_
  std::shared_ptr<ResumeFile> resume_;  // guarded by sess_mu_
  std::atomic<uint64_t> log_page_{0};  // 0: not logging; the PF going (another thread) clears it

  Mlx5VfioPci& mod_;
  std::shared_ptr<PfLink> link_ = std::make_shared<PfLink>();
  int detaches_ = 0;
};
using VfBinding = VfDevice;

// The aux half's per-device state.
class AuxBinding : public driver::Binding {
 public:
  AuxBinding(Mlx5VfioPci& mod, mlx5::VfioAuxDevice& aux);
  ~AuxBinding() override;
  mlx5::VfioAuxDevice& aux() const { return aux_; }

 private:
  Mlx5VfioPci& mod_;
  mlx5::VfioAuxDevice& aux_;
};

class Mlx5VfioPci {
 public:
  // The buses and the registry outlive this module object;
  // unregister_drivers() before it dies.
  Mlx5VfioPci(bus::pci::PciBus& pci, bus::auxiliary::AuxiliaryBus& aux, vfio::Registry& registry);
  ~Mlx5VfioPci();

  Result<void> register_drivers();
  void unregister_drivers();

  bus::pci::PciDriver& pci_driver();
  bus::auxiliary::AuxiliaryDriver& aux_driver();

  // The VF binding of `vf`, paired or not; nullptr if the VF half is unbound.
  VfDevice* vf_binding(Bdf vf) const;
  bool paired(Bdf vf) const;

 private:
  friend class VfDevice;
  friend class AuxBinding;
  class PciHalf;
  class AuxHalf;
  struct Slot {
    VfDevice* vf = nullptr;
    AuxBinding* aux = nullptr;
  };
  void vf_bound(VfDevice& b);
  void vf_unbound(VfDevice& b);
  void aux_bound(AuxBinding& b);
  void aux_unbound(AuxBinding& b);
  void connect(Slot& s);

  bus::pci::PciBus& pci_;
  bus::auxiliary::AuxiliaryBus& aux_;
  vfio::Registry& registry_;
  std::unique_ptr<PciHalf> pci_half_;
  std::unique_ptr<AuxHalf> aux_half_;
  std::map<Bdf, Slot> slots_;  // guarded by the driver core lock (probe/remove run under it)
};

}  // namespace uvfio::drivers::mlx5_vfio_pci
