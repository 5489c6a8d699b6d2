// SPDX-License-Identifier: BSD-3-Clause
#include "hw/sriov.h"

#include "base/log.h"
#include "hw/fabric.h"

namespace uvfio::hw {

Result<std::unique_ptr<SriovCapability>> SriovCapability::add(Function& pf, const SriovParams& p,
                                                               VfFactory factory) {
  if (p.total_vfs == 0) return Error(EINVAL, "SR-IOV without VFs");
  if (p.first_vf_offset == 0) return Error(EINVAL, "First VF Offset 0");
  if (p.vf_stride == 0 && p.total_vfs > 1) return Error(EINVAL, "VF Stride 0");
  for (unsigned i = 0; i < kNumBars; ++i) {
    TRY(p.vf_bars[i].validate());
    if (p.vf_bars[i].is_io()) return Error(EINVAL, "VF BARs cannot be I/O");
    if (p.vf_bars[i].is_64() && i + 1 >= kNumBars) return Error(EINVAL, "64-bit VF BAR in the last slot");
  }
  uint16_t off = TRY(pf.add_ext_capability(PCI_EXT_CAP_ID_SRIOV, 1, PCI_EXT_CAP_SRIOV_SIZEOF));
  ConfigSpace& c = pf.config();
  c.raw_write(off + PCI_SRIOV_CAP, 4, 0);
  c.set_rw(off + PCI_SRIOV_CTRL, 2, PCI_SRIOV_CTRL_VFE | PCI_SRIOV_CTRL_MSE | PCI_SRIOV_CTRL_ARI);
  c.raw_write(off + PCI_SRIOV_INITIAL_VF, 2, p.total_vfs);
  c.raw_write(off + PCI_SRIOV_TOTAL_VF, 2, p.total_vfs);
  c.set_rw(off + PCI_SRIOV_NUM_VF, 2, 0xffff);
  c.raw_write(off + PCI_SRIOV_VF_OFFSET, 2, p.first_vf_offset);
  c.raw_write(off + PCI_SRIOV_VF_STRIDE, 2, p.vf_stride);
  c.raw_write(off + PCI_SRIOV_VF_DID, 2, p.vf_device);
  c.raw_write(off + PCI_SRIOV_SUP_PGSIZE, 4, 0x553);  // 4K, 8K, 64K, 256K, 1M, 4M
  c.raw_write(off + PCI_SRIOV_SYS_PGSIZE, 4, 1);      // 4K
  c.set_rw(off + PCI_SRIOV_SYS_PGSIZE, 4, 0x553);
  for (unsigned i = 0; i < kNumBars; ++i) {
    const BarDesc& b = p.vf_bars[i];
    if (!b.implemented()) continue;
    uint16_t reg = static_cast<uint16_t>(off + PCI_SRIOV_BAR + 4 * i);
    uint64_t mask = ~(b.size - 1);
    c.raw_write(reg, 4, b.type_bits());
    c.set_rw(reg, 4, static_cast<uint32_t>(mask) & ~0xfu);
    if (b.is_64()) c.set_rw(reg + 4, 4, static_cast<uint32_t>(mask >> 32));
  }
  return std::unique_ptr<SriovCapability>(new SriovCapability(pf, off, p, std::move(factory)));
}

SriovCapability::~SriovCapability() { teardown(); }

SriovCapability::Vfs SriovCapability::config_written(uint16_t off, unsigned width) {
  if (!overlaps(off, width, off_ + PCI_SRIOV_CTRL, 2)) return {};
  bool want = pf_.config().raw_read(off_ + PCI_SRIOV_CTRL, 2) & PCI_SRIOV_CTRL_VFE;
  if (want && !enabled_) enable_vfs();
  else if (!want && enabled_) return take_vfs();
  return {};
}

void SriovCapability::enable_vfs() {
  ConfigSpace& c = pf_.config();
  enabled_ = true;
  c.set_rw(off_ + PCI_SRIOV_NUM_VF, 2, 0);  // frozen while enabled
  uint16_t n = static_cast<uint16_t>(c.raw_read(off_ + PCI_SRIOV_NUM_VF, 2));
  if (n > params_.total_vfs) n = params_.total_vfs;
  uint16_t offset = static_cast<uint16_t>(c.raw_read(off_ + PCI_SRIOV_VF_OFFSET, 2));
  uint16_t stride = static_cast<uint16_t>(c.raw_read(off_ + PCI_SRIOV_VF_STRIDE, 2));
  Fabric* fabric = pf_.fabric();
  for (uint16_t i = 0; i < n; ++i) {
    uint32_t rid = vf_rid(pf_.bdf().id(), offset, stride, i);
    auto vf = factory_(i);
    if (!vf) {
      log::error(pf_.bdf().str(), "VF {} could not be created: {}", i, to_string(vf.error()));
      break;
    }
    if (fabric && rid <= 0xffff) {
      auto r = fabric->attach_borrowed(**vf, Bdf::from_rid(pf_.bdf().domain(), static_cast<uint16_t>(rid)));
      if (!r) {
        log::error(pf_.bdf().str(), "VF {} not routable: {}", i, to_string(r.error()));
        break;
      }
    }
    vfs_.push_back(std::move(*vf));
  }
}

SriovCapability::Vfs SriovCapability::take_vfs() {
  Vfs out = std::move(vfs_);
  vfs_.clear();
  enabled_ = false;
  pf_.config().set_rw(off_ + PCI_SRIOV_NUM_VF, 2, 0xffff);
  return out;
}

std::vector<uint32_t> SriovCapability::save_regs() const {
  std::vector<uint32_t> r;
  for (uint16_t i = 4; i < PCI_EXT_CAP_SRIOV_SIZEOF; i += 4) r.push_back(pf_.config().raw_read(off_ + i, 4));
  return r;
}

void SriovCapability::restore_regs(const std::vector<uint32_t>& regs) {
  ConfigSpace& c = pf_.config();
  for (size_t k = 0; k < regs.size(); ++k) c.raw_write(static_cast<uint16_t>(off_ + 4 + 4 * k), 4, regs[k]);
  c.set_rw(off_ + PCI_SRIOV_NUM_VF, 2, enabled_ ? 0 : 0xffff);
}

void SriovCapability::reset_vfs_in_place() {
  for (auto& vf : vfs_) vf->function_level_reset();
}

void SriovCapability::release_vfs(Vfs vfs) {
  // Last VF first, as Linux's sriov_disable() removes them.
  while (!vfs.empty()) {
    std::unique_ptr<Function> vf = std::move(vfs.back());
    vfs.pop_back();
    if (Fabric* f = vf->fabric()) f->detach(*vf);
  }
}

}  // namespace uvfio::hw
