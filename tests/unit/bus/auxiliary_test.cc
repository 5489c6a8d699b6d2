// SPDX-License-Identifier: BSD-3-Clause
#include "bus/auxiliary/auxiliary.h"

#include <gtest/gtest.h>

namespace uvfio::bus::auxiliary {
namespace {

class TestAuxDriver : public AuxiliaryDriver {
 public:
  using AuxiliaryDriver::AuxiliaryDriver;
  Result<std::unique_ptr<driver::Binding>> probe(AuxiliaryDevice& d, const AuxiliaryDeviceId& id) override {
    matched.push_back(d.name() + "=" + id.name);
    return std::make_unique<driver::Binding>();
  }
  std::vector<std::string> matched;
};

struct AuxFixture : ::testing::Test {
  driver::DriverCore core;
  AuxiliaryBus bus{core};
  driver::Device parent{"parent", nullptr};
  void SetUp() override {
    ASSERT_TRUE(bus.register_bus());
    ASSERT_TRUE(core.device_add(parent, nullptr));
  }
  void TearDown() override { core.device_del(parent); }
};

TEST_F(AuxFixture, NamesAndDriverNames) {
  AuxiliaryDevice d("mlx5_core", "vfio_pci", 2048, parent);
  EXPECT_EQ(d.name(), "mlx5_core.vfio_pci.2048");
  EXPECT_EQ(d.match_name(), "mlx5_core.vfio_pci");
  TestAuxDriver drv("mlx5_vfio_pci", "vfio_pci_ex", {{"mlx5_core.vfio_pci"}});
  EXPECT_EQ(drv.name(), "mlx5_vfio_pci.vfio_pci_ex");
  TestAuxDriver plain("mod", "", {{"x.y"}});
  EXPECT_EQ(plain.name(), "mod");
}

TEST_F(AuxFixture, MatchesTheNameUpToTheLastDot) {
  TestAuxDriver drv("m", "d", {{"mlx5_core.vfio_pci"}, {"a.b.c"}});
  ASSERT_TRUE(bus.register_driver(drv));
  AuxiliaryDevice d1("mlx5_core", "vfio_pci", 1, parent);
  AuxiliaryDevice d2("mlx5_core", "vfio", 2, parent);       // shorter: no match
  AuxiliaryDevice d3("mlx5_core", "vfio_pci_x", 3, parent);  // longer: no match
  AuxiliaryDevice d4("a", "b.c", 4, parent);                // dots inside devname
  for (auto* d : {&d1, &d2, &d3, &d4}) ASSERT_TRUE(bus.device_add(*d));
  EXPECT_EQ(d1.driver(), &drv);
  EXPECT_EQ(d2.driver(), nullptr);
  EXPECT_EQ(d3.driver(), nullptr);
  EXPECT_EQ(d4.driver(), &drv);
  EXPECT_EQ(*core.tree().read("bus/auxiliary/devices/mlx5_core.vfio_pci.1/uevent"),
            "DRIVER=m.d\nMODALIAS=auxiliary:mlx5_core.vfio_pci\n");
  EXPECT_EQ(*core.tree().readlink("bus/auxiliary/devices/mlx5_core.vfio_pci.1"),
            "../../../devices/parent/mlx5_core.vfio_pci.1");
  for (auto* d : {&d4, &d3, &d2, &d1}) bus.device_delete(*d);
  bus.unregister_driver(drv);
}

TEST_F(AuxFixture, RegistrationRules) {
  driver::Device unregistered("u", nullptr);
  AuxiliaryDevice orphan("m", "d", 1, unregistered);
  EXPECT_EQ(bus.device_add(orphan).error().code, EINVAL);
  AuxiliaryDevice noname("", "", 1, parent);
  EXPECT_EQ(bus.device_add(noname).error().code, EINVAL);
  AuxiliaryDevice a("m", "d", 1, parent), b("m", "d", 1, parent);
  ASSERT_TRUE(bus.device_add(a));
  EXPECT_EQ(bus.device_add(b).error().code, EEXIST);
  TestAuxDriver empty("m", "x", {});
  EXPECT_EQ(bus.register_driver(empty).error().code, EINVAL);
  bus.device_delete(a);
}

TEST_F(AuxFixture, DeleteUnbindsFirst) {
  TestAuxDriver drv("m", "d", {{"m.d"}});
  ASSERT_TRUE(bus.register_driver(drv));
  AuxiliaryDevice a("m", "d", 7, parent);
  ASSERT_TRUE(bus.device_add(a));
  ASSERT_EQ(a.driver(), &drv);
  bus.device_delete(a);
  EXPECT_EQ(a.driver(), nullptr);
  EXPECT_FALSE(a.registered());
  EXPECT_EQ(core.tree().stat("bus/auxiliary/drivers/m.d/m.d.7").error().code, ENOENT);
  bus.unregister_driver(drv);
}

}  // namespace
}  // namespace uvfio::bus::auxiliary
