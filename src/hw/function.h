// SPDX-License-Identifier: BSD-3-Clause
// Function: one emulated PCI function — config space with hardware semantics,
// BARs with memory behind them, capabilities, and Function Level Reset.
//
// A device model derives from Function, builds its config space in its
// create() factory (ids, BARs, capabilities), then calls finish_build(),
// which records the power-on state that FLR returns to.
//
// Concurrency: config and MMIO accesses to one function are serialized by its
// user (the driver core while unbound, the bound driver afterwards); the
// Fabric's routing table has its own lock.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/bdf.h"
#include "base/range.h"
#include "base/result.h"
#include "hw/bar.h"
#include "hw/irq.h"
#include "hw/config_space.h"

namespace uvfio::hw {

class Fabric;
class IommuDomain;
class RegisterBlock;

enum class IrqMode { kNone, kIntx, kMsi, kMsix };

struct FunctionIds {
  uint16_t vendor = 0;
  uint16_t device = 0;
  uint32_t class_code = 0;  // 24 bits: base class, sub class, prog-if
  uint8_t revision = 0;
  uint16_t subsystem_vendor = 0;
  uint16_t subsystem_device = 0;
};

class Function {
 public:
  virtual ~Function();
  Function(const Function&) = delete;
  Function& operator=(const Function&) = delete;

  // What model this is ("mlx5-pf", "root-port", ...), for logs and sysfs.
  const std::string& model() const { return model_; }
  Bdf bdf() const { return bdf_; }
  Fabric* fabric() const { return fabric_; }

  // Host access to config space: hardware write semantics, then the model's
  // side effects (FLR, SR-IOV enable, ...).
  uint32_t config_read(uint16_t off, unsigned width) const { return cfg_.read(off, width); }
  void config_write(uint16_t off, unsigned width, uint32_t value);

  const ConfigSpace& config() const { return cfg_; }
  ConfigSpace& config() { return cfg_; }  // build time, and tests
  bool is_bridge() const {
    return (cfg_.get(kHeaderType) & 0x7f) == PCI_HEADER_TYPE_BRIDGE;
  }

  const BarDesc& bar_desc(unsigned idx) const { return bars_[idx < kNumBars ? idx : 0]; }
  BarMemory* bar_memory(unsigned idx) { return idx < kNumBars ? bar_mem_[idx].get() : nullptr; }

  // The register block a model decodes in `bar` (its table, for tools and
  // tests), or nullptr where the BAR is plain memory.
  virtual const RegisterBlock* registers(unsigned bar) const {
    (void)bar;
    return nullptr;
  }

  // MMIO: the MSI-X table and PBA are decoded by the function itself; the
  // rest goes to the model (bar_read/bar_write; plain memory by default).
  // EINVAL for an unimplemented BAR or an access past its end.
  Result<uint64_t> mmio_read(unsigned bar, uint64_t off, unsigned width);
  Result<void> mmio_write(unsigned bar, uint64_t off, unsigned width, uint64_t value);
  // Bulk MMIO, as a burst of accesses: runs of plain BAR memory (no
  // register, no MSI-X structure) are copied at once, the rest goes access
  // by access (naturally aligned, at most 8 bytes) through the paths above.
  // A model's bar_read/bar_write may decode only the registers it reports
  // through registers(); every other byte is plain BAR memory.
  Result<void> mmio_read_block(unsigned bar, uint64_t off, std::span<uint8_t> out);
  Result<void> mmio_write_block(unsigned bar, uint64_t off, std::span<const uint8_t> in);
  // How many bytes from `off` in `bar` (at most `len`) are plain memory: no
  // register and no MSI-X structure. 0 if `off` is in one.
  uint64_t plain_run(unsigned bar, uint64_t off, uint64_t len) const;

 private:
  template <class Plain, class Access>
  Result<void> walk_block(unsigned bar, uint64_t off, size_t size, Plain plain, Access access);

 public:
  // ---- Interrupts -------------------------------------------------------
  // The sink must outlive its registration (set nullptr to detach; returns
  // after any delivery in progress).
  void set_irq_sink(IrqSink* sink);
  // What config space currently enables: MSI-X, else MSI, else INTx (pin
  // present and not disabled), else none.
  IrqMode irq_mode() const;
  // Raise `vector` in the enabled mode (INTx: assert the pin). Masked MSI-X
  // vectors set their pending bit and fire when unmasked.
  void raise_irq(unsigned vector);
  void set_intx(bool asserted);
  unsigned msix_table_size() const { return static_cast<unsigned>(msix_.size()); }
  bool msix_pending(unsigned vector) const;

  // ---- DMA --------------------------------------------------------------
  // The IOMMU domain this function's DMA goes through (set by the platform
  // or the driver that owns it; nullptr: DMA fails with EFAULT).
  void set_iommu(IommuDomain* d) { iommu_.store(d); }
  IommuDomain* iommu() const { return iommu_.load(); }

  // Function Level Reset: config space back to power-on values, model state
  // reset (on_reset()). Reachable through PCIe Device Control too.
  void function_level_reset();
  bool flr_capable() const;
  // A PF's FLR clears VF Enable, and its VFs go away. Software that puts the
  // state back within the same reset (pci_reset_function(): its
  // pci_restore_state() sets VF Enable again, sriov_restore_state) says so
  // first; the PF's FLR then resets each VF in place and leaves the SR-IOV
  // registers as they were, so the VFs' devices stay (the hardware's window
  // without VFs is not modelled: the restore follows at once).
  void set_vfs_survive_flr(bool on) { vfs_survive_flr_.store(on); }
  bool vfs_survive_flr() const { return vfs_survive_flr_.load(); }
  // How many FLRs the function went through (a debug counter, for tests).
  unsigned flr_count() const { return flr_count_; }

  // SR-IOV: a VF knows its PF. PFs own their VFs.
  Function* physfn() const { return physfn_; }
  bool is_virtfn() const { return physfn_ != nullptr; }

  // Capability offsets found at build time (0 if absent). The lists are
  // read-only hardware, so finish_build() records them once.
  uint16_t find_capability(uint8_t id) const;
  uint16_t find_ext_capability(uint16_t id) const;
  // The lists walked as config space holds them now (bounded, whatever the
  // pointers say).
  uint16_t walk_capability(uint8_t id) const;
  uint16_t walk_ext_capability(uint16_t id) const;

  // ---- Build-time API (used by models' factories and capability builders) --
  void set_ids(const FunctionIds& ids);
  Result<void> define_bar(unsigned idx, const BarDesc& desc);
  // Appends a standard capability of `len` bytes and links it; returns its
  // offset. Capabilities live in 0x40..0xff, dword aligned.
  Result<uint16_t> add_capability(uint8_t id, uint16_t len);
  // Appends an extended capability at 0x100.. and links it.
  Result<uint16_t> add_ext_capability(uint16_t id, uint8_t version, uint16_t len);
  void finish_build();
  // Declares the MSI-X table and PBA (add_msix_cap does this).
  void setup_msix(unsigned table_bar, uint32_t table_off, unsigned n, unsigned pba_bar, uint32_t pba_off);
  // Header Type bit 7: the platform sets it on function 0 of a multi-function
  // device. Survives FLR (it is part of the power-on state).
  void set_multifunction(bool on);

 protected:
  Function(std::string model, uint16_t config_size = kConfigSizeExtended);

  // The model's registers. Default: plain BAR memory.
  virtual Result<uint64_t> bar_read(unsigned bar, uint64_t off, unsigned width);
  virtual Result<void> bar_write(unsigned bar, uint64_t off, unsigned width, uint64_t value);

  // Called after every host config write with the bytes' previous value.
  virtual void on_config_write(uint16_t off, unsigned width, uint32_t old_value);
  // Model state back to power-on (FLR). Config space is restored already.
  virtual void on_reset() {}
  // Called before the config space is restored on FLR (SR-IOV tears down VFs).
  virtual void before_reset() {}

  void set_physfn(Function* pf) { physfn_ = pf; }

 private:
  friend class Fabric;
  std::atomic<bool> vfs_survive_flr_{false};
  std::string model_;
  Bdf bdf_;
  Fabric* fabric_ = nullptr;  // set while attached; the Fabric outlives attachment
  Function* physfn_ = nullptr;  // the PF owns this VF, so it outlives it
  ConfigSpace cfg_;
  ConfigSpace power_on_;
  std::array<BarDesc, kNumBars> bars_{};
  std::array<std::unique_ptr<BarMemory>, kNumBars> bar_mem_{};
  struct MsixEntry {
    uint32_t addr_lo = 0, addr_hi = 0, data = 0, ctrl = PCI_MSIX_ENTRY_CTRL_MASKBIT;
  };
  void irq_config_written(uint16_t off, unsigned width);
  bool msix_decode(unsigned bar, uint64_t off, unsigned width, bool& is_table, uint64_t& rel) const;
  void msix_fire_pending_locked(std::vector<std::pair<uint64_t, uint32_t>>& out);
  void deliver(const std::vector<std::pair<uint64_t, uint32_t>>& msgs);

  mutable std::mutex irq_mu_;  // MSI-X table/PBA, INTx level, the sink
  std::vector<MsixEntry> msix_;  // guarded by irq_mu_
  std::vector<uint64_t> msix_pba_;  // guarded by irq_mu_
  unsigned msix_table_bar_ = 0, msix_pba_bar_ = 0;
  uint32_t msix_table_off_ = 0, msix_pba_off_ = 0;
  bool intx_level_ = false;  // guarded by irq_mu_
  IrqSink* sink_ = nullptr;  // guarded by irq_mu_
  std::atomic<IommuDomain*> iommu_{nullptr};  // outlives its setting; device threads read it
  std::atomic<unsigned> flr_count_{0};
  uint16_t next_cap_ = PCI_STD_HEADER_SIZEOF;
  uint16_t last_cap_next_ = PCI_CAPABILITY_LIST;  // where the last "next" pointer lives
  uint16_t next_ext_ = PCI_CFG_SPACE_SIZE;
  uint16_t last_ext_ = 0;  // offset of the last extended header, 0 if none
  // The capability lists are read-only hardware: finish_build() records
  // where each capability is, so lookups on every config write need not
  // walk the list (restoring a function's state writes it a dword at a
  // time). Written once before the function is shared.
  bool caps_known_ = false;
  std::array<uint8_t, 256> cap_at_{};
  std::array<uint16_t, 64> ext_cap_at_{};
};

}  // namespace uvfio::hw
