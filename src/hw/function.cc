// SPDX-License-Identifier: BSD-3-Clause
#include "hw/function.h"

#include <cstring>

#include "hw/regs.h"

#include "hw/iommu.h"

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

namespace {

// The capability lists walked in order, bounded whatever the pointers say:
// visit(offset, id) for each capability until it returns true; the offset
// where it did, or 0.
template <class Visit>
uint16_t walk_std(const ConfigSpace& cfg, Visit visit) {
  if (!(cfg.get(kStatus) & PCI_STATUS_CAP_LIST)) return 0;
  uint8_t pos = cfg.get(kCapabilityList) & ~3;
  for (int i = 0; i < 48 && pos >= PCI_STD_HEADER_SIZEOF; ++i) {
    if (visit(pos, static_cast<uint8_t>(cfg.raw_read(pos, 1)))) return pos;
    pos = cfg.raw_read(pos + 1, 1) & ~3;
  }
  return 0;
}

template <class Visit>
uint16_t walk_ext(const ConfigSpace& cfg, Visit visit) {
  if (cfg.size() < kConfigSizeExtended) return 0;
  uint16_t pos = PCI_CFG_SPACE_SIZE;
  for (int i = 0; i < (kConfigSizeExtended - PCI_CFG_SPACE_SIZE) / 8 && pos >= PCI_CFG_SPACE_SIZE; ++i) {
    uint32_t h = cfg.raw_read(pos, 4);
    if (h == 0 || h == 0xffffffff) return 0;
    if (visit(pos, static_cast<uint16_t>(PCI_EXT_CAP_ID(h)))) return pos;
    pos = static_cast<uint16_t>(PCI_EXT_CAP_NEXT(h));
  }
  return 0;
}

}  // namespace

void Function::finish_build() {
  power_on_.assign(cfg_);
  // One walk of each list; the first capability of an ID is the one found.
  cap_at_.fill(0);
  ext_cap_at_.fill(0);
  walk_std(cfg_, [&](uint16_t pos, uint8_t id) {
    if (!cap_at_[id]) cap_at_[id] = static_cast<uint8_t>(pos);
    return false;
  });
  walk_ext(cfg_, [&](uint16_t pos, uint16_t id) {
    if (id < ext_cap_at_.size() && !ext_cap_at_[id]) ext_cap_at_[id] = pos;
    return false;
  });
  caps_known_ = true;
}

void Function::set_multifunction(bool on) {
  for (ConfigSpace* c : {&cfg_, &power_on_}) {
    uint8_t h = c->get(kHeaderType);
    c->set(kHeaderType, static_cast<uint8_t>(on ? (h | 0x80) : (h & 0x7f)));
  }
}

uint16_t Function::find_capability(uint8_t id) const {
  return caps_known_ ? cap_at_[id] : walk_capability(id);
}

uint16_t Function::find_ext_capability(uint16_t id) const {
  if (caps_known_ && id < ext_cap_at_.size()) return ext_cap_at_[id];
  return walk_ext_capability(id);
}

uint16_t Function::walk_capability(uint8_t id) const {
  return walk_std(cfg_, [id](uint16_t, uint8_t cap) { return cap == id; });
}

uint16_t Function::walk_ext_capability(uint16_t id) const {
  return walk_ext(cfg_, [id](uint16_t, uint16_t cap) { return cap == id; });
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
  irq_config_written(off, width);
  on_config_write(off, width, old);
}

void Function::on_config_write(uint16_t, unsigned, uint32_t) {}

void Function::irq_config_written(uint16_t off, unsigned width) {
  uint16_t msix = find_capability(PCI_CAP_ID_MSIX);
  if (msix && overlaps(off, width, msix + PCI_MSIX_FLAGS, 2)) {
    std::vector<std::pair<uint64_t, uint32_t>> fire;
    {
      std::lock_guard lk(irq_mu_);
      msix_fire_pending_locked(fire);
    }
    deliver(fire);
  }
  if (overlaps(off, width, PCI_COMMAND, 2) && cfg_.get(kInterruptPin)) {
    // INTx Disable gates the pin: re-evaluate the level the sink sees.
    set_intx(cfg_.get(kStatus) & PCI_STATUS_INTERRUPT);
  }
}

void Function::function_level_reset() {
  ++flr_count_;
  // FLR discards the function's outstanding requests: DMA waiting on a
  // client is cancelled, so the model's engines stop at once.
  IommuDomain* dom = iommu_.load();
  if (dom) dom->block_remote(true);
  before_reset();
  cfg_.assign(power_on_);
  {
    std::lock_guard lk(irq_mu_);
    for (auto& e : msix_) e = MsixEntry{};
    for (auto& p : msix_pba_) p = 0;
    if (intx_level_ && sink_) sink_->intx(false);
    intx_level_ = false;
  }
  on_reset();
  if (dom) dom->block_remote(false);
}

Result<uint64_t> Function::bar_read(unsigned bar, uint64_t off, unsigned width) {
  BarMemory* m = bar_memory(bar);
  if (!m) return Error(EINVAL, "BAR not implemented");
  return m->load(off, width);
}

Result<void> Function::bar_write(unsigned bar, uint64_t off, unsigned width, uint64_t value) {
  BarMemory* m = bar_memory(bar);
  if (!m) return Error(EINVAL, "BAR not implemented");
  return m->store(off, width, value);
}

// ---- MSI-X table and PBA (PCI 3.0 §6.8.2) -----------------------------------

void Function::setup_msix(unsigned table_bar, uint32_t table_off, unsigned n, unsigned pba_bar, uint32_t pba_off) {
  std::lock_guard lk(irq_mu_);
  msix_.assign(n, MsixEntry{});
  msix_pba_.assign((n + 63) / 64, 0);
  msix_table_bar_ = table_bar;
  msix_table_off_ = table_off;
  msix_pba_bar_ = pba_bar;
  msix_pba_off_ = pba_off;
}

bool Function::msix_decode(unsigned bar, uint64_t off, unsigned width, bool& is_table, uint64_t& rel) const {
  if (msix_.empty()) return false;
  uint64_t tlen = msix_.size() * PCI_MSIX_ENTRY_SIZE;
  uint64_t plen = msix_pba_.size() * 8;
  if (bar == msix_table_bar_ && off >= msix_table_off_ && off + width <= msix_table_off_ + tlen) {
    is_table = true;
    rel = off - msix_table_off_;
    return true;
  }
  if (bar == msix_pba_bar_ && off >= msix_pba_off_ && off + width <= msix_pba_off_ + plen) {
    is_table = false;
    rel = off - msix_pba_off_;
    return true;
  }
  return false;
}

namespace {
// The widest naturally aligned access (8, 4, 2, 1) at `at` within `left`.
unsigned natural_width(uint64_t at, size_t left) {
  if (left >= 8 && !(at % 8)) return 8;
  if (left >= 4 && !(at % 4)) return 4;
  if (left >= 2 && !(at % 2)) return 2;
  return 1;
}
}  // namespace

uint64_t Function::plain_run(unsigned bar, uint64_t off, uint64_t len) const {
  if (const RegisterBlock* rb = registers(bar)) len = rb->plain_run(off, len);
  auto clip = [&](unsigned sbar, uint64_t start, uint64_t size) {
    if (sbar != bar || !size || off >= start + size) return;
    len = off >= start ? 0 : std::min(len, start - off);
  };
  if (!msix_.empty()) {
    clip(msix_table_bar_, msix_table_off_, uint64_t{msix_.size()} * PCI_MSIX_ENTRY_SIZE);
    clip(msix_pba_bar_, msix_pba_off_, msix_pba_.size() * 8);
  }
  return len;
}

// A block access as runs: plain memory copied at once (`plain`), the rest
// (registers, MSI-X) as natural-width accesses (`access`).
template <class Plain, class Access>
Result<void> Function::walk_block(unsigned bar, uint64_t off, size_t size, Plain plain, Access access) {
  BarMemory* m = bar_memory(bar);
  if (!m) return Error(EINVAL, "BAR not implemented");
  size_t done = 0;
  while (done < size) {
    uint64_t at = off + done;
    size_t left = size - done;
    if (uint64_t run = plain_run(bar, at, left)) {
      TRY(plain(*m, at, done, run));
      done += run;
      continue;
    }
    unsigned n = natural_width(at, left);
    TRY(access(at, done, n));
    done += n;
  }
  return ok();
}

Result<void> Function::mmio_read_block(unsigned bar, uint64_t off, std::span<uint8_t> out) {
  return walk_block(
      bar, off, out.size(),
      [&](BarMemory& m, uint64_t at, size_t done, size_t run) { return m.copy_out(at, out.subspan(done, run)); },
      [&](uint64_t at, size_t done, unsigned n) -> Result<void> {
        uint64_t v = TRY(mmio_read(bar, at, n));
        std::memcpy(out.data() + done, &v, n);  // little-endian
        return ok();
      });
}

Result<void> Function::mmio_write_block(unsigned bar, uint64_t off, std::span<const uint8_t> in) {
  return walk_block(
      bar, off, in.size(),
      [&](BarMemory& m, uint64_t at, size_t done, size_t run) { return m.copy_in(at, in.subspan(done, run)); },
      [&](uint64_t at, size_t done, unsigned n) {
        uint64_t v = 0;
        std::memcpy(&v, in.data() + done, n);
        return mmio_write(bar, at, n, v);
      });
}

Result<uint64_t> Function::mmio_read(unsigned bar, uint64_t off, unsigned width) {
  bool table;
  uint64_t rel;
  if (msix_decode(bar, off, width, table, rel)) {
    std::lock_guard lk(irq_mu_);
    uint8_t bytes[8] = {};
    for (unsigned i = 0; i < width; ++i) {
      uint64_t o = rel + i;
      if (table) {
        const MsixEntry& e = msix_[o / PCI_MSIX_ENTRY_SIZE];
        uint32_t words[4] = {e.addr_lo, e.addr_hi, e.data, e.ctrl};
        bytes[i] = static_cast<uint8_t>(words[(o % 16) / 4] >> (8 * (o % 4)));
      } else {
        bytes[i] = static_cast<uint8_t>(msix_pba_[o / 8] >> (8 * (o % 8)));
      }
    }
    uint64_t v = 0;
    for (unsigned i = 0; i < width; ++i) v |= uint64_t{bytes[i]} << (8 * i);
    return v;
  }
  return bar_read(bar, off, width);
}

Result<void> Function::mmio_write(unsigned bar, uint64_t off, unsigned width, uint64_t value) {
  bool table;
  uint64_t rel;
  if (msix_decode(bar, off, width, table, rel)) {
    if (!table) return ok();  // the PBA is read-only
    std::vector<std::pair<uint64_t, uint32_t>> fire;
    {
      std::lock_guard lk(irq_mu_);
      for (unsigned i = 0; i < width; ++i) {
        uint64_t o = rel + i;
        MsixEntry& e = msix_[o / PCI_MSIX_ENTRY_SIZE];
        uint32_t* words[4] = {&e.addr_lo, &e.addr_hi, &e.data, &e.ctrl};
        uint32_t* w = words[(o % 16) / 4];
        unsigned sh = 8 * (o % 4);
        *w = (*w & ~(0xffu << sh)) | (static_cast<uint32_t>((value >> (8 * i)) & 0xff) << sh);
        if ((o % 16) / 4 == 3) e.ctrl &= PCI_MSIX_ENTRY_CTRL_MASKBIT;  // other bits reserved
      }
      msix_fire_pending_locked(fire);
    }
    deliver(fire);
    return ok();
  }
  return bar_write(bar, off, width, value);
}

void Function::set_irq_sink(IrqSink* sink) {
  std::lock_guard lk(irq_mu_);
  sink_ = sink;
}

IrqMode Function::irq_mode() const {
  uint16_t msix = find_capability(PCI_CAP_ID_MSIX);
  if (msix && (cfg_.raw_read(msix + PCI_MSIX_FLAGS, 2) & PCI_MSIX_FLAGS_ENABLE)) return IrqMode::kMsix;
  uint16_t msi = find_capability(PCI_CAP_ID_MSI);
  if (msi && (cfg_.raw_read(msi + PCI_MSI_FLAGS, 2) & PCI_MSI_FLAGS_ENABLE)) return IrqMode::kMsi;
  if (cfg_.get(kInterruptPin) && !(cfg_.get(kCommand) & PCI_COMMAND_INTX_DISABLE)) return IrqMode::kIntx;
  return IrqMode::kNone;
}

bool Function::msix_pending(unsigned vector) const {
  std::lock_guard lk(irq_mu_);
  return vector < msix_.size() && (msix_pba_[vector / 64] >> (vector % 64)) & 1;
}

// With the table or the function mask changed: send what is pending and no
// longer masked (PCI 3.0 §6.8.2.9).
void Function::msix_fire_pending_locked(std::vector<std::pair<uint64_t, uint32_t>>& out) {
  uint16_t cap = find_capability(PCI_CAP_ID_MSIX);
  if (!cap) return;
  uint16_t ctrl = static_cast<uint16_t>(cfg_.raw_read(cap + PCI_MSIX_FLAGS, 2));
  if (!(ctrl & PCI_MSIX_FLAGS_ENABLE) || (ctrl & PCI_MSIX_FLAGS_MASKALL)) return;
  for (unsigned v = 0; v < msix_.size(); ++v) {
    uint64_t bit = uint64_t{1} << (v % 64);
    if (!(msix_pba_[v / 64] & bit) || (msix_[v].ctrl & PCI_MSIX_ENTRY_CTRL_MASKBIT)) continue;
    msix_pba_[v / 64] &= ~bit;
    out.emplace_back(uint64_t{msix_[v].addr_hi} << 32 | msix_[v].addr_lo, msix_[v].data);
  }
}

void Function::deliver(const std::vector<std::pair<uint64_t, uint32_t>>& msgs) {
  if (msgs.empty()) return;
  std::lock_guard lk(irq_mu_);  // the sink cannot be detached mid-delivery
  if (!sink_) return;
  for (auto& [a, d] : msgs) sink_->msi(a, d);
}

void Function::raise_irq(unsigned vector) {
  std::vector<std::pair<uint64_t, uint32_t>> fire;
  switch (irq_mode()) {
    case IrqMode::kNone: return;
    case IrqMode::kIntx: set_intx(true); return;
    case IrqMode::kMsix: {
      std::lock_guard lk(irq_mu_);
      if (vector >= msix_.size()) return;
      msix_pba_[vector / 64] |= uint64_t{1} << (vector % 64);
      msix_fire_pending_locked(fire);
      break;
    }
    case IrqMode::kMsi: {
      uint16_t cap = find_capability(PCI_CAP_ID_MSI);
      uint16_t ctrl = static_cast<uint16_t>(cfg_.raw_read(cap + PCI_MSI_FLAGS, 2));
      unsigned enabled = 1u << ((ctrl & PCI_MSI_FLAGS_QSIZE) >> 4);
      if (vector >= enabled) return;
      bool is64 = ctrl & PCI_MSI_FLAGS_64BIT;
      if (ctrl & PCI_MSI_FLAGS_MASKBIT) {
        uint32_t mask = cfg_.raw_read(cap + (is64 ? PCI_MSI_MASK_64 : PCI_MSI_MASK_32), 4);
        if (mask & (1u << vector)) {
          uint16_t pend = cap + (is64 ? PCI_MSI_MASK_64 : PCI_MSI_MASK_32) + 4;
          cfg_.update(pend, 4, 0, 1u << vector);
          return;
        }
      }
      uint64_t addr = cfg_.raw_read(cap + PCI_MSI_ADDRESS_LO, 4);
      if (is64) addr |= uint64_t{cfg_.raw_read(cap + PCI_MSI_ADDRESS_HI, 4)} << 32;
      uint16_t data = static_cast<uint16_t>(cfg_.raw_read(cap + (is64 ? PCI_MSI_DATA_64 : PCI_MSI_DATA_32), 2));
      // Multiple messages: the low bits of the data carry the vector.
      fire.emplace_back(addr, (data & ~(enabled - 1)) | vector);
      break;
    }
  }
  deliver(fire);
}

void Function::set_intx(bool asserted) {
  if (!cfg_.get(kInterruptPin)) return;
  cfg_.update(PCI_STATUS, 2, asserted ? 0 : PCI_STATUS_INTERRUPT, asserted ? PCI_STATUS_INTERRUPT : 0);
  bool disabled = cfg_.get(kCommand) & PCI_COMMAND_INTX_DISABLE;
  std::lock_guard lk(irq_mu_);
  bool level = asserted && !disabled;
  if (level == intx_level_) return;
  intx_level_ = level;
  if (sink_) sink_->intx(level);
}

}  // namespace uvfio::hw
