// SPDX-License-Identifier: BSD-3-Clause
// Compiled by check_include.sh with the drivers layer's include root: a
// driver that includes a device model must not compile. The positive
// control includes the device's programming interface instead.
#ifdef UVFIO_INCLUDE_MODEL
#include "hw/mlx5/pf.h"  // the PF model: out of a driver's reach
#else
#include "hw/mlx5/mlx5_ifc.h"  // the interface a datasheet defines: allowed
#endif
#include "vfio/pci_core/core.h"

int main() { return 0; }
