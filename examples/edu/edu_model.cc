// SPDX-License-Identifier: BSD-3-Clause
// The edu device model (QEMU's docs/specs/edu.rst) on uvfio's hardware
// interface: an ID register, a liveness check, a factorial unit, an
// interrupt status with raise and acknowledge, and a DMA engine between
// host memory (through the IOMMU domain) and a 4 KiB buffer in the device.
// INTx, or MSI when the driver enables it. uvfio adds a PCI Express
// capability with FLR (so VFIO can reset it) and a state window for
// migration (edu_ifc.h).
#include "edu_model.h"

#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "edu_ifc.h"
#include "hw/capabilities.h"
#include "hw/function.h"
#include "hw/iommu.h"
#include "hw/regs.h"
#include "base/log.h"

namespace edu {
namespace {

using uvfio::Error;
using uvfio::Result;

class Edu : public uvfio::hw::Function {
 public:
  explicit Edu(uint64_t dma_mask) : Function("edu"), dma_mask_(dma_mask) {}
  ~Edu() override { stop_dma(false); }

 public:
  // What BAR0 decodes (the rest of it is plain memory): the register page
  // 0x00-0xff (4-byte slots below 0x80, 8-byte from there, as the spec's
  // access sizes) and the state window. Accesses to these bytes come to
  // bar_read/bar_write at the width the driver used.
  const uvfio::hw::RegisterBlock* registers(unsigned bar) const override {
    static const uvfio::hw::RegisterBlock block = [] {
      std::vector<uvfio::hw::RegDef> regs;
      for (uint32_t off = 0; off < 0x80; off += 4) regs.push_back({off, 4, uvfio::hw::RegAccess::kRW, "REG"});
      for (uint32_t off = 0x80; off < 0x100; off += 8) regs.push_back({off, 8, uvfio::hw::RegAccess::kRW, "REG"});
      for (uint64_t off = 0; off < kStateSize; off += 8)
        regs.push_back({static_cast<uint32_t>(kRegState + off), 8, uvfio::hw::RegAccess::kRW, "STATE"});
      return uvfio::hw::RegisterBlock(std::move(regs));
    }();
    return bar == 0 ? &block : nullptr;
  }

 protected:
  Result<uint64_t> bar_read(unsigned bar, uint64_t off, unsigned width) override;
  Result<void> bar_write(unsigned bar, uint64_t off, unsigned width, uint64_t value) override;
  void on_reset() override;

 private:
  void raise(uint32_t bits);                 // mu_ held
  void compute_factorial(uint32_t n);        // mu_ held
  void start_dma();                          // mu_ held
  void dma_thread();
  // Stops the engine (joined); with `reset`, the state back to power-on
  // before any register write can start it again.
  void stop_dma(bool reset);
  uint64_t state_read(uint64_t off, unsigned width);  // mu_ held
  void state_write(uint64_t off, unsigned width, uint64_t value);

  const uint64_t dma_mask_;
  std::mutex mu_;
  std::condition_variable cv_;
  State s_{kStateMagic, 0, 0, 0, 0, 0, 0, 0, 0, 0};  // guarded by mu_
  uint8_t buffer_[kDmaBufferSize] = {};               // guarded by mu_
  bool dma_stop_ = false;                             // guarded by mu_
  bool stopping_ = false;  // a reset is joining the engine: no new start; guarded by mu_
  std::thread dma_;
};

bool valid_width(uint64_t off, unsigned width) {
  return off < 0x80 ? width == 4 : (width == 4 || width == 8);
}

Result<uint64_t> Edu::bar_read(unsigned bar, uint64_t off, unsigned width) {
  if (bar != 0) return Error(EINVAL, "edu has BAR0 only");
  std::lock_guard lk(mu_);
  if (off >= kRegState && off + width <= kRegState + kStateSize) return state_read(off - kRegState, width);
  if (!valid_width(off, width) || off % width) return ~uint64_t{0} >> (64 - 8 * width);  // as edu: ignored
  uint64_t v = ~uint64_t{0};
  switch (off) {
    case kRegId: v = kIdValue; break;
    case kRegLiveness: v = s_.liveness; break;
    case kRegFactorial: v = s_.factorial; break;
    case kRegStatus: v = s_.status; break;
    case kRegIrqStatus: v = s_.irq_status; break;
    case kRegDmaSrc: v = s_.dma_src; break;
    case kRegDmaDst: v = s_.dma_dst; break;
    case kRegDmaCount: v = s_.dma_count; break;
    case kRegDmaCmd: v = s_.dma_cmd; break;
    default: break;
  }
  return width == 4 ? v & 0xffffffff : v;
}

Result<void> Edu::bar_write(unsigned bar, uint64_t off, unsigned width, uint64_t value) {
  if (bar != 0) return Error(EINVAL, "edu has BAR0 only");
  if (off >= kRegState && off + width <= kRegState + kStateSize) {
    state_write(off - kRegState, width, value);
    return {};
  }
  std::lock_guard lk(mu_);
  if (!valid_width(off, width) || off % width) return {};
  uint32_t v32 = static_cast<uint32_t>(value);
  switch (off) {
    case kRegLiveness: s_.liveness = ~v32; break;
    case kRegFactorial:
      if (!(s_.status & kStatusComputing)) compute_factorial(v32);
      break;
    case kRegStatus: s_.status = (s_.status & kStatusComputing) | (v32 & kStatusIrqFact); break;
    case kRegIrqRaise: raise(v32); break;
    case kRegIrqAck:
      s_.irq_status &= ~v32;
      if (!s_.irq_status && irq_mode() == uvfio::hw::IrqMode::kIntx) set_intx(false);
      break;
    case kRegDmaSrc: s_.dma_src = value; break;
    case kRegDmaDst: s_.dma_dst = value; break;
    case kRegDmaCount: s_.dma_count = value; break;
    case kRegDmaCmd:
      if (s_.dma_cmd & kDmaStart) break;  // busy: the command stands
      s_.dma_cmd = value;
      if (stopping_) s_.dma_cmd &= ~kDmaStart;  // a reset is under way: the start is lost with it
      else if (value & kDmaStart) start_dma();
      break;
    default: break;
  }
  return {};
}

void Edu::raise(uint32_t bits) {
  s_.irq_status |= bits;
  raise_irq(0);  // MSI vector 0, or INTx asserted, as the function is set up
}

void Edu::compute_factorial(uint32_t n) {
  // The unit computes within the write; the Computing bit is never seen set.
  uint32_t r = 1;
  for (uint32_t i = 2; i <= n; ++i) r *= i;
  s_.factorial = r;
  if (s_.status & kStatusIrqFact) raise(kIrqFactorial);
}

void Edu::start_dma() {
  dma_stop_ = false;
  if (!dma_.joinable()) dma_ = std::thread([this] { dma_thread(); });
  cv_.notify_all();
}

// One transfer at a time, off the caller's thread: DMA may wait for the
// VMM (vfio-user DMA messages), and a register write must not.
void Edu::dma_thread() {
  std::unique_lock lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return dma_stop_ || (s_.dma_cmd & kDmaStart); });
    if (dma_stop_) return;
    uint64_t cmd = s_.dma_cmd, src = s_.dma_src, dst = s_.dma_dst, count = s_.dma_count;
    bool to_ram = cmd & kDmaToRam;
    uint64_t dev = to_ram ? src : dst, ram = (to_ram ? dst : src) & dma_mask_;
    bool ok = dev >= kDmaBuffer && count <= kDmaBufferSize && dev - kDmaBuffer <= kDmaBufferSize - count;
    uvfio::hw::IommuDomain* dom = iommu();
    bool master = config().get(uvfio::hw::kCommand) & PCI_COMMAND_MASTER;
    if (ok && dom && master && count) {
      std::vector<uint8_t> tmp(count);
      size_t at = dev - kDmaBuffer;
      if (to_ram) std::memcpy(tmp.data(), buffer_ + at, count);
      lk.unlock();
      Result<void> r = to_ram ? dom->write(ram, tmp) : dom->read(ram, tmp);
      lk.lock();
      if (r && !to_ram && !dma_stop_) std::memcpy(buffer_ + at, tmp.data(), count);
      if (!r) uvfio::log::debug(bdf().str(), "edu: DMA of {} bytes at {:#x} failed: {}", count, ram, to_string(r.error()));
    } else if (count) {
      uvfio::log::debug(bdf().str(), "edu: DMA refused ({})", !ok ? "outside the buffer" : !dom ? "no IOMMU domain" : "bus mastering off");
    }
    if (dma_stop_) return;
    s_.dma_cmd &= ~kDmaStart;
    if (cmd & kDmaIrq) raise(kIrqDma);
  }
}

void Edu::stop_dma(bool reset) {
  {
    std::lock_guard lk(mu_);
    dma_stop_ = stopping_ = true;  // a register write meanwhile cannot restart the engine
    cv_.notify_all();
  }
  if (dma_.joinable()) dma_.join();
  std::lock_guard lk(mu_);
  if (reset) {
    s_ = State{kStateMagic, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    std::memset(buffer_, 0, sizeof(buffer_));
  }
  stopping_ = dma_stop_ = false;
}

void Edu::on_reset() { stop_dma(true); }

uint64_t Edu::state_read(uint64_t off, unsigned width) {
  uint8_t img[kStateSize] = {};
  std::memcpy(img, &s_, sizeof(s_));
  std::memcpy(img + 0x100, buffer_, sizeof(buffer_));
  uint64_t v = 0;
  std::memcpy(&v, img + off, width);
  return v;
}

void Edu::state_write(uint64_t off, unsigned width, uint64_t value) {
  std::lock_guard lk(mu_);
  uint8_t img[kStateSize] = {};
  std::memcpy(img, &s_, sizeof(s_));
  std::memcpy(img + 0x100, buffer_, sizeof(buffer_));
  std::memcpy(img + off, &value, width);
  State s;
  std::memcpy(&s, img, sizeof(s));
  s.magic = kStateMagic;
  s.dma_cmd &= ~kDmaStart;  // a transfer in flight is not part of the state
  s.status &= ~kStatusComputing;
  s_ = s;
  std::memcpy(buffer_, img + 0x100, sizeof(buffer_));
}

}  // namespace

Result<std::unique_ptr<uvfio::hw::Function>> make_model(const uvfio::sdk::ModelParams& p) {
  int64_t bits = TRY(p.integer("dma_mask_bits", 28, 64, 28));
  auto f = std::make_unique<Edu>(bits == 64 ? ~uint64_t{0} : (uint64_t{1} << bits) - 1);
  f->set_ids(uvfio::hw::FunctionIds{kVendor, kDevice, 0x00ff00, 0x10, 0x1af4, 0x1100});
  // The header's writable bits (define_bar adds Memory Space).
  uvfio::hw::ConfigSpace& c = f->config();
  c.set_rw(PCI_COMMAND, 2, PCI_COMMAND_MASTER | PCI_COMMAND_SERR | PCI_COMMAND_INTX_DISABLE);
  c.set_rw1c(PCI_STATUS, 2, PCI_STATUS_SIG_SYSTEM_ERROR | PCI_STATUS_DETECTED_PARITY | PCI_STATUS_REC_MASTER_ABORT);
  c.set_rw(PCI_CACHE_LINE_SIZE, 1, 0xff);
  c.set_rw(PCI_INTERRUPT_LINE, 1, 0xff);
  c.raw_write(PCI_INTERRUPT_PIN, 1, 1);
  TRY(f->define_bar(0, uvfio::hw::BarDesc{uvfio::hw::BarKind::kMem32, kBar0Size, false, false}));
  TRY(uvfio::hw::add_pm_cap(*f));
  TRY(uvfio::hw::add_msi_cap(*f, uvfio::hw::MsiParams{1, true, false}));
  uvfio::hw::PcieParams pp;
  pp.flr = true;
  TRY(uvfio::hw::add_pcie_cap(*f, pp));
  f->finish_build();
  return std::unique_ptr<uvfio::hw::Function>(std::move(f));
}

}  // namespace edu
