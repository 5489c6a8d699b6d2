// SPDX-License-Identifier: BSD-3-Clause
// Config-space virtualization (drivers/vfio/pci/vfio_pci_config.c rules,
// reference/kernel-vfio.md §2): a per-byte owner map, per-capability
// permission tables of virtualized and writable bits, hidden capabilities
// unlinked, gaps passed through raw, BARs emulated.
#include <cstring>

#include "base/log.h"
#include "base/range.h"
#include "vfio/pci_core/core.h"

namespace uvfio::vfio::pci {
namespace {

constexpr uint8_t kAll = 0xff;

void set_bits(PermBits& p, uint16_t off, unsigned width, uint32_t virt, uint32_t write) {
  for (unsigned i = 0; i < width; ++i) {
    p.virt[off + i] = static_cast<uint8_t>(virt >> (8 * i));
    p.write[off + i] = static_cast<uint8_t>(write >> (8 * i));
  }
}

PermBits make_perm(size_t len, PermBits::ReadFn r, PermBits::WriteFn w) {
  PermBits p;
  len = (len + 3) & ~size_t{3};  // tables cover whole dwords
  p.virt.assign(len, 0);
  p.write.assign(len, 0);
  p.read = r;
  p.write_fn = w;
  return p;
}

// Standard capability lengths (pci_cap_length): 0 hides the capability,
// 0xff means "computed from the capability itself".
uint8_t std_cap_length(uint8_t id) {
  switch (id) {
    case PCI_CAP_ID_PM: return PCI_PM_SIZEOF;
    case PCI_CAP_ID_AGP: return PCI_AGP_SIZEOF;
    case PCI_CAP_ID_VPD: return PCI_CAP_VPD_SIZEOF;
    case PCI_CAP_ID_MSI: return 0xff;
    case PCI_CAP_ID_PCIX: return 0xff;
    case PCI_CAP_ID_HT: return 0xff;
    case PCI_CAP_ID_VNDR: return 0xff;
    case PCI_CAP_ID_EXP: return 0xff;
    case PCI_CAP_ID_MSIX: return PCI_CAP_MSIX_SIZEOF;
    case PCI_CAP_ID_SATA: return 0xff;
    case PCI_CAP_ID_AF: return PCI_CAP_AF_SIZEOF;
    // Slot ID, CompactPCI hot swap, debug, CompactPCI CRC, SHPC, SSVID,
    // AGP3, secure device, EA and unknown ids: hidden.
    default: return 0;
  }
}

// Extended capability lengths (pci_ext_cap_length); 0 hides.
uint16_t ext_cap_length(uint16_t id) {
  switch (id) {
    case PCI_EXT_CAP_ID_ERR: return PCI_ERR_ROOT_COMMAND;
    case PCI_EXT_CAP_ID_VC: case PCI_EXT_CAP_ID_VC9: case PCI_EXT_CAP_ID_MFVC: return 0xff;
    case PCI_EXT_CAP_ID_DSN: return PCI_EXT_CAP_DSN_SIZEOF;
    case PCI_EXT_CAP_ID_PWR: return PCI_EXT_CAP_PWR_SIZEOF;
    case PCI_EXT_CAP_ID_VNDR: return 0xff;
    case PCI_EXT_CAP_ID_ACS: return 0xff;
    case PCI_EXT_CAP_ID_ARI: return PCI_EXT_CAP_ARI_SIZEOF;
    case PCI_EXT_CAP_ID_ATS: return PCI_EXT_CAP_ATS_SIZEOF;
    case PCI_EXT_CAP_ID_SRIOV: return PCI_EXT_CAP_SRIOV_SIZEOF;
    case PCI_EXT_CAP_ID_MCAST: return PCI_EXT_CAP_MCAST_ENDPOINT_SIZEOF;
    case PCI_EXT_CAP_ID_PRI: return PCI_EXT_CAP_PRI_SIZEOF;
    case PCI_EXT_CAP_ID_REBAR: case PCI_EXT_CAP_ID_DPA: case PCI_EXT_CAP_ID_TPH: return 0xff;
    case PCI_EXT_CAP_ID_LTR: return PCI_EXT_CAP_LTR_SIZEOF;
    case PCI_EXT_CAP_ID_DVSEC: return 0xff;
    // RCLD, RCILC, RCEC, RCRB, CAC, MR-IOV, AMD, secondary PCIe, PMUX,
    // PASID and unknown ids: hidden.
    default: return 0;
  }
}

}  // namespace

// The shared tables (vfio_pci_init_perm_bits), built once.
struct PermTables {
  PermBits basic, pm, exp, vpd, vndr, af, direct;
  PermBits e_direct, e_err, e_pwr, e_vndr, raw, virt;
  PermTables() {
    basic = make_perm(PCI_STD_HEADER_SIZEOF, &CoreDevice::basic_read, &CoreDevice::basic_write);
    set_bits(basic, PCI_VENDOR_ID, 4, ~0u, 0);                      // vendor, device
    set_bits(basic, PCI_COMMAND, 2, PCI_COMMAND_INTX_DISABLE, 0xffff);
    set_bits(basic, PCI_STATUS, 2, PCI_STATUS_CAP_LIST, 0);
    set_bits(basic, PCI_CACHE_LINE_SIZE, 1, 0, kAll);
    set_bits(basic, PCI_LATENCY_TIMER, 1, 0, kAll);
    set_bits(basic, PCI_BIST, 1, 0, kAll);
    for (uint16_t b = PCI_BASE_ADDRESS_0; b <= PCI_BASE_ADDRESS_5; b += 4) set_bits(basic, b, 4, ~0u, ~0u);
    set_bits(basic, PCI_ROM_ADDRESS, 4, ~0u, ~0u);
    set_bits(basic, PCI_CAPABILITY_LIST, 1, kAll, 0);
    set_bits(basic, PCI_INTERRUPT_LINE, 1, kAll, kAll);
    set_bits(basic, PCI_INTERRUPT_PIN, 1, kAll, 0);

    pm = make_perm(PCI_PM_SIZEOF, &CoreDevice::default_read, &CoreDevice::pm_write);
    set_bits(pm, PCI_CAP_LIST_NEXT, 1, kAll, 0);
    set_bits(pm, PCI_PM_PMC, 2, PCI_PM_CAP_PME_MASK, 0);
    // init_pci_cap_pm_perm(): a dword from PMCSR (PMCSR_BSE and Data are
    // writable through too).
    set_bits(pm, PCI_PM_CTRL, 4, PCI_PM_CTRL_PME_ENABLE | PCI_PM_CTRL_PME_STATUS,
             ~(PCI_PM_CTRL_PME_ENABLE | PCI_PM_CTRL_PME_STATUS | PCI_PM_CTRL_STATE_MASK));

    exp = make_perm(0x3c, &CoreDevice::default_read, &CoreDevice::exp_write);
    set_bits(exp, PCI_CAP_LIST_NEXT, 1, kAll, 0);
    set_bits(exp, PCI_EXP_DEVCTL, 2, PCI_EXP_DEVCTL_BCR_FLR | PCI_EXP_DEVCTL_PAYLOAD | PCI_EXP_DEVCTL_READRQ,
             ~PCI_EXP_DEVCTL_PHANTOM & 0xffff);
    set_bits(exp, PCI_EXP_DEVCTL2, 2, 0, ~PCI_EXP_DEVCTL2_ARI & 0xffff);

    vpd = make_perm(PCI_CAP_VPD_SIZEOF, &CoreDevice::default_read, &CoreDevice::default_write);
    set_bits(vpd, PCI_CAP_LIST_NEXT, 1, kAll, 0);
    set_bits(vpd, PCI_VPD_ADDR, 2, 0xffff, 0xffff);
    set_bits(vpd, PCI_VPD_DATA, 4, ~0u, ~0u);

    af = make_perm(PCI_CAP_AF_SIZEOF, &CoreDevice::default_read, &CoreDevice::default_write);
    set_bits(af, PCI_CAP_LIST_NEXT, 1, kAll, 0);
    set_bits(af, PCI_AF_CTRL, 1, PCI_AF_CTRL_FLR, PCI_AF_CTRL_FLR);

    vndr = make_perm(4, &CoreDevice::direct_read, &CoreDevice::raw_write);
    direct = make_perm(4, &CoreDevice::direct_read, nullptr);
    e_direct = make_perm(4, &CoreDevice::direct_read, nullptr);
    e_vndr = make_perm(4, &CoreDevice::direct_read, &CoreDevice::raw_write);
    e_err = make_perm(PCI_ERR_ROOT_COMMAND, &CoreDevice::default_read, &CoreDevice::default_write);
    set_bits(e_err, 0, 4, ~0u, 0);
    // init_pci_ext_cap_err_perm(): the uncorrectable errors a user may mask.
    const uint32_t unc = PCI_ERR_UNC_UND | PCI_ERR_UNC_DLP | PCI_ERR_UNC_SURPDN | PCI_ERR_UNC_POISON_TLP |
                         PCI_ERR_UNC_FCP | PCI_ERR_UNC_COMP_TIME | PCI_ERR_UNC_COMP_ABORT | PCI_ERR_UNC_UNX_COMP |
                         PCI_ERR_UNC_RX_OVER | PCI_ERR_UNC_MALF_TLP | PCI_ERR_UNC_ECRC | PCI_ERR_UNC_UNSUP |
                         PCI_ERR_UNC_ACSV | PCI_ERR_UNC_INTN | PCI_ERR_UNC_MCBTLP | PCI_ERR_UNC_ATOMEG |
                         PCI_ERR_UNC_TLPPRE;
    set_bits(e_err, PCI_ERR_UNCOR_STATUS, 4, 0, unc);
    set_bits(e_err, PCI_ERR_UNCOR_MASK, 4, 0, unc);
    set_bits(e_err, PCI_ERR_UNCOR_SEVER, 4, 0, unc);
    set_bits(e_err, PCI_ERR_COR_STATUS, 4, 0, 0x0000f1c1);
    set_bits(e_err, PCI_ERR_COR_MASK, 4, 0, 0x0000f1c1);
    set_bits(e_err, PCI_ERR_CAP, 4, 0, PCI_ERR_CAP_ECRC_GENE | PCI_ERR_CAP_ECRC_CHKE);
    e_pwr = make_perm(PCI_EXT_CAP_PWR_SIZEOF, &CoreDevice::default_read, &CoreDevice::default_write);
    set_bits(e_pwr, 0, 4, ~0u, 0);
    set_bits(e_pwr, PCI_PWR_DATA, 1, 0, kAll);
    raw = make_perm(4, &CoreDevice::raw_read, &CoreDevice::raw_write);
    virt = make_perm(4, &CoreDevice::default_read, &CoreDevice::default_write);
  }
};

static const PermTables& tables() {
  static const PermTables t;
  return t;
}

uint32_t CoreDevice::vget(uint16_t pos, unsigned count) const {
  uint32_t v = 0;
  for (unsigned i = 0; i < count; ++i) v |= uint32_t{vconfig_[pos + i]} << (8 * i);
  return v;
}

void CoreDevice::vset(uint16_t pos, unsigned count, uint32_t v) {
  for (unsigned i = 0; i < count; ++i) vconfig_[pos + i] = static_cast<uint8_t>(v >> (8 * i));
}

uint32_t CoreDevice::hw_read(uint16_t pos, unsigned count) const { return pdev_.config_read(pos, count); }
void CoreDevice::hw_write(uint16_t pos, unsigned count, uint32_t v) { pdev_.config_write(pos, count, v); }

namespace {
uint32_t mask_of(const std::vector<uint8_t>& bits, uint16_t offset, unsigned count) {
  uint32_t m = 0;
  for (unsigned i = 0; i < count && offset + i < bits.size(); ++i) m |= uint32_t{bits[offset + i]} << (8 * i);
  return m;
}
uint32_t full(unsigned count) { return count == 4 ? ~0u : (1u << (8 * count)) - 1; }
}  // namespace

Result<uint32_t> CoreDevice::default_read(uint16_t pos, unsigned count, const PermBits& perm, uint16_t offset) {
  uint32_t v = vget(pos, count);
  uint32_t virt = mask_of(perm.virt, offset, count);
  if (virt == full(count)) return v;
  uint32_t hw = hw_read(pos, count);
  return (hw & ~virt) | (v & virt);
}

Result<void> CoreDevice::default_write(uint16_t pos, unsigned count, const PermBits& perm, uint16_t offset,
                                       uint32_t val) {
  uint32_t write = mask_of(perm.write, offset, count);
  if (!write) return ok();  // silently dropped, as the kernel does
  uint32_t virt = mask_of(perm.virt, offset, count);
  if (write & virt) {
    uint32_t v = vget(pos, count);
    vset(pos, count, (v & ~(write & virt)) | (val & write & virt));
  }
  if (write & ~virt) {
    uint32_t hw = hw_read(pos, count);
    hw_write(pos, count, (hw & ~(write & ~virt)) | (val & write & ~virt));
  }
  return ok();
}

Result<uint32_t> CoreDevice::direct_read(uint16_t pos, unsigned count, const PermBits&, uint16_t offset) {
  uint32_t v = hw_read(pos, count);
  if (pos >= PCI_CFG_SPACE_SIZE) {
    // Extended capability header: from vconfig (the chain may be edited).
    for (unsigned i = 0; i < count; ++i)
      if (offset + i < 4) v = (v & ~(0xffu << (8 * i))) | (uint32_t{vconfig_[pos + i]} << (8 * i));
  } else if (pos >= PCI_STD_HEADER_SIZEOF) {
    for (unsigned i = 0; i < count; ++i)
      if (offset + i <= PCI_CAP_LIST_NEXT) v = (v & ~(0xffu << (8 * i))) | (uint32_t{vconfig_[pos + i]} << (8 * i));
  }
  return v;
}

Result<uint32_t> CoreDevice::raw_read(uint16_t pos, unsigned count, const PermBits&, uint16_t) {
  return hw_read(pos, count);
}

Result<void> CoreDevice::raw_write(uint16_t pos, unsigned count, const PermBits&, uint16_t, uint32_t val) {
  hw_write(pos, count, val);
  return ok();
}

// ---- The standard header -------------------------------------------------------

void CoreDevice::bar_fixup() {
  for (unsigned i = 0; i < bus::pci::kNumBars; ++i) {
    uint16_t reg = static_cast<uint16_t>(PCI_BASE_ADDRESS_0 + 4 * i);
    const bus::pci::Resource& r = pdev_.resource(i);
    if (!r.flags || !r.start) {
      vset(reg, 4, 0);  // unassigned by the host = unimplemented to the user
      continue;
    }
    uint64_t mask = ~(r.size() - 1);
    uint32_t flags = (r.flags & bus::pci::kResIo) ? PCI_BASE_ADDRESS_SPACE_IO
                                                  : static_cast<uint32_t>(r.flags & 0xf);
    vset(reg, 4, (vget(reg, 4) & static_cast<uint32_t>(mask)) | flags);
    if (!(r.flags & bus::pci::kResIo) && (flags & PCI_BASE_ADDRESS_MEM_TYPE_64) && i + 1 < bus::pci::kNumBars) {
      vset(reg + 4, 4, vget(reg + 4, 4) & static_cast<uint32_t>(mask >> 32));
      ++i;
    }
  }
  // No ROM on our functions: it reads 0.
  vset(PCI_ROM_ADDRESS, 4, 0);
  bardirty_ = false;
}

Result<uint32_t> CoreDevice::basic_read(uint16_t pos, unsigned count, const PermBits& perm, uint16_t offset) {
  if (bardirty_ && (overlaps(offset, count, PCI_BASE_ADDRESS_0, 24) || overlaps(offset, count, PCI_ROM_ADDRESS, 4)))
    bar_fixup();
  uint32_t v = TRY(default_read(pos, count, perm, offset));
  // A function without Command.MEM (a VF) shows the user the bit it wrote.
  if (no_command_memory_ && overlaps(offset, count, PCI_COMMAND, 1)) {
    unsigned sh = 8 * (PCI_COMMAND - offset);
    v = (v & ~(uint32_t{PCI_COMMAND_MEMORY} << sh)) | ((vget(PCI_COMMAND, 1) & PCI_COMMAND_MEMORY) << sh);
  }
  return v;
}

Result<void> CoreDevice::basic_write(uint16_t pos, unsigned count, const PermBits& perm, uint16_t offset,
                                     uint32_t val) {
  // vfio_basic_config_write(): any write at Command's offset, a byte too.
  bool cmd = offset == PCI_COMMAND;
  uint16_t new_cmd = static_cast<uint16_t>(val);
  if (cmd) {
    uint16_t phys = static_cast<uint16_t>(hw_read(PCI_COMMAND, 2));
    bool virt_mem = vget(PCI_COMMAND, 2) & PCI_COMMAND_MEMORY;
    bool phys_mem = phys & PCI_COMMAND_MEMORY;
    bool new_mem = new_cmd & PCI_COMMAND_MEMORY;
    // "Backdoor reset": hardware lost its BARs (MEM on in vconfig, off in
    // hardware, or the BAR registers changed): put the saved ones back.
    bool bars_changed = false;
    if (!pdev_.is_virtfn())
      for (unsigned i = 0; i < bus::pci::kNumBars; ++i)
        bars_changed |= hw_read(static_cast<uint16_t>(PCI_BASE_ADDRESS_0 + 4 * i), 4) != saved_bars_[i];
    if ((new_mem && virt_mem && !phys_mem && !no_command_memory_) || bars_changed) {
      for (unsigned i = 0; i < bus::pci::kNumBars && !pdev_.is_virtfn(); ++i)
        hw_write(static_cast<uint16_t>(PCI_BASE_ADDRESS_0 + 4 * i), 4, saved_bars_[i]);
    }
  }
  TRY(default_write(pos, count, perm, offset, val));
  if (cmd) {
    // The MEM and IO bits the user wrote are what the user reads back.
    uint16_t mask = PCI_COMMAND_MEMORY | PCI_COMMAND_IO;
    vset(PCI_COMMAND, 2, (vget(PCI_COMMAND, 2) & ~mask) | (new_cmd & mask));
  }
  if (overlaps(offset, count, PCI_COMMAND, 2)) {
    bool virt_intx_disable = vget(PCI_COMMAND, 2) & PCI_COMMAND_INTX_DISABLE;
    if (virt_intx_disable && !virq_disabled_) {
      virq_disabled_ = true;
      intx_mask();
    } else if (!virt_intx_disable && virq_disabled_) {
      virq_disabled_ = false;
      intx_unmask();
    }
  }
  if (overlaps(offset, count, PCI_BASE_ADDRESS_0, 24) || overlaps(offset, count, PCI_ROM_ADDRESS, 4))
    bardirty_ = true;
  return ok();
}

// ---- Capabilities with side effects -------------------------------------------

Result<void> CoreDevice::pm_write(uint16_t pos, unsigned count, const PermBits& perm, uint16_t offset, uint32_t val) {
  TRY(default_write(pos, count, perm, offset, val));
  if (offset == PCI_PM_CTRL && count >= 1) {
    // The D-state field is trapped: the core performs the transition.
    uint8_t state = val & PCI_PM_CTRL_STATE_MASK;
    // A PF with VFs enabled cannot leave D0.
    if (state != 0 && pdev_.sriov_num_vfs()) return ok();
    uint16_t cap = static_cast<uint16_t>(pos - offset);
    uint16_t ctrl = static_cast<uint16_t>(hw_read(cap + PCI_PM_CTRL, 2));
    hw_write(cap + PCI_PM_CTRL, 2, (ctrl & ~PCI_PM_CTRL_STATE_MASK & ~PCI_PM_CTRL_PME_STATUS) | state);
    power_state_ = state;
  }
  return ok();
}

Result<uint32_t> CoreDevice::msi_read(uint16_t pos, unsigned count, const PermBits& perm, uint16_t offset) {
  if (offset <= PCI_MSI_FLAGS && offset + count > PCI_MSI_FLAGS) {
    uint16_t cap = static_cast<uint16_t>(pos - offset);
    uint16_t flags = static_cast<uint16_t>(vget(cap + PCI_MSI_FLAGS, 2));
    flags = static_cast<uint16_t>((flags & ~PCI_MSI_FLAGS_QMASK) | (msi_qmax_ << 1));
    vset(cap + PCI_MSI_FLAGS, 2, flags);
  }
  return default_read(pos, count, perm, offset);
}

Result<void> CoreDevice::msi_write(uint16_t pos, unsigned count, const PermBits& perm, uint16_t offset, uint32_t val) {
  TRY(default_write(pos, count, perm, offset, val));
  if (offset <= PCI_MSI_FLAGS && offset + count > PCI_MSI_FLAGS) {
    uint16_t cap = static_cast<uint16_t>(pos - offset);
    uint16_t flags = static_cast<uint16_t>(vget(cap + PCI_MSI_FLAGS, 2));
    // MSI is enabled only through SET_IRQS.
    if (irq_type_ != VFIO_PCI_MSI_IRQ_INDEX) flags &= ~PCI_MSI_FLAGS_ENABLE;
    if (((flags & PCI_MSI_FLAGS_QSIZE) >> 4) > msi_qmax_)
      flags = static_cast<uint16_t>((flags & ~PCI_MSI_FLAGS_QSIZE) | (msi_qmax_ << 4));
    vset(cap + PCI_MSI_FLAGS, 2, flags);
    // Enable and queue size go to hardware; address and data stay virtual
    // (the host programs its own).
    uint16_t hwf = static_cast<uint16_t>(hw_read(cap + PCI_MSI_FLAGS, 2));
    hw_write(cap + PCI_MSI_FLAGS, 2, (hwf & ~(PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE)) |
                                         (flags & (PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE)));
  }
  return ok();
}

Result<void> CoreDevice::exp_write(uint16_t pos, unsigned count, const PermBits& perm, uint16_t offset, uint32_t val) {
  uint16_t cap = static_cast<uint16_t>(pos - offset);
  uint16_t readrq = vget(cap + PCI_EXP_DEVCTL, 2) & PCI_EXP_DEVCTL_READRQ;
  TRY(default_write(pos, count, perm, offset, val));
  uint16_t ctrl = static_cast<uint16_t>(vget(cap + PCI_EXP_DEVCTL, 2));
  if (ctrl & PCI_EXP_DEVCTL_BCR_FLR) {
    vset(cap + PCI_EXP_DEVCTL, 2, ctrl & ~PCI_EXP_DEVCTL_BCR_FLR);
    if ((hw_read(cap + PCI_EXP_DEVCAP, 4) & PCI_EXP_DEVCAP_FLR) && !pdev_.sriov_num_vfs()) (void)function_reset();
  }
  // MPS stays virtual; MRRS goes to hardware, never below the real MPS.
  ctrl = static_cast<uint16_t>(vget(cap + PCI_EXP_DEVCTL, 2));
  if ((ctrl & PCI_EXP_DEVCTL_READRQ) != readrq) {
    uint16_t hwctl = static_cast<uint16_t>(hw_read(cap + PCI_EXP_DEVCTL, 2));
    unsigned want = 128u << ((ctrl & PCI_EXP_DEVCTL_READRQ) >> 12);
    unsigned mps = 128u << ((hwctl & PCI_EXP_DEVCTL_PAYLOAD) >> 5);
    if (want < mps) want = mps;
    unsigned field = 0;
    while ((128u << field) < want && field < 5) ++field;
    hw_write(cap + PCI_EXP_DEVCTL, 2, (hwctl & ~PCI_EXP_DEVCTL_READRQ) | (field << 12));
  }
  return ok();
}

// ---- Building the virtual config space ------------------------------------------

void CoreDevice::cap_init() {
  uint16_t status = static_cast<uint16_t>(hw_read(PCI_STATUS, 2));
  unsigned kept = 0;
  if (status & PCI_STATUS_CAP_LIST) {
    uint16_t prev = PCI_CAPABILITY_LIST;  // where the link to the next kept cap lives (vconfig)
    uint8_t pos = static_cast<uint8_t>(hw_read(PCI_CAPABILITY_LIST, 1));
    int loops = (PCI_CFG_SPACE_SIZE - PCI_STD_HEADER_SIZEOF) / PCI_CAP_SIZEOF;
    while (pos && loops-- > 0) {
      // A pointer into the header or past the end ends a hostile chain.
      if (pos < PCI_STD_HEADER_SIZEOF) break;
      uint8_t id = static_cast<uint8_t>(hw_read(pos, 1));
      uint8_t next = static_cast<uint8_t>(hw_read(pos + PCI_CAP_LIST_NEXT, 1));
      unsigned len = id ? std_cap_length(id) : 0;
      if (len == 0xff) {
        switch (id) {
          case PCI_CAP_ID_MSI: {
            uint16_t f = static_cast<uint16_t>(hw_read(pos + PCI_MSI_FLAGS, 2));
            len = 10 + ((f & PCI_MSI_FLAGS_64BIT) ? 4 : 0) + ((f & PCI_MSI_FLAGS_MASKBIT) ? 10 : 0);
            break;
          }
          case PCI_CAP_ID_EXP: len = 0x3c; break;
          case PCI_CAP_ID_VNDR: len = hw_read(pos + 2, 1); break;
          case PCI_CAP_ID_PCIX: len = 24; break;
          default: len = 8; break;
        }
      }
      if (len && pos + len > PCI_CFG_SPACE_SIZE) len = PCI_CFG_SPACE_SIZE - pos;
      if (!len) {
        // Hidden: unlink it from the user's chain.
        vset(prev, 1, next);
        pos = next;
        continue;
      }
      for (unsigned i = 0; i < len; ++i) {
        if (map_[pos + i] != kCapInvalid) log::warn(pdev_.name(), "config conflict at {:#x}", pos + i);
        map_[pos + i] = id;
        vconfig_[pos + i] = static_cast<uint8_t>(hw_read(static_cast<uint16_t>(pos + i), 1));
      }
      vset(prev, 1, pos);
      prev = static_cast<uint16_t>(pos + PCI_CAP_LIST_NEXT);
      vset(prev, 1, 0);
      if (id == PCI_CAP_ID_MSI) {
        uint16_t f = static_cast<uint16_t>(hw_read(pos + PCI_MSI_FLAGS, 2));
        msi_qmax_ = (f & PCI_MSI_FLAGS_QMASK) >> 1;
        msi_perm_ = make_perm(len, &CoreDevice::msi_read, &CoreDevice::msi_write);
        set_bits(msi_perm_, PCI_CAP_LIST_NEXT, 1, kAll, 0);
        set_bits(msi_perm_, PCI_MSI_FLAGS, 1, kAll, kAll);
        set_bits(msi_perm_, PCI_MSI_ADDRESS_LO, 4, ~0u, ~0u);
        uint16_t data = PCI_MSI_DATA_32;
        if (f & PCI_MSI_FLAGS_64BIT) {
          set_bits(msi_perm_, PCI_MSI_ADDRESS_HI, 4, ~0u, ~0u);
          data = PCI_MSI_DATA_64;
        }
        set_bits(msi_perm_, data, 2, 0xffff, 0xffff);
        if (f & PCI_MSI_FLAGS_MASKBIT) {
          set_bits(msi_perm_, data + 4, 4, 0, ~0u);  // mask: writable pass-through
          set_bits(msi_perm_, data + 8, 4, 0, ~0u);  // pending: passed through (init_pci_cap_msi_perm)
        }
      }
      if (id == PCI_CAP_ID_PM) {
        // PME is not ours to offer: PME_Support, PME_Status and PME_En read 0.
        vset(pos + PCI_PM_PMC, 2, vget(pos + PCI_PM_PMC, 2) & ~PCI_PM_CAP_PME_MASK);
        vset(pos + PCI_PM_CTRL, 2, vget(pos + PCI_PM_CTRL, 2) & ~(PCI_PM_CTRL_PME_ENABLE | PCI_PM_CTRL_PME_STATUS));
      }
      ++kept;
      pos = next;
    }
    if (!kept) vset(PCI_CAPABILITY_LIST, 1, 0);
  }
  if (!kept) vset(PCI_STATUS, 2, vget(PCI_STATUS, 2) & ~PCI_STATUS_CAP_LIST);
}

void CoreDevice::ecap_init() {
  if (pdev_.cfg_size() <= PCI_CFG_SPACE_SIZE) return;
  uint32_t header = hw_read(PCI_CFG_SPACE_SIZE, 4);
  if (header == 0 || header == 0xffffffff) return;
  uint16_t epos = PCI_CFG_SPACE_SIZE;
  int prev = -1;  // offset of the last kept header in vconfig
  int loops = (static_cast<int>(vconfig_.size()) - PCI_CFG_SPACE_SIZE) / 4;
  unsigned kept = 0;
  while (loops-- > 0 && epos >= PCI_CFG_SPACE_SIZE && epos + 4 <= static_cast<int>(vconfig_.size())) {
    header = hw_read(epos, 4);
    uint16_t id = PCI_EXT_CAP_ID(header);
    uint16_t next = PCI_EXT_CAP_NEXT(header);
    unsigned len = ext_cap_length(id);
    if (len == 0xff) {
      if (id == PCI_EXT_CAP_ID_VNDR || id == PCI_EXT_CAP_ID_DVSEC) len = hw_read(epos + 4, 4) >> 20;
      else len = 8;
      if (len < 4) len = 4;
    }
    if (epos + len > vconfig_.size()) len = static_cast<unsigned>(vconfig_.size()) - epos;
    if (!len) {
      if (prev >= 0) {
        // Skip it: the previous kept header points past it.
        uint32_t ph = vget(static_cast<uint16_t>(prev), 4);
        vset(static_cast<uint16_t>(prev), 4, (ph & 0x000fffff) | (uint32_t{next} << 20));
      } else {
        // The first one is hidden: keep a 4-byte placeholder, id 0, version 0,
        // with the real next pointer.
        for (unsigned i = 0; i < 4; ++i) map_[epos + i] = 0;
        vset(epos, 4, uint32_t{next} << 20);
        prev = epos;
      }
      if (next <= epos) break;  // a loop
      epos = next;
      continue;
    }
    for (unsigned i = 0; i < len; ++i) {
      map_[epos + i] = static_cast<uint8_t>(id);
      vconfig_[epos + i] = static_cast<uint8_t>(hw_read(static_cast<uint16_t>(epos + i), 1));
    }
    // The kept header's next pointer is ours to edit: start it at 0.
    vset(epos, 4, header & 0x000fffff);
    if (prev >= 0) {
      uint32_t ph = vget(static_cast<uint16_t>(prev), 4);
      vset(static_cast<uint16_t>(prev), 4, (ph & 0x000fffff) | (uint32_t{epos} << 20));
    }
    prev = epos;
    ++kept;
    if (next <= epos) break;  // a loop or the end
    epos = next;
  }
  if (!kept && prev < 0) vset(PCI_CFG_SPACE_SIZE, 4, 0);
}

Result<void> CoreDevice::config_init() {
  uint16_t size = pdev_.cfg_size();
  vconfig_.assign(size, 0);
  map_.assign(size, kCapInvalid);
  for (uint16_t i = 0; i < PCI_STD_HEADER_SIZEOF; ++i) {
    vconfig_[i] = static_cast<uint8_t>(hw_read(i, 1));
    map_[i] = kCapBasic;
  }
  no_command_memory_ = pdev_.is_virtfn();
  if (pdev_.is_virtfn()) {
    // VFs read 0xffff in hardware; the user sees the ids the PF gives them.
    vset(PCI_VENDOR_ID, 2, pdev_.vendor());
    vset(PCI_DEVICE_ID, 2, pdev_.device_id());
    vset(PCI_INTERRUPT_PIN, 1, 0);  // VFs have no INTx (SR-IOV 1.1 §3.4.1.20)
    vset(PCI_COMMAND, 2, vget(PCI_COMMAND, 2) | PCI_COMMAND_MEMORY);
  }
  // The virtual BARs start from the host's view, then read back through the
  // emulation.
  for (unsigned i = 0; i < bus::pci::kNumBars; ++i) {
    const bus::pci::Resource& r = pdev_.resource(i);
    uint16_t reg = static_cast<uint16_t>(PCI_BASE_ADDRESS_0 + 4 * i);
    vset(reg, 4, static_cast<uint32_t>(r.start));
    if ((r.flags & bus::pci::kResMem64) && i + 1 < bus::pci::kNumBars) {
      vset(reg + 4, 4, static_cast<uint32_t>(r.start >> 32));
      ++i;
    }
  }
  bardirty_ = true;
  virq_disabled_ = vget(PCI_COMMAND, 2) & PCI_COMMAND_INTX_DISABLE;
  cap_init();
  ecap_init();
  return ok();
}

void CoreDevice::config_free() {
  vconfig_.clear();
  map_.clear();
}

const PermBits* CoreDevice::perm_for(uint16_t pos, uint16_t& cap_start) {
  const PermTables& t = tables();
  uint8_t id = map_[pos];
  if (pos < PCI_STD_HEADER_SIZEOF) {
    cap_start = 0;
    return &t.basic;
  }
  if (id == kCapInvalid) {
    cap_start = pos;
    return &t.raw;
  }
  if (id == kCapInvalidVirt) {
    cap_start = pos;
    return &t.virt;
  }
  // vfio_find_cap_start(): back to the first byte this capability owns.
  uint16_t floor = pos >= PCI_CFG_SPACE_SIZE ? PCI_CFG_SPACE_SIZE : PCI_STD_HEADER_SIZEOF;
  cap_start = pos;
  while (cap_start > floor && map_[cap_start - 1] == id) --cap_start;
  if (pos >= PCI_CFG_SPACE_SIZE) {
    switch (id) {
      case PCI_EXT_CAP_ID_ERR: return &t.e_err;
      case PCI_EXT_CAP_ID_PWR: return &t.e_pwr;
      case PCI_EXT_CAP_ID_VNDR: case PCI_EXT_CAP_ID_DVSEC: return &t.e_vndr;
      default: return &t.e_direct;
    }
  }
  switch (id) {
    case PCI_CAP_ID_PM: return &t.pm;
    case PCI_CAP_ID_MSI: return &msi_perm_;
    case PCI_CAP_ID_EXP: return &t.exp;
    case PCI_CAP_ID_VPD: return &t.vpd;
    case PCI_CAP_ID_AF: return &t.af;
    case PCI_CAP_ID_VNDR: return &t.vndr;
    default: return &t.direct;
  }
}

Result<size_t> CoreDevice::config_rw(uint64_t pos, std::span<uint8_t> buf, bool write) {
  size_t total = buf.size();
  if (pos >= vconfig_.size() || total > vconfig_.size() - pos) return Error(EFAULT, "config access out of range");
  size_t done = 0;
  while (done < total) {
    uint16_t p = static_cast<uint16_t>(pos + done);
    size_t left = total - done;
    // vfio_config_do_rw(): chunks naturally aligned and within one
    // capability (vfio_pci_cap_remaining_dword()).
    size_t remaining = 1;
    while ((p + remaining) % 4 && map_[p + remaining] == map_[p]) ++remaining;
    left = std::min(left, remaining);
    unsigned count = (left >= 4 && !(p % 4)) ? 4 : (left >= 2 && !(p % 2)) ? 2 : 1;
    uint16_t cap_start;
    const PermBits* perm = perm_for(p, cap_start);
    uint16_t offset = static_cast<uint16_t>(p - cap_start);
    if (write) {
      uint32_t v = 0;
      for (unsigned i = 0; i < count; ++i) v |= uint32_t{buf[done + i]} << (8 * i);
      if (perm->write_fn) TRY((this->*perm->write_fn)(p, count, *perm, offset, v));
    } else {
      uint32_t v = 0;
      if (perm->read) v = TRY((this->*perm->read)(p, count, *perm, offset));
      for (unsigned i = 0; i < count; ++i) buf[done + i] = static_cast<uint8_t>(v >> (8 * i));
    }
    done += count;
  }
  return total;
}

}  // namespace uvfio::vfio::pci
