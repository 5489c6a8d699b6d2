// SPDX-License-Identifier: BSD-3-Clause
// IrqSink: where a function's interrupts go — the platform's interrupt
// controller, as the function's driver set it up. Part of the hardware's
// interface to drivers (what a kernel driver gets from request_irq()).
#pragma once

#include <cstdint>

namespace uvfio::hw {

// msi() is a message write (MSI or MSI-X); intx() the level of the INTx
// pin. Called from whatever thread raised the interrupt, without the
// function's locks held.
class IrqSink {
 public:
  virtual ~IrqSink() = default;
  virtual void msi(uint64_t address, uint32_t data) = 0;
  virtual void intx(bool asserted) = 0;
};

}  // namespace uvfio::hw
