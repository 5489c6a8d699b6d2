#include "hw/endpoint.h"

#include "hw/capabilities.h"

namespace uvfio::hw {

Result<std::unique_ptr<GenericEndpoint>> GenericEndpoint::create(const EndpointParams& p) {
  std::unique_ptr<GenericEndpoint> e(new GenericEndpoint());
  ConfigSpace& c = e->config();
  e->set_ids(p.ids);
  c.set_rw(PCI_COMMAND, 2, PCI_COMMAND_MASTER | PCI_COMMAND_SERR | PCI_COMMAND_INTX_DISABLE);
  c.set_rw1c(PCI_STATUS, 2, PCI_STATUS_SIG_SYSTEM_ERROR | PCI_STATUS_DETECTED_PARITY |
                                PCI_STATUS_REC_MASTER_ABORT);
  c.set_rw(PCI_CACHE_LINE_SIZE, 1, 0xff);
  c.set_rw(PCI_LATENCY_TIMER, 1, 0xff);
  c.set_rw(PCI_INTERRUPT_LINE, 1, 0xff);
  c.raw_write(PCI_INTERRUPT_PIN, 1, 1);
  TRY(e->define_bar(0, BarDesc{BarKind::kMem32, p.bar0_size, false}));
  if (p.io_bar) TRY(e->define_bar(1, BarDesc{BarKind::kIo, 32, false}));
  TRY(e->define_bar(2, BarDesc{BarKind::kMem64, p.bar2_size, true, true}));
  if (p.msix_vectors) TRY(e->define_bar(4, BarDesc{BarKind::kMem32, 4096, false, true}));
  TRY(add_pm_cap(*e));
  if (p.hidden_caps) {
    uint16_t ssvid = TRY(e->add_capability(PCI_CAP_ID_SSVID, 8));
    e->config().raw_write(ssvid + 4, 4, (uint32_t{p.ids.subsystem_device} << 16) | p.ids.subsystem_vendor);
  }
  if (p.msi_vectors) TRY(add_msi_cap(*e, MsiParams{p.msi_vectors, true, true}));
  if (p.msix_vectors)
    TRY(add_msix_cap(*e, MsixParams{p.msix_vectors, 4, 0, 4, 0x800}));
  if (p.pcie) {
    PcieParams pp;
    pp.flr = true;
    TRY(add_pcie_cap(*e, pp));
    if (p.hidden_caps) {
      uint16_t pasid = TRY(e->add_ext_capability(PCI_EXT_CAP_ID_PASID, 1, PCI_EXT_CAP_PASID_SIZEOF));
      e->config().raw_write(pasid + PCI_PASID_CAP, 2, 0x1400);  // 20-bit PASIDs
    }
    TRY(add_dsn_cap(*e, 0x0000'00ff'fe00'0001ull));
  }
  e->finish_build();
  return e;
}

void GenericEndpoint::on_reset() {}

}  // namespace uvfio::hw
