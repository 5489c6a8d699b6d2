// SPDX-License-Identifier: BSD-3-Clause
// Capability builders for emulated functions: each lays out one PCI or PCIe
// capability in a Function's config space with the spec's read-only, RW and
// RW1C bits, and links it into the chain. Layouts follow PCI Local Bus 3.0 §6.7,
// PCI PM 1.2, PCIe Base 4.0 §7.5/§7.9 (register names as in linux/pci_regs.h).
#pragma once

#include <cstdint>

#include "base/result.h"
#include "hw/function.h"

namespace uvfio::hw {

// Power Management (8 bytes): PMCSR PowerState RW, No_Soft_Reset set,
// PME_Status RW1C.
Result<uint16_t> add_pm_cap(Function& f);

struct MsiParams {
  unsigned vectors = 1;     // 1, 2, 4, 8, 16 or 32 (Multiple Message Capable)
  bool is_64bit = true;
  bool per_vector_mask = true;
};
Result<uint16_t> add_msi_cap(Function& f, const MsiParams& p);

struct MsixParams {
  unsigned table_size = 1;  // 1..2048 vectors
  unsigned table_bar = 0;
  uint32_t table_offset = 0;  // 8-byte aligned
  unsigned pba_bar = 0;
  uint32_t pba_offset = 0;
};
// The table and PBA must fit in their (already defined) BARs; the function
// decodes them (Function::setup_msix), every vector masked at reset.
Result<uint16_t> add_msix_cap(Function& f, const MsixParams& p);

struct PcieParams {
  uint8_t port_type = PCI_EXP_TYPE_ENDPOINT;  // PCI_EXP_TYPE_*
  bool flr = false;                           // endpoints: Function Level Reset
  bool slot = false;                          // downstream/root ports
  bool ari_forwarding = false;                // downstream/root ports
  uint8_t link_speed = 4;                     // 16 GT/s
  uint8_t link_width = 16;
};
Result<uint16_t> add_pcie_cap(Function& f, const PcieParams& p);

Result<uint16_t> add_ari_cap(Function& f, uint8_t next_function);
Result<uint16_t> add_dsn_cap(Function& f, uint64_t serial);

}  // namespace uvfio::hw
