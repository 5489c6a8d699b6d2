// SPDX-License-Identifier: BSD-3-Clause
// mlx5_core and the two halves of mlx5_vfio_pci on the seed topology:
// SR-IOV with auxiliary devices, pairing in every bind order, and PF-side
// teardown while the VF half is bound.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include "daemon/system.h"

namespace uvfio {
namespace {

using drivers::mlx5_vfio_pci::VfDevice;
using VfBinding = VfDevice;

const Bdf kVf(0, 8, 0, 0);
const std::string kVfName = "0000:08:00.0";
const std::string kAuxName = "mlx5_core.vfio_pci.2048";
const std::string kPciDrv = "bus/pci/drivers/mlx5_vfio_pci/";
const std::string kAuxDrv = "bus/auxiliary/drivers/mlx5_vfio_pci.vfio_pci_ex/";

std::unique_ptr<daemon::System> seed() {
  auto s = daemon::System::create(daemon::seed_topology());
  EXPECT_TRUE(s) << s.error().message;
  return std::move(*s);
}

TEST(Mlx5Test, SriovZeroToNToZeroWithAuxDevices) {
  auto sys = seed();
  auto& t = sys->core().tree();
  const std::string pf = "bus/pci/devices/0000:07:00.0/sriov_numvfs";
  ASSERT_TRUE(t.write(pf, "0"));
  EXPECT_EQ(t.stat("bus/auxiliary/devices/" + kAuxName).error().code, ENOENT);
  EXPECT_EQ(t.stat("bus/pci/devices/" + kVfName).error().code, ENOENT);
  EXPECT_EQ(t.list("bus/auxiliary/devices")->size(), 1u);  // PF1's VF remains
  ASSERT_TRUE(t.write(pf, "4"));
  for (int i = 0; i < 4; ++i) {
    Bdf vf(0, 8, 0, static_cast<uint8_t>(i));
    std::string aux = fmt::format("mlx5_core.vfio_pci.{}", vf.id());
    EXPECT_EQ(*t.read("bus/auxiliary/devices/" + aux + "/vf_bdf"), vf.str() + "\n");
    EXPECT_EQ(*t.readlink("bus/auxiliary/devices/" + aux),
              "../../../devices/pci0000:00/0000:00:02.0/0000:05:00.0/0000:06:00.0/0000:07:00.0/" + aux);
    EXPECT_TRUE(sys->mlx5_vfio_pci().paired(vf)) << vf.str();
    auto* b = sys->mlx5_vfio_pci().vf_binding(vf);
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(*b->pf_link()->vf_function_id(), i + 1);
    EXPECT_EQ(*b->pf_link()->pf_bdf(), Bdf(0, 7, 0, 0));
  }
  EXPECT_EQ(t.list("bus/auxiliary/devices")->size(), 5u);
  ASSERT_TRUE(t.write(pf, "0"));
  EXPECT_EQ(t.list("bus/auxiliary/devices")->size(), 1u);
  EXPECT_EQ(t.list("bus/pci/drivers/mlx5_vfio_pci")->size(), 4u);  // bind, unbind, uevent, 09:00.0
}

// VF Enable cleared behind mlx5_core's back (a config write to the PF): the
// VFs are gone, and sriov_numvfs brings them back rather than failing on
// the auxiliary devices left for them (found by config_fuzz).
TEST(Mlx5Test, VfsGoneUnderTheDriverCanBeEnabledAgain) {
  auto sys = seed();
  auto& t = sys->core().tree();
  const std::string pf = "bus/pci/devices/0000:07:00.0/sriov_numvfs";
  const Bdf pf_bdf(0, 7, 0, 0);
  hw::Function* f = sys->fabric().find(pf_bdf);
  ASSERT_NE(f, nullptr);
  uint16_t sriov = f->find_ext_capability(PCI_EXT_CAP_ID_SRIOV);
  ASSERT_NE(sriov, 0);
  sys->fabric().config_write(pf_bdf, sriov + PCI_SRIOV_CTRL, 2, 0);
  EXPECT_EQ(sys->fabric().find(kVf), nullptr);
  EXPECT_EQ(t.stat("bus/pci/devices/" + kVfName).error().code, ENOENT);
  ASSERT_TRUE(t.write(pf, "2"));
  EXPECT_EQ(*t.read("bus/auxiliary/devices/" + kAuxName + "/vf_bdf"), kVfName + "\n");
  EXPECT_TRUE(sys->mlx5_vfio_pci().paired(kVf));
  EXPECT_EQ(*t.read(pf), "2\n");
  ASSERT_TRUE(t.write(pf, "0"));
  EXPECT_EQ(t.stat("bus/auxiliary/devices/" + kAuxName).error().code, ENOENT);
}

TEST(Mlx5Test, VfHalfMatchesOnlyThroughDriverOverride) {
  auto sys = seed();
  auto& t = sys->core().tree();
  ASSERT_TRUE(t.write(kPciDrv + "unbind", kVfName));
  ASSERT_TRUE(t.write("bus/pci/devices/" + kVfName + "/driver_override", "\n"));
  EXPECT_EQ(t.write(kPciDrv + "bind", kVfName).error().code, ENODEV);
  ASSERT_TRUE(t.write("bus/pci/drivers_probe", kVfName));
  EXPECT_EQ(t.readlink("bus/pci/devices/" + kVfName + "/driver").error().code, ENOENT);
  ASSERT_TRUE(t.write("bus/pci/devices/" + kVfName + "/driver_override", "mlx5_vfio_pci"));
  ASSERT_TRUE(t.write(kPciDrv + "bind", kVfName));
  EXPECT_TRUE(sys->mlx5_vfio_pci().paired(kVf));
  // The PF is not a VF: even with the override, mlx5_vfio_pci refuses it.
  ASSERT_TRUE(t.write("bus/pci/drivers/mlx5_core/unbind", "0000:07:00.1"));
  ASSERT_TRUE(t.write("bus/pci/devices/0000:07:00.1/driver_override", "mlx5_vfio_pci"));
  EXPECT_EQ(t.write(kPciDrv + "bind", "0000:07:00.1").error().code, ENODEV);
}

TEST(Mlx5Test, PfUnbindWhileTheVfHalvesAreBound) {
  auto sys = seed();
  auto& t = sys->core().tree();
  VfBinding* b = sys->mlx5_vfio_pci().vf_binding(kVf);
  ASSERT_NE(b, nullptr);
  std::shared_ptr<drivers::mlx5_vfio_pci::PfLink> link = b->pf_link();  // as an in-flight user would hold it
  ASSERT_TRUE(link->connected());
  ASSERT_TRUE(t.write("bus/pci/drivers/mlx5_core/unbind", "0000:07:00.0"));
  EXPECT_FALSE(link->connected());
  EXPECT_EQ(link->vf_function_id().error().code, ENOTCONN);
  EXPECT_EQ(link->pf_bdf().error().code, ENOTCONN);
  EXPECT_EQ(sys->pci().find(kVf), nullptr);  // SR-IOV went with the PF driver
  EXPECT_EQ(t.stat("bus/auxiliary/devices/" + kAuxName).error().code, ENOENT);
  EXPECT_EQ(sys->mlx5_vfio_pci().vf_binding(kVf), nullptr);
  // Rebinding the PF and enabling VFs pairs a fresh VF again.
  ASSERT_TRUE(t.write("bus/pci/drivers/mlx5_core/bind", "0000:07:00.0"));
  ASSERT_TRUE(t.write("bus/pci/devices/0000:07:00.0/sriov_numvfs", "1"));
  EXPECT_TRUE(sys->mlx5_vfio_pci().paired(kVf));
}

TEST(Mlx5Test, AuxHalfGoingAwayDisconnectsTheBoundVf) {
  auto sys = seed();
  auto& t = sys->core().tree();
  VfBinding* b = sys->mlx5_vfio_pci().vf_binding(kVf);
  ASSERT_TRUE(t.write(kAuxDrv + "unbind", kAuxName));
  EXPECT_EQ(b, sys->mlx5_vfio_pci().vf_binding(kVf));  // VF half still bound
  EXPECT_EQ(b->pf_detach_count(), 1);
  EXPECT_EQ(b->pf_link()->vf_function_id().error().code, ENOTCONN);
  ASSERT_TRUE(t.write(kAuxDrv + "bind", kAuxName));
  EXPECT_EQ(*b->pf_link()->vf_function_id(), 1);
}

// Every order of binding and unbinding the two halves (all sequences of four
// operations), checked against a model after each step.
enum Op { kBindVf, kUnbindVf, kBindAux, kUnbindAux };

TEST(Mlx5Test, EveryBindOrderOfTheTwoHalves) {
  const char* names[] = {"bindVF", "unbindVF", "bindAux", "unbindAux"};
  int sequences = 0;
  for (int code = 0; code < 4 * 4 * 4 * 4; ++code) {
    auto sys = seed();
    auto& t = sys->core().tree();
    ASSERT_TRUE(t.write(kPciDrv + "unbind", kVfName));
    ASSERT_TRUE(t.write(kAuxDrv + "unbind", kAuxName));
    bool vf = false, aux = false;
    std::string trace;
    for (int step = 0, c = code; step < 4; ++step, c /= 4) {
      Op op = static_cast<Op>(c % 4);
      trace += std::string(names[op]) + " ";
      Result<void> r = ok();
      int want = 0;
      switch (op) {
        case kBindVf: r = t.write(kPciDrv + "bind", kVfName); want = vf ? EBUSY : 0; vf = true; break;
        case kUnbindVf: r = t.write(kPciDrv + "unbind", kVfName); want = vf ? 0 : ENODEV; vf = false; break;
        case kBindAux: r = t.write(kAuxDrv + "bind", kAuxName); want = aux ? EBUSY : 0; aux = true; break;
        case kUnbindAux: r = t.write(kAuxDrv + "unbind", kAuxName); want = aux ? 0 : ENODEV; aux = false; break;
      }
      if (want) {
        ASSERT_FALSE(r) << trace;
        EXPECT_EQ(r.error().code, want) << trace;
      } else {
        ASSERT_TRUE(r) << trace;
      }
      EXPECT_EQ(sys->mlx5_vfio_pci().paired(kVf), vf && aux) << trace;
      VfBinding* b = sys->mlx5_vfio_pci().vf_binding(kVf);
      EXPECT_EQ(b != nullptr, vf) << trace;
      if (b) {
        auto id = b->pf_link()->vf_function_id();
        if (aux) {
          EXPECT_EQ(*id, 1) << trace;
        } else {
          EXPECT_EQ(id.error().code, ENOTCONN) << trace;
        }
      }
    }
    ++sequences;
  }
  EXPECT_EQ(sequences, 256);
}

TEST(Mlx5Test, TeardownInAnyStateIsClean) {
  // Destroying the whole system with halves in every combination of bound.
  for (int mask = 0; mask < 4; ++mask) {
    auto sys = seed();
    auto& t = sys->core().tree();
    if (!(mask & 1)) {
      ASSERT_TRUE(t.write(kPciDrv + "unbind", kVfName));
    }
    if (!(mask & 2)) {
      ASSERT_TRUE(t.write(kAuxDrv + "unbind", kAuxName));
    }
    sys.reset();
  }
}

}  // namespace
}  // namespace uvfio
