// SPDX-License-Identifier: BSD-3-Clause
// The PCI bus type: enumeration, BAR assignment, sysfs attributes, id-table
// matching with driver_override/override_only, and SR-IOV per iov.c.
#include "bus/pci/pci.h"

#include <gtest/gtest.h>

#include <thread>

#include "hw/bridge.h"
#include "hw/fabric.h"
#include "hw/endpoint.h"
#include "hw/mlx5/pf.h"
#include "hw/mlx5/vf.h"

namespace uvfio::bus::pci {
namespace {

class TestDriver : public PciDriver {
 public:
  TestDriver(std::string name, std::vector<PciDeviceId> ids, bool sriov = false)
      : PciDriver(std::move(name), std::move(ids)), sriov_(sriov) {}
  Result<std::unique_ptr<driver::Binding>> probe(PciDevice& d, const PciDeviceId& id) override {
    last_id = id;
    probed.push_back(d.name());
    return std::make_unique<driver::Binding>();
  }
  bool has_sriov_configure() const override { return sriov_; }
  Result<int> sriov_configure(PciDevice& pf, int n) override {
    if (n == 0) {
      pf.pci_bus().disable_sriov(pf);
      return 0;
    }
    TRY(pf.pci_bus().enable_sriov(pf, static_cast<uint16_t>(n)));
    return n;
  }
  PciDeviceId last_id;
  std::vector<std::string> probed;

 private:
  bool sriov_;
};

struct PciFixture : ::testing::Test {
  hw::Fabric fabric;
  driver::DriverCore core;
  std::unique_ptr<PciBus> bus;
  void SetUp() override {
    auto rp = hw::Bridge::create(hw::BridgeKind::kRootPort);
    hw::Function* r = *fabric.attach(std::move(*rp), Bdf(0, 0, 2, 0));
    r->config_write(PCI_PRIMARY_BUS, 1, 0);
    r->config_write(PCI_SECONDARY_BUS, 1, 1);
    r->config_write(PCI_SUBORDINATE_BUS, 1, 3);
    hw::EndpointParams ep;
    ep.ids = {0x1af4, 0x1041, 0x020000, 1, 0x1af4, 0x1100};
    ASSERT_TRUE(fabric.attach(std::move(*hw::GenericEndpoint::create(ep)), Bdf(0, 1, 0, 0)));
    ASSERT_TRUE(fabric.attach(std::move(*hw::mlx5::Pf::create({4, 0x100, 1, 1 << 20, 0})), Bdf(0, 1, 0, 1)));
    fabric.find(Bdf(0, 1, 0, 0))->set_multifunction(true);
    // An endpoint on the root bus, and one behind nothing (unreachable).
    ASSERT_TRUE(fabric.attach(std::move(*hw::GenericEndpoint::create()), Bdf(0, 0, 3, 0)));
    ASSERT_TRUE(fabric.attach(std::move(*hw::GenericEndpoint::create()), Bdf(0, 0x20, 0, 0)));
    bus = std::make_unique<PciBus>(core, fabric);
    ASSERT_TRUE(bus->scan());
  }
  void TearDown() override {
    bus->remove_all();
    core.unregister_bus(*bus);
  }
  PciDevice& dev(Bdf b) { return *bus->find(b); }
};

TEST_F(PciFixture, EnumeratesWhatIsReachable) {
  std::vector<std::string> names;
  for (auto* d : bus->all_devices()) names.push_back(d->name());
  std::vector<std::string> expect{"0000:00:02.0", "0000:00:03.0", "0000:01:00.0", "0000:01:00.1"};
  EXPECT_EQ(names, expect);
  auto& t = core.tree();
  EXPECT_EQ(t.stat("devices/pci0000:00/0000:00:02.0/0000:01:00.1")->kind, driver::NodeKind::kDir);
  EXPECT_EQ(*t.readlink("bus/pci/devices/0000:01:00.0"), "../../../devices/pci0000:00/0000:00:02.0/0000:01:00.0");
  EXPECT_EQ(*t.readlink("bus/pci/devices/0000:01:00.0/subsystem"), "../../../../bus/pci");
}

TEST_F(PciFixture, SysfsAttributesInLinuxFormats) {
  auto& t = core.tree();
  std::string d = "bus/pci/devices/0000:01:00.0/";
  EXPECT_EQ(*t.read(d + "vendor"), "0x1af4\n");
  EXPECT_EQ(*t.read(d + "device"), "0x1041\n");
  EXPECT_EQ(*t.read(d + "class"), "0x020000\n");
  EXPECT_EQ(*t.read(d + "revision"), "0x01\n");
  EXPECT_EQ(*t.read(d + "subsystem_vendor"), "0x1af4\n");
  EXPECT_EQ(*t.read(d + "subsystem_device"), "0x1100\n");
  EXPECT_EQ(*t.read(d + "driver_override"), "(null)\n");
  EXPECT_EQ(*t.read(d + "modalias"), "pci:v00001AF4d00001041sv00001AF4sd00001100bc02sc00i00\n");
  EXPECT_EQ(t.read(d + "config")->size(), 4096u);
  EXPECT_EQ(t.read(d + "config")->substr(0, 4), std::string("\xf4\x1a\x41\x10", 4));
  EXPECT_EQ(t.stat(d + "config")->size, 4096u);
  EXPECT_NE(*t.read(d + "irq"), "0\n");
  // resource: 13 lines for an endpoint, 17 for a bridge; BAR0 32-bit mem,
  // BAR1 I/O, BAR2 64-bit prefetchable, with Linux's flags.
  std::string res = *t.read(d + "resource");
  EXPECT_EQ(std::count(res.begin(), res.end(), '\n'), 13);
  EXPECT_NE(res.find("0x0000000000040200\n"), std::string::npos);
  EXPECT_NE(res.find("0x0000000000040101\n"), std::string::npos);
  EXPECT_NE(res.find("0x000000000014220c\n"), std::string::npos);
  std::string br = *t.read("bus/pci/devices/0000:00:02.0/resource");
  EXPECT_EQ(std::count(br.begin(), br.end(), '\n'), 17);
  EXPECT_EQ(*t.read("bus/pci/devices/0000:00:02.0/secondary_bus_number"), "1\n");
  EXPECT_EQ(*t.read("bus/pci/devices/0000:00:02.0/subordinate_bus_number"), "3\n");
  std::string pf = "bus/pci/devices/0000:01:00.1/";
  EXPECT_EQ(*t.read(pf + "sriov_totalvfs"), "4\n");
  EXPECT_EQ(*t.read(pf + "sriov_numvfs"), "0\n");
  EXPECT_EQ(*t.read(pf + "sriov_offset"), "256\n");
  EXPECT_EQ(*t.read(pf + "sriov_stride"), "1\n");
  EXPECT_EQ(*t.read(pf + "sriov_vf_device"), "101e\n");
  EXPECT_EQ(t.stat(d + "sriov_numvfs").error().code, ENOENT);
  EXPECT_EQ(*t.read(d + "numa_node"), "-1\n");
  EXPECT_EQ(*t.read(d + "msi_bus"), "1\n");
  EXPECT_EQ(*t.read(d + "ari_enabled"), "0\n");
  unsigned cpus = std::max(1u, std::thread::hardware_concurrency());
  EXPECT_EQ(*t.read(d + "local_cpulist"), cpus == 1 ? std::string("0\n") : "0-" + std::to_string(cpus - 1) + "\n");
  EXPECT_EQ(t.read(d + "local_cpus")->back(), '\n');
  EXPECT_EQ(t.read(d + "local_cpus")->size() % 9, 0u);  // 8 hex digits and ',' or '\n' per 32 CPUs
}

// power_state follows the PM capability's PowerState, found by walking the
// capability list with config reads (pci_find_capability).
TEST_F(PciFixture, PowerStateFromThePmCapability) {
  auto& t = core.tree();
  auto* dev = bus->find(Bdf(0, 1, 0, 0));
  ASSERT_NE(dev, nullptr);
  uint16_t pm = dev->find_capability(PCI_CAP_ID_PM);
  ASSERT_NE(pm, 0);
  EXPECT_EQ(pm, fabric.find(dev->bdf())->find_capability(PCI_CAP_ID_PM));  // what the model built
  EXPECT_EQ(dev->find_capability(0x42), 0);
  EXPECT_EQ(*t.read("bus/pci/devices/0000:01:00.0/power_state"), "D0\n");
  dev->config_write(pm + PCI_PM_CTRL, 2, 3);
  EXPECT_EQ(*t.read("bus/pci/devices/0000:01:00.0/power_state"), "D3hot\n");
  dev->config_write(pm + PCI_PM_CTRL, 2, 0);
}

TEST_F(PciFixture, BarsProgrammedInsideTheBridgeWindows) {
  PciDevice& ep = dev(Bdf(0, 1, 0, 0));
  PciDevice& rp = dev(Bdf(0, 0, 2, 0));
  const Resource& bar0 = ep.resource(0);
  const Resource& bar2 = ep.resource(2);
  EXPECT_EQ(bar0.size(), 4096u);
  EXPECT_EQ(ep.config_read(PCI_BASE_ADDRESS_0, 4), static_cast<uint32_t>(bar0.start));
  EXPECT_EQ(bar2.size(), 1u << 20);
  EXPECT_EQ(bar2.start % (1u << 20), 0u);
  const Resource& mem = rp.resource(kBridgeResources + 1);
  const Resource& pref = rp.resource(kBridgeResources + 2);
  EXPECT_GE(bar0.start, mem.start);
  EXPECT_LE(bar0.end, mem.end);
  EXPECT_GE(bar2.start, pref.start);
  EXPECT_LE(bar2.end, pref.end);
  EXPECT_EQ((uint64_t{rp.config_read(PCI_PREF_BASE_UPPER32, 4)} << 32 |
             (uint64_t{rp.config_read(PCI_PREF_MEMORY_BASE, 2)} & 0xfff0) << 16),
            pref.start);
  // The PF's VF BAR ranges: TotalVFs times the per-VF size.
  PciDevice& pf = dev(Bdf(0, 1, 0, 1));
  EXPECT_EQ(pf.resource(kIovResources + 2).size(), 4u << 20);
}

struct MatchCase {
  const char* name;
  PciDeviceId id;
  const char* override_;
  bool match;
};

class MatchTable : public PciFixture, public ::testing::WithParamInterface<MatchCase> {};

TEST_P(MatchTable, AgainstVirtioNetLikeDevice) {
  const MatchCase& c = GetParam();
  TestDriver drv("drv", {c.id});
  PciDevice& d = dev(Bdf(0, 1, 0, 0));
  ASSERT_TRUE(core.set_driver_override(d, c.override_));
  EXPECT_EQ(bus->match(d, drv).has_value(), c.match) << c.name;
}

INSTANTIATE_TEST_SUITE_P(
    Ids, MatchTable,
    ::testing::Values(
        MatchCase{"vendor+device", {0x1af4, 0x1041}, "", true},
        MatchCase{"wrong device", {0x1af4, 0x1042}, "", false},
        MatchCase{"any", {}, "", true},
        MatchCase{"subsystem", {0x1af4, kPciAnyId, 0x1af4, 0x1100}, "", true},
        MatchCase{"wrong subsystem", {0x1af4, kPciAnyId, 0x1af4, 0x1101}, "", false},
        MatchCase{"class/mask", {kPciAnyId, kPciAnyId, kPciAnyId, kPciAnyId, 0x020000, 0xffff00}, "", true},
        MatchCase{"wrong class", {kPciAnyId, kPciAnyId, kPciAnyId, kPciAnyId, 0x010000, 0xff0000}, "", false},
        MatchCase{"override-only without override", {0x1af4, 0x1041, kPciAnyId, kPciAnyId, 0, 0, true}, "", false},
        MatchCase{"override-only with override", {0x1af4, 0x1041, kPciAnyId, kPciAnyId, 0, 0, true}, "drv", true},
        MatchCase{"override names another driver", {0x1af4, 0x1041}, "other", false},
        MatchCase{"override alone matches anything", {0xdead, 0xbeef}, "drv", true}),
    [](const auto& i) { return std::to_string(i.index); });

TEST_F(PciFixture, MostSpecificEntryWins) {
  PciDeviceId any{};
  PciDeviceId vendor{0x1af4};
  PciDeviceId exact{0x1af4, 0x1041, 0x1af4, 0x1100};
  TestDriver drv("drv", {any, exact, vendor});
  EXPECT_EQ(*bus->match(dev(Bdf(0, 1, 0, 0)), drv), 4);
  ASSERT_TRUE(core.register_driver(*bus, drv));
  ASSERT_TRUE(core.release_driver(dev(Bdf(0, 1, 0, 0))));
  ASSERT_TRUE(core.bind(drv, dev(Bdf(0, 1, 0, 0))));
  EXPECT_EQ(drv.last_id.subdevice, 0x1100u);  // probe() is handed the best entry
  // Between drivers, autoprobe tries the most specific first.
  TestDriver generic("generic", {any});
  core.unregister_driver(drv);
  ASSERT_TRUE(core.register_driver(*bus, generic));
  TestDriver specific("specific", {exact});
  ASSERT_TRUE(core.register_driver(*bus, specific));
  PciDevice& ep = dev(Bdf(0, 1, 0, 0));
  ASSERT_TRUE(core.release_driver(ep));
  ASSERT_TRUE(core.drivers_probe(ep));
  EXPECT_EQ(ep.driver(), &specific);
  core.unregister_driver(specific);
  core.unregister_driver(generic);
}

TEST(ParseU16Test, KstrtoU16) {
  EXPECT_EQ(*parse_u16("3\n"), 3);
  EXPECT_EQ(*parse_u16("0x10"), 16);
  EXPECT_EQ(*parse_u16("010"), 8);
  EXPECT_EQ(*parse_u16("65535"), 65535);
  EXPECT_EQ(parse_u16("65536").error().code, ERANGE);
  for (const char* s : {"", "-1", "1x", "0x", "09", " 1", "1\n\n"}) EXPECT_FALSE(parse_u16(s)) << s;
}

struct SriovCase {
  const char* name;
  bool bind;        // PF bound to a driver?
  bool callback;    // does the driver have sriov_configure?
  const char* first;   // written first ("" = nothing)
  const char* value;
  int expect_errno;  // 0 = success
  int expect_numvfs;
};

class SriovNumvfs : public PciFixture, public ::testing::WithParamInterface<SriovCase> {};

TEST_P(SriovNumvfs, KernelErrnoRules) {
  const SriovCase& c = GetParam();
  TestDriver drv("pfdrv", {{0x15b3, 0x101d}}, c.callback);
  if (c.bind) {
    ASSERT_TRUE(core.register_driver(*bus, drv));
  }
  std::string p = "bus/pci/devices/0000:01:00.1/sriov_numvfs";
  if (*c.first) {
    ASSERT_TRUE(core.tree().write(p, c.first));
  }
  auto r = core.tree().write(p, c.value);
  if (c.expect_errno) {
    ASSERT_FALSE(r) << c.name;
    EXPECT_EQ(r.error().code, c.expect_errno) << c.name;
  } else {
    EXPECT_TRUE(r) << c.name;
  }
  EXPECT_EQ(*core.tree().read(p), std::to_string(c.expect_numvfs) + "\n") << c.name;
  if (c.bind) {
    core.unregister_driver(drv);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Iov, SriovNumvfs,
    ::testing::Values(SriovCase{"not a number", true, true, "", "x", EINVAL, 0},
                      SriovCase{"above total", true, true, "", "5", ERANGE, 0},
                      SriovCase{"no driver", false, true, "", "1", ENOENT, 0},
                      SriovCase{"driver without callback", true, false, "", "1", ENOENT, 0},
                      SriovCase{"enable", true, true, "", "2\n", 0, 2},
                      SriovCase{"same value is a no-op", true, true, "2", "2", 0, 2},
                      SriovCase{"change without going through 0", true, true, "2", "3", EBUSY, 2},
                      SriovCase{"disable", true, true, "2", "0", 0, 0},
                      SriovCase{"zero while zero", false, false, "", "0", 0, 0},
                      SriovCase{"hex", true, true, "", "0x4", 0, 4}),
    [](const auto& i) { return std::to_string(i.index); });

// sriov_init() clears a VF Enable it finds set; enabling SR-IOV here does
// the same when a raw config write set VF Enable behind the bus's back (the
// config fuzzer found "VF did not appear": NumVFs cannot change while VF
// Enable is set, and the VFs never saw a 0 -> 1 edge).
TEST_F(PciFixture, SriovEnableClearsAVfEnableSetBehindTheBusBack) {
  TestDriver drv("pfdrv", {{0x15b3, 0x101d}}, true);
  ASSERT_TRUE(core.register_driver(*bus, drv));
  PciDevice& pf = dev(Bdf(0, 1, 0, 1));
  uint16_t pos = pf.find_ext_capability(PCI_EXT_CAP_ID_SRIOV);
  ASSERT_NE(pos, 0);
  pf.config_write(pos + PCI_SRIOV_NUM_VF, 2, 1);
  pf.config_write(pos + PCI_SRIOV_CTRL, 2, PCI_SRIOV_CTRL_VFE);
  ASSERT_TRUE(pf.config_read(pos + PCI_SRIOV_CTRL, 2) & PCI_SRIOV_CTRL_VFE);
  EXPECT_EQ(*core.tree().read("bus/pci/devices/0000:01:00.1/sriov_numvfs"), "0\n");
  ASSERT_TRUE(core.tree().write("bus/pci/devices/0000:01:00.1/sriov_numvfs", "2"));
  EXPECT_NE(bus->find(Bdf(0, 2, 0, 1)), nullptr);
  EXPECT_NE(bus->find(Bdf(0, 2, 0, 2)), nullptr);
  EXPECT_EQ(pf.config_read(pos + PCI_SRIOV_NUM_VF, 2), 2u);
  ASSERT_TRUE(core.tree().write("bus/pci/devices/0000:01:00.1/sriov_numvfs", "0"));
  core.unregister_driver(drv);
}

TEST_F(PciFixture, VfsAppearWithLinksAndGoAgain) {
  TestDriver drv("pfdrv", {{0x15b3, 0x101d}}, true);
  ASSERT_TRUE(core.register_driver(*bus, drv));
  auto& t = core.tree();
  ASSERT_TRUE(t.write("bus/pci/devices/0000:01:00.1/sriov_numvfs", "2"));
  // PF 01:00.1 (RID 0x101) + 0x100 → 02:00.1, 02:00.2; parent is the root port.
  PciDevice* vf0 = bus->find(Bdf(0, 2, 0, 1));
  ASSERT_NE(vf0, nullptr);
  EXPECT_TRUE(vf0->is_virtfn());
  EXPECT_EQ(*t.read("bus/pci/devices/0000:02:00.1/vendor"), "0x15b3\n");
  EXPECT_EQ(*t.read("bus/pci/devices/0000:02:00.1/device"), "0x101e\n");
  EXPECT_EQ(t.read("bus/pci/devices/0000:02:00.1/config")->substr(0, 2), "\xff\xff");  // hardware's view
  EXPECT_EQ(*t.readlink("bus/pci/devices/0000:02:00.1"), "../../../devices/pci0000:00/0000:00:02.0/0000:02:00.1");
  EXPECT_EQ(*t.readlink("bus/pci/devices/0000:01:00.1/virtfn1"), "../0000:02:00.2");
  EXPECT_EQ(*t.readlink("bus/pci/devices/0000:02:00.2/physfn"), "../0000:01:00.1");
  PciDevice& pf = dev(Bdf(0, 1, 0, 1));
  EXPECT_EQ(vf0->resource(2).start, pf.resource(kIovResources + 2).start);
  EXPECT_EQ(bus->find(Bdf(0, 2, 0, 2))->resource(2).start, pf.resource(kIovResources + 2).start + (1 << 20));
  ASSERT_TRUE(t.write("bus/pci/devices/0000:01:00.1/sriov_numvfs", "0"));
  EXPECT_EQ(bus->find(Bdf(0, 2, 0, 1)), nullptr);
  EXPECT_EQ(t.stat("bus/pci/devices/0000:01:00.1/virtfn0").error().code, ENOENT);
  EXPECT_EQ(t.stat("bus/pci/devices/0000:02:00.1").error().code, ENOENT);
  core.unregister_driver(drv);
}

TEST_F(PciFixture, VfAutoprobeFollowsSriovDriversAutoprobe) {
  TestDriver pfdrv("pfdrv", {{0x15b3, 0x101d}}, true);
  TestDriver vfdrv("vfdrv", {{0x15b3, 0x101e}});
  ASSERT_TRUE(core.register_driver(*bus, pfdrv));
  ASSERT_TRUE(core.register_driver(*bus, vfdrv));
  auto& t = core.tree();
  ASSERT_TRUE(t.write("bus/pci/devices/0000:01:00.1/sriov_drivers_autoprobe", "0"));
  ASSERT_TRUE(t.write("bus/pci/devices/0000:01:00.1/sriov_numvfs", "1"));
  EXPECT_EQ(bus->find(Bdf(0, 2, 0, 1))->driver(), nullptr);
  ASSERT_TRUE(t.write("bus/pci/drivers_probe", "0000:02:00.1"));
  EXPECT_EQ(bus->find(Bdf(0, 2, 0, 1))->driver(), &vfdrv);
  EXPECT_EQ(t.write("bus/pci/devices/0000:01:00.1/sriov_drivers_autoprobe", "2").error().code, EINVAL);
  core.unregister_driver(vfdrv);
  core.unregister_driver(pfdrv);
}

TEST_F(PciFixture, HardwareVanishingTakesItsDeviceAlong) {
  // An admin writing the PF's SR-IOV control through `config`, behind the
  // PF driver's back: the VFs' devices go before their hardware does.
  TestDriver pfdrv("pfdrv", {{0x15b3, 0x101d}}, true);
  TestDriver vfdrv("vfdrv", {{0x15b3, 0x101e}});
  ASSERT_TRUE(core.register_driver(*bus, pfdrv));
  ASSERT_TRUE(core.register_driver(*bus, vfdrv));
  ASSERT_TRUE(core.tree().write("bus/pci/devices/0000:01:00.1/sriov_numvfs", "2"));
  PciDevice& pf = dev(Bdf(0, 1, 0, 1));
  ASSERT_EQ(bus->find(Bdf(0, 2, 0, 1))->driver(), &vfdrv);
  pf.config_write(pf.sriov_cap() + PCI_SRIOV_CTRL, 2, 0);
  EXPECT_EQ(bus->find(Bdf(0, 2, 0, 1)), nullptr);
  EXPECT_EQ(pf.sriov_num_vfs(), 0);
  EXPECT_EQ(*core.tree().read("bus/pci/devices/0000:01:00.1/sriov_numvfs"), "0\n");
  // And an FLR written to the PF's config space (nobody restoring the
  // state after it, unlike flr() and pci_reset_function()) does the same.
  ASSERT_TRUE(core.tree().write("bus/pci/devices/0000:01:00.1/sriov_numvfs", "1"));
  uint16_t exp = pf.find_capability(PCI_CAP_ID_EXP);
  pf.config_write(exp + PCI_EXP_DEVCTL, 2, pf.config_read(exp + PCI_EXP_DEVCTL, 2) | PCI_EXP_DEVCTL_BCR_FLR);
  EXPECT_EQ(bus->find(Bdf(0, 2, 0, 1)), nullptr);
  EXPECT_EQ(pf.sriov_num_vfs(), 0);
  core.unregister_driver(vfdrv);
  core.unregister_driver(pfdrv);
}


// pci-sysfs.c shows `reset` and `reset_method` only for a function with a
// reset method (pci_dev_reset_attr_is_visible): the endpoints advertise FLR
// in Device Capabilities, the root port has no method.
TEST_F(PciFixture, ResetAttributesOnlyWhereAResetMethodExists) {
  auto& t = core.tree();
  auto st = t.stat("bus/pci/devices/0000:00:03.0/reset");
  ASSERT_TRUE(st);
  EXPECT_EQ(st->mode, 0200u);
  EXPECT_EQ(t.read("bus/pci/devices/0000:00:03.0/reset").error().code, EACCES);
  EXPECT_EQ(t.stat("bus/pci/devices/0000:00:03.0/reset_method")->mode, 0644u);
  EXPECT_EQ(*t.read("bus/pci/devices/0000:00:03.0/reset_method"), "flr\n");
  EXPECT_EQ(t.stat("bus/pci/devices/0000:00:02.0/reset").error().code, ENOENT);
  EXPECT_EQ(t.stat("bus/pci/devices/0000:00:02.0/reset_method").error().code, ENOENT);
}

class ResetDriver : public TestDriver {
 public:
  using TestDriver::TestDriver;
  void reset_prepare(PciDevice& d, driver::Binding&) override {
    events.push_back("prepare " + d.name());
    // The function is still as the driver left it.
    cmd_at_prepare = static_cast<uint16_t>(d.config_read(PCI_COMMAND, 2));
  }
  void reset_done(PciDevice& d, driver::Binding&) override { events.push_back("done " + d.name()); }
  std::vector<std::string> events;
  uint16_t cmd_at_prepare = 0;
};

// pci_reset_function(): reset_prepare, the state saved, FLR, the state
// (header, capabilities, MSI-X table) put back, reset_done.
TEST_F(PciFixture, ResetFunctionRestoresStateAroundAnFlr) {
  ResetDriver drv("epdrv", {{0x1b36, 0x0005}});
  ASSERT_TRUE(core.register_driver(*bus, drv));
  PciDevice& ep = dev(Bdf(0, 0, 3, 0));
  ASSERT_EQ(ep.driver(), &drv);
  hw::Function* hwf = fabric.find(Bdf(0, 0, 3, 0));
  ep.enable_device();
  uint16_t cmd = static_cast<uint16_t>(ep.config_read(PCI_COMMAND, 2));
  ASSERT_TRUE(cmd & PCI_COMMAND_MEMORY);
  ASSERT_TRUE(cmd & PCI_COMMAND_MASTER);
  uint32_t bar0 = ep.config_read(PCI_BASE_ADDRESS_0, 4);
  ASSERT_NE(bar0 & PCI_BASE_ADDRESS_MEM_MASK, 0u);
  ep.config_write(PCI_CACHE_LINE_SIZE, 1, 0x10);
  // Program MSI-X vector 1 (BAR4 table at 0) and enable MSI-X.
  uint16_t msix = ep.find_capability(PCI_CAP_ID_MSIX);
  ASSERT_NE(msix, 0);
  ASSERT_TRUE(ep.bar_write(4, 16 + PCI_MSIX_ENTRY_LOWER_ADDR, 4, 0xfee01000));
  ASSERT_TRUE(ep.bar_write(4, 16 + PCI_MSIX_ENTRY_DATA, 4, 0x4321));
  ASSERT_TRUE(ep.bar_write(4, 16 + PCI_MSIX_ENTRY_VECTOR_CTRL, 4, 0));
  ep.config_write(msix + PCI_MSIX_FLAGS, 2, PCI_MSIX_FLAGS_ENABLE);
  // Device state an FLR clears: the scratch register.
  ASSERT_TRUE(ep.bar_write(0, hw::GenericEndpoint::kRegScratch, 4, 0xabcd));
  unsigned flrs = hwf->flr_count();

  ASSERT_TRUE(core.tree().write("bus/pci/devices/0000:00:03.0/reset", "1\n"));
  EXPECT_EQ(hwf->flr_count(), flrs + 1);
  EXPECT_EQ(*ep.bar_read(0, hw::GenericEndpoint::kRegScratch, 4), 0u);  // the reset happened
  EXPECT_EQ(ep.config_read(PCI_COMMAND, 2), cmd);
  EXPECT_EQ(ep.config_read(PCI_BASE_ADDRESS_0, 4), bar0);
  EXPECT_EQ(ep.config_read(PCI_CACHE_LINE_SIZE, 1), 0x10u);
  EXPECT_EQ(ep.config_read(msix + PCI_MSIX_FLAGS, 2) & (PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL),
            PCI_MSIX_FLAGS_ENABLE);
  EXPECT_EQ(*ep.bar_read(4, 16 + PCI_MSIX_ENTRY_LOWER_ADDR, 4), 0xfee01000u);
  EXPECT_EQ(*ep.bar_read(4, 16 + PCI_MSIX_ENTRY_DATA, 4), 0x4321u);
  EXPECT_EQ(*ep.bar_read(4, 16 + PCI_MSIX_ENTRY_VECTOR_CTRL, 4) & PCI_MSIX_ENTRY_CTRL_MASKBIT, 0u);
  EXPECT_EQ(*ep.bar_read(4, PCI_MSIX_ENTRY_VECTOR_CTRL, 4) & PCI_MSIX_ENTRY_CTRL_MASKBIT, 1u);  // vector 0 as it was
  std::vector<std::string> want{"prepare 0000:00:03.0", "done 0000:00:03.0"};
  EXPECT_EQ(drv.events, want);
  EXPECT_EQ(drv.cmd_at_prepare, cmd);
  core.unregister_driver(drv);
}

// reset_store(): kstrtoul, then only 1; reset_method_store(): "" disables,
// "default" restores, names must be known and supported or nothing changes.
TEST_F(PciFixture, ResetAndResetMethodErrnoRules) {
  auto& t = core.tree();
  const std::string r = "bus/pci/devices/0000:00:03.0/reset", m = "bus/pci/devices/0000:00:03.0/reset_method";
  hw::Function* hwf = fabric.find(Bdf(0, 0, 3, 0));
  unsigned flrs = hwf->flr_count();
  EXPECT_EQ(t.write(r, "0").error().code, EINVAL);
  EXPECT_EQ(t.write(r, "2").error().code, EINVAL);
  EXPECT_EQ(t.write(r, "yes").error().code, EINVAL);
  EXPECT_EQ(t.write(r, "").error().code, EINVAL);
  EXPECT_EQ(hwf->flr_count(), flrs);
  ASSERT_TRUE(t.write(r, "0x1"));  // base 0, as kstrtoul(buf, 0)
  EXPECT_EQ(hwf->flr_count(), ++flrs);
  EXPECT_EQ(t.write(m, "bus").error().code, EINVAL);       // a method, not this function's
  EXPECT_EQ(t.write(m, "flr warm").error().code, EINVAL);  // no such method: nothing changes
  EXPECT_EQ(*t.read(m), "flr\n");
  ASSERT_TRUE(t.write(m, "\n"));
  EXPECT_EQ(*t.read(m), "");
  EXPECT_EQ(t.write(r, "1").error().code, ENOTTY);
  EXPECT_EQ(hwf->flr_count(), flrs);
  ASSERT_TRUE(t.write(m, "default\n"));
  EXPECT_EQ(*t.read(m), "flr\n");
  ASSERT_TRUE(t.write(m, ""));
  ASSERT_TRUE(t.write(m, "  flr \n"));
  EXPECT_EQ(*t.read(m), "flr\n");
  ASSERT_TRUE(t.write(r, "1"));
  EXPECT_EQ(hwf->flr_count(), ++flrs);
}

// pci_reset_function() on a PF with VFs: the FLR resets the VFs with it and
// pci_restore_state() (sriov_restore_state) sets VF Enable again, so the
// VFs' devices stay, bound; their own state is the hardware's after reset
// (their drivers are not told); the PF's state comes back.
TEST_F(PciFixture, PciResetFunctionOfAPfResetsItsVfsAndKeepsThem) {
  TestDriver drv("pfdrv", {{0x15b3, 0x101d}}, true);
  TestDriver vfdrv("vfdrv", {{0x15b3, 0x101e}});
  ASSERT_TRUE(core.register_driver(*bus, drv));
  ASSERT_TRUE(core.register_driver(*bus, vfdrv));
  auto& t = core.tree();
  const std::string r = "bus/pci/devices/0000:01:00.1/reset";
  hw::Function* pf = fabric.find(Bdf(0, 1, 0, 1));
  PciDevice& pfd = dev(Bdf(0, 1, 0, 1));
  unsigned flrs = pf->flr_count();
  ASSERT_TRUE(t.write("bus/pci/devices/0000:01:00.1/sriov_numvfs", "2"));
  PciDevice* vf0 = bus->find(Bdf(0, 2, 0, 1));
  PciDevice* vf1 = bus->find(Bdf(0, 2, 0, 2));
  ASSERT_TRUE(vf0 && vf1);
  ASSERT_EQ(vf0->driver(), &vfdrv);
  hw::Function* hvf0 = fabric.find(Bdf(0, 2, 0, 1));
  hw::Function* hvf1 = fabric.find(Bdf(0, 2, 0, 2));
  unsigned vf_flrs0 = hvf0->flr_count(), vf_flrs1 = hvf1->flr_count();
  vf0->enable_device();  // a VF's Memory Space bit is the PF's VF MSE: Bus Master shows it
  ASSERT_TRUE(vf0->config_read(PCI_COMMAND, 2) & PCI_COMMAND_MASTER);
  ASSERT_TRUE(vf0->bar_write(2, 0x40, 4, 0x5a5a5a5a));  // device memory
  pfd.config_write(PCI_CACHE_LINE_SIZE, 1, 0x10);
  uint16_t iov = pfd.find_ext_capability(PCI_EXT_CAP_ID_SRIOV);
  uint32_t iov_before = pfd.config_read(iov + PCI_SRIOV_CTRL, 4);

  ASSERT_TRUE(t.write(r, "1"));
  EXPECT_EQ(pf->flr_count(), flrs + 1);
  EXPECT_EQ(hvf0->flr_count(), vf_flrs0 + 1);
  EXPECT_EQ(hvf1->flr_count(), vf_flrs1 + 1);
  EXPECT_EQ(bus->find(Bdf(0, 2, 0, 1)), vf0);
  EXPECT_EQ(bus->find(Bdf(0, 2, 0, 2)), vf1);
  EXPECT_EQ(vf0->driver(), &vfdrv);
  EXPECT_EQ(fabric.find(Bdf(0, 2, 0, 1)), hvf0);
  EXPECT_EQ(*t.read("bus/pci/devices/0000:01:00.1/sriov_numvfs"), "2\n");
  EXPECT_EQ(pfd.config_read(iov + PCI_SRIOV_CTRL, 4), iov_before);  // VF Enable and NumVFs
  EXPECT_EQ(pfd.config_read(PCI_CACHE_LINE_SIZE, 1), 0x10u);
  EXPECT_FALSE(vf0->config_read(PCI_COMMAND, 2) & PCI_COMMAND_MASTER);  // the VF's own state: reset
  EXPECT_EQ(*vf0->bar_read(2, 0x40, 4), 0u);
  // NumVFs stays read-only while the VFs are enabled; they go as usual.
  pfd.config_write(iov + PCI_SRIOV_NUM_VF, 2, 1);
  EXPECT_EQ(pfd.config_read(iov + PCI_SRIOV_NUM_VF, 2), 2u);
  ASSERT_TRUE(t.write("bus/pci/devices/0000:01:00.1/sriov_numvfs", "0"));
  EXPECT_EQ(bus->find(Bdf(0, 2, 0, 1)), nullptr);
  ASSERT_TRUE(t.write(r, "1"));
  EXPECT_EQ(pf->flr_count(), flrs + 2);
  // The VFs' reset method works on its own too.
  ASSERT_TRUE(t.write("bus/pci/devices/0000:01:00.1/sriov_numvfs", "1"));
  hw::Function* vf = fabric.find(Bdf(0, 2, 0, 1));
  unsigned n = vf->flr_count();
  ASSERT_TRUE(t.write("bus/pci/devices/0000:02:00.1/reset", "1"));
  EXPECT_EQ(vf->flr_count(), n + 1);
  EXPECT_EQ(pf->flr_count(), flrs + 2);
  ASSERT_TRUE(t.write("bus/pci/devices/0000:01:00.1/sriov_numvfs", "0"));
  core.unregister_driver(vfdrv);
  core.unregister_driver(drv);
}

// pci_restore_state(): the AER masks and severity (pci_restore_aer_state)
// and the PCI Express controls come back; the PM state does not (the reset
// leaves D0), nor do read-only registers.
TEST_F(PciFixture, PciRestoreStateRestoresAerAndPcieControls) {
  hw::EndpointParams p;
  p.aer = true;
  ASSERT_TRUE(fabric.attach(std::move(*hw::GenericEndpoint::create(p)), Bdf(0, 0, 4, 0)));
  ASSERT_TRUE(bus->scan());
  PciDevice& ep = dev(Bdf(0, 0, 4, 0));
  uint16_t aer = ep.find_ext_capability(PCI_EXT_CAP_ID_ERR);
  uint16_t exp = ep.find_capability(PCI_CAP_ID_EXP);
  ASSERT_NE(aer, 0);
  uint32_t sever = ep.config_read(aer + PCI_ERR_UNCOR_SEVER, 4);
  ep.config_write(aer + PCI_ERR_UNCOR_MASK, 4, PCI_ERR_UNC_UNSUP | PCI_ERR_UNC_ECRC);
  ep.config_write(aer + PCI_ERR_UNCOR_SEVER, 4, sever ^ PCI_ERR_UNC_COMP_ABORT);
  ep.config_write(aer + PCI_ERR_COR_MASK, 4, PCI_ERR_COR_ADV_NFAT);
  uint16_t devctl = static_cast<uint16_t>(ep.config_read(exp + PCI_EXP_DEVCTL, 2));
  ep.config_write(exp + PCI_EXP_DEVCTL, 2, devctl ^ PCI_EXP_DEVCTL_RELAX_EN);
  ASSERT_NE(ep.config_read(exp + PCI_EXP_DEVCTL, 2), devctl);
  hw::Function* hwf = fabric.find(Bdf(0, 0, 4, 0));
  unsigned flrs = hwf->flr_count();
  ASSERT_TRUE(ep.reset_function());
  EXPECT_EQ(hwf->flr_count(), flrs + 1);
  EXPECT_EQ(ep.config_read(aer + PCI_ERR_UNCOR_MASK, 4), PCI_ERR_UNC_UNSUP | PCI_ERR_UNC_ECRC);
  EXPECT_EQ(ep.config_read(aer + PCI_ERR_UNCOR_SEVER, 4), sever ^ PCI_ERR_UNC_COMP_ABORT);
  EXPECT_EQ(ep.config_read(aer + PCI_ERR_COR_MASK, 4), PCI_ERR_COR_ADV_NFAT);
  EXPECT_EQ(ep.config_read(exp + PCI_EXP_DEVCTL, 2), devctl ^ PCI_EXP_DEVCTL_RELAX_EN);
  // Without the restore, the FLR would have cleared them: the model's
  // power-on values differ.
  hwf->function_level_reset();
  EXPECT_EQ(hwf->config().raw_read(aer + PCI_ERR_UNCOR_MASK, 4), 0u);
  EXPECT_EQ(hwf->config().raw_read(aer + PCI_ERR_UNCOR_SEVER, 4), sever);
}

// pci_write_config(): root's writes to `config` at an offset, cut at the
// end of config space (nothing taken past it), in naturally aligned cycles.
TEST_F(PciFixture, PciWriteConfigTakesBytesAtAnOffset) {
  auto& t = core.tree();
  const std::string c = "bus/pci/devices/0000:00:03.0/config";
  PciDevice& ep = dev(Bdf(0, 0, 3, 0));
  EXPECT_EQ(t.stat(c)->mode & 0777, 0644u);
  EXPECT_EQ(*t.write_at(c, PCI_CACHE_LINE_SIZE, std::string("\x10", 1)), 1u);
  EXPECT_EQ(ep.config_read(PCI_CACHE_LINE_SIZE, 1), 0x10u);
  EXPECT_EQ(t.read(c)->at(PCI_CACHE_LINE_SIZE), '\x10');
  // An odd start, a word, then a dword: Interrupt Line (0x3c) is the one
  // writable byte there; the others are read-only and keep their values.
  uint32_t before = ep.config_read(0x3c, 4);
  EXPECT_EQ(*t.write_at(c, 0x3b, std::string("\xaa\x0b\xcc\xdd\xee", 5)), 5u);
  EXPECT_EQ(ep.config_read(PCI_INTERRUPT_LINE, 1), 0x0bu);
  EXPECT_EQ(ep.config_read(0x3c, 4) & ~0xffu, before & ~0xffu);
  // The end of config space: the tail is cut, past it nothing is taken.
  uint16_t size = ep.cfg_size();
  EXPECT_EQ(*t.write_at(c, size - 2, std::string(6, '\0')), 2u);
  EXPECT_EQ(*t.write_at(c, size, std::string(4, '\0')), 0u);
  EXPECT_EQ(*t.write_at(c, uint64_t{1} << 40, std::string(4, '\0')), 0u);
  // A text attribute's store ignores the offset, as sysfs does.
  EXPECT_EQ(*t.write_at("bus/pci/devices/0000:00:03.0/driver_override", 7, "x\n"), 2u);
  EXPECT_EQ(*t.read("bus/pci/devices/0000:00:03.0/driver_override"), "x\n");
  ASSERT_TRUE(t.write("bus/pci/devices/0000:00:03.0/driver_override", "\n"));
  EXPECT_EQ(t.write_at("bus/pci/devices/0000:00:03.0/vendor", 0, "1").error().code, EACCES);
}

// What a config write does is the hardware's: VF Enable cleared through the
// PF's `config` takes the VFs and their devices away.
TEST_F(PciFixture, PciWriteConfigOfVfEnableTakesTheVfsAway) {
  TestDriver drv("pfdrv", {{0x15b3, 0x101d}}, true);
  ASSERT_TRUE(core.register_driver(*bus, drv));
  auto& t = core.tree();
  ASSERT_TRUE(t.write("bus/pci/devices/0000:01:00.1/sriov_numvfs", "2"));
  PciDevice& pf = dev(Bdf(0, 1, 0, 1));
  uint16_t iov = pf.find_ext_capability(PCI_EXT_CAP_ID_SRIOV);
  ASSERT_NE(bus->find(Bdf(0, 2, 0, 1)), nullptr);
  EXPECT_EQ(*t.write_at("bus/pci/devices/0000:01:00.1/config", iov + PCI_SRIOV_CTRL, std::string(2, '\0')), 2u);
  EXPECT_EQ(bus->find(Bdf(0, 2, 0, 1)), nullptr);
  EXPECT_EQ(*t.read("bus/pci/devices/0000:01:00.1/sriov_numvfs"), "0\n");
  core.unregister_driver(drv);
}

// enable_show()/enable_store(): the pci_enable_device() count; root enables
// or disables an unbound function; EBUSY while a driver has it, EIO to
// disable what nobody enabled, EINVAL for what kstrtoul refuses.
TEST_F(PciFixture, EnableStoreFollowsPciSysfs) {
  auto& t = core.tree();
  const std::string e = "bus/pci/devices/0000:00:03.0/enable";
  PciDevice& ep = dev(Bdf(0, 0, 3, 0));
  EXPECT_EQ(t.stat(e)->mode & 0777, 0644u);
  EXPECT_EQ(*t.read(e), "0\n");
  EXPECT_EQ(t.write(e, "0").error().code, EIO);
  EXPECT_EQ(t.write(e, "yes").error().code, EINVAL);
  ASSERT_TRUE(t.write(e, "1\n"));
  EXPECT_EQ(*t.read(e), "1\n");
  EXPECT_TRUE(ep.config_read(PCI_COMMAND, 2) & PCI_COMMAND_MEMORY);
  ASSERT_TRUE(t.write(e, "0x2"));  // any non-zero value enables once more
  EXPECT_EQ(*t.read(e), "2\n");
  ASSERT_TRUE(t.write(e, "0"));
  EXPECT_TRUE(ep.config_read(PCI_COMMAND, 2) & PCI_COMMAND_MASTER);  // one user left
  ASSERT_TRUE(t.write(e, "0"));
  EXPECT_EQ(*t.read(e), "0\n");
  EXPECT_FALSE(ep.config_read(PCI_COMMAND, 2) & PCI_COMMAND_MASTER);
  TestDriver drv("epdrv", {{0x1b36, 0x0005}});
  ASSERT_TRUE(core.register_driver(*bus, drv));
  ASSERT_EQ(ep.driver(), &drv);
  EXPECT_EQ(t.write(e, "1").error().code, EBUSY);
  EXPECT_EQ(t.write(e, "0").error().code, EBUSY);
  core.unregister_driver(drv);
}

}  // namespace
}  // namespace uvfio::bus::pci
