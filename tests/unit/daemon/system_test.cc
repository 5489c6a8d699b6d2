// SPDX-License-Identifier: BSD-3-Clause
// The seed scenario, in process: the tree shows exactly the seed's lines.
#include "daemon/system.h"

#include <gtest/gtest.h>

namespace uvfio::daemon {
namespace {

TEST(SystemTest, SeedAuxiliaryLinksAreTheSeedsLines) {
  auto sys = System::create(seed_topology());
  ASSERT_TRUE(sys) << sys.error().message;
  auto& t = (*sys)->core().tree();
  auto l = t.readlink("bus/auxiliary/devices/mlx5_core.vfio_pci.2048");
  ASSERT_TRUE(l);
  EXPECT_EQ(*l, "../../../devices/pci0000:00/0000:00:02.0/0000:05:00.0/0000:06:00.0/0000:07:00.0/mlx5_core.vfio_pci.2048");
  l = t.readlink("bus/auxiliary/devices/mlx5_core.vfio_pci.2304");
  ASSERT_TRUE(l);
  EXPECT_EQ(*l, "../../../devices/pci0000:00/0000:00:02.0/0000:05:00.0/0000:06:00.0/0000:07:00.1/mlx5_core.vfio_pci.2304");
  auto entries = t.list("bus/auxiliary/devices");
  ASSERT_TRUE(entries);
  ASSERT_EQ(entries->size(), 2u);
}

TEST(SystemTest, SeedBindsEveryHalf) {
  auto sys = System::create(seed_topology());
  ASSERT_TRUE(sys) << sys.error().message;
  auto& t = (*sys)->core().tree();
  EXPECT_EQ(*t.readlink("bus/pci/devices/0000:07:00.0/driver"), "../../../../../../bus/pci/drivers/mlx5_core");
  EXPECT_EQ(*t.readlink("bus/pci/devices/0000:08:00.0/driver"), "../../../../../../bus/pci/drivers/mlx5_vfio_pci");
  EXPECT_EQ(*t.readlink("bus/auxiliary/devices/mlx5_core.vfio_pci.2048/driver"),
            "../../../../../../../bus/auxiliary/drivers/mlx5_vfio_pci.vfio_pci_ex");
  EXPECT_EQ(*t.read("bus/auxiliary/devices/mlx5_core.vfio_pci.2304/vf_bdf"), "0000:09:00.0\n");
  EXPECT_EQ(*t.readlink("bus/pci/devices/0000:07:00.0/virtfn0"), "../0000:08:00.0");
  EXPECT_EQ(*t.readlink("bus/pci/devices/0000:08:00.0/physfn"), "../0000:07:00.0");
  EXPECT_EQ(*t.read("bus/pci/devices/0000:08:00.0/driver_override"), "mlx5_vfio_pci\n");
  EXPECT_EQ(*t.read("bus/pci/devices/0000:08:00.0/vendor"), "0x15b3\n");
  EXPECT_EQ(*t.read("bus/pci/devices/0000:08:00.0/device"), "0x101e\n");
  EXPECT_TRUE((*sys)->mlx5_vfio_pci().paired(Bdf(0, 8, 0, 0)));
  EXPECT_TRUE((*sys)->mlx5_vfio_pci().paired(Bdf(0, 9, 0, 0)));
}

}  // namespace
}  // namespace uvfio::daemon
