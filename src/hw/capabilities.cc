// SPDX-License-Identifier: BSD-3-Clause
#include "hw/capabilities.h"

namespace uvfio::hw {

Result<uint16_t> add_pm_cap(Function& f) {
  uint16_t off = TRY(f.add_capability(PCI_CAP_ID_PM, PCI_PM_SIZEOF));
  ConfigSpace& c = f.config();
  c.raw_write(off + PCI_PM_PMC, 2, 3 /* PM 1.2 */);
  c.raw_write(off + PCI_PM_CTRL, 2, PCI_PM_CTRL_NO_SOFT_RESET);
  c.set_rw(off + PCI_PM_CTRL, 2, PCI_PM_CTRL_STATE_MASK | PCI_PM_CTRL_PME_ENABLE);
  c.set_rw1c(off + PCI_PM_CTRL, 2, PCI_PM_CTRL_PME_STATUS);
  return off;
}

Result<uint16_t> add_msi_cap(Function& f, const MsiParams& p) {
  unsigned mmc = 0;
  while ((1u << mmc) < p.vectors) ++mmc;
  if (p.vectors == 0 || (1u << mmc) != p.vectors || mmc > 5) return Error(EINVAL, "MSI vector count");
  uint16_t len = 10 + (p.is_64bit ? 4 : 0) + (p.per_vector_mask ? 10 : 0);
  uint16_t off = TRY(f.add_capability(PCI_CAP_ID_MSI, len));
  ConfigSpace& c = f.config();
  uint16_t ctrl = static_cast<uint16_t>(mmc << 1);
  if (p.is_64bit) ctrl |= PCI_MSI_FLAGS_64BIT;
  if (p.per_vector_mask) ctrl |= PCI_MSI_FLAGS_MASKBIT;
  c.raw_write(off + PCI_MSI_FLAGS, 2, ctrl);
  c.set_rw(off + PCI_MSI_FLAGS, 2, PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE);
  c.set_rw(off + PCI_MSI_ADDRESS_LO, 4, 0xfffffffc);
  uint16_t data = p.is_64bit ? PCI_MSI_DATA_64 : PCI_MSI_DATA_32;
  if (p.is_64bit) c.set_rw(off + PCI_MSI_ADDRESS_HI, 4, 0xffffffff);
  c.set_rw(off + data, 2, 0xffff);
  if (p.per_vector_mask) {
    uint16_t mask = p.is_64bit ? PCI_MSI_MASK_64 : PCI_MSI_MASK_32;
    uint32_t bits = p.vectors == 32 ? 0xffffffffu : (1u << p.vectors) - 1;
    c.set_rw(off + mask, 4, bits);  // pending bits (mask + 4) stay read-only
  }
  return off;
}

Result<uint16_t> add_msix_cap(Function& f, const MsixParams& p) {
  if (p.table_size == 0 || p.table_size > 2048) return Error(EINVAL, "MSI-X table size");
  if ((p.table_offset & 7) || (p.pba_offset & 7)) return Error(EINVAL, "MSI-X offsets unaligned");
  BarMemory* tbar = f.bar_memory(p.table_bar);
  BarMemory* pbar = f.bar_memory(p.pba_bar);
  uint64_t tlen = uint64_t{p.table_size} * PCI_MSIX_ENTRY_SIZE;
  uint64_t plen = ((p.table_size + 63) / 64) * 8;
  if (!tbar || !pbar || p.table_offset + tlen > tbar->size() || p.pba_offset + plen > pbar->size())
    return Error(EINVAL, "MSI-X table or PBA outside its BAR");
  uint16_t off = TRY(f.add_capability(PCI_CAP_ID_MSIX, PCI_CAP_MSIX_SIZEOF));
  ConfigSpace& c = f.config();
  c.raw_write(off + PCI_MSIX_FLAGS, 2, p.table_size - 1);
  c.set_rw(off + PCI_MSIX_FLAGS, 2, PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL);
  c.raw_write(off + PCI_MSIX_TABLE, 4, p.table_offset | p.table_bar);
  c.raw_write(off + PCI_MSIX_PBA, 4, p.pba_offset | p.pba_bar);
  // The table and PBA are decoded by the function itself, not kept in the
  // BAR's memory: a client's mmap of the BAR cannot reprogram them (as
  // interrupt remapping protects a real host).
  f.setup_msix(p.table_bar, p.table_offset, p.table_size, p.pba_bar, p.pba_offset);
  return off;
}

Result<uint16_t> add_pcie_cap(Function& f, const PcieParams& p) {
  uint16_t off = TRY(f.add_capability(PCI_CAP_ID_EXP, 0x3c /* v2, with slot registers */));
  ConfigSpace& c = f.config();
  bool port = p.port_type == PCI_EXP_TYPE_ROOT_PORT || p.port_type == PCI_EXP_TYPE_DOWNSTREAM;
  uint16_t flags = 2 | (p.port_type << 4);
  if (port && p.slot) flags |= PCI_EXP_FLAGS_SLOT;
  c.raw_write(off + PCI_EXP_FLAGS, 2, flags);
  uint32_t devcap = 1 /* MPS 256 */ | PCI_EXP_DEVCAP_RBER;
  if (p.flr && p.port_type == PCI_EXP_TYPE_ENDPOINT) devcap |= PCI_EXP_DEVCAP_FLR;
  c.raw_write(off + PCI_EXP_DEVCAP, 4, devcap);
  // Device Control: everything writable but the Bridge Configuration Retry /
  // Initiate FLR bit, which always reads 0 (the write is acted on).
  c.raw_write(off + PCI_EXP_DEVCTL, 2, PCI_EXP_DEVCTL_RELAX_EN | PCI_EXP_DEVCTL_NOSNOOP_EN | (2 << 12));
  c.set_rw(off + PCI_EXP_DEVCTL, 2, 0x7fff);
  c.set_rw1c(off + PCI_EXP_DEVSTA, 2, PCI_EXP_DEVSTA_CED | PCI_EXP_DEVSTA_NFED |
                                          PCI_EXP_DEVSTA_FED | PCI_EXP_DEVSTA_URD);
  uint32_t lnkcap = p.link_speed | (uint32_t{p.link_width} << 4);
  if (port) lnkcap |= PCI_EXP_LNKCAP_DLLLARC;
  c.raw_write(off + PCI_EXP_LNKCAP, 4, lnkcap);
  c.set_rw(off + PCI_EXP_LNKCTL, 2, 0x0fc3);
  uint16_t lnksta = p.link_speed | (p.link_width << 4);
  if (port) lnksta |= PCI_EXP_LNKSTA_DLLLA;
  c.raw_write(off + PCI_EXP_LNKSTA, 2, lnksta);
  if (port && p.slot) {
    c.raw_write(off + PCI_EXP_SLTCAP, 4, PCI_EXP_SLTCAP_HPC | PCI_EXP_SLTCAP_HPS | (1u << 19));
    c.set_rw(off + PCI_EXP_SLTCTL, 2, 0x1fff);
    c.raw_write(off + PCI_EXP_SLTSTA, 2, PCI_EXP_SLTSTA_PDS);
    c.set_rw1c(off + PCI_EXP_SLTSTA, 2, 0x011f);
  }
  if (p.port_type == PCI_EXP_TYPE_ROOT_PORT) {
    c.set_rw(off + PCI_EXP_RTCTL, 2, 0x001f);
    c.set_rw1c(off + PCI_EXP_RTSTA, 4, PCI_EXP_RTSTA_PME);
  }
  uint32_t devcap2 = PCI_EXP_DEVCAP2_COMP_TMOUT_DIS;
  if (port && p.ari_forwarding) devcap2 |= PCI_EXP_DEVCAP2_ARI;
  c.raw_write(off + PCI_EXP_DEVCAP2, 4, devcap2);
  uint16_t devctl2_rw = PCI_EXP_DEVCTL2_COMP_TMOUT_DIS | PCI_EXP_DEVCTL2_COMP_TIMEOUT;
  if (port && p.ari_forwarding) devctl2_rw |= PCI_EXP_DEVCTL2_ARI;
  c.set_rw(off + PCI_EXP_DEVCTL2, 2, devctl2_rw);
  c.raw_write(off + PCI_EXP_LNKCAP2, 4, ((1u << p.link_speed) - 1) << 1);
  c.raw_write(off + PCI_EXP_LNKCTL2, 2, p.link_speed);
  c.set_rw(off + PCI_EXP_LNKCTL2, 2, 0x000f);
  return off;
}

Result<uint16_t> add_ari_cap(Function& f, uint8_t next_function) {
  uint16_t off = TRY(f.add_ext_capability(PCI_EXT_CAP_ID_ARI, 1, 8));
  f.config().raw_write(off + PCI_ARI_CAP, 2, static_cast<uint16_t>(next_function) << 8);
  return off;
}

Result<uint16_t> add_dsn_cap(Function& f, uint64_t serial) {
  uint16_t off = TRY(f.add_ext_capability(PCI_EXT_CAP_ID_DSN, 1, PCI_EXT_CAP_DSN_SIZEOF));
  f.config().raw_write(off + 4, 4, static_cast<uint32_t>(serial));
  f.config().raw_write(off + 8, 4, static_cast<uint32_t>(serial >> 32));
  return off;
}

}  // namespace uvfio::hw
