// SPDX-License-Identifier: BSD-3-Clause
#include "hw/endpoint.h"

#include <cstring>
#include <vector>

#include "hw/capabilities.h"
#include "hw/iommu.h"

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
  if (p.msi_vectors) TRY(add_msi_cap(*e, MsiParams{p.msi_vectors, p.msi_64bit, p.msi_per_vector_mask}));
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
    if (p.aer) {
      // The masks and severities software sets (PCIe 6.0 §7.8.4): the
      // defined errors are writable; severity starts at the spec's default.
      uint16_t aer = TRY(e->add_ext_capability(PCI_EXT_CAP_ID_ERR, 2, PCI_ERR_ROOT_COMMAND));
      e->config().set_rw(aer + PCI_ERR_UNCOR_MASK, 4, 0x03fff030);
      e->config().set_rw(aer + PCI_ERR_UNCOR_SEVER, 4, 0x03fff030);
      e->config().raw_write(aer + PCI_ERR_UNCOR_SEVER, 4, 0x00462030);
      e->config().set_rw(aer + PCI_ERR_COR_MASK, 4, 0x0000f1c1);
    }
  }
  (void)e->bar_memory(0)->store(kRegId, 4, kIdValue);
  e->finish_build();
  return e;
}

GenericEndpoint::~GenericEndpoint() { stop_dma(); }

void GenericEndpoint::on_reset() {
  stop_dma();
  BarMemory* m = bar_memory(0);
  std::memset(m->data(), 0, m->size());
  (void)m->store(kRegId, 4, kIdValue);
}

// BAR0's register block (docs/devices/endpoint.md); the registers hold their
// values in BAR0's memory, the rest of BAR0 is plain memory.
const RegisterBlock& GenericEndpoint::registers_block() {
  using enum RegAccess;
  static const RegisterBlock b({
      {kRegId, 4, kRO, "ID"},
      {kRegScratch, 4, kRW, "SCRATCH"},
      {kRegIrq, 4, kWO, "IRQ"},
      {kRegIntx, 4, kWO, "INTX"},
      {kRegDmaSrc, 8, kRW, "DMA_SRC"},
      {kRegDmaDst, 8, kRW, "DMA_DST"},
      {kRegDmaLen, 4, kRW, "DMA_LEN"},
      {kRegDmaGo, 4, kWO, "DMA_GO"},
      {kRegDmaStatus, 4, kRO, "DMA_STATUS"},
      {kRegDmaCount, 4, kRO, "DMA_COUNT"},
  });
  return b;
}

const RegisterBlock* GenericEndpoint::registers(unsigned bar) const {
  return bar == 0 ? &registers_block() : nullptr;
}

Result<uint64_t> GenericEndpoint::bar_read(unsigned bar, uint64_t off, unsigned width) {
  if (bar != 0 || !registers_block().covers(off, width)) return Function::bar_read(bar, off, width);
  return registers_block().read(off, width, *this, bar_memory(0));
}

Result<void> GenericEndpoint::bar_write(unsigned bar, uint64_t off, unsigned width, uint64_t value) {
  if (bar != 0 || !registers_block().covers(off, width)) return Function::bar_write(bar, off, width, value);
  return registers_block().write(off, width, value, *this, bar_memory(0));
}

uint64_t GenericEndpoint::reg_read(const RegDef& r) { return bar_memory(0)->load(r.offset, r.size).value_or(0); }

void GenericEndpoint::reg_write(const RegDef& r, uint64_t value, uint64_t mask) {
  BarMemory* m = bar_memory(0);
  switch (r.offset) {
    case kRegIrq:
      raise_irq(static_cast<unsigned>(value));
      return;
    case kRegIntx:
      set_intx(value != 0);
      return;
    case kRegDmaGo:
      dma_go();
      return;
    default:  // storage registers
      (void)m->store(r.offset, r.size, merge(m->load(r.offset, r.size).value_or(0), value, mask));
      return;
  }
}

void GenericEndpoint::dma_go() {
  std::lock_guard lk(dma_mu_);
  BarMemory* m = bar_memory(0);
  if (dma_pending_ || *m->load(kRegDmaStatus, 4) == kDmaBusy) return;  // a doorbell while busy is ignored
  (void)m->store(kRegDmaStatus, 4, kDmaBusy);
  dma_pending_ = true;
  dma_stop_ = false;
  if (!dma_thread_.joinable()) dma_thread_ = std::thread([this] { dma_thread(); });
  dma_cv_.notify_all();
}

void GenericEndpoint::stop_dma() {
  {
    std::lock_guard lk(dma_mu_);
    dma_stop_ = true;
    dma_cv_.notify_all();
  }
  if (dma_thread_.joinable()) dma_thread_.join();
  std::lock_guard lk(dma_mu_);
  dma_pending_ = false;
}

// A bus-mastering copy SRC -> DST through the IOMMU domain: the device's DMA.
void GenericEndpoint::dma_thread() {
  BarMemory* m = bar_memory(0);
  for (;;) {
    {
      std::unique_lock lk(dma_mu_);
      dma_cv_.wait(lk, [&] { return dma_pending_ || dma_stop_; });
      if (dma_stop_) return;
    }
    uint64_t src = *m->load(kRegDmaSrc, 8), dst = *m->load(kRegDmaDst, 8);
    uint32_t len = static_cast<uint32_t>(*m->load(kRegDmaLen, 4));
    int err = 0;
    IommuDomain* dom = iommu();
    if (!(config().get(kCommand) & PCI_COMMAND_MASTER)) err = EPERM;
    else if (len > (1u << 20)) err = EINVAL;
    else if (!dom) err = EFAULT;
    if (!err) {
      std::vector<uint8_t> buf(len);
      auto r = dom->read(src, buf);
      if (r) r = dom->write(dst, buf);
      if (!r) err = r.error().code;
    }
    std::lock_guard lk(dma_mu_);
    if (!err) (void)m->store(kRegDmaCount, 4, *m->load(kRegDmaCount, 4) + 1);
    (void)m->store(kRegDmaStatus, 4, static_cast<uint32_t>(err));
    dma_pending_ = false;
  }
}

}  // namespace uvfio::hw
