// The PCI bus type: turns emulated functions into driver-core devices with
// Linux's sysfs attributes, matches PCI drivers by id table and
// driver_override, assigns BAR addresses as firmware would, and implements
// SR-IOV enable/disable as drivers/pci/iov.c does.
#pragma once

#include <array>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "base/bdf.h"
#include "base/result.h"
#include "driver/core.h"
#include "hw/fabric.h"

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

// Resource indices as Linux numbers them.
inline constexpr unsigned kRomResource = 6;
inline constexpr unsigned kIovResources = 7;      // 7..12: VF BARs (whole range)
inline constexpr unsigned kBridgeResources = 13;  // 13: I/O, 14: mem, 15: prefetchable mem
inline constexpr unsigned kNumResources = 17;

class PciBus;

class PciDevice : public driver::Device {
 public:
  Bdf bdf() const { return bdf_; }
  // The function behind this device. Valid while the device is registered:
  // the bus removes the device before the hardware goes.
  hw::Function& hw() const { return *hw_; }

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

  // pci_enable_device_mem() + pci_set_master(), and the reverse: what a
  // driver does in probe()/remove() before it touches BARs or DMA.
  void enable_device();
  void disable_device();

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

class PciBus : public driver::Bus, public hw::FabricListener {
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

  // hw::FabricListener: hardware going away takes its device with it.
  void function_removing(hw::Function& f) override;

  std::string modalias(const PciDevice& d) const;

 private:
  Result<void> sriov_numvfs_store(PciDevice& pf, std::string_view v);
  const PciDeviceId* best_id(PciDevice& dev, PciDriver& drv) const;
  PciDevice* create(hw::Function& f, Bdf bdf, driver::Device* parent);
  void scan_bus(uint8_t bus, driver::Device* parent, std::vector<PciDevice*>& out, int depth);
  void assign(std::vector<PciDevice*>& devs, uint64_t& mem, uint64_t& pref, uint64_t& io);
  void read_bars(PciDevice& d);
  Result<void> register_tree(PciDevice& d);
  void remove_subtree(PciDevice& d);
  void destroy(PciDevice& d);

  driver::DriverCore& core_;
  hw::Fabric& fabric_;
  std::unique_ptr<driver::Device> host_;
  std::map<Bdf, std::unique_ptr<PciDevice>> devs_;
  std::vector<PciDevice*> roots_;  // devices on bus 0
  unsigned next_irq_ = 16;
};

// kstrtou16(buf, 0, ...): decimal, 0x-hex or 0-octal, one trailing newline.
Result<uint16_t> parse_u16(std::string_view s);

}  // namespace uvfio::bus::pci
