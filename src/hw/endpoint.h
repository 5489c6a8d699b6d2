// GenericEndpoint: a small PCIe endpoint for tests and for vfio_pci on
// something that is not an mlx5 function. Registers in BAR0 are plain memory;
// BAR2 is a 64-bit prefetchable memory window; the MSI-X table and PBA live in
// BAR4. Ids default to QEMU's test device (1b36:0005).
#pragma once

#include <memory>

#include "base/result.h"
#include "hw/function.h"

namespace uvfio::hw {

struct EndpointParams {
  FunctionIds ids{0x1b36, 0x0005, 0x00ff00, 0x00, 0x1af4, 0x1100};
  uint64_t bar0_size = 4096;
  uint64_t bar2_size = 1 << 20;
  bool io_bar = true;  // BAR1: 32 bytes of I/O space
  unsigned msi_vectors = 4;
  unsigned msix_vectors = 8;
  bool pcie = true;
  // Capabilities vfio-pci-core hides from its users (SSVID; PASID in
  // extended space), so the hiding is exercised.
  bool hidden_caps = true;
};

class GenericEndpoint : public Function {
 public:
  static Result<std::unique_ptr<GenericEndpoint>> create(const EndpointParams& p = {});

 protected:
  void on_reset() override;

 private:
  GenericEndpoint() : Function("endpoint") {}
};

}  // namespace uvfio::hw
