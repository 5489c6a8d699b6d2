#include "hw/function.h"

#include "hw/fabric.h"

namespace uvfio::hw {

Function::Function(std::string model, uint16_t config_size)
    : model_(std::move(model)), cfg_(config_size), power_on_(config_size) {}

Function::~Function() = default;

void Function::set_ids(const FunctionIds& ids) {
  cfg_.set(kVendorId, ids.vendor);
  cfg_.set(kDeviceId, ids.device);
  cfg_.raw_write(PCI_CLASS_REVISION, 4, (ids.class_code << 8) | ids.revision);
  if (!is_bridge()) {
    cfg_.set(kSubsystemVendor, ids.subsystem_vendor);
    cfg_.set(kSubsystemId, ids.subsystem_device);
  }
}

Result<void> Function::define_bar(unsigned idx, const BarDesc& desc) {
  unsigned limit = is_bridge() ? 2 : kNumBars;
  if (idx >= limit) return Error(EINVAL, "BAR index out of range");
  TRY(desc.validate());
  if (desc.is_64() && idx + 1 >= limit) return Error(EINVAL, "64-bit BAR in the last slot");
  bars_[idx] = desc;
  if (!desc.implemented()) return ok();
  std::string name = model_ + "-bar" + std::to_string(idx);
  bar_mem_[idx] = TRY(BarMemory::create(desc.size, name.c_str()));
  // A VF's BARs are programmed in its PF's SR-IOV capability; its own BAR
  // registers and Command decode bits are read-only zero (SR-IOV 1.1 §3.4.1).
  if (is_virtfn()) return ok();
  uint16_t reg = static_cast<uint16_t>(PCI_BASE_ADDRESS_0 + 4 * idx);
  uint64_t addr_mask = ~(desc.size - 1);
  cfg_.raw_write(reg, 4, desc.type_bits());
  cfg_.set_rw(reg, 4, static_cast<uint32_t>(addr_mask) & (desc.is_io() ? ~3u : ~0xfu));
  if (desc.is_64()) {
    cfg_.raw_write(reg + 4, 4, 0);
    cfg_.set_rw(reg + 4, 4, static_cast<uint32_t>(addr_mask >> 32));
  }
  // Decode enables follow the kinds of BARs present.
  uint16_t cmd_rw = cfg_.rw_mask(PCI_COMMAND, 2);
  cmd_rw |= desc.is_io() ? PCI_COMMAND_IO : PCI_COMMAND_MEMORY;
  cfg_.set_rw(PCI_COMMAND, 2, cmd_rw);
  return ok();
}

Result<uint16_t> Function::add_capability(uint8_t id, uint16_t len) {
  uint16_t off = next_cap_;
  if (len < 2 || off + len > PCI_CFG_SPACE_SIZE) return Error(ENOSPC, "no room for capability");
  cfg_.raw_write(off, 1, id);
  cfg_.raw_write(off + 1, 1, 0);
  cfg_.raw_write(last_cap_next_, 1, off);
  last_cap_next_ = off + 1;
  next_cap_ = static_cast<uint16_t>((off + len + 3) & ~3);
  cfg_.set(kStatus, static_cast<uint16_t>(cfg_.get(kStatus) | PCI_STATUS_CAP_LIST));
  return off;
}

Result<uint16_t> Function::add_ext_capability(uint16_t id, uint8_t version, uint16_t len) {
  uint16_t off = next_ext_;
  if (cfg_.size() < kConfigSizeExtended || len < 4 || off + len > kConfigSizeExtended)
    return Error(ENOSPC, "no room for extended capability");
  cfg_.raw_write(off, 4, PCI_EXT_CAP_ID(id) | (static_cast<uint32_t>(version & 0xf) << 16));
  if (last_ext_) {
    uint32_t h = cfg_.raw_read(last_ext_, 4);
    cfg_.raw_write(last_ext_, 4, (h & 0x000fffff) | (static_cast<uint32_t>(off) << 20));
  }
  last_ext_ = off;
  next_ext_ = static_cast<uint16_t>((off + len + 3) & ~3);
  return off;
}

void Function::finish_build() { power_on_ = cfg_; }

void Function::set_multifunction(bool on) {
  for (ConfigSpace* c : {&cfg_, &power_on_}) {
    uint8_t h = c->get(kHeaderType);
    c->set(kHeaderType, static_cast<uint8_t>(on ? (h | 0x80) : (h & 0x7f)));
  }
}

uint16_t Function::find_capability(uint8_t id) const {
  if (!(cfg_.get(kStatus) & PCI_STATUS_CAP_LIST)) return 0;
  uint8_t pos = cfg_.get(kCapabilityList) & ~3;
  for (int i = 0; i < 48 && pos >= PCI_STD_HEADER_SIZEOF; ++i) {
    if (cfg_.raw_read(pos, 1) == id) return pos;
    pos = cfg_.raw_read(pos + 1, 1) & ~3;
  }
  return 0;
}

uint16_t Function::find_ext_capability(uint16_t id) const {
  if (cfg_.size() < kConfigSizeExtended) return 0;
  uint16_t pos = PCI_CFG_SPACE_SIZE;
  for (int i = 0; i < (kConfigSizeExtended - PCI_CFG_SPACE_SIZE) / 8 && pos >= PCI_CFG_SPACE_SIZE; ++i) {
    uint32_t h = cfg_.raw_read(pos, 4);
    if (h == 0 || h == 0xffffffff) return 0;
    if (PCI_EXT_CAP_ID(h) == id) return pos;
    pos = PCI_EXT_CAP_NEXT(h);
  }
  return 0;
}

bool Function::flr_capable() const {
  uint16_t pcie = find_capability(PCI_CAP_ID_EXP);
  return pcie && (cfg_.raw_read(pcie + PCI_EXP_DEVCAP, 4) & PCI_EXP_DEVCAP_FLR);
}

void Function::config_write(uint16_t off, unsigned width, uint32_t value) {
  if (width != 1 && width != 2 && width != 4) return;
  uint32_t old = cfg_.raw_read(off, width);
  cfg_.write(off, width, value);
  // Initiate Function Level Reset: a write of 1 to PCIe Device Control bit 15
  // of an FLR-capable endpoint. The bit itself always reads 0.
  uint16_t pcie = find_capability(PCI_CAP_ID_EXP);
  if (pcie && !is_bridge() && flr_capable()) {
    uint16_t bcr_byte = pcie + PCI_EXP_DEVCTL + 1;  // bit 15 lives in the high byte
    if (overlaps(off, width, bcr_byte, 1)) {
      uint32_t byte = (value >> (8 * (bcr_byte - off))) & 0xff;
      if (byte & (PCI_EXP_DEVCTL_BCR_FLR >> 8)) {
        function_level_reset();
        return;
      }
    }
  }
  on_config_write(off, width, old);
}

void Function::on_config_write(uint16_t, unsigned, uint32_t) {}

void Function::function_level_reset() {
  before_reset();
  cfg_ = power_on_;
  on_reset();
}

Result<uint64_t> Function::mmio_read(unsigned bar, uint64_t off, unsigned width) {
  BarMemory* m = bar_memory(bar);
  if (!m) return Error(EINVAL, "BAR not implemented");
  return m->load(off, width);
}

Result<void> Function::mmio_write(unsigned bar, uint64_t off, unsigned width, uint64_t value) {
  BarMemory* m = bar_memory(bar);
  if (!m) return Error(EINVAL, "BAR not implemented");
  return m->store(off, width, value);
}

}  // namespace uvfio::hw
