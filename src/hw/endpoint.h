// SPDX-License-Identifier: BSD-3-Clause
// GenericEndpoint: a small PCIe endpoint for tests and for vfio_pci on
// something that is not an mlx5 function. Ids default to QEMU's test device
// (1b36:0005). BAR2 is a 64-bit prefetchable memory window (mmappable); the
// MSI-X table and PBA live in BAR4. BAR0 holds registers
// (docs/devices/endpoint.md):
//   0x00 ID      RO  0x69667675 ("uvfi")
//   0x04 SCRATCH RW
//   0x08 IRQ     WO  raise vector N in the enabled mode (INTx: assert)
//   0x0c INTX    WO  0 deasserts INTx
//   0x10 DMA_SRC RW  IOVA (64-bit)     0x18 DMA_DST RW  IOVA (64-bit)
//   0x20 DMA_LEN RW  bytes (<= 1 MiB)  0x24 DMA_GO  WO  start copying SRC->DST
//   0x28 DMA_STATUS RO  0xffffffff while the copy runs, then 0 or the
//                       errno of the failed DMA
//   0x2c DMA_COUNT  RO  completed copies
// Everything else in BAR0 is plain memory.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "base/result.h"
#include "hw/function.h"
#include "hw/regs.h"

namespace uvfio::hw {

struct EndpointParams {
  FunctionIds ids{0x1b36, 0x0005, 0x00ff00, 0x00, 0x1af4, 0x1100};
  uint64_t bar0_size = 4096;
  uint64_t bar2_size = 1 << 20;
  bool io_bar = true;  // BAR1: 32 bytes of I/O space
  unsigned msi_vectors = 4;
  bool msi_64bit = true;
  bool msi_per_vector_mask = true;
  // An AER capability (extended space; PCIe only): its masks and
  // severities writable, its status and log registers read-only.
  bool aer = false;
  unsigned msix_vectors = 8;
  bool pcie = true;
  // Capabilities vfio-pci-core hides from its users (SSVID; PASID in
  // extended space), so the hiding is exercised.
  bool hidden_caps = true;
};

class GenericEndpoint : public Function, private RegisterHandler {
 public:
  static Result<std::unique_ptr<GenericEndpoint>> create(const EndpointParams& p = {});

  static constexpr uint32_t kRegId = 0x00, kRegScratch = 0x04, kRegIrq = 0x08, kRegIntx = 0x0c,
                            kRegDmaSrc = 0x10, kRegDmaDst = 0x18, kRegDmaLen = 0x20, kRegDmaGo = 0x24,
                            kRegDmaStatus = 0x28, kRegDmaCount = 0x2c;
  static constexpr uint32_t kIdValue = 0x69667675;
  static constexpr uint32_t kDmaBusy = 0xffffffff;  // DMA_STATUS while a copy runs
  ~GenericEndpoint() override;

  const RegisterBlock* registers(unsigned bar) const override;

 protected:
  void on_reset() override;
  Result<uint64_t> bar_read(unsigned bar, uint64_t off, unsigned width) override;
  Result<void> bar_write(unsigned bar, uint64_t off, unsigned width, uint64_t value) override;

 private:
  GenericEndpoint() : Function("endpoint") {}
  static const RegisterBlock& registers_block();
  uint64_t reg_read(const RegDef& r) override;
  void reg_write(const RegDef& r, uint64_t value, uint64_t mask) override;
  // DMA_GO is a posted write, as on hardware: the copy runs on the device's
  // DMA thread (started at the first DMA_GO), never in the writer's thread.
  void dma_go();
  void dma_thread();
  void stop_dma();
  std::mutex dma_mu_;
  std::condition_variable dma_cv_;
  bool dma_pending_ = false, dma_stop_ = false;  // guarded by dma_mu_
  std::thread dma_thread_;
};

}  // namespace uvfio::hw
