// SPDX-License-Identifier: BSD-3-Clause
// VF token (reference §5.1), as the kernel's vfio_pci_sriov_uapi_test: a PF
// bound to vfio_pci enables a VF, which binds to vfio_pci through the PF's
// driver_override capture; opening the VF needs the PF's token.
#include <gtest/gtest.h>

#include "daemon/system.h"
#include "vfio/pci_core/core.h"

namespace uvfio {
namespace {

using vfio::OpenArgs;
using vfio::Uuid;

const char* kTopology = R"(
[[device]]
address = "0000:00:04.0"
model = "mlx5-pf"
total_vfs = 2
first_vf_offset = 0x60      # VF0 = 0000:00:10.0
driver_override = "vfio-pci"

[[device]]
address = "0000:00:05.0"
model = "mlx5-pf"
total_vfs = 2
first_vf_offset = 0x60      # VF0 = 0000:00:11.0
num_vfs = 1
vf_driver_override = "vfio-pci"

[[device]]
address = "0000:00:03.0"
model = "endpoint"
driver_override = "vfio-pci"
)";

const Bdf kPf(0, 0, 4, 0), kVf(0, 0, 0x10, 0);
const Uuid kU1{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
const Uuid kU2{16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1};

class VfToken : public ::testing::Test {
 protected:
  void SetUp() override {
    auto spec = daemon::parse_topology(kTopology, "token.toml");
    ASSERT_TRUE(spec) << spec.error().message;
    daemon::SystemOptions o;
    o.vfio_pci_enable_sriov = true;
    auto s = daemon::System::create(*spec, o);
    ASSERT_TRUE(s) << s.error().message;
    sys = std::move(*s);
    ASSERT_TRUE(sys->core().tree().write("bus/pci/devices/0000:00:04.0/sriov_numvfs", "1"));
    pf = sys->vfio_device(kPf);
    vf = sys->vfio_device(kVf);
    ASSERT_NE(pf, nullptr);
    ASSERT_NE(vf, nullptr) << "the VF did not bind to vfio_pci through the PF's override capture";
    EXPECT_EQ(*sys->core().tree().read("bus/pci/devices/0000:00:10.0/driver_override"), "vfio-pci\n");
  }
  void TearDown() override {
    if (vf) vf->close();
    if (pf) pf->close();
    sys.reset();
  }
  Result<void> set_token(const Uuid& u) {
    auto r = pf->device_feature(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_PCI_VF_TOKEN, u);
    if (!r) return r.error();
    return ok();
  }
  std::unique_ptr<daemon::System> sys;
  vfio::Device* pf = nullptr;
  vfio::Device* vf = nullptr;
};

TEST_F(VfToken, InitTokenMatch) {
  ASSERT_TRUE(pf->open(OpenArgs{kU1}));  // the first PF user sets the token
  EXPECT_EQ(vf->open(OpenArgs{kU2}).error().code, EACCES);
  EXPECT_EQ(vf->open(OpenArgs{}).error().code, EACCES);
  ASSERT_TRUE(vf->open(OpenArgs{kU1}));
}

TEST_F(VfToken, PfEarlyClose) {
  ASSERT_TRUE(pf->open(OpenArgs{kU1}));
  pf->close();
  EXPECT_EQ(vf->open(OpenArgs{kU2}).error().code, EACCES);
  ASSERT_TRUE(vf->open(OpenArgs{kU1}));  // the token outlives the PF's user
}

TEST_F(VfToken, OverrideTokenDiffUuid) {
  ASSERT_TRUE(pf->open(OpenArgs{kU1}));
  ASSERT_TRUE(set_token(kU2));
  EXPECT_EQ(vf->open(OpenArgs{kU1}).error().code, EACCES);
  ASSERT_TRUE(vf->open(OpenArgs{kU2}));
}

TEST_F(VfToken, OverrideTokenSameAndNullUuid) {
  ASSERT_TRUE(pf->open(OpenArgs{kU1}));
  ASSERT_TRUE(set_token(kU1));
  ASSERT_TRUE(vf->open(OpenArgs{kU1}));
  vf->close();
  ASSERT_TRUE(set_token(Uuid{}));
  EXPECT_EQ(vf->open(OpenArgs{kU1}).error().code, EACCES);
  ASSERT_TRUE(vf->open(OpenArgs{Uuid{}}));
}

TEST_F(VfToken, PfNeedsTheTokenWhileVfsAreOpen) {
  ASSERT_TRUE(pf->open(OpenArgs{kU1}));
  ASSERT_TRUE(vf->open(OpenArgs{kU1}));
  pf->close();
  EXPECT_EQ(pf->open(OpenArgs{}).error().code, EACCES);
  EXPECT_EQ(pf->open(OpenArgs{kU2}).error().code, EACCES);
  ASSERT_TRUE(pf->open(OpenArgs{kU1}));
}

// vfio_pci_ioctl_reset() -> pci_try_reset_function() on a PF with VFs: no
// EBUSY; the PF's FLR resets its VFs, which stay, with their VFIO devices
// and users (who are not told, as on Linux).
TEST_F(VfToken, VfioPciIoctlResetOfAPfResetsItsVfsInPlace) {
  ASSERT_TRUE(pf->open(OpenArgs{kU1}));
  ASSERT_TRUE(vf->open(OpenArgs{kU1}));
  hw::Function* hvf = sys->fabric().find(kVf);
  hw::Function* hpf = sys->fabric().find(kPf);
  ASSERT_TRUE(hvf && hpf);
  unsigned vf_flrs = hvf->flr_count(), pf_flrs = hpf->flr_count();
  ASSERT_TRUE(pf->reset());
  EXPECT_EQ(hpf->flr_count(), pf_flrs + 1);
  EXPECT_EQ(hvf->flr_count(), vf_flrs + 1);
  EXPECT_EQ(sys->fabric().find(kVf), hvf);
  EXPECT_EQ(sys->vfio_device(kVf), vf);
  EXPECT_EQ(*sys->core().tree().read("bus/pci/devices/0000:00:04.0/sriov_numvfs"), "1\n");
  uint32_t id = 0;
  ASSERT_TRUE(vf->region_read(VFIO_PCI_CONFIG_REGION_INDEX, 0, std::span(reinterpret_cast<uint8_t*>(&id), 4)));
  EXPECT_EQ(id, 0x101e15b3u);
}

TEST_F(VfToken, FeatureIsSetOnlyAndPfOnly) {
  ASSERT_TRUE(pf->open());
  uint8_t buf[16] = {};
  EXPECT_EQ(pf->device_feature(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_PCI_VF_TOKEN, buf).error().code, EINVAL);
  EXPECT_EQ(pf->device_feature(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_PCI_VF_TOKEN,
                               std::span<const uint8_t>(buf, 8))
                .error()
                .code,
            EINVAL);
  EXPECT_TRUE(pf->device_feature(VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_PCI_VF_TOKEN, {}));
  // A PROBE sets nothing: the token is still the PF's random one.
  EXPECT_EQ(vf->open(OpenArgs{Uuid{}}).error().code, EACCES);
  // Set it, and the VF opens with it; the VF itself has no token to set
  // (vfio_pci_core_feature_token(): ENOTTY without a vf_token).
  std::vector<uint8_t> tok(kU1.begin(), kU1.end());
  ASSERT_TRUE(pf->device_feature(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_PCI_VF_TOKEN, tok));
  ASSERT_TRUE(vf->open(OpenArgs{kU1}));
  EXPECT_EQ(vf->device_feature(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_PCI_VF_TOKEN, tok).error().code, ENOTTY);
}

// vfio_pci_core_register_device() refuses a PF whose VFs someone else
// enabled (EBUSY): VFs it did not create would not be covered by its token.
TEST_F(VfToken, BindingVfioPciToAPfWithVfsIsRefused) {
  const char* pf2 = "bus/pci/devices/0000:00:05.0";
  auto& t = sys->core().tree();
  // 00:05.0 runs mlx5_core with one VF; its VFs stay when the PF is left
  // without a driver by enabling them from the bus, as a PF driver that
  // leaks them would.
  ASSERT_TRUE(t.write("bus/pci/drivers/mlx5_core/unbind", "0000:00:05.0"));
  auto* pdev = sys->pci().find(Bdf(0, 0, 5, 0));
  ASSERT_NE(pdev, nullptr);
  ASSERT_EQ(pdev->driver(), nullptr);
  ASSERT_TRUE(sys->pci().enable_sriov(*pdev, 1));
  ASSERT_EQ(pdev->sriov_num_vfs(), 1);
  ASSERT_TRUE(t.write(std::string(pf2) + "/driver_override", "vfio-pci"));
  auto r = t.write("bus/pci/drivers/vfio-pci/bind", "0000:00:05.0");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EBUSY);
  EXPECT_EQ(pdev->driver(), nullptr);
  EXPECT_EQ(sys->vfio_device(Bdf(0, 0, 5, 0)), nullptr);
  // With the VFs gone it binds.
  sys->pci().disable_sriov(*pdev);
  EXPECT_TRUE(t.write("bus/pci/drivers/vfio-pci/bind", "0000:00:05.0"));
  EXPECT_NE(sys->vfio_device(Bdf(0, 0, 5, 0)), nullptr);
}

// A second vfio-pci-core driver (as a vendor's variant driver is), bound
// to the VF while the PF stays with vfio-pci.
class OtherVfioPciCoreDriver : public bus::pci::PciDriver {
 public:
  explicit OtherVfioPciCoreDriver(vfio::Registry& r)
      : PciDriver("other-vfio-pci", {bus::pci::PciDeviceId{bus::pci::kPciAnyId, bus::pci::kPciAnyId,
                                                           bus::pci::kPciAnyId, bus::pci::kPciAnyId, 0, 0, true}}),
        registry_(r) {}
  Result<std::unique_ptr<driver::Binding>> probe(bus::pci::PciDevice& dev, const bus::pci::PciDeviceId&) override {
    auto core = std::make_unique<vfio::pci::CoreDevice>(dev, *this, registry_);
    TRY(core->register_device());
    return std::unique_ptr<driver::Binding>(std::move(core));
  }

 private:
  vfio::Registry& registry_;
};

// vfio_pci_vf_init(): a VF finds its PF among every vfio-pci-core PF
// (vfio_pci_sriov_pfs), whichever driver each is bound to, so the token
// guards a VF bound to another vfio-pci-core driver than its PF's too.
TEST_F(VfToken, VfioPciVfInitFindsThePfUnderAnyVfioPciCoreDriver) {
  OtherVfioPciCoreDriver other(sys->vfio_registry());
  ASSERT_TRUE(sys->pci().core().register_driver(sys->pci(), other));
  struct Unregister {
    daemon::System& s;
    OtherVfioPciCoreDriver& d;
    ~Unregister() { s.pci().core().unregister_driver(d); }
  } unregister{*sys, other};
  auto& t = sys->core().tree();
  vf = nullptr;
  ASSERT_TRUE(t.write("bus/pci/drivers/vfio-pci/unbind", "0000:00:10.0"));
  ASSERT_TRUE(t.write("bus/pci/devices/0000:00:10.0/driver_override", "other-vfio-pci"));
  ASSERT_TRUE(t.write("bus/pci/drivers/other-vfio-pci/bind", "0000:00:10.0"));
  vf = sys->vfio_device(kVf);
  ASSERT_NE(vf, nullptr);
  ASSERT_TRUE(pf->open(OpenArgs{kU1}));
  EXPECT_EQ(vf->open(OpenArgs{}).error().code, EACCES);
  EXPECT_EQ(vf->open(OpenArgs{kU2}).error().code, EACCES);
  ASSERT_TRUE(vf->open(OpenArgs{kU1}));
  vf->close();
  pf->close();
  // Unbinding the PF takes SR-IOV (and this VF) down first.
  ASSERT_TRUE(t.write("bus/pci/drivers/vfio-pci/unbind", "0000:00:04.0"));
  vf = nullptr;
  pf = nullptr;
  EXPECT_EQ(sys->pci().find(kVf), nullptr);
}

TEST_F(VfToken, TokenWhereThereIsNone) {
  // A device that is neither PF nor VF.
  vfio::Device* ep = sys->vfio_device(Bdf(0, 0, 3, 0));
  ASSERT_NE(ep, nullptr);
  EXPECT_EQ(ep->open(OpenArgs{kU1}).error().code, EINVAL);
  ASSERT_TRUE(ep->open());
  ep->close();
  // A VF whose PF is not vfio-owned (00:05.0 is bound to mlx5_core).
  vfio::Device* other = sys->vfio_device(Bdf(0, 0, 0x11, 0));
  ASSERT_NE(other, nullptr);
  EXPECT_EQ(other->open(OpenArgs{kU1}).error().code, EINVAL);
  ASSERT_TRUE(other->open());
  other->close();
}

TEST_F(VfToken, SriovNeedsEnableSriovAndRefusesAPfWithVfs) {
  // vfio_pci without enable_sriov: ENOENT, as the kernel module parameter.
  sys->vfio_pci().set_enable_sriov(false);
  EXPECT_EQ(sys->core().tree().write("bus/pci/devices/0000:00:04.0/sriov_numvfs", "0").error().code, ENOENT);
  sys->vfio_pci().set_enable_sriov(true);
  ASSERT_TRUE(sys->core().tree().write("bus/pci/devices/0000:00:04.0/sriov_numvfs", "0"));
  vf = nullptr;  // gone with SR-IOV
  EXPECT_EQ(sys->vfio_device(kVf), nullptr);
  // Unbinding the PF disables SR-IOV first; binding vfio_pci to a PF that has
  // VFs enabled (here by mlx5_core) is refused.
  auto& t = sys->core().tree();
  ASSERT_TRUE(t.write("bus/pci/devices/0000:00:05.0/driver_override", "vfio-pci"));
  ASSERT_TRUE(t.write("bus/pci/drivers/mlx5_core/unbind", "0000:00:05.0"));
  ASSERT_TRUE(t.write("bus/pci/drivers/vfio-pci/bind", "0000:00:05.0"));
  ASSERT_TRUE(t.write("bus/pci/devices/0000:00:05.0/sriov_numvfs", "2"));
  ASSERT_TRUE(t.write("bus/pci/drivers/vfio-pci/unbind", "0000:00:05.0"));
  EXPECT_EQ(sys->pci().find(Bdf(0, 0, 0x11, 0)), nullptr);
}

}  // namespace
}  // namespace uvfio
