// SPDX-License-Identifier: BSD-3-Clause
// edu_vfio_pci: the edu device's VFIO variant driver (vfio-pci-core plus
// STOP_COPY migration of the device's state).
#pragma once

#include <memory>

#include "bus/pci/pci.h"
#include "vfio/registry.h"

namespace edu {
inline constexpr const char* kDriverName = "edu_vfio_pci";
std::unique_ptr<uvfio::bus::pci::PciDriver> make_driver(uvfio::vfio::Registry& registry);
}  // namespace edu
