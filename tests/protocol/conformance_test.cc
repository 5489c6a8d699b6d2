// SPDX-License-Identifier: BSD-3-Clause
// Conformance, command by command: every command sent as raw bytes at the
// spec's size (what QEMU 10.2 sends, hw/vfio-user/protocol.h) and, where the
// kernel's struct differs, at the kernel's size; each reply checked for its
// exact size and the argsz rule (a reply never larger than argsz allows).
// docs/vfio-user.md has the table these tests follow. And the VF token over
// vfio-user (uvfio's VERSION extension): refused without or with a wrong
// token, accepted with the PF's.
#include <sys/eventfd.h>
#include <sys/mman.h>

#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "client/client.h"
#include "e2e/harness.h"
#include "protocol/raw.h"

namespace uvfio::e2e {
namespace {


const char* kTopology = kEndpointAndVfTopology;

// QEMU 10.2's VERSION, byte for byte (reference §2.1): 214 bytes.
std::vector<uint8_t> qemu_version() {
  std::string js =
      R"({"capabilities": {"pgsizes": 4096, "max_msg_fds": 16, "max_dma_maps": 65535, "max_data_xfer_size": 1048576, "migration": {"max_bitmap_size": 268435456, "pgsize": 4096}, "write_multiple": true}})";
  std::vector<uint8_t> v(4 + js.size() + 1, 0);  // major, minor, the JSON and its NUL
  std::memcpy(v.data() + 4, js.data(), js.size());
  return v;
}

class Conformance : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = make_tmpdir("conf");
    std::ofstream(dir_ + "/topo.toml") << kTopology;
    d_ = new Daemon({"--config", dir_ + "/topo.toml", "--no-fuse"}, "conf");
    ASSERT_TRUE(d_->wait_ready()) << d_->log();
  }
  static void TearDownTestSuite() {
    EXPECT_EQ(d_->stop(), 0) << d_->log();
    delete d_;
    sh("rm -rf " + dir_);
  }
  std::string ep() { return d_->rundir() + "/vfio-user/0000:00:03.0.sock"; }
  std::string vf() { return d_->rundir() + "/vfio-user/0000:00:10.0.sock"; }
  // A connection past QEMU's VERSION.
  std::unique_ptr<Raw> open(const std::string& path) {
    auto r = std::make_unique<Raw>(path);
    EXPECT_TRUE(r->connected());
    EXPECT_EQ(r->call(kVersion, qemu_version()), 0);
    return r;
  }
  static Daemon* d_;
  static std::string dir_;
};
Daemon* Conformance::d_ = nullptr;
std::string Conformance::dir_;

TEST_F(Conformance, Version) {
  Raw r(ep());
  Message m;
  auto v = qemu_version();
  ASSERT_EQ(16 + v.size(), 214u);
  ASSERT_EQ(r.call(kVersion, v, {}, &m), 0);
  EXPECT_LE(16 + m.payload.size(), 214u);
  EXPECT_EQ(m.payload.back(), 0);
  auto caps = nlohmann::json::parse(std::string(reinterpret_cast<char*>(m.payload.data()) + 4))["capabilities"];
  EXPECT_EQ(caps["max_msg_fds"], 16);  // stated: QEMU assumes 8 when absent
  EXPECT_LE(caps["max_data_xfer_size"].get<uint64_t>(), 64u << 20);
  EXPECT_FALSE(caps.contains("twin_socket"));
  // VERSION twice: refused, the connection goes on.
  EXPECT_EQ(r.call(kVersion, v), EINVAL);
  EXPECT_TRUE(r.alive());
}

TEST_F(Conformance, DmaMapAndUnmap) {
  auto r = open(ep());
  UniqueFd mem(memfd_create("ram", MFD_CLOEXEC));
  ASSERT_EQ(ftruncate(mem.get(), 1 << 20), 0);
  Message m;
  // MAP: 32 bytes, argsz 32; the reply has no payload. With and without an fd.
  DmaMapMsg map{32, kDmaFlagRead | kDmaFlagWrite, 0, 0x100000, 1 << 20};
  ASSERT_EQ(r->call(kDmaMap, b(map), {mem.get()}, &m), 0);
  EXPECT_EQ(m.payload.size(), 0u);
  DmaMapMsg rom{32, kDmaFlagRead, 0, 0xc0000, 0x10000};
  ASSERT_EQ(r->call(kDmaMap, b(rom), {}, &m), 0);
  EXPECT_EQ(m.payload.size(), 0u);
  // UNMAP: 24 bytes, argsz 24; the reply echoes the request.
  DmaUnmapMsg un{24, 0, 0xc0000, 0x10000};
  ASSERT_EQ(r->call(kDmaUnmap, b(un), {}, &m), 0);
  ASSERT_EQ(m.payload.size(), 24u);
  EXPECT_EQ(std::memcmp(m.payload.data(), &un, 24), 0);
  DmaUnmapMsg all{24, kDmaUnmapAll, 0, 0};
  ASSERT_EQ(r->call(kDmaUnmap, b(all), {}, &m), 0);
  EXPECT_EQ(m.payload.size(), 24u);
  // argsz below the struct: EINVAL.
  map.argsz = 16;
  EXPECT_EQ(r->call(kDmaMap, b(map)), EINVAL);
  un.argsz = 8;
  EXPECT_EQ(r->call(kDmaUnmap, b(un)), EINVAL);
}

TEST_F(Conformance, DeviceGetInfoAtTheSpecsAndTheKernelsSize) {
  auto r = open(vf());
  Message m;
  // QEMU's 16 bytes: a 16-byte reply, argsz 16.
  DeviceInfoMsg spec{16, 0, 0, 0};
  ASSERT_EQ(r->call(kDeviceGetInfo, b(spec), {}, &m), 0);
  ASSERT_EQ(m.payload.size(), 16u);
  DeviceInfoMsg got;
  std::memcpy(&got, m.payload.data(), 16);
  EXPECT_EQ(got.argsz, 16u);
  EXPECT_EQ(got.flags, uint32_t{VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET});
  EXPECT_EQ(got.num_regions, 9u);
  EXPECT_EQ(got.num_irqs, 5u);
  // The kernel's 20-byte struct: accepted, and still the spec's 16 bytes back.
  vfio_device_info k{};
  k.argsz = sizeof(k);
  static_assert(sizeof(k) == 20);
  ASSERT_EQ(r->call(kDeviceGetInfo, b(k), {}, &m), 0);
  EXPECT_EQ(m.payload.size(), 16u);
  // Too short, or argsz below 16.
  EXPECT_EQ(r->call(kDeviceGetInfo, std::vector<uint8_t>(12)), EINVAL);
  spec.argsz = 12;
  EXPECT_EQ(r->call(kDeviceGetInfo, b(spec)), EINVAL);
}

TEST_F(Conformance, DeviceGetRegionInfoTruncatesToArgsz) {
  auto r = open(ep());
  Message m;
  // BAR4 holds the MSI-X table and is mmappable: it has capabilities
  // (sparse mmap areas, MSIX_MAPPABLE). QEMU's first request has argsz 32.
  RegionInfoMsg q{32, 0, 4, 0, 0, 0};
  ASSERT_EQ(r->call(kDeviceGetRegionInfo, b(q), {}, &m), 0);
  ASSERT_EQ(m.payload.size(), 32u) << "a reply larger than argsz desynchronises QEMU";
  RegionInfoMsg got;
  std::memcpy(&got, m.payload.data(), 32);
  EXPECT_TRUE(got.flags & VFIO_REGION_INFO_FLAG_CAPS);
  EXPECT_EQ(got.cap_offset, 0u);
  EXPECT_GT(got.argsz, 32u);
  EXPECT_LE(m.fds.size(), 1u);
  // The retry with the argsz asked for: everything, caps from offset 32.
  q.argsz = got.argsz;
  ASSERT_EQ(r->call(kDeviceGetRegionInfo, b(q), {}, &m), 0);
  ASSERT_EQ(m.payload.size(), q.argsz);
  std::memcpy(&got, m.payload.data(), 32);
  EXPECT_GE(got.cap_offset, 32u);
  EXPECT_LE(got.cap_offset, q.argsz);
  EXPECT_EQ(m.fds.size(), 1u);  // the mmap fd
  // A region without caps: exactly 32 bytes, argsz 32.
  RegionInfoMsg cfg{32, 0, VFIO_PCI_CONFIG_REGION_INDEX, 0, 0, 0};
  ASSERT_EQ(r->call(kDeviceGetRegionInfo, b(cfg), {}, &m), 0);
  ASSERT_EQ(m.payload.size(), 32u);
  std::memcpy(&got, m.payload.data(), 32);
  EXPECT_EQ(got.argsz, 32u);
  EXPECT_EQ(got.size, 4096u);
  cfg.argsz = 16;
  EXPECT_EQ(r->call(kDeviceGetRegionInfo, b(cfg)), EINVAL);
}

TEST_F(Conformance, DeviceGetRegionIoFdsHasNone) {
  auto r = open(ep());
  Message m;
  RegionIoFdsMsg q{16, 0, 0, 0};
  ASSERT_EQ(r->call(kDeviceGetRegionIoFds, b(q), {}, &m), 0);
  ASSERT_EQ(m.payload.size(), 16u);
  RegionIoFdsMsg got;
  std::memcpy(&got, m.payload.data(), 16);
  EXPECT_EQ(got.argsz, 16u);
  EXPECT_EQ(got.count, 0u);
  EXPECT_EQ(got.index, 0u);
  EXPECT_TRUE(m.fds.empty());
  q.index = 42;
  EXPECT_EQ(r->call(kDeviceGetRegionIoFds, b(q)), EINVAL);
  q = RegionIoFdsMsg{16, 1, 0, 0};
  EXPECT_EQ(r->call(kDeviceGetRegionIoFds, b(q)), EINVAL);  // flags must be 0
}

TEST_F(Conformance, IrqInfoAndSetIrqs) {
  auto r = open(vf());
  Message m;
  IrqInfoMsg q{16, 0, VFIO_PCI_MSIX_IRQ_INDEX, 0};
  ASSERT_EQ(r->call(kDeviceGetIrqInfo, b(q), {}, &m), 0);
  ASSERT_EQ(m.payload.size(), 16u);
  IrqInfoMsg got;
  std::memcpy(&got, m.payload.data(), 16);
  EXPECT_EQ(got.argsz, 16u);
  EXPECT_EQ(got.count, 8u);
  // SET_IRQS as QEMU chunks it: argsz 20, fds only as ancillary data.
  UniqueFd e(eventfd(0, EFD_CLOEXEC));
  IrqSetMsg s{20, VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1};
  ASSERT_EQ(r->call(kDeviceSetIrqs, b(s), {e.get()}, &m), 0);
  EXPECT_EQ(m.payload.size(), 0u);
  s = IrqSetMsg{20, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 0};
  ASSERT_EQ(r->call(kDeviceSetIrqs, b(s), {}, &m), 0);
  EXPECT_EQ(m.payload.size(), 0u);
}

TEST_F(Conformance, RegionReadWriteAndWriteMulti) {
  auto r = open(ep());
  Message m;
  ASSERT_EQ(r->call(kRegionRead, region_access(VFIO_PCI_CONFIG_REGION_INDEX, 0, 256), {}, &m), 0);
  EXPECT_EQ(m.payload.size(), 16u + 256);
  RegionAccessMsg got;
  std::memcpy(&got, m.payload.data(), 16);
  EXPECT_EQ(got.count, 256u);
  EXPECT_EQ(got.region, uint32_t{VFIO_PCI_CONFIG_REGION_INDEX});
  ASSERT_EQ(r->call(kRegionWrite, region_access(VFIO_PCI_CONFIG_REGION_INDEX, 0x3c, 1, {0x0a}), {}, &m), 0);
  EXPECT_EQ(m.payload.size(), 16u);
  std::vector<uint8_t> multi(8 + sizeof(RegionWriteMultiEntry));
  uint64_t n = 1;
  std::memcpy(multi.data(), &n, 8);
  RegionWriteMultiEntry e{0x3c, VFIO_PCI_CONFIG_REGION_INDEX, 1, {0x0b}};
  std::memcpy(multi.data() + 8, &e, sizeof(e));
  ASSERT_EQ(r->call(kRegionWriteMulti, multi, {}, &m), 0);
  ASSERT_EQ(m.payload.size(), 8u);
  std::memcpy(&n, m.payload.data(), 8);
  EXPECT_EQ(n, 1u);
  ASSERT_EQ(r->call(kDeviceReset, {}, {}, &m), 0);
  EXPECT_EQ(m.payload.size(), 0u);
}

TEST_F(Conformance, DeviceFeatureRepliesWithinArgsz) {
  auto r = open(vf());
  Message m;
  // GET MIGRATION with no data and room for the u64 flags (argsz 16).
  DeviceFeatureMsg f{16, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION};
  ASSERT_EQ(r->call(kDeviceFeature, b(f), {}, &m), 0);
  ASSERT_EQ(m.payload.size(), 16u);
  DeviceFeatureMsg got;
  std::memcpy(&got, m.payload.data(), 8);
  EXPECT_EQ(got.argsz, 16u);
  uint64_t flags;
  std::memcpy(&flags, m.payload.data() + 8, 8);
  EXPECT_EQ(flags, uint64_t{VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | vfio::kMigPreCopy});
  // No room for the answer: EINVAL, never a reply past argsz.
  f.argsz = 8;
  EXPECT_EQ(r->call(kDeviceFeature, b(f)), EINVAL);
  // PROBE echoes the request.
  f = DeviceFeatureMsg{8, VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START};
  ASSERT_EQ(r->call(kDeviceFeature, b(f), {}, &m), 0);
  EXPECT_EQ(m.payload.size(), 8u);
  // SET MIG_DEVICE_STATE echoes its 16 bytes; argsz must hold them.
  std::vector<uint8_t> set(16);
  DeviceFeatureMsg sf{16, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE};
  vfio_device_feature_mig_state st{static_cast<uint32_t>(vfio::MigState::kStop), -1};
  std::memcpy(set.data(), &sf, 8);
  std::memcpy(set.data() + 8, &st, 8);
  ASSERT_EQ(r->call(kDeviceFeature, set, {}, &m), 0);
  EXPECT_EQ(m.payload.size(), 16u);
  sf.argsz = 8;
  std::memcpy(set.data(), &sf, 8);
  EXPECT_EQ(r->call(kDeviceFeature, set), EINVAL);
  // MIG_DATA_READ in STOP_COPY: argsz = 8 + size; the reply holds what fits.
  st.device_state = static_cast<uint32_t>(vfio::MigState::kStopCopy);
  sf.argsz = 16;
  std::memcpy(set.data(), &sf, 8);
  std::memcpy(set.data() + 8, &st, 8);
  ASSERT_EQ(r->call(kDeviceFeature, set), 0);
  MigDataMsg rd{8 + 4096, 4096};
  ASSERT_EQ(r->call(kMigDataRead, b(rd), {}, &m), 0);
  ASSERT_GE(m.payload.size(), 8u);
  EXPECT_LE(m.payload.size(), 8u + 4096);
  MigDataMsg rgot;
  std::memcpy(&rgot, m.payload.data(), 8);
  EXPECT_EQ(rgot.argsz, m.payload.size());
  EXPECT_EQ(rgot.size + 8, m.payload.size());
  // argsz = 8, the struct alone, as libvfio-user's test_handle_mig_data_read
  // sends it: accepted, the reply bounded by size.
  rd.argsz = 8;
  ASSERT_EQ(r->call(kMigDataRead, b(rd), {}, &m), 0);
  ASSERT_GE(m.payload.size(), 8u);
  EXPECT_LE(m.payload.size(), 8u + 4096);
  std::memcpy(&rgot, m.payload.data(), 8);
  EXPECT_EQ(rgot.size + 8, m.payload.size());
  rd.argsz = 7;  // below the struct
  EXPECT_EQ(r->call(kMigDataRead, b(rd)), EINVAL);
  ASSERT_EQ(r->call(kDeviceReset, {}), 0);
}

// ---- VF token over vfio-user ---------------------------------------------------

const char* kTokenTopology = R"(
[[device]]
address = "0000:00:04.0"
model = "mlx5-pf"
total_vfs = 2
first_vf_offset = 0x60      # VF0 = 0000:00:10.0
driver_override = "vfio-pci"

[[device]]
address = "0000:00:03.0"
model = "endpoint"
driver_override = "vfio-pci"
)";

std::vector<uint8_t> version_with(const std::string& caps) {
  std::string js = R"({"capabilities":{"max_msg_fds":16)" + caps + "}}";
  std::vector<uint8_t> v(4 + js.size() + 1, 0);  // major, minor, the JSON and its NUL
  std::memcpy(v.data() + 4, js.data(), js.size());
  return v;
}

class VfTokenOverTheWire : public ::testing::Test {
 protected:
  void SetUp() override {
    dir = make_tmpdir("token");
    std::ofstream(dir + "/topo.toml") << kTokenTopology;
    d = std::make_unique<Daemon>(
        std::vector<std::string>{"--config", dir + "/topo.toml", "--no-fuse", "--vfio-pci-enable-sriov"}, "token");
    ASSERT_TRUE(d->wait_ready()) << d->log();
    auto r = sh(d->ctl("sriov 0000:00:04.0 1"));
    ASSERT_EQ(r.status, 0) << r.err << d->log();
    ASSERT_EQ(sh(d->ctl("cat bus/pci/devices/0000:00:10.0/driver_override")).out, "vfio-pci\n");
    for (int i = 0; i < 500 && !can_connect(vf()); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  void TearDown() override {
    EXPECT_EQ(d->stop(), 0) << d->log();
    d.reset();
    sh("rm -rf " + dir);
  }
  std::string pf() { return d->rundir() + "/vfio-user/0000:00:04.0.sock"; }
  std::string vf() { return d->rundir() + "/vfio-user/0000:00:10.0.sock"; }
  std::string ep() { return d->rundir() + "/vfio-user/0000:00:03.0.sock"; }
  std::string dir;
  std::unique_ptr<Daemon> d;
};

TEST_F(VfTokenOverTheWire, RefusedWithoutOrWithAWrongTokenAcceptedWithThePfs) {
  // The daemon has seen the client go (the next user is the only one).
  auto wait_log = [&](const std::string& line) {
    for (int i = 0; i < 500; ++i) {
      if (d->log().find(line) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  };
  const std::string kU1 = "3a1f4c2e-9b7d-4e6a-8f01-23456789abcd", kU2 = "00000000-1111-4222-8333-444444444444";
  // No token: VERSION answered EACCES and the connection closed (the
  // kernel's "VF token required to access device").
  {
    Raw r(vf());
    EXPECT_EQ(r.call(kVersion, version_with("")), EACCES) << d->log();
    EXPECT_TRUE(r.closed_by_peer());
  }
  EXPECT_NE(d->log().find("VF token required to access device"), std::string::npos) << d->log();
  // A token the PF's user never set (the PF's is random until then).
  {
    Raw r(vf());
    EXPECT_EQ(r.call(kVersion, version_with(R"(,"vf_token":")" + kU1 + "\"")), EACCES);
  }
  // Malformed: EINVAL.
  {
    Raw r(vf());
    EXPECT_EQ(r.call(kVersion, version_with(R"(,"vf_token":"not-a-uuid")")), EINVAL);
  }
  {
    Raw r(vf());
    EXPECT_EQ(r.call(kVersion, version_with(R"(,"vf_token":42)")), EINVAL);
  }
  // The PF's user sets the token (VFIO_DEVICE_FEATURE_PCI_VF_TOKEN over
  // DEVICE_FEATURE), then a VF user presenting it is let in.
  auto pfc = client::Client::connect(pf());
  ASSERT_TRUE(pfc) << errno_name(pfc.error().code);
  auto u1 = *vfio::parse_uuid(kU1);
  ASSERT_TRUE((*pfc)->device_feature(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_PCI_VF_TOKEN, u1));
  {
    Raw r(vf());
    EXPECT_EQ(r.call(kVersion, version_with(R"(,"vf_token":")" + kU2 + "\"")), EACCES);  // wrong
  }
  client::ConnectOptions o;
  o.vf_token = u1;
  auto vfc = client::Client::connect(vf(), o);
  ASSERT_TRUE(vfc) << errno_name(vfc.error().code);
  EXPECT_TRUE((*vfc)->get_info());
  // With the VF in use, a new user of the PF needs the token too.
  pfc->reset();
  ASSERT_TRUE(wait_log("0000:00:04.0: vfio-user: client disconnected")) << d->log();
  auto nopf = client::Client::connect(pf());
  ASSERT_FALSE(nopf);
  EXPECT_EQ(nopf.error().code, EACCES);
  auto pf2 = client::Client::connect(pf(), o);
  ASSERT_TRUE(pf2) << errno_name(pf2.error().code);
  // uvfioctl presents it too.
  vfc->reset();
  ASSERT_TRUE(wait_log("0000:00:10.0: vfio-user: client disconnected")) << d->log();
  auto r = sh(d->ctl("info 0000:00:10.0 --vf-token " + kU1));
  EXPECT_EQ(r.status, 0) << r.err;
  r = sh(d->ctl("info 0000:00:10.0"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("Permission denied"), std::string::npos) << r.err;
  // A token for a device that is neither PF nor VF: EINVAL.
  Raw e(ep());
  EXPECT_EQ(e.call(kVersion, version_with(R"(,"vf_token":")" + kU1 + "\"")), EINVAL);
}

}  // namespace
}  // namespace uvfio::e2e
