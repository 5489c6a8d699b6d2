// SPDX-License-Identifier: BSD-3-Clause
// vfio-pci-core: the VFIO device contract for a PCI function, as Linux's
// drivers/vfio/pci/vfio_pci_core.c, _config.c, _intrs.c and _rdwr.c build it.
// Generic drivers (vfio_pci) use CoreDevice as is; variant drivers derive
// from it and override only what they change (the "override points" below),
// calling the core for the rest.
//
// Files: core.cc (lifecycle, regions, reset, features, VF token),
// config.cc (config-space virtualization), intrs.cc (INTx/MSI/MSI-X/ERR/REQ),
// rdwr.cc (BAR and ROM access).
#pragma once

#include <array>
#include <atomic>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "bus/pci/pci.h"
#include "driver/device.h"
#include "hw/irq.h"
#include "vfio/device.h"
#include "vfio/registry.h"

namespace uvfio::vfio::pci {

// Config map sentinels (vfio_pci_config.c).
inline constexpr uint8_t kCapBasic = 0x00;
inline constexpr uint8_t kCapInvalidVirt = 0xfe;
inline constexpr uint8_t kCapInvalid = 0xff;

// The VF token of an SR-IOV PF bound to a vfio-pci-core driver (§5.1).
struct VfToken {
  std::mutex mu;
  Uuid uuid{};      // guarded by mu
  int users = 0;    // open VFs; guarded by mu
};

class CoreDevice;

// One config-space capability's permissions (perm_bits): per byte, which
// bits are virtualized and which the user may write, plus handlers.
struct PermBits {
  std::vector<uint8_t> virt;
  std::vector<uint8_t> write;
  using ReadFn = Result<uint32_t> (CoreDevice::*)(uint16_t pos, unsigned count, const PermBits& perm, uint16_t offset);
  using WriteFn = Result<void> (CoreDevice::*)(uint16_t pos, unsigned count, const PermBits& perm, uint16_t offset,
                                               uint32_t val);
  ReadFn read = nullptr;
  WriteFn write_fn = nullptr;
};

// A CoreDevice is also the driver's Binding of the PCI function (its
// drvdata): destroying it is the driver's remove(), which unregisters and so
// waits for the user to close.
class CoreDevice : public Device, public driver::Binding, private hw::IrqSink {
 public:
  // `pdev` stays registered (and bound to `drv`) for the device's lifetime;
  // `registry` and `drv` outlive it.
  CoreDevice(bus::pci::PciDevice& pdev, const driver::Driver& drv, Registry& registry);
  ~CoreDevice() override;

  bus::pci::PciDevice& pdev() const { return pdev_; }

  // vfio_pci_core_register_device(): EINVAL for a bridge, EBUSY for a PF
  // with VFs already enabled. Unregister blocks until the user closes.
  Result<void> register_device();
  void unregister_device();

  // SR-IOV through vfio (sriov_configure of a vfio-pci-core PF driver).
  Result<int> sriov_configure(int num_vfs);
  // The PF's token, if this is a PF that has one.
  VfToken* vf_token() { return vf_token_.get(); }

  // The PCI core reset the function under the driver (sysfs `reset`, the
  // bound PCI driver's reset_done): the variant's reset_done() and
  // migration back to RUNNING, as after VFIO_DEVICE_RESET
  // (mlx5vf_pci_aer_reset_done).
  void pci_reset_done();

  // Diagnostics for tests.
  bool memory_enabled() const;
  int irq_type() const { return irq_type_; }

 protected:
  // ---- Override points for variant drivers ------------------------------
  // vfio_pci_core_enable()/finish_enable()/disable(): open and last close.
  virtual Result<void> enable();
  virtual void finish_enable();
  virtual void disable();
  // Device-specific regions (index >= 9) a variant adds.
  struct ExtraRegion {
    uint32_t type = 0, subtype = 0;
    uint64_t size = 0;
    uint32_t flags = 0;
  };
  virtual std::vector<ExtraRegion> extra_regions() { return {}; }
  virtual Result<size_t> extra_region_rw(uint32_t index, uint64_t off, std::span<uint8_t> buf, bool write);
  // Called after a function reset (FLR, VFIO_DEVICE_RESET): mlx5 resets its
  // migration state here.
  virtual void reset_done() {}

  // ---- Helpers for variants (protected core API) --------------------------
  // The contract implementation; variants call these from their overrides.
  Result<vfio_device_info> info() override;
  Result<RegionInfo> region_info(uint32_t index) override;
  Result<size_t> read(uint32_t index, uint64_t offset, std::span<uint8_t> out) override;
  Result<size_t> write(uint32_t index, uint64_t offset, std::span<const uint8_t> in) override;
  Result<MmapArea> mmap(uint32_t index) override;
  Result<vfio_irq_info> irq_info(uint32_t index) override;
  Result<void> irqs(IrqSet& req) override;
  Result<void> do_reset() override;
  Result<FeatureReply> feature(uint32_t flags, std::span<const uint8_t> payload) override;
  void request(unsigned count) override;
  void release_irqs() override { irqs_disable_all(); }
  Result<void> match_device(const OpenArgs& args) override;  // the VF token
  Result<void> open_device(const OpenArgs& args) override;
  void close_device() override;

  // Signals the ERR eventfd (AER error_detected).
  void signal_err();

 private:
  friend struct PermTables;
  // ---- config.cc ----------------------------------------------------------
  Result<void> config_init();
  void config_free();
  Result<size_t> config_rw(uint64_t pos, std::span<uint8_t> buf, bool write);
  const PermBits* perm_for(uint16_t pos, uint16_t& cap_start);
  uint32_t vget(uint16_t pos, unsigned count) const;
  void vset(uint16_t pos, unsigned count, uint32_t v);
  uint32_t hw_read(uint16_t pos, unsigned count) const;
  void hw_write(uint16_t pos, unsigned count, uint32_t v);
  Result<uint32_t> default_read(uint16_t pos, unsigned count, const PermBits& perm, uint16_t offset);
  Result<void> default_write(uint16_t pos, unsigned count, const PermBits& perm, uint16_t offset, uint32_t val);
  Result<uint32_t> direct_read(uint16_t pos, unsigned count, const PermBits& perm, uint16_t offset);
  Result<uint32_t> raw_read(uint16_t pos, unsigned count, const PermBits& perm, uint16_t offset);
  Result<void> raw_write(uint16_t pos, unsigned count, const PermBits& perm, uint16_t offset, uint32_t val);
  Result<uint32_t> basic_read(uint16_t pos, unsigned count, const PermBits& perm, uint16_t offset);
  Result<void> basic_write(uint16_t pos, unsigned count, const PermBits& perm, uint16_t offset, uint32_t val);
  Result<void> pm_write(uint16_t pos, unsigned count, const PermBits& perm, uint16_t offset, uint32_t val);
  Result<uint32_t> msi_read(uint16_t pos, unsigned count, const PermBits& perm, uint16_t offset);
  Result<void> msi_write(uint16_t pos, unsigned count, const PermBits& perm, uint16_t offset, uint32_t val);
  Result<void> exp_write(uint16_t pos, unsigned count, const PermBits& perm, uint16_t offset, uint32_t val);
  void bar_fixup();
  void cap_init();
  void ecap_init();

  // ---- intrs.cc ------------------------------------------------------------
  Result<void> set_intx(IrqSet& req);
  Result<void> set_msi(IrqSet& req, bool msix);
  Result<void> set_ctx_trigger(IrqSet& req, UniqueFd& slot);
  Result<void> msi_enable(unsigned nvec, bool msix);
  void msi_disable();
  void intx_mask();
  void intx_unmask();
  void irqs_disable_all();
  Result<void> virqfd_enable(UniqueFd fd);
  void virqfd_disable();
  void msi(uint64_t address, uint32_t data) override;
  void intx(bool asserted) override;
  void signal(int efd);  // counts the interrupt

  // ---- rdwr.cc ---------------------------------------------------------------
  Result<size_t> bar_rw(uint32_t bar, uint64_t off, std::span<uint8_t> buf, bool write);

  // ---- core.cc ----------------------------------------------------------------
  Result<void> match_token(const OpenArgs& args);
  Result<void> function_reset();
  void save_state();
  void restore_state();

  bus::pci::PciDevice& pdev_;
  const driver::Driver& drv_;
  Registry& registry_;
  bool registered_ = false;
  bool reset_works_ = false;

  // Config virtualization (valid while open).
  std::vector<uint8_t> vconfig_;
  std::vector<uint8_t> map_;
  PermBits msi_perm_;
  bool bardirty_ = true;
  bool no_command_memory_ = false;
  bool virq_disabled_ = false;
  uint8_t msi_qmax_ = 0;
  uint8_t power_state_ = 0;  // D0..D3hot
  std::array<uint32_t, 6> saved_bars_{};
  bus::pci::SavedState saved_;       // header restored after reset
  bus::pci::SavedState open_saved_;  // as saved at open: what close restores

  // Interrupts (guarded by Device's igate for changes; irq_mu_ for delivery).
  std::mutex irq_mu_;
  int irq_type_ = -1;  // VFIO_PCI_*_IRQ_INDEX or -1 (none)
  UniqueFd intx_trigger_;
  // The INTx unmask eventfd (vfio_virqfd): a write to it unmasks, as an
  // UNMASK ioctl would. A thread waits on it while one is registered.
  struct Virqfd {
    UniqueFd fd, stop;
    std::thread thread;
  };
  std::unique_ptr<Virqfd> unmask_virqfd_;  // changed under igate only
  bool intx_masked_ = false;
  bool intx_pending_ = false;  // line asserted while masked
  std::vector<UniqueFd> msi_triggers_;
  std::vector<bool> msi_allocated_;
  UniqueFd err_trigger_, req_trigger_;
  uint64_t msix_table_off_ = 0, msix_table_len_ = 0;
  unsigned msix_bar_ = ~0u;

  // SR-IOV / VF token.
  std::unique_ptr<VfToken> vf_token_;  // PFs only
  CoreDevice* sriov_pf_ = nullptr;     // the vfio-owned PF of this VF; outlives it
  int pf_notifier_ = 0;
};

}  // namespace uvfio::vfio::pci
