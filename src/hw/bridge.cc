// SPDX-License-Identifier: BSD-3-Clause
#include "hw/bridge.h"

#include "hw/capabilities.h"

namespace uvfio::hw {

const char* to_string(BridgeKind k) {
  switch (k) {
    case BridgeKind::kRootPort: return "root-port";
    case BridgeKind::kSwitchUpstream: return "switch-upstream";
    case BridgeKind::kSwitchDownstream: return "switch-downstream";
  }
  return "bridge";
}

Bridge::Bridge(BridgeKind k) : Function(to_string(k)), kind_(k) {}

Result<std::unique_ptr<Bridge>> Bridge::create(BridgeKind kind) {
  std::unique_ptr<Bridge> b(new Bridge(kind));
  ConfigSpace& c = b->config();
  c.set(kHeaderType, uint8_t{PCI_HEADER_TYPE_BRIDGE});
  FunctionIds ids;
  ids.class_code = 0x060400;  // PCI bridge, normal decode
  switch (kind) {
    case BridgeKind::kRootPort: ids.vendor = 0x1b36; ids.device = 0x000c; break;
    case BridgeKind::kSwitchUpstream: ids.vendor = 0x104c; ids.device = 0x8232; ids.revision = 2; break;
    case BridgeKind::kSwitchDownstream: ids.vendor = 0x104c; ids.device = 0x8233; break;
  }
  b->set_ids(ids);
  c.set_rw(PCI_COMMAND, 2, PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER |
                               PCI_COMMAND_PARITY | PCI_COMMAND_SERR | PCI_COMMAND_INTX_DISABLE);
  c.set_rw1c(PCI_STATUS, 2, PCI_STATUS_PARITY | PCI_STATUS_SIG_TARGET_ABORT |
                                PCI_STATUS_REC_TARGET_ABORT | PCI_STATUS_REC_MASTER_ABORT |
                                PCI_STATUS_SIG_SYSTEM_ERROR | PCI_STATUS_DETECTED_PARITY);
  c.set_rw(PCI_PRIMARY_BUS, 1, 0xff);
  c.set_rw(PCI_SECONDARY_BUS, 1, 0xff);
  c.set_rw(PCI_SUBORDINATE_BUS, 1, 0xff);
  c.raw_write(PCI_IO_BASE, 1, PCI_IO_RANGE_TYPE_32);
  c.raw_write(PCI_IO_LIMIT, 1, PCI_IO_RANGE_TYPE_32);
  c.set_rw(PCI_IO_BASE, 1, 0xf0);
  c.set_rw(PCI_IO_LIMIT, 1, 0xf0);
  c.set_rw(PCI_IO_BASE_UPPER16, 4, 0xffffffff);
  c.set_rw(PCI_MEMORY_BASE, 2, 0xfff0);
  c.set_rw(PCI_MEMORY_LIMIT, 2, 0xfff0);
  c.raw_write(PCI_PREF_MEMORY_BASE, 2, PCI_PREF_RANGE_TYPE_64);
  c.raw_write(PCI_PREF_MEMORY_LIMIT, 2, PCI_PREF_RANGE_TYPE_64);
  c.set_rw(PCI_PREF_MEMORY_BASE, 2, 0xfff0);
  c.set_rw(PCI_PREF_MEMORY_LIMIT, 2, 0xfff0);
  c.set_rw(PCI_PREF_BASE_UPPER32, 4, 0xffffffff);
  c.set_rw(PCI_PREF_LIMIT_UPPER32, 4, 0xffffffff);
  c.set_rw(PCI_BRIDGE_CONTROL, 2, 0x0fff);
  c.set_rw(PCI_INTERRUPT_LINE, 1, 0xff);
  uint8_t type = kind == BridgeKind::kRootPort ? PCI_EXP_TYPE_ROOT_PORT
                 : kind == BridgeKind::kSwitchUpstream ? PCI_EXP_TYPE_UPSTREAM
                                                       : PCI_EXP_TYPE_DOWNSTREAM;
  PcieParams pp;
  pp.port_type = type;
  pp.slot = type != PCI_EXP_TYPE_UPSTREAM;
  pp.ari_forwarding = type != PCI_EXP_TYPE_UPSTREAM;
  TRY(add_pcie_cap(*b, pp));
  TRY(add_pm_cap(*b));
  if (kind == BridgeKind::kRootPort) {
    c.raw_write(PCI_INTERRUPT_PIN, 1, 1);
    TRY(add_msi_cap(*b, MsiParams{1, true, false}));
  }
  b->finish_build();
  return b;
}

}  // namespace uvfio::hw
