// SPDX-License-Identifier: BSD-3-Clause
// PCIe bridges: root port, switch upstream port, switch downstream port.
// Type 1 headers with bus numbers and forwarding windows the host programs.
// IDs are those QEMU uses for its root port (1b36:000c) and its TI XIO3130
// switch (104c:8232 upstream, 104c:8233 downstream), so pci.ids names them.
#pragma once

#include <memory>

#include "base/result.h"
#include "hw/function.h"

namespace uvfio::hw {

enum class BridgeKind { kRootPort, kSwitchUpstream, kSwitchDownstream };

class Bridge : public Function {
 public:
  static Result<std::unique_ptr<Bridge>> create(BridgeKind kind);
  BridgeKind kind() const { return kind_; }

 private:
  explicit Bridge(BridgeKind k);
  BridgeKind kind_;
};

const char* to_string(BridgeKind k);

}  // namespace uvfio::hw
