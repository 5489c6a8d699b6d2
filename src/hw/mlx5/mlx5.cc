#include "hw/mlx5/mlx5.h"

#include "hw/capabilities.h"

namespace uvfio::hw::mlx5 {

Result<std::unique_ptr<Pf>> Pf::create(const PfParams& p) {
  std::unique_ptr<Pf> pf(new Pf(p));
  ConfigSpace& c = pf->config();
  pf->set_ids(FunctionIds{kVendorMellanox, kDevicePf, kClassEthernet, 0, kVendorMellanox, 0x0001});
  c.set_rw(PCI_COMMAND, 2, PCI_COMMAND_MASTER | PCI_COMMAND_SERR | PCI_COMMAND_INTX_DISABLE);
  c.set_rw1c(PCI_STATUS, 2, PCI_STATUS_SIG_SYSTEM_ERROR | PCI_STATUS_DETECTED_PARITY |
                                PCI_STATUS_REC_MASTER_ABORT);
  c.set_rw(PCI_CACHE_LINE_SIZE, 1, 0xff);
  c.set_rw(PCI_INTERRUPT_LINE, 1, 0xff);
  c.raw_write(PCI_INTERRUPT_PIN, 1, 1);
  TRY(pf->define_bar(0, BarDesc{BarKind::kMem64, kPfBar0Size, true}));
  TRY(add_pm_cap(*pf));
  PcieParams pp;
  pp.flr = true;
  TRY(add_pcie_cap(*pf, pp));
  TRY(add_msix_cap(*pf, MsixParams{kPfMsixVectors, 0, kMsixTableOffset, 0, kMsixPbaOffset}));
  SriovParams sp;
  sp.total_vfs = p.total_vfs;
  sp.first_vf_offset = p.first_vf_offset;
  sp.vf_stride = p.vf_stride;
  sp.vf_device = kDeviceVf;
  sp.vf_bars[0] = BarDesc{BarKind::kMem64, kVfBar0Size, true};
  sp.vf_bars[2] = BarDesc{BarKind::kMem64, p.vf_device_memory, true, true};  // device memory
  Pf* raw = pf.get();
  pf->sriov_ = TRY(SriovCapability::add(*pf, sp, [raw](uint16_t i) -> Result<std::unique_ptr<Function>> {
    return std::unique_ptr<Function>(TRY(Vf::create(*raw, i)));
  }));
  TRY(add_ari_cap(*pf, 0));
  TRY(add_dsn_cap(*pf, p.serial));
  pf->finish_build();
  return pf;
}

void Pf::on_config_write(uint16_t off, unsigned width, uint32_t) { sriov_->config_written(off, width); }
void Pf::before_reset() { sriov_->teardown(); }
void Pf::on_reset() {}

Result<std::unique_ptr<Vf>> Vf::create(Pf& pf, uint16_t index) {
  std::unique_ptr<Vf> vf(new Vf(pf, index));
  ConfigSpace& c = vf->config();
  // A VF's Vendor and Device ID registers read 0xffff (SR-IOV 1.1 §3.4.1.1);
  // software takes them from the PF and its SR-IOV capability.
  vf->set_ids(FunctionIds{0xffff, 0xffff, kClassEthernet, 0, kVendorMellanox, 0x0001});
  c.set_rw(PCI_COMMAND, 2, PCI_COMMAND_MASTER | PCI_COMMAND_SERR | PCI_COMMAND_INTX_DISABLE);
  c.set_rw1c(PCI_STATUS, 2, PCI_STATUS_SIG_SYSTEM_ERROR | PCI_STATUS_REC_MASTER_ABORT);
  const SriovParams& sp = pf.sriov().params();
  for (unsigned i = 0; i < kNumBars; ++i) TRY(vf->define_bar(i, sp.vf_bars[i]));
  PcieParams pp;
  pp.flr = true;
  TRY(add_pcie_cap(*vf, pp));
  TRY(add_msix_cap(*vf, MsixParams{kVfMsixVectors, 0, kMsixTableOffset, 0, kMsixPbaOffset}));
  vf->finish_build();
  return vf;
}

void Vf::on_reset() {}

}  // namespace uvfio::hw::mlx5
