// SPDX-License-Identifier: BSD-3-Clause
#include "bus/pci/pci.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <bit>
#include <cstring>
#include <thread>

#include "base/log.h"
#include "hw/fabric.h"
#include "hw/function.h"

namespace uvfio::bus::pci {

using driver::Attribute;

int PciDeviceId::specificity() const {
  int n = 0;
  n += vendor != kPciAnyId;
  n += device != kPciAnyId;
  n += subvendor != kPciAnyId;
  n += subdevice != kPciAnyId;
  n += (class_mask & 0xff0000) == 0xff0000;
  n += (class_mask & 0x00ff00) == 0x00ff00;
  n += (class_mask & 0x0000ff) == 0x0000ff;
  return n;
}

Result<uint64_t> parse_ulong(std::string_view s, uint64_t max) {
  if (!s.empty() && s.back() == '\n') s.remove_suffix(1);
  if (s.empty()) return Error(EINVAL, "not a number");
  unsigned base = 10;
  if (s.size() > 1 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
    base = 16;
    s.remove_prefix(2);
  } else if (s.size() > 1 && s[0] == '0') {
    base = 8;
    s.remove_prefix(1);
  }
  if (s.empty()) return Error(EINVAL, "not a number");
  uint64_t v = 0;
  for (char c : s) {
    unsigned d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    else return Error(EINVAL, "not a number");
    if (d >= base) return Error(EINVAL, "not a number");
    if (v > (max - d) / base) return Error(ERANGE, "number too large");
    v = v * base + d;
  }
  return v;
}

Result<uint16_t> parse_u16(std::string_view s) { return static_cast<uint16_t>(TRY(parse_ulong(s, 0xffff))); }

// ---- PciDevice ----------------------------------------------------------------

PciDevice::PciDevice(PciBus& bus, hw::Function& f, Bdf bdf, driver::Device* parent)
    : Device(bdf.str(), parent), pci_bus_(&bus), hw_(&f), bdf_(bdf) {}

uint32_t PciDevice::config_read(uint16_t off, unsigned width) const {
  return pci_bus_->fabric().config_read(bdf_, off, width);
}

void PciDevice::config_write(uint16_t off, unsigned width, uint32_t value) {
  pci_bus_->fabric().config_write(bdf_, off, width, value);
}

void PciDevice::enable_device() {
  ++enable_cnt_;
  uint16_t cmd = static_cast<uint16_t>(config_read(PCI_COMMAND, 2));
  config_write(PCI_COMMAND, 2, cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
}

void PciDevice::disable_device() {
  // pci_disable_device(): the last user turns the function off.
  int n = enable_cnt_.load();
  while (n > 0 && !enable_cnt_.compare_exchange_weak(n, n - 1)) {
  }
  if (n <= 0) {
    log::warn(name(), "disabling already-disabled device");
    return;
  }
  if (n > 1) return;
  // do_pci_disable_device(): bus mastering off; decode stays as it is.
  uint16_t cmd = static_cast<uint16_t>(config_read(PCI_COMMAND, 2));
  if (cmd & PCI_COMMAND_MASTER) config_write(PCI_COMMAND, 2, cmd & ~PCI_COMMAND_MASTER);
}

uint16_t PciDevice::find_ext_capability(uint16_t id) const {
  if (cfg_size() <= PCI_CFG_SPACE_SIZE) return 0;
  uint16_t pos = PCI_CFG_SPACE_SIZE;
  // At least 8 bytes per capability: no more than this many (the kernel's ttl).
  for (int ttl = (PCI_CFG_SPACE_EXP_SIZE - PCI_CFG_SPACE_SIZE) / 8; ttl > 0 && pos >= PCI_CFG_SPACE_SIZE; --ttl) {
    uint32_t h = config_read(pos, 4);
    if (h == 0 || h == 0xffffffff) return 0;
    if (PCI_EXT_CAP_ID(h) == id) return pos;
    pos = static_cast<uint16_t>(PCI_EXT_CAP_NEXT(h));
  }
  return 0;
}

uint16_t PciDevice::cfg_size() const {
  // pci_cfg_space_size(): PCIe functions (and PCI-X 2.0) have 4 KiB, if the
  // first extended dword answers (not all-ones, as an absent space reads).
  if (!find_capability(PCI_CAP_ID_EXP)) return PCI_CFG_SPACE_SIZE;
  return config_read(PCI_CFG_SPACE_SIZE, 4) == 0xffffffff ? PCI_CFG_SPACE_SIZE : PCI_CFG_SPACE_EXP_SIZE;
}

unsigned PciDevice::msix_vec_count() const {
  uint16_t cap = find_capability(PCI_CAP_ID_MSIX);
  return cap ? (config_read(cap + PCI_MSIX_FLAGS, 2) & PCI_MSIX_FLAGS_QSIZE) + 1 : 0;
}

bool PciDevice::intx_mask_supported() {
  uint16_t orig = static_cast<uint16_t>(config_read(PCI_COMMAND, 2));
  config_write(PCI_COMMAND, 2, orig ^ PCI_COMMAND_INTX_DISABLE);
  uint16_t now = static_cast<uint16_t>(config_read(PCI_COMMAND, 2));
  if ((now ^ orig) & ~PCI_COMMAND_INTX_DISABLE) {
    log::error(name(), "Command register changed from {:#x} to {:#x}: driver or hardware bug?", orig, now);
    return false;
  }
  if (!((now ^ orig) & PCI_COMMAND_INTX_DISABLE)) return false;
  config_write(PCI_COMMAND, 2, orig);
  return true;
}

bool PciDevice::has_flr() const {
  uint16_t exp = find_capability(PCI_CAP_ID_EXP);
  return exp && (config_read(exp + PCI_EXP_DEVCAP, 4) & PCI_EXP_DEVCAP_FLR);
}

Result<void> PciDevice::flr() {
  if (!has_flr()) return Error(ENOTTY, "no Function Level Reset");
  std::lock_guard lk(flr_mu_);
  uint16_t exp = find_capability(PCI_CAP_ID_EXP);
  // pci_wait_for_pending_transaction(): up to 4 polls of Transactions Pending.
  for (int i = 0; i < 4 && (config_read(exp + PCI_EXP_DEVSTA, 2) & PCI_EXP_DEVSTA_TRPND); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1 << i));
  uint16_t ctl = static_cast<uint16_t>(config_read(exp + PCI_EXP_DEVCTL, 2));
  // Every caller puts the saved state back at once, and pci_restore_state()
  // sets VF Enable again: a PF's VFs are reset in place and keep their
  // devices (hw::Function::set_vfs_survive_flr).
  hw_->set_vfs_survive_flr(true);
  config_write(exp + PCI_EXP_DEVCTL, 2, ctl | PCI_EXP_DEVCTL_BCR_FLR);
  hw_->set_vfs_survive_flr(false);
  // pci_dev_wait(): the function is back when config reads return data (an
  // emulated FLR completes within the write, so the kernel's fixed 100 ms
  // settle is not slept: docs/architecture.md).
  for (int delay = 1; delay <= 1000; delay *= 2) {
    if (config_read(PCI_COMMAND, 4) != 0xffffffff) return ok();
    std::this_thread::sleep_for(std::chrono::milliseconds(delay));
  }
  return Error(ETIMEDOUT, "function not ready after FLR");
}

namespace {
// How many bytes of config space the MSI capability at `msi` spans (its
// flags: 64-bit address, per-vector masking), rounded up to dwords.
uint16_t msi_cap_bytes(uint16_t flags) {
  uint16_t n = (flags & PCI_MSI_FLAGS_64BIT) ? 14 : 10;
  if (flags & PCI_MSI_FLAGS_MASKBIT) n += 10;
  return static_cast<uint16_t>((n + 3) & ~3);
}
}  // namespace

SavedState PciDevice::save_state(bool msix_table) const {
  SavedState s;
  // The whole of config space as it is now; restore_state() writes back the
  // registers pci_save_state() keeps, nothing else.
  uint16_t size = find_capability(PCI_CAP_ID_EXP) ? PCI_CFG_SPACE_EXP_SIZE : PCI_CFG_SPACE_SIZE;
  s.config.resize(size / 4);
  for (uint16_t i = 0; i < size; i += 4) s.config[i / 4] = config_read(i, 4);
  uint16_t msix = find_capability(PCI_CAP_ID_MSIX);
  if (msix_table && msix) {
    uint32_t t = config_read(msix + PCI_MSIX_TABLE, 4);
    unsigned bar = t & PCI_MSIX_TABLE_BIR;
    uint64_t base = t & PCI_MSIX_TABLE_OFFSET;
    unsigned n = msix_vec_count();
    s.msix_table.resize(n);
    for (unsigned v = 0; v < n; ++v)
      for (unsigned k = 0; k < 4; ++k) {
        auto r = bar_read(bar, base + v * PCI_MSIX_ENTRY_SIZE + 4 * k, 4);
        s.msix_table[v][k] = r ? static_cast<uint32_t>(*r) : 0;
      }
  }
  return s;
}

void PciDevice::restore_state(const SavedState& s, bool with_irqs) {
  if (s.config.size() < PCI_CFG_SPACE_SIZE / 4) return;
  auto saved = [&](uint16_t at, unsigned width) -> uint32_t {
    if (at / 4 >= s.config.size()) return 0;
    uint32_t d = s.config[at / 4] >> (8 * (at % 4));
    return width == 4 ? d : d & ((1u << (8 * width)) - 1);
  };
  // A register is written only where the reset changed it
  // (pci_restore_config_dword), so read-only and write-1-to-clear bits the
  // device set meanwhile are left as they are.
  auto put = [&](uint16_t at, unsigned width, uint32_t v) {
    if (config_read(at, width) != v) config_write(at, width, v);
  };
  auto restore = [&](uint16_t at, unsigned width) { put(at, width, saved(at, width)); };
  uint16_t pcie = find_capability(PCI_CAP_ID_EXP);
  // pci_restore_pcie_state(): the control registers of the PCI Express
  // capability (never Initiate FLR).
  if (pcie) {
    put(pcie + PCI_EXP_DEVCTL, 2, saved(pcie + PCI_EXP_DEVCTL, 2) & ~PCI_EXP_DEVCTL_BCR_FLR);
    for (uint16_t r : {PCI_EXP_LNKCTL, PCI_EXP_SLTCTL, PCI_EXP_RTCTL, PCI_EXP_DEVCTL2, PCI_EXP_LNKCTL2,
                       PCI_EXP_SLTCTL2})
      restore(static_cast<uint16_t>(pcie + r), 2);
  }
  // pci_restore_pasid_state(), pci_restore_aer_state(): their controls,
  // the AER masks and severities.
  if (uint16_t pasid = find_ext_capability(PCI_EXT_CAP_ID_PASID)) restore(pasid + PCI_PASID_CTRL, 2);
  if (uint16_t aer = find_ext_capability(PCI_EXT_CAP_ID_ERR)) {
    for (uint16_t r : {PCI_ERR_UNCOR_MASK, PCI_ERR_UNCOR_SEVER, PCI_ERR_COR_MASK, PCI_ERR_CAP})
      restore(static_cast<uint16_t>(aer + r), 4);
    if (is_bridge()) restore(aer + PCI_ERR_ROOT_COMMAND, 4);
  }
  // pci_restore_config_space(): the header after the identity registers
  // (type 0 or 1 alike: BARs, bus numbers and windows, Interrupt Line),
  // Command last of all.
  for (uint16_t i = PCI_CACHE_LINE_SIZE; i < 0x40; i += 4) restore(i, 4);
  if (with_irqs) {
    // pci_restore_msi_state(): MSI's address, data and mask, then its
    // control; MSI-X's table with the function masked, then its control.
    if (uint16_t msi = find_capability(PCI_CAP_ID_MSI)) {
      uint16_t end = msi + msi_cap_bytes(static_cast<uint16_t>(saved(msi + PCI_MSI_FLAGS, 2)));
      for (uint16_t i = msi + 4; i < end; i += 4) restore(i, 4);
      restore(msi + PCI_MSI_FLAGS, 2);
    }
    if (uint16_t msix = find_capability(PCI_CAP_ID_MSIX)) {
      uint16_t ctrl = static_cast<uint16_t>(saved(msix + PCI_MSIX_FLAGS, 2));
      if (!s.msix_table.empty()) {
        put(msix + PCI_MSIX_FLAGS, 2, ctrl | PCI_MSIX_FLAGS_MASKALL);
        uint32_t t = config_read(msix + PCI_MSIX_TABLE, 4);
        for (size_t v = 0; v < s.msix_table.size(); ++v)
          for (unsigned k = 0; k < 4; ++k)
            (void)bar_write(t & PCI_MSIX_TABLE_BIR,
                            (t & PCI_MSIX_TABLE_OFFSET) + v * PCI_MSIX_ENTRY_SIZE + 4 * k, 4, s.msix_table[v][k]);
      }
      put(msix + PCI_MSIX_FLAGS, 2, ctrl);
    }
  }
  // pci_restore_iov_state() -> sriov_restore_state(): nothing while VF
  // Enable is still set (the VFs lived through the reset: flr()); else
  // the VF BARs, page size, NumVFs. VF Enable itself is not set from here:
  // VFs that went away come back through sriov_numvfs, with their devices.
  if (sriov_pos_ && !(config_read(sriov_pos_ + PCI_SRIOV_CTRL, 2) & PCI_SRIOV_CTRL_VFE)) {
    for (unsigned i = 0; i < kNumBars; ++i) restore(static_cast<uint16_t>(sriov_pos_ + PCI_SRIOV_BAR + 4 * i), 4);
    restore(sriov_pos_ + PCI_SRIOV_SYS_PGSIZE, 4);
    restore(sriov_pos_ + PCI_SRIOV_NUM_VF, 2);
    uint16_t ctrl = static_cast<uint16_t>(saved(sriov_pos_ + PCI_SRIOV_CTRL, 2));
    if (ctrl & PCI_SRIOV_CTRL_VFE)
      log::warn(name(), "VFs did not survive the reset: enable them again through sriov_numvfs");
    put(sriov_pos_ + PCI_SRIOV_CTRL, 2, ctrl & ~PCI_SRIOV_CTRL_VFE);
  }
  restore(PCI_COMMAND, 2);
}

Result<void> PciDevice::reset_function() {
  if (reset_methods_.empty()) return Error(ENOTTY, "no reset method enabled");
  auto* drv = dynamic_cast<PciDriver*>(driver());
  driver::Binding* b = binding();
  // pci_dev_save_and_disable(): the driver told, the state saved, then
  // Command = INTx Disable so the function stops decoding and mastering.
  if (drv && b) drv->reset_prepare(*this, *b);
  // pci_set_power_state(dev, PCI_D0) before pci_save_state(): a reset
  // leaves the function in D0, whatever state it was in.
  if (uint16_t pm = find_capability(PCI_CAP_ID_PM)) {
    uint16_t ctrl = static_cast<uint16_t>(config_read(pm + PCI_PM_CTRL, 2));
    if (ctrl & PCI_PM_CTRL_STATE_MASK) config_write(pm + PCI_PM_CTRL, 2, ctrl & ~PCI_PM_CTRL_STATE_MASK);
  }
  SavedState saved = save_state(true);
  config_write(PCI_COMMAND, 2, PCI_COMMAND_INTX_DISABLE);
  Result<void> r = Error(ENOTTY, "no reset method worked");
  for (uint8_t m : reset_methods_) {
    if (std::string_view(kResetMethodNames[m]) == "flr") r = flr();
    if (r || r.error().code != ENOTTY) break;
  }
  // pci_dev_restore(): whatever the reset did, the state goes back and the
  // driver hears of it.
  restore_state(saved, true);
  if (drv && b) drv->reset_done(*this, *b);
  return r;
}

Result<uint64_t> PciDevice::bar_read(unsigned bar, uint64_t off, unsigned width) const {
  if (bar >= kNumBars) return Error(EINVAL, "no such BAR");
  return hw_->mmio_read(bar, off, width);
}

Result<void> PciDevice::bar_write(unsigned bar, uint64_t off, unsigned width, uint64_t value) {
  if (bar >= kNumBars) return Error(EINVAL, "no such BAR");
  return hw_->mmio_write(bar, off, width, value);
}

Result<void> PciDevice::bar_read_block(unsigned bar, uint64_t off, std::span<uint8_t> out) const {
  if (bar >= kNumBars) return Error(EINVAL, "no such BAR");
  return hw_->mmio_read_block(bar, off, out);
}

Result<void> PciDevice::bar_write_block(unsigned bar, uint64_t off, std::span<const uint8_t> in) {
  if (bar >= kNumBars) return Error(EINVAL, "no such BAR");
  return hw_->mmio_write_block(bar, off, in);
}

std::optional<BarMapping> PciDevice::bar_mapping(unsigned bar) const {
  if (bar >= kNumBars) return std::nullopt;
  const hw::BarDesc& d = hw_->bar_desc(bar);
  hw::BarMemory* m = hw_->bar_memory(bar);
  if (!d.mmappable || d.is_io() || !m) return std::nullopt;
  return BarMapping{m->fd(), 0, m->size()};
}

void PciDevice::attach_iommu(hw::IommuDomain* domain) { hw_->set_iommu(domain); }

void PciDevice::set_irq_sink(hw::IrqSink* sink) { hw_->set_irq_sink(sink); }

uint16_t PciDevice::sriov_total_vfs() const {
  return sriov_pos_ ? static_cast<uint16_t>(config_read(sriov_pos_ + PCI_SRIOV_TOTAL_VF, 2)) : 0;
}

// ---- PciBus -------------------------------------------------------------------

// The bus's ear on the fabric (kept out of pci.h, which must not show the
// hardware's classes to drivers).
class PciBus::FabricHook : public hw::FabricListener {
 public:
  explicit FabricHook(PciBus& b) : b_(b) {}
  void function_removing(hw::Function& f) override { b_.function_removing(f); }

 private:
  PciBus& b_;
};

PciBus::PciBus(driver::DriverCore& core, hw::Fabric& fabric)
    : Bus("pci"), core_(core), fabric_(fabric), hook_(std::make_unique<FabricHook>(*this)) {
  fabric_.set_listener(hook_.get());
}

PciBus::~PciBus() {
  remove_all();
  fabric_.set_listener(nullptr);
}

PciDevice* PciBus::find(Bdf bdf) const {
  auto it = devs_.find(bdf);
  return it == devs_.end() ? nullptr : it->second.get();
}

std::vector<PciDevice*> PciBus::all_devices() const {
  std::vector<PciDevice*> v;
  for (auto& [b, d] : devs_) v.push_back(d.get());
  return v;
}

PciDevice* PciBus::create(hw::Function& f, Bdf bdf, driver::Device* parent) {
  auto d = std::unique_ptr<PciDevice>(new PciDevice(*this, f, bdf, parent));
  PciDevice* p = d.get();
  p->vendor_ = static_cast<uint16_t>(p->config_read(PCI_VENDOR_ID, 2));
  p->device_ = static_cast<uint16_t>(p->config_read(PCI_DEVICE_ID, 2));
  p->class_ = p->config_read(PCI_CLASS_REVISION, 4) >> 8;
  p->revision_ = static_cast<uint8_t>(p->config_read(PCI_REVISION_ID, 1));
  p->hdr_type_ = static_cast<uint8_t>(p->config_read(PCI_HEADER_TYPE, 1));
  if (!p->is_bridge()) {
    p->subvendor_ = static_cast<uint16_t>(p->config_read(PCI_SUBSYSTEM_VENDOR_ID, 2));
    p->subdevice_ = static_cast<uint16_t>(p->config_read(PCI_SUBSYSTEM_ID, 2));
  }
  p->sriov_pos_ = f.find_ext_capability(PCI_EXT_CAP_ID_SRIOV);
  devs_[bdf] = std::move(d);
  return p;
}

void PciBus::scan_bus(uint8_t bus, driver::Device* parent, std::vector<PciDevice*>& out, int depth) {
  if (depth > 32) return;  // a bus-number loop in a bad topology
  for (uint8_t dev = 0; dev < 32; ++dev) {
    Bdf f0(fabric_.domain(), bus, dev, 0);
    if (fabric_.config_read(f0, PCI_VENDOR_ID, 2) == 0xffff) continue;
    bool multi = fabric_.config_read(f0, PCI_HEADER_TYPE, 1) & 0x80;
    for (uint8_t fn = 0; fn < (multi ? 8 : 1); ++fn) {
      Bdf b(fabric_.domain(), bus, dev, fn);
      hw::Function* hwf = fabric_.find(b);
      if (!hwf || fabric_.config_read(b, PCI_VENDOR_ID, 2) == 0xffff || find(b)) continue;
      PciDevice* d = create(*hwf, b, parent);
      out.push_back(d);
      read_bars(*d);
      if (d->is_bridge()) {
        uint8_t sec = static_cast<uint8_t>(d->config_read(PCI_SECONDARY_BUS, 1));
        if (sec > bus) scan_bus(sec, d, d->children_, depth + 1);
      }
    }
  }
}

// Size every BAR the way the kernel does (__pci_read_base): save, write
// all-ones, read back the mask, restore.
void PciBus::read_bars(PciDevice& d) {
  auto probe_bar = [&](uint16_t reg, unsigned& skip) -> Resource {
    Resource r;
    uint32_t orig = d.config_read(reg, 4);
    d.config_write(reg, 4, 0xffffffff);
    uint32_t sz = d.config_read(reg, 4);
    d.config_write(reg, 4, orig);
    if (sz == 0 || sz == 0xffffffff) return r;
    if (orig & PCI_BASE_ADDRESS_SPACE_IO) {
      uint32_t mask = sz & PCI_BASE_ADDRESS_IO_MASK & 0xffff;
      if (!mask) return r;
      r.flags = kResIo | kResSizeAlign | (orig & ~PCI_BASE_ADDRESS_IO_MASK);
      r.end = (mask & (~mask + 1)) - 1;
      return r;
    }
    uint64_t mask = sz & PCI_BASE_ADDRESS_MEM_MASK;
    r.flags = kResMem | kResSizeAlign | (orig & ~PCI_BASE_ADDRESS_MEM_MASK);
    if (orig & PCI_BASE_ADDRESS_MEM_PREFETCH) r.flags |= kResPrefetch;
    if ((orig & PCI_BASE_ADDRESS_MEM_TYPE_MASK) == PCI_BASE_ADDRESS_MEM_TYPE_64) {
      r.flags |= kResMem64;
      uint32_t orig_hi = d.config_read(reg + 4, 4);
      d.config_write(reg + 4, 4, 0xffffffff);
      uint32_t hi = d.config_read(reg + 4, 4);
      d.config_write(reg + 4, 4, orig_hi);
      mask |= uint64_t{hi} << 32;
      skip = 1;
    } else {
      mask |= 0xffffffff00000000ull;
    }
    if (!mask) return Resource{};
    r.end = (mask & (~mask + 1)) - 1;  // size - 1, start assigned later
    return r;
  };
  unsigned nbars = d.is_bridge() ? 2 : kNumBars;
  if (!d.hw_->is_virtfn()) {
    for (unsigned i = 0; i < nbars; ++i) {
      unsigned skip = 0;
      d.res_[i] = probe_bar(static_cast<uint16_t>(PCI_BASE_ADDRESS_0 + 4 * i), skip);
      i += skip;
    }
  }
  if (d.sriov_pos_) {
    for (unsigned i = 0; i < kNumBars; ++i) {
      unsigned skip = 0;
      Resource r = probe_bar(static_cast<uint16_t>(d.sriov_pos_ + PCI_SRIOV_BAR + 4 * i), skip);
      if (r.flags) r.end = (r.end + 1) * d.sriov_total_vfs() - 1;  // all VFs
      d.res_[kIovResources + i] = r;
      i += skip;
    }
  }
}

void PciBus::assign(std::vector<PciDevice*>& devs, uint64_t& mem, uint64_t& pref, uint64_t& io) {
  auto align = [](uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); };
  auto place = [&](Resource& r, uint16_t reg, PciDevice& d, bool write) {
    if (!r.flags) return;
    uint64_t size = r.end + 1;
    uint64_t& cur = (r.flags & kResIo) ? io : ((r.flags & kResPrefetch) && (r.flags & kResMem64)) ? pref : mem;
    uint64_t a = (r.flags & kResIo) ? size : std::max<uint64_t>(size, 16);
    // VF BAR ranges align to the per-VF size, which is what the register decodes.
    if (reg >= d.sriov_pos_ + PCI_SRIOV_BAR && d.sriov_pos_ && d.sriov_total_vfs())
      a = std::max<uint64_t>(size / d.sriov_total_vfs(), 16);
    cur = align(cur, a);
    r.start = cur;
    r.end = cur + size - 1;
    cur += size;
    if (!write) return;
    uint32_t lo = d.config_read(reg, 4);
    d.config_write(reg, 4, static_cast<uint32_t>(r.start) | (lo & ((r.flags & kResIo) ? 3 : 0xf)));
    if (r.flags & kResMem64) d.config_write(reg + 4, 4, static_cast<uint32_t>(r.start >> 32));
  };
  for (PciDevice* d : devs) {
    if (d->is_bridge()) {
      mem = align(mem, 1 << 20);
      pref = align(pref, 1 << 20);
      io = align(io, 1 << 12);
      uint64_t m0 = mem, p0 = pref, i0 = io;
      for (unsigned i = 0; i < 2; ++i) place(d->res_[i], static_cast<uint16_t>(PCI_BASE_ADDRESS_0 + 4 * i), *d, true);
      m0 = mem = align(mem, 1 << 20);
      assign(d->children_, mem, pref, io);
      mem = align(mem, 1 << 20);
      pref = align(pref, 1 << 20);
      io = align(io, 1 << 12);
      // Program the forwarding windows (an empty window has base > limit).
      if (io > i0) {
        d->config_write(PCI_IO_BASE, 1, static_cast<uint32_t>((i0 >> 8) & 0xf0));
        d->config_write(PCI_IO_LIMIT, 1, static_cast<uint32_t>(((io - 1) >> 8) & 0xf0));
        d->res_[kBridgeResources] = {i0, io - 1, kResIo | 0x1};
      } else {
        d->config_write(PCI_IO_BASE, 1, 0xf0);
        d->config_write(PCI_IO_LIMIT, 1, 0x00);
      }
      if (mem > m0) {
        d->config_write(PCI_MEMORY_BASE, 2, static_cast<uint32_t>((m0 >> 16) & 0xfff0));
        d->config_write(PCI_MEMORY_LIMIT, 2, static_cast<uint32_t>(((mem - 1) >> 16) & 0xfff0));
        d->res_[kBridgeResources + 1] = {m0, mem - 1, kResMem};
      } else {
        d->config_write(PCI_MEMORY_BASE, 2, 0xfff0);
        d->config_write(PCI_MEMORY_LIMIT, 2, 0);
      }
      if (pref > p0) {
        d->config_write(PCI_PREF_MEMORY_BASE, 2, static_cast<uint32_t>((p0 >> 16) & 0xfff0));
        d->config_write(PCI_PREF_MEMORY_LIMIT, 2, static_cast<uint32_t>(((pref - 1) >> 16) & 0xfff0));
        d->config_write(PCI_PREF_BASE_UPPER32, 4, static_cast<uint32_t>(p0 >> 32));
        d->config_write(PCI_PREF_LIMIT_UPPER32, 4, static_cast<uint32_t>((pref - 1) >> 32));
        d->res_[kBridgeResources + 2] = {p0, pref - 1, kResMem | kResPrefetch | kResMem64 | 0x1};
      } else {
        d->config_write(PCI_PREF_MEMORY_BASE, 2, 0xfff0);
        d->config_write(PCI_PREF_MEMORY_LIMIT, 2, 0);
      }
      d->config_write(PCI_COMMAND, 2, PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
    } else {
      for (unsigned i = 0; i < kNumBars; ++i)
        place(d->res_[i], static_cast<uint16_t>(PCI_BASE_ADDRESS_0 + 4 * i), *d, true);
      for (unsigned i = 0; i < kNumBars; ++i)
        place(d->res_[kIovResources + i], static_cast<uint16_t>(d->sriov_pos_ + PCI_SRIOV_BAR + 4 * i), *d, true);
    }
    if (d->config_read(PCI_INTERRUPT_PIN, 1)) {
      d->irq_ = next_irq_++;
      d->config_write(PCI_INTERRUPT_LINE, 1, d->irq_ & 0xff);
    }
  }
}

Result<void> PciBus::register_tree(PciDevice& d) {
  TRY(core_.device_add(d, this));
  for (PciDevice* c : d.children_) TRY(register_tree(*c));
  return ok();
}

Result<void> PciBus::scan(const PciWindows& w) {
  std::lock_guard lk(core_.lock());
  if (!dir()) TRY(core_.register_bus(*this));
  if (!host_) {
    host_ = std::make_unique<driver::Device>(fmt::format("pci{:04x}:00", fabric_.domain()), nullptr);
    TRY(core_.device_add(*host_, nullptr));
  }
  std::vector<PciDevice*> found;
  scan_bus(0, host_.get(), found, 0);
  uint64_t mem = w.mem32_base, pref = w.pref64_base, io = w.io_base;
  assign(found, mem, pref, io);
  if (mem - 1 > w.mem32_limit || io - 1 > w.io_limit) {
    log::warn("pci", "not enough address space for every BAR");
  }
  for (PciDevice* d : found) roots_.push_back(d);
  for (PciDevice* d : found) TRY(register_tree(*d));
  return ok();
}

void PciBus::destroy(PciDevice& d) {
  core_.device_del(d);
  if (d.physfn_) {
    if (d.physfn_->dir()) core_.tree().remove(d.physfn_->dir(), fmt::format("virtfn{}", d.vf_index_));
    std::erase(d.physfn_->vfs_, &d);
  }
  for (auto& [b, other] : devs_) std::erase(other->children_, &d);
  std::erase(roots_, &d);
  devs_.erase(d.bdf_);
}

void PciBus::remove_subtree(PciDevice& d) {
  // PF drivers first: their remove() disables SR-IOV and deletes auxiliary
  // devices, as pci_stop_bus_device() does by releasing drivers.
  auto kids = d.children_;
  for (PciDevice* c : kids)
    if (c->sriov_pos_ && c->driver()) (void)core_.release_driver(*c);
  kids = d.children_;
  for (auto it = kids.rbegin(); it != kids.rend(); ++it)
    if (find((*it)->bdf_) == *it) remove_subtree(**it);
  if (d.driver()) (void)core_.release_driver(d);
  if (!d.vfs_.empty()) disable_sriov(d);
  destroy(d);
}

void PciBus::remove_all() {
  std::lock_guard lk(core_.lock());
  auto roots = roots_;
  for (auto it = roots.rbegin(); it != roots.rend(); ++it)
    if (find((*it)->bdf_) == *it) remove_subtree(**it);
  // Anything left (VFs whose parent was not scanned) goes too.
  while (!devs_.empty()) remove_subtree(*devs_.rbegin()->second);
  if (host_) {
    core_.device_del(*host_);
    host_.reset();
  }
}

void PciBus::function_removing(hw::Function& f) {
  std::lock_guard lk(core_.lock());
  for (auto& [b, d] : devs_) {
    if (d->hw_ == &f) {
      log::warn(d->name(), "hardware removed underneath its device: removing the device");
      remove_subtree(*d);
      return;
    }
  }
}

// ---- Matching -----------------------------------------------------------------

const PciDeviceId* PciBus::best_id(PciDevice& dev, PciDriver& drv) const {
  const PciDeviceId* best = nullptr;
  bool overridden = dev.driver_override() == drv.name();
  for (const PciDeviceId& id : drv.id_table()) {
    if (id.vendor != kPciAnyId && id.vendor != dev.vendor_) continue;
    if (id.device != kPciAnyId && id.device != dev.device_) continue;
    if (id.subvendor != kPciAnyId && id.subvendor != dev.subvendor_) continue;
    if (id.subdevice != kPciAnyId && id.subdevice != dev.subdevice_) continue;
    if ((id.class_code ^ dev.class_) & id.class_mask) continue;
    if (id.override_only && !overridden) continue;
    if (!best || id.specificity() > best->specificity()) best = &id;
  }
  return best;
}

std::optional<int> PciBus::match(driver::Device& d, driver::Driver& drv) {
  auto* dev = dynamic_cast<PciDevice*>(&d);
  auto* pdrv = dynamic_cast<PciDriver*>(&drv);
  if (!dev || !pdrv) return std::nullopt;
  // pci_match_device(): an override naming another driver excludes this one.
  if (!dev->driver_override().empty() && dev->driver_override() != drv.name()) return std::nullopt;
  if (const PciDeviceId* id = best_id(*dev, *pdrv)) return id->specificity();
  if (dev->driver_override() == drv.name()) return 0;  // the dummy "any" id
  return std::nullopt;
}

Result<std::unique_ptr<driver::Binding>> PciBus::probe(driver::Device& d, driver::Driver& drv) {
  auto* dev = dynamic_cast<PciDevice*>(&d);
  auto* pdrv = dynamic_cast<PciDriver*>(&drv);
  if (!dev || !pdrv) return Error(ENODEV, "not a PCI device or driver");
  static const PciDeviceId kAny{};
  const PciDeviceId* id = best_id(*dev, *pdrv);
  return pdrv->probe(*dev, id ? *id : kAny);
}

std::string PciBus::modalias(const PciDevice& d) const {
  return fmt::format("pci:v{:08X}d{:08X}sv{:08X}sd{:08X}bc{:02X}sc{:02X}i{:02X}", d.vendor_, d.device_,
                     d.subvendor_, d.subdevice_, d.class_ >> 16, (d.class_ >> 8) & 0xff, d.class_ & 0xff);
}

std::vector<std::string> PciBus::uevent(driver::Device& d) {
  auto* dev = dynamic_cast<PciDevice*>(&d);
  if (!dev) return {};
  return {fmt::format("PCI_CLASS={:X}", dev->class_),
          fmt::format("PCI_ID={:04X}:{:04X}", dev->vendor_, dev->device_),
          fmt::format("PCI_SUBSYS_ID={:04X}:{:04X}", dev->subvendor_, dev->subdevice_),
          "PCI_SLOT_NAME=" + dev->name(), "MODALIAS=" + modalias(*dev)};
}

bool PciBus::autoprobe_device(driver::Device& d) {
  auto* dev = dynamic_cast<PciDevice*>(&d);
  return !dev || !dev->physfn_ || dev->physfn_->sriov_autoprobe_;
}

uint16_t PciDevice::find_capability(uint8_t id) const {
  if (!(config_read(PCI_STATUS, 2) & PCI_STATUS_CAP_LIST)) return 0;
  uint8_t pos = static_cast<uint8_t>(config_read((hdr_type_ & 0x7f) == PCI_HEADER_TYPE_CARDBUS ? PCI_CB_CAPABILITY_LIST : PCI_CAPABILITY_LIST, 1));
  for (int ttl = 48; ttl > 0 && pos >= 0x40; --ttl) {
    pos &= ~3;
    uint16_t ent = static_cast<uint16_t>(config_read(pos, 2));
    if ((ent & 0xff) == 0xff) break;
    if ((ent & 0xff) == id) return pos;
    pos = static_cast<uint8_t>(ent >> 8);
  }
  return 0;
}

// ---- sysfs attributes ---------------------------------------------------------

namespace {
Attribute ro(std::string name, std::function<std::string()> f) {
  return Attribute{std::move(name), 0444, [f = std::move(f)]() -> Result<std::string> { return f(); }, nullptr};
}
}  // namespace

Result<void> PciBus::add_device_attributes(driver::Device& d) {
  auto* dev = dynamic_cast<PciDevice*>(&d);
  if (!dev) return ok();
  driver::Tree& t = core_.tree();
  driver::Dir* dir = dev->dir();
  PciDevice* p = dev;
  TRY(t.add_file(dir, ro("vendor", [p] { return fmt::format("0x{:04x}\n", p->vendor_); })));
  TRY(t.add_file(dir, ro("device", [p] { return fmt::format("0x{:04x}\n", p->device_); })));
  TRY(t.add_file(dir, ro("subsystem_vendor", [p] { return fmt::format("0x{:04x}\n", p->subvendor_); })));
  TRY(t.add_file(dir, ro("subsystem_device", [p] { return fmt::format("0x{:04x}\n", p->subdevice_); })));
  TRY(t.add_file(dir, ro("class", [p] { return fmt::format("0x{:06x}\n", p->class_); })));
  TRY(t.add_file(dir, ro("revision", [p] { return fmt::format("0x{:02x}\n", p->revision_); })));
  TRY(t.add_file(dir, ro("irq", [p] { return fmt::format("{}\n", p->irq_); })));
  TRY(t.add_file(dir, ro("modalias", [this, p] { return modalias(*p) + "\n"; })));
  // enable: pci-sysfs.c's enable_show/enable_store. The count of
  // pci_enable_device() users; root may enable an unbound function (1) or
  // disable one it enabled (0: EIO when nobody had); a bound one is EBUSY.
  TRY(t.add_file(dir, Attribute{"enable", 0644,
                                [p]() -> Result<std::string> { return fmt::format("{}\n", p->enable_count()); },
                                [p](std::string_view v) -> Result<void> {
                                  uint64_t n = TRY(parse_ulong(v));
                                  if (p->driver()) return Error(EBUSY, "a driver has the device");
                                  if (n) {
                                    p->enable_device();
                                  } else {
                                    if (p->enable_count() <= 0) return Error(EIO, "device not enabled");
                                    p->disable_device();
                                  }
                                  return ok();
                                }}));
  TRY(t.add_file(dir, ro("resource", [p] {
    std::string s;
    unsigned n = p->is_bridge() ? kNumResources : kBridgeResources;
    for (unsigned i = 0; i < n; ++i) {
      const Resource& r = p->res_[i];
      if (r.flags) s += fmt::format("0x{:016x} 0x{:016x} 0x{:016x}\n", r.start, r.end, r.flags);
      else s += fmt::format("0x{:016x} 0x{:016x} 0x{:016x}\n", 0, 0, 0);
    }
    return s;
  })));
  uint16_t cfg_size = dev->cfg_size();
  // config: the function's config space as config cycles see it, and
  // pci_write_config(): root's writes at an offset, cut at the end of config
  // space, in the widest naturally aligned cycles (a byte to reach 2-byte
  // alignment, a word to reach 4, dwords, then a word and a byte). Nothing
  // past the end is taken. What a write does is the hardware's: an SR-IOV
  // VF Enable cleared or an FLR written here takes VFs away with their
  // devices, as on Linux.
  TRY(t.add_file(dir, Attribute{"config", 0644,
                                [p, cfg_size]() -> Result<std::string> {
                                  std::string s(cfg_size, '\0');
                                  for (uint16_t i = 0; i < cfg_size; i += 4) {
                                    uint32_t v = p->config_read(i, 4);
                                    for (int b = 0; b < 4; ++b) s[i + b] = static_cast<char>(v >> (8 * b));
                                  }
                                  return s;
                                },
                                nullptr, cfg_size,
                                [p, cfg_size](uint64_t off, std::string_view data) -> Result<size_t> {
                                  if (off >= cfg_size) return size_t{0};
                                  size_t count = std::min<uint64_t>(data.size(), cfg_size - off);
                                  auto at = static_cast<uint16_t>(off);
                                  size_t i = 0, left = count;
                                  auto le = [&](unsigned w) {
                                    uint32_t v = 0;
                                    for (unsigned b = 0; b < w; ++b)
                                      v |= uint32_t{static_cast<uint8_t>(data[i + b])} << (8 * b);
                                    p->config_write(at, w, v);
                                    at = static_cast<uint16_t>(at + w);
                                    i += w;
                                    left -= w;
                                  };
                                  if ((at & 1) && left) le(1);
                                  if ((at & 3) && left > 2) le(2);
                                  while (left > 3) le(4);
                                  if (left >= 2) le(2);
                                  if (left) le(1);
                                  return count;
                                }}));
  TRY(t.add_file(dir, Attribute{"driver_override", 0644,
                                [p]() -> Result<std::string> {
                                  return p->driver_override().empty() ? std::string("(null)\n")
                                                                      : p->driver_override() + "\n";
                                },
                                [this, p](std::string_view v) { return core_.set_driver_override(*p, v); }}));
  if (dev->is_bridge()) {
    TRY(t.add_file(dir, ro("secondary_bus_number", [p] { return fmt::format("{}\n", p->config_read(PCI_SECONDARY_BUS, 1)); })));
    TRY(t.add_file(dir, ro("subordinate_bus_number", [p] { return fmt::format("{}\n", p->config_read(PCI_SUBORDINATE_BUS, 1)); })));
  }
  if (dev->sriov_pos_) {
    uint16_t pos = dev->sriov_pos_;
    TRY(t.add_file(dir, ro("sriov_totalvfs", [p] { return fmt::format("{}\n", p->sriov_total_vfs()); })));
    TRY(t.add_file(dir, Attribute{"sriov_numvfs", 0644,
                                  [p]() -> Result<std::string> { return fmt::format("{}\n", p->vfs_.size()); },
                                  [this, p](std::string_view v) { return sriov_numvfs_store(*p, v); }}));
    TRY(t.add_file(dir, ro("sriov_offset", [p, pos] { return fmt::format("{}\n", p->config_read(pos + PCI_SRIOV_VF_OFFSET, 2)); })));
    TRY(t.add_file(dir, ro("sriov_stride", [p, pos] { return fmt::format("{}\n", p->config_read(pos + PCI_SRIOV_VF_STRIDE, 2)); })));
    TRY(t.add_file(dir, ro("sriov_vf_device", [p, pos] { return fmt::format("{:x}\n", p->config_read(pos + PCI_SRIOV_VF_DID, 2)); })));
    TRY(t.add_file(dir, Attribute{"sriov_drivers_autoprobe", 0644,
                                  [p]() -> Result<std::string> { return std::string(p->sriov_autoprobe_ ? "1\n" : "0\n"); },
                                  [p](std::string_view v) -> Result<void> {
                                    auto n = parse_u16(v);
                                    if (!n || *n > 1) return Error(EINVAL, "expected 0 or 1");
                                    p->sriov_autoprobe_ = *n;
                                    return ok();
                                  }}));
  }
  if (dev->physfn_) TRY(t.add_link(dir, "physfn", dev->physfn_->dir()->path()));
  // What every Linux PCI device shows besides (pci-sysfs.c), in its format:
  // no NUMA node, every CPU local, MSI allowed on the bus, ARI forwarding off
  // (we do not scan functions 8-255), the PM state from the PM capability.
  unsigned cpus = std::max(1u, std::thread::hardware_concurrency());
  TRY(t.add_file(dir, ro("numa_node", [] { return std::string("-1\n"); })));
  TRY(t.add_file(dir, ro("local_cpulist", [cpus] { return cpus == 1 ? std::string("0\n") : fmt::format("0-{}\n", cpus - 1); })));
  TRY(t.add_file(dir, ro("local_cpus", [cpus] {
    // cpumask_print: 32-bit words in hex, most significant first, comma-separated.
    std::string s;
    for (int w = static_cast<int>((cpus + 31) / 32) - 1; w >= 0; --w) {
      unsigned bits = std::min(32u, cpus - 32 * static_cast<unsigned>(w));
      uint32_t word = bits == 32 ? 0xffffffffu : ((1u << bits) - 1);
      s += fmt::format("{}{:08x}", s.empty() ? "" : ",", word);
    }
    return s + "\n";
  })));
  TRY(t.add_file(dir, ro("msi_bus", [] { return std::string("1\n"); })));
  TRY(t.add_file(dir, ro("ari_enabled", [] { return std::string("0\n"); })));
  TRY(t.add_file(dir, ro("power_state", [p] {
    uint16_t pm = p->find_capability(PCI_CAP_ID_PM);
    if (!pm) return std::string("D0\n");
    static const char* names[] = {"D0", "D1", "D2", "D3hot"};
    return std::string(names[p->config_read(pm + PCI_PM_CTRL, 2) & PCI_PM_CTRL_STATE_MASK]) + "\n";
  })));
  TRY(add_reset_attributes(*dev));
  return ok();
}

// pci_init_reset_methods() and the attributes pci-sysfs.c shows only for a
// function that has a reset method: `reset` (write 1: pci_reset_function)
// and `reset_method`.
Result<void> PciBus::add_reset_attributes(PciDevice& d) {
  d.supported_resets_.clear();
  for (uint8_t m = 0; m < std::size(kResetMethodNames); ++m)
    if (std::string_view(kResetMethodNames[m]) == "flr" && d.has_flr()) d.supported_resets_.push_back(m);
  d.reset_methods_ = d.supported_resets_;
  if (d.supported_resets_.empty()) return ok();
  driver::Tree& t = core_.tree();
  PciDevice* p = &d;
  TRY(t.add_file(d.dir(), Attribute{"reset", 0200, nullptr, [p](std::string_view v) -> Result<void> {
                   auto n = parse_u16(v);
                   if (!n || *n != 1) return Error(EINVAL, "write 1 to reset the function");
                   return p->reset_function();
                 }}));
  TRY(t.add_file(d.dir(), Attribute{"reset_method", 0644,
                                    [p]() -> Result<std::string> {
                                      std::string s;
                                      for (uint8_t m : p->reset_methods_)
                                        s += (s.empty() ? "" : " ") + std::string(kResetMethodNames[m]);
                                      return s.empty() ? s : s + "\n";
                                    },
                                    [this, p](std::string_view v) { return reset_method_store(*p, v); }}));
  return ok();
}

namespace {
// sysfs_streq(): equal but for one trailing newline on either side.
bool sysfs_streq(std::string_view a, std::string_view b) {
  if (!a.empty() && a.back() == '\n') a.remove_suffix(1);
  return a == b;
}
}  // namespace

// reset_method_store(): "" disables every method, "default" brings back what
// the function supports, otherwise a space-separated list in priority
// order; an unknown or unsupported name refuses the whole write (EINVAL)
// and leaves the methods as they were.
Result<void> PciBus::reset_method_store(PciDevice& d, std::string_view v) {
  if (sysfs_streq(v, "")) {
    log::warn(d.name(), "All device reset methods disabled by user");
    d.reset_methods_.clear();
    return ok();
  }
  if (sysfs_streq(v, "default")) {
    d.reset_methods_ = d.supported_resets_;
    return ok();
  }
  std::vector<uint8_t> methods;
  while (!v.empty()) {
    size_t sp = v.find(' ');
    std::string_view name = v.substr(0, sp);
    v = sp == std::string_view::npos ? std::string_view() : v.substr(sp + 1);
    while (!name.empty() && std::isspace(static_cast<unsigned char>(name.back()))) name.remove_suffix(1);
    while (!name.empty() && std::isspace(static_cast<unsigned char>(name.front()))) name.remove_prefix(1);
    if (name.empty()) continue;
    uint8_t m = 0;
    while (m < std::size(kResetMethodNames) && name != kResetMethodNames[m]) ++m;
    if (m == std::size(kResetMethodNames)) {
      log::error(d.name(), "Invalid reset method '{}'", name);
      return Error(EINVAL, "invalid reset method");
    }
    if (std::find(d.supported_resets_.begin(), d.supported_resets_.end(), m) == d.supported_resets_.end()) {
      log::error(d.name(), "Unsupported reset method '{}'", name);
      return Error(EINVAL, "unsupported reset method");
    }
    if (methods.size() == std::size(kResetMethodNames)) return Error(EINVAL, "too many reset methods");
    methods.push_back(m);
  }
  d.reset_methods_ = std::move(methods);
  return ok();
}

// drivers/pci/iov.c sriov_numvfs_store(), errno for errno.
Result<void> PciBus::sriov_numvfs_store(PciDevice& pf, std::string_view v) {
  auto parsed = parse_u16(v);
  if (!parsed) return Error(EINVAL, "not a number");  // kstrtou16 failure, whatever kind
  uint16_t n = *parsed;
  if (n > pf.sriov_total_vfs()) return Error(ERANGE, "more VFs than sriov_totalvfs");
  if (n == pf.vfs_.size()) return ok();
  auto* drv = dynamic_cast<PciDriver*>(pf.driver());
  if (!drv) {
    log::info(pf.name(), "no driver bound to device; cannot configure SR-IOV");
    return Error(ENOENT, "no driver bound");
  }
  if (!drv->has_sriov_configure()) return Error(ENOENT, "driver cannot configure SR-IOV");
  if (n == 0) {
    TRY(drv->sriov_configure(pf, 0));
    return ok();
  }
  if (!pf.vfs_.empty()) {
    log::warn(pf.name(), "{} VFs already enabled. Disable before enabling {} VFs", pf.vfs_.size(), n);
    return Error(EBUSY, "VFs already enabled");
  }
  int got = TRY(drv->sriov_configure(pf, n));
  if (got != n) log::warn(pf.name(), "{} VFs requested; only {} enabled", n, got);
  return ok();
}

namespace {
// pci_iov_virtfn_bus()/devfn(): RID(i) = PF RID + First VF Offset + i * VF Stride.
uint32_t vf_rid(uint16_t pf_rid, uint16_t offset, uint16_t stride, uint16_t i) {
  return uint32_t{pf_rid} + offset + uint32_t{i} * stride;
}
}  // namespace

Result<void> PciBus::enable_sriov(PciDevice& pf, uint16_t n) {
  std::lock_guard lk(core_.lock());
  uint16_t pos = pf.sriov_pos_;
  if (!pos || !pf.registered()) return Error(ENODEV, "not an SR-IOV PF");
  if (n == 0 || n > pf.sriov_total_vfs()) return Error(EINVAL, "bad VF count");
  if (!pf.vfs_.empty()) return Error(EINVAL, "VFs already enabled");
  // VF Enable set behind the bus's back (a raw config write): cleared first,
  // as sriov_init() clears one it finds set, so that NumVFs is writable and
  // the VFs appear on the 0 -> 1 edge below.
  if (uint16_t c = static_cast<uint16_t>(pf.config_read(pos + PCI_SRIOV_CTRL, 2)); c & PCI_SRIOV_CTRL_VFE) {
    log::warn(pf.name(), "VF Enable was set without VFs known to the bus: cleared before enabling");
    pf.config_write(pos + PCI_SRIOV_CTRL, 2, c & ~(PCI_SRIOV_CTRL_VFE | PCI_SRIOV_CTRL_MSE));
  }
  pf.config_write(pos + PCI_SRIOV_NUM_VF, 2, n);
  // Offset and stride may change with NumVFs: read them after writing it.
  uint16_t offset = static_cast<uint16_t>(pf.config_read(pos + PCI_SRIOV_VF_OFFSET, 2));
  uint16_t stride = static_cast<uint16_t>(pf.config_read(pos + PCI_SRIOV_VF_STRIDE, 2));
  if (offset == 0 || (n > 1 && stride == 0)) return Error(EIO, "bad SR-IOV offset or stride");
  auto* parent = dynamic_cast<PciDevice*>(pf.parent());
  uint32_t last_rid = vf_rid(pf.bdf().id(), offset, stride, n - 1);
  if (last_rid > 0xffff) return Error(ENOMEM, "VF bus numbers out of range");
  if (parent && (last_rid >> 8) > parent->config_read(PCI_SUBORDINATE_BUS, 1)) {
    log::error(pf.name(), "can't enable {} VFs (bus {:02x} out of range)", n, last_rid >> 8);
    return Error(ENOMEM, "VF bus numbers out of range");
  }
  uint16_t ctrl = static_cast<uint16_t>(pf.config_read(pos + PCI_SRIOV_CTRL, 2));
  pf.config_write(pos + PCI_SRIOV_CTRL, 2, ctrl | PCI_SRIOV_CTRL_VFE | PCI_SRIOV_CTRL_MSE);
  Result<void> result = ok();
  for (uint16_t i = 0; i < n; ++i) {
    Bdf vb = Bdf::from_rid(pf.bdf().domain(), static_cast<uint16_t>(
                                                  vf_rid(pf.bdf().id(), offset, stride, i)));
    hw::Function* f = fabric_.find(vb);
    if (!f) {
      result = Error(EIO, "VF did not appear");
      break;
    }
    PciDevice* vf = create(*f, vb, pf.parent());
    vf->physfn_ = &pf;
    vf->vf_index_ = i;
    vf->vendor_ = pf.vendor_;
    vf->device_ = static_cast<uint16_t>(pf.config_read(pos + PCI_SRIOV_VF_DID, 2));
    for (unsigned k = 0; k < kNumBars; ++k) {
      const Resource& iov = pf.res_[kIovResources + k];
      if (!iov.flags) continue;
      uint64_t per = iov.size() / pf.sriov_total_vfs();
      vf->res_[k] = {iov.start + i * per, iov.start + (i + 1) * per - 1, iov.flags};
    }
    pf.vfs_.push_back(vf);
    if (auto r = core_.device_add(*vf, this); !r) {
      std::erase(pf.vfs_, vf);
      devs_.erase(vb);
      result = r.error();
      break;
    }
    (void)core_.tree().add_link(pf.dir(), fmt::format("virtfn{}", i), vf->dir()->path());
  }
  if (!result) disable_sriov(pf);
  return result;
}

int PciBus::vf_probe_error(const PciDevice& pf) const {
  for (const PciDevice* vf : pf.vfs_) {
    if (int e = vf->probe_error(); e && !vf->driver()) {
      log::error(pf.name(), "VF {} not probed: {}", vf->name(), std::strerror(e));
      return e;
    }
  }
  return 0;
}

void PciBus::disable_sriov(PciDevice& pf) {
  std::lock_guard lk(core_.lock());
  uint16_t pos = pf.sriov_pos_;
  if (!pos) return;
  // Last VF first; each one's driver is unbound as it goes.
  while (!pf.vfs_.empty()) {
    destroy(*pf.vfs_.back());
  }
  uint16_t ctrl = static_cast<uint16_t>(pf.config_read(pos + PCI_SRIOV_CTRL, 2));
  pf.config_write(pos + PCI_SRIOV_CTRL, 2, ctrl & ~(PCI_SRIOV_CTRL_VFE | PCI_SRIOV_CTRL_MSE));
  pf.config_write(pos + PCI_SRIOV_NUM_VF, 2, 0);
}

}  // namespace uvfio::bus::pci
