// SPDX-License-Identifier: BSD-3-Clause
// The PCI bus type: turns emulated functions into driver-core devices with
// Linux's sysfs attributes, matches PCI drivers by id table and
// driver_override, assigns BAR addresses as firmware would, and implements
// SR-IOV enable/disable as drivers/pci/iov.c does.
//
// PciDevice is all a driver gets of its hardware, as a kernel driver gets a
// struct pci_dev: config cycles, BAR access (and a memory BAR's backing to
// mmap, as sysfs resourceN), the resources the bus decoded from config
// space, the platform's IOMMU and interrupt delivery — and helpers over
// config cycles where the kernel has them (pci_find_capability,
// pci_msix_vec_count, pcie_flr, pci_cfg_space_size). The device model
// behind it is out of reach: this header does not include it.
#pragma once

#include <linux/pci_regs.h>

#include <array>
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "base/bdf.h"
#include "base/result.h"
#include "base/unique_fd.h"
#include "driver/core.h"

namespace uvfio::hw {
class Fabric;
class Function;
class IommuDomain;
class IrqSink;
}  // namespace uvfio::hw

namespace uvfio::bus::pci {

inline constexpr uint32_t kPciAnyId = ~0u;

// struct pci_device_id, with override_only (Linux 5.15+).
struct PciDeviceId {
  uint32_t vendor = kPciAnyId;
  uint32_t device = kPciAnyId;
  uint32_t subvendor = kPciAnyId;
  uint32_t subdevice = kPciAnyId;
  uint32_t class_code = 0;
  uint32_t class_mask = 0;
  bool override_only = false;
  uintptr_t driver_data = 0;

  // How many of the seven modalias fields (v, d, sv, sd, bc, sc, i) this entry
  // pins down: the userspace rule "fewest wildcards wins".
  int specificity() const;
};

// Linux resource flags (include/linux/ioport.h) as printed in `resource`.
inline constexpr uint64_t kResIo = 0x100, kResMem = 0x200, kResPrefetch = 0x2000,
                          kResSizeAlign = 0x40000, kResMem64 = 0x100000;

struct Resource {
  uint64_t start = 0;
  uint64_t end = 0;
  uint64_t flags = 0;
  uint64_t size() const { return flags ? end - start + 1 : 0; }
};

// A memory BAR's backing as a driver may map it (sysfs resourceN): `fd`
// (owned by the device; valid while the device is) from `offset`, `size`
// bytes.
struct BarMapping {
  int fd = -1;
  uint64_t offset = 0;
  uint64_t size = 0;
};

inline constexpr unsigned kNumBars = PCI_STD_NUM_BARS;

// pci_save_state(): what a function reset clears and software puts back —
// config space (restore_state() writes back what the kernel keeps: the
// header, the PCI Express, MSI, MSI-X, AER, PASID and SR-IOV controls) and,
// when asked for, the MSI-X table as read through its BAR.
struct SavedState {
  std::vector<uint32_t> config;                     // 256 or 4096 bytes as dwords; empty: none saved
  std::vector<std::array<uint32_t, 4>> msix_table;  // PCI_MSIX_ENTRY_* dwords per vector
};

// The Reset Methods a function has (pci_reset_fn_methods[], in the kernel's
// order and names); uvfio's functions implement "flr".
inline constexpr const char* kResetMethodNames[] = {"device_specific", "acpi", "flr", "af_flr", "pm", "bus", "cxl_bus"};

// Resource indices as Linux numbers them.
inline constexpr unsigned kRomResource = 6;
inline constexpr unsigned kIovResources = 7;      // 7..12: VF BARs (whole range)
inline constexpr unsigned kBridgeResources = 13;  // 13: I/O, 14: mem, 15: prefetchable mem
inline constexpr unsigned kNumResources = 17;

class PciBus;

class PciDevice : public driver::Device {
 public:
  Bdf bdf() const { return bdf_; }

  uint16_t vendor() const { return vendor_; }
  uint16_t device_id() const { return device_; }
  uint16_t subsystem_vendor() const { return subvendor_; }
  uint16_t subsystem_device() const { return subdevice_; }
  uint32_t class_code() const { return class_; }
  uint8_t revision() const { return revision_; }
  uint8_t hdr_type() const { return hdr_type_; }
  bool is_bridge() const { return (hdr_type_ & 0x7f) == PCI_HEADER_TYPE_BRIDGE; }
  unsigned irq() const { return irq_; }
  const Resource& resource(unsigned i) const { return res_[i < kNumResources ? i : 0]; }

  // Config cycles to this function.
  uint32_t config_read(uint16_t off, unsigned width) const;
  void config_write(uint16_t off, unsigned width, uint32_t value);
  // pci_find_capability(): walks the capability list with config reads (at
  // most 48 hops, as the kernel's PCI_FIND_CAP_TTL); 0 if absent.
  uint16_t find_capability(uint8_t id) const;
  // pci_find_ext_capability(): the extended list from 0x100.
  uint16_t find_ext_capability(uint16_t id) const;
  // pci_cfg_space_size(): 4096 for a PCIe (or PCI-X 2.0) function whose
  // extended space answers, else 256.
  uint16_t cfg_size() const;
  // pci_msix_vec_count(): Table Size + 1 from MSI-X Message Control (0
  // without MSI-X).
  unsigned msix_vec_count() const;
  // pci_intx_mask_supported(): does INTx Disable toggle (PCI 2.3)? Tests
  // by writing it, and puts it back.
  bool intx_mask_supported();
  // pcie_has_flr(): Function Level Reset advertised in Device Capabilities.
  bool has_flr() const;
  // pcie_flr(): waits for Transactions Pending to clear, writes Initiate
  // FLR, then waits for the function to answer config cycles again
  // (pci_dev_wait). ENOTTY without FLR, ETIMEDOUT if it never comes back.
  // One at a time per function. The caller restores the saved state next:
  // a PF's VFs are reset with it and stay (VF Enable kept).
  Result<void> flr();
  // pci_save_state() / pci_restore_state(): `with_irqs` false leaves the
  // MSI and MSI-X capabilities (and the table) to the caller, as
  // vfio-pci-core reprograms them from its own interrupt state. A dword is
  // written back only where the reset changed it (pci_restore_config_dword),
  // Initiate FLR never, Command last.
  SavedState save_state(bool msix_table) const;
  void restore_state(const SavedState& s, bool with_irqs);
  // pci_reset_function() as `echo 1 > reset` runs it (the device lock held):
  // the bound driver's reset_prepare(), the state saved, the first enabled
  // reset method, the state restored, the driver's reset_done(). ENOTTY
  // without an enabled method. A PF's VFs are reset with it and keep their
  // devices and drivers, which are not told (as on Linux).
  Result<void> reset_function();

  // ---- BARs: memory and I/O cycles (pci_iomap'd accesses, inb/outb) --------
  // `width` bytes (1, 2, 4, 8) at `off` into BAR `bar`; EINVAL for a BAR
  // that is not implemented or an access past its end.
  Result<uint64_t> bar_read(unsigned bar, uint64_t off, unsigned width) const;
  Result<void> bar_write(unsigned bar, uint64_t off, unsigned width, uint64_t value);
  // A burst: `out.size()` bytes from `off` (memory BARs), as naturally
  // aligned accesses — copied at once where the device has plain memory.
  Result<void> bar_read_block(unsigned bar, uint64_t off, std::span<uint8_t> out) const;
  Result<void> bar_write_block(unsigned bar, uint64_t off, std::span<const uint8_t> in);
  // The memory behind a memory BAR, to mmap (nullopt for I/O BARs and BARs
  // whose registers the device decodes).
  std::optional<BarMapping> bar_mapping(unsigned bar) const;

  // ---- The platform: DMA through an IOMMU domain, interrupts to a sink ----
  // Both outlive their attachment; nullptr detaches (returns after any
  // interrupt delivery in progress).
  void attach_iommu(hw::IommuDomain* domain);
  void set_irq_sink(hw::IrqSink* sink);

  // pci_enable_device_mem() + pci_set_master(), and pci_disable_device()
  // (bus mastering off when the last user goes; decode stays): what a
  // driver does in probe()/remove() before it touches BARs or DMA.
  // Counted, as pci_enable_device()'s enable_cnt: the last disable turns
  // the function off.
  void enable_device();
  void disable_device();
  int enable_count() const { return enable_cnt_.load(); }

  // SR-IOV: a VF's PF, its index; a PF's capability offset and VFs.
  bool is_virtfn() const { return physfn_ != nullptr; }
  PciDevice* physfn() const { return physfn_; }
  uint16_t vf_index() const { return vf_index_; }
  uint16_t sriov_cap() const { return sriov_pos_; }
  uint16_t sriov_total_vfs() const;
  uint16_t sriov_num_vfs() const { return static_cast<uint16_t>(vfs_.size()); }
  PciDevice* virtfn(uint16_t i) const { return i < vfs_.size() ? vfs_[i] : nullptr; }
  PciBus& pci_bus() const { return *pci_bus_; }

 private:
  friend class PciBus;
  PciDevice(PciBus& bus, hw::Function& f, Bdf bdf, driver::Device* parent);

  PciBus* pci_bus_;
  hw::Function* hw_;
  std::atomic<int> enable_cnt_{0};
  Bdf bdf_;
  uint16_t vendor_ = 0, device_ = 0, subvendor_ = 0, subdevice_ = 0;
  uint32_t class_ = 0;
  uint8_t revision_ = 0, hdr_type_ = 0;
  unsigned irq_ = 0;
  std::array<Resource, kNumResources> res_{};
  PciDevice* physfn_ = nullptr;  // the PF outlives its VFs
  uint16_t vf_index_ = 0;
  uint16_t sriov_pos_ = 0;
  bool sriov_autoprobe_ = true;
  // reset_method: indices into kResetMethodNames, in priority order; what
  // the function supports at add time, changed by the admin.
  std::vector<uint8_t> reset_methods_;
  std::vector<uint8_t> supported_resets_;
  std::mutex flr_mu_;  // one FLR at a time (sysfs reset and a VFIO user's)
  std::vector<PciDevice*> vfs_;
  std::vector<PciDevice*> children_;  // devices on this bridge's secondary bus (scan order)
};

class PciDriver : public driver::Driver {
 public:
  PciDriver(std::string name, std::vector<PciDeviceId> ids) : Driver(std::move(name)), ids_(std::move(ids)) {}
  const std::vector<PciDeviceId>& id_table() const { return ids_; }

  virtual Result<std::unique_ptr<driver::Binding>> probe(PciDevice& dev, const PciDeviceId& id) = 0;
  // sriov_configure: drivers that manage VFs override both.
  virtual bool has_sriov_configure() const { return false; }
  // Returns the number of VFs now enabled, or an error.
  virtual Result<int> sriov_configure(PciDevice&, int) { return Error(ENOENT, "no sriov_configure"); }
  // pci_error_handlers' reset_prepare/reset_done: around a reset the PCI
  // core performs on a bound device (sysfs `reset`), with its binding.
  virtual void reset_prepare(PciDevice&, driver::Binding&) {}
  virtual void reset_done(PciDevice&, driver::Binding&) {}

 private:
  std::vector<PciDeviceId> ids_;
};

// Where firmware-style resource assignment places things.
struct PciWindows {
  uint64_t mem32_base = 0xc000'0000;
  uint64_t mem32_limit = 0xfebf'ffff;
  uint64_t pref64_base = 0x80'0000'0000;  // 512 GiB
  uint64_t io_base = 0x1000;
  uint64_t io_limit = 0xffff;
};

class PciBus : public driver::Bus {
 public:
  // `core` and `fabric` outlive the bus; call remove_all() before either goes.
  PciBus(driver::DriverCore& core, hw::Fabric& fabric);
  ~PciBus() override;

  driver::DriverCore& core() const { return core_; }
  hw::Fabric& fabric() const { return fabric_; }

  // Enumerates the fabric from bus 0, assigns BARs and bridge windows, and
  // registers every function found (parents first). Registers the bus itself
  // if needed.
  Result<void> scan(const PciWindows& w = {});
  // Stops and removes every device, children and VFs first.
  void remove_all();

  PciDevice* find(Bdf bdf) const;
  std::vector<PciDevice*> all_devices() const;  // address order
  driver::Device* host_bridge() const { return host_.get(); }

  // drivers/pci/iov.c: for PF drivers' sriov_configure().
  Result<void> enable_sriov(PciDevice& pf, uint16_t num_vfs);
  void disable_sriov(PciDevice& pf);
  // The errno of the first of `pf`'s VFs whose driver failed to probe it
  // (0 if none): a PF driver's sriov_configure() fails with it once its VFs
  // should all be bound (after its own per-VF setup), so the admin writing
  // sriov_numvfs sees why. Linux leaves such a VF enabled and unbound with
  // only a log line; uvfio fails the change (docs/architecture.md).
  int vf_probe_error(const PciDevice& pf) const;

  // driver::Bus
  std::optional<int> match(driver::Device& dev, driver::Driver& drv) override;
  Result<std::unique_ptr<driver::Binding>> probe(driver::Device& dev, driver::Driver& drv) override;
  std::vector<std::string> uevent(driver::Device& dev) override;
  Result<void> add_device_attributes(driver::Device& dev) override;
  bool autoprobe_device(driver::Device& dev) override;

  // The fabric tells the bus of hardware going away (an admin clearing VF
  // Enable, a PF FLR): its device goes with it, first.
  void function_removing(hw::Function& f);

  std::string modalias(const PciDevice& d) const;

 private:
  Result<void> sriov_numvfs_store(PciDevice& pf, std::string_view v);
  Result<void> reset_method_store(PciDevice& d, std::string_view v);
  Result<void> add_reset_attributes(PciDevice& d);
  const PciDeviceId* best_id(PciDevice& dev, PciDriver& drv) const;
  PciDevice* create(hw::Function& f, Bdf bdf, driver::Device* parent);
  void scan_bus(uint8_t bus, driver::Device* parent, std::vector<PciDevice*>& out, int depth);
  void assign(std::vector<PciDevice*>& devs, uint64_t& mem, uint64_t& pref, uint64_t& io);
  void read_bars(PciDevice& d);
  Result<void> register_tree(PciDevice& d);
  void remove_subtree(PciDevice& d);
  void destroy(PciDevice& d);

  class FabricHook;
  driver::DriverCore& core_;
  hw::Fabric& fabric_;
  std::unique_ptr<FabricHook> hook_;
  std::unique_ptr<driver::Device> host_;
  std::map<Bdf, std::unique_ptr<PciDevice>> devs_;
  std::vector<PciDevice*> roots_;  // devices on bus 0
  unsigned next_irq_ = 16;
};

// kstrtoul(buf, 0, ...) with a bound (ERANGE above `max`): decimal, 0x-hex
// or 0-octal, one trailing newline; kstrtou16 is the 0xffff bound.
Result<uint64_t> parse_ulong(std::string_view s, uint64_t max = UINT64_MAX);
Result<uint16_t> parse_u16(std::string_view s);

}  // namespace uvfio::bus::pci
