// SPDX-License-Identifier: BSD-3-Clause
// vfio-user protocol abuse, as raw bytes on the socket of a running uvfiod:
// every malformed class gets the right errno and a connection that still
// works (or a close, where the stream cannot be trusted or the spec says
// so), other devices are unaffected and no fd leaks in the daemon.
#include <dirent.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <gtest/gtest.h>

#include <cstring>

#include "client/client.h"
#include "e2e/harness.h"
#include "hw/endpoint.h"
#include "protocol/raw.h"

namespace uvfio::e2e {
namespace {


const char* kTopology = kEndpointAndVfTopology;

class Protocol : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = make_tmpdir("proto");
    std::ofstream(dir_ + "/topo.toml") << kTopology;
    d_ = new Daemon({"--config", dir_ + "/topo.toml", "--no-fuse"}, "proto");
    ASSERT_TRUE(d_->wait_ready()) << d_->log();
  }
  static void TearDownTestSuite() {
    EXPECT_EQ(d_->stop(), 0) << d_->log();
    delete d_;
    sh("rm -rf " + dir_);
  }
  // The daemon's fd count once it has settled (a connection closing may
  // still be in flight).
  static int settled_fds() {
    int last = -1;
    for (int i = 0; i < 100; ++i) {
      int n = count_fds(d_->pid());
      if (n == last) return n;
      last = n;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return last;
  }
  void SetUp() override {
    ASSERT_NE(d_->pid(), -1);
    fds_before_ = settled_fds();
  }
  void TearDown() override {
    // Give the server a moment to notice a close, then count again.
    for (int i = 0; i < 100 && count_fds(d_->pid()) != fds_before_; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    EXPECT_EQ(settled_fds(), fds_before_) << "fd leak in the daemon";
  }
  std::string ep() { return d_->rundir() + "/vfio-user/0000:00:03.0.sock"; }
  std::string vf() { return d_->rundir() + "/vfio-user/0000:00:10.0.sock"; }

  static Daemon* d_;
  static std::string dir_;
  int fds_before_ = 0;
};
Daemon* Protocol::d_ = nullptr;
std::string Protocol::dir_;

TEST_F(Protocol, HeaderClasses) {
  Raw r(ep());
  ASSERT_TRUE(r.connected());
  // Before VERSION, nothing else.
  vfio_device_info i{};
  i.argsz = sizeof(i);
  EXPECT_EQ(r.call(kDeviceGetInfo, b(i)), EINVAL);
  r.version();
  EXPECT_EQ(r.call(99, {}), ENOSYS);                  // unknown command
  EXPECT_EQ(r.call(0, {}), ENOSYS);
  r.send(kDeviceGetInfo, b(i), kTypeReply);           // reply flag on a request
  EXPECT_EQ(r.reply_errno(), EINVAL);
  r.send(kDeviceGetInfo, b(i), 1u << 8);              // unknown header flag
  EXPECT_EQ(r.reply_errno(), EINVAL);
  EXPECT_EQ(r.call(kDmaRead, std::vector<uint8_t>(16)), EINVAL);  // server->client only
  EXPECT_TRUE(r.alive());
}

TEST_F(Protocol, VersionBadJsonAndBadMajor) {
  {
    Raw r(ep());
    std::vector<uint8_t> p{0, 0, 0, 0};
    std::string bad = "{not json";
    p.insert(p.end(), bad.begin(), bad.end());
    p.push_back(0);
    EXPECT_EQ(r.call(kVersion, p), EINVAL);
    p.pop_back();  // not NUL-terminated
    EXPECT_EQ(r.call(kVersion, p), EINVAL);
    std::string notobj = R"({"capabilities": 3})";
    std::vector<uint8_t> q{0, 0, 0, 0};
    q.insert(q.end(), notobj.begin(), notobj.end());
    q.push_back(0);
    EXPECT_EQ(r.call(kVersion, q), EINVAL);
    EXPECT_EQ(r.call(kVersion, {0, 0}), EINVAL);  // short
    r.version();                                   // a good one still works
    EXPECT_TRUE(r.alive());
  }
  {
    Raw r(ep());
    EXPECT_EQ(r.call(kVersion, {1, 0, 0, 0}), ENOTSUP);  // no compatible version: closed
    EXPECT_TRUE(r.closed_by_peer());
  }
}

TEST_F(Protocol, SizesAgainstPayload) {
  Raw r(ep());
  r.version();
  vfio_device_info i{};
  i.argsz = sizeof(i);
  EXPECT_EQ(r.call(kDeviceGetInfo, std::vector<uint8_t>(4)), EINVAL);  // smaller than the struct
  i.argsz = 4;
  EXPECT_EQ(r.call(kDeviceGetInfo, b(i)), EINVAL);  // argsz below minimum
  auto rd = region_access(VFIO_PCI_CONFIG_REGION_INDEX, 0, 4);
  rd.push_back(0);
  EXPECT_EQ(r.call(kRegionRead, rd), EINVAL);  // larger than the command's payload
  EXPECT_EQ(r.call(kRegionWrite, region_access(VFIO_PCI_CONFIG_REGION_INDEX, 0x3c, 4, {1, 2})), EINVAL);
  EXPECT_EQ(r.call(kRegionRead, region_access(VFIO_PCI_CONFIG_REGION_INDEX, 0, (1u << 20) + 1)), EINVAL);
  EXPECT_EQ(r.call(kRegionRead, region_access(20, 0, 4)), EINVAL);                      // region index
  EXPECT_EQ(r.call(kRegionRead, region_access(VFIO_PCI_CONFIG_REGION_INDEX, 4096, 4)), EFAULT);
  EXPECT_EQ(r.call(kRegionRead, region_access(0, 1 << 20, 4)), EINVAL);                 // past BAR0
  EXPECT_EQ(r.call(kRegionRead, region_access(0, ~0ull - 1, 4)), EINVAL);               // wraps
  EXPECT_EQ(r.call(kDeviceReset, {1}), EINVAL);
  EXPECT_TRUE(r.alive());
}

TEST_F(Protocol, DmaMapAbuse) {
  Raw r(ep());
  r.version();
  UniqueFd mem(memfd_create("guest", MFD_CLOEXEC));
  ASSERT_EQ(ftruncate(mem.get(), 1 << 20), 0);
  auto map = [&](uint64_t iova, uint64_t size, bool with_fd, uint32_t flags = kDmaFlagRead | kDmaFlagWrite) {
    DmaMapMsg d{sizeof(DmaMapMsg), flags, 0, iova, size};
    return with_fd ? r.call(kDmaMap, b(d), {mem.get()}) : r.call(kDmaMap, b(d));
  };
  auto unmap = [&](uint64_t iova, uint64_t size, uint32_t flags = 0) {
    DmaUnmapMsg d{sizeof(DmaUnmapMsg), flags, iova, size};
    return r.call(kDmaUnmap, b(d));
  };
  EXPECT_EQ(map(0x1000, 0x10000, true), 0);
  EXPECT_EQ(map(0x1001, 0x1000, true), EINVAL);                // unaligned
  EXPECT_EQ(map(0x100000, 100, false), EINVAL);
  EXPECT_EQ(map(~0ull - 0xfff, 0x2000, false), EOVERFLOW);     // wraps
  EXPECT_EQ(map(0x8000, 0x1000, false), EEXIST);               // overlaps
  EXPECT_EQ(map(0x100000, 0x1000, false, 0x4), EINVAL);        // bad flags
  EXPECT_EQ(map(0x200000, 0x1000, false), 0);                  // no fd: message DMA
  EXPECT_EQ(unmap(0x1000, 0x1000), EINVAL);                    // would split the map (type1)
  EXPECT_EQ(unmap(0x900000, 0x1000), 0);                       // never mapped: nothing to do (type1)
  EXPECT_EQ(unmap(0x1000, 0x10000), 0);
  EXPECT_EQ(unmap(0x1000, 0x1000, kDmaUnmapAll), EINVAL);      // all, with a range
  EXPECT_EQ(unmap(0, 0, kDmaUnmapAll), 0);
  EXPECT_EQ(unmap(0x200000, 0x1000), 0);                       // gone with "all": nothing left
  // Two fds on one map.
  DmaMapMsg d{sizeof(DmaMapMsg), kDmaFlagRead, 0, 0x300000, 0x1000};
  EXPECT_EQ(r.call(kDmaMap, b(d), {mem.get(), mem.get()}), EINVAL);
  EXPECT_TRUE(r.alive());
}

// QEMU behind a guest IOMMU: guest RAM mapped a 4 KiB page at a time, each
// DMA_MAP with the memfd attached, pipelined, up to the advertised
// max_dma_maps (65,535); the next is ENOSPC and the client stays. The maps
// hold one fd and one mapping in the daemon, not one per map. Then one
// DMA_UNMAP covering all of them (and a hole) removes them all, as type1.
TEST_F(Protocol, PageSizedMapsOfOneFileUpToTheLimitThenOneWideUnmap) {
  Raw r(ep());
  r.version();
  constexpr uint64_t kMaps = 65535, kBase = 0x100000000ull;
  UniqueFd mem(memfd_create("guest", MFD_CLOEXEC));
  ASSERT_EQ(ftruncate(mem.get(), static_cast<off_t>((kMaps + 1) * 4096)), 0);
  int fds0 = count_fds(d_->pid());
  auto map_msg = [](uint64_t iova, uint64_t off) { return dma_map_msg(iova, 4096, off); };
  int peak = 0;
  for (uint64_t i = 0; i < kMaps;) {
    uint64_t batch = std::min<uint64_t>(256, kMaps - i);
    for (uint64_t k = 0; k < batch; ++k) r.send(kDmaMap, map_msg(kBase + (i + k) * 4096, (i + k) * 4096), 0, {mem.get()});
    for (uint64_t k = 0; k < batch; ++k) ASSERT_EQ(r.reply_errno(), 0) << "map " << i + k;
    i += batch;
    if (i % 8192 < 256) peak = std::max(peak, count_fds(d_->pid()));
  }
  EXPECT_LE(peak, fds0 + 2) << "the daemon holds an fd per map";
  EXPECT_EQ(r.call(kDmaMap, map_msg(0x1000, kMaps * 4096), {mem.get()}), ENOSPC);
  EXPECT_TRUE(r.alive());
  // The device copies across page maps; the bytes land at the file offsets.
  auto reg = [&](uint32_t off, unsigned w, uint64_t v) {
    std::vector<uint8_t> d(w);
    std::memcpy(d.data(), &v, w);
    return r.call(kRegionWrite, region_access(0, off, w, d));
  };
  std::vector<uint8_t> pattern(3 * 4096);
  for (size_t k = 0; k < pattern.size(); ++k) pattern[k] = static_cast<uint8_t>(k * 13 + 1);
  ASSERT_EQ(pwrite(mem.get(), pattern.data(), pattern.size(), 10 * 4096 + 100), static_cast<ssize_t>(pattern.size()));
  ASSERT_EQ(r.call(kRegionWrite, region_access(VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, 2, {0x06, 0})), 0);
  ASSERT_EQ(reg(hw::GenericEndpoint::kRegDmaSrc, 8, kBase + 10 * 4096 + 100), 0);
  ASSERT_EQ(reg(hw::GenericEndpoint::kRegDmaDst, 8, kBase + 40000 * 4096 + 7), 0);
  ASSERT_EQ(reg(hw::GenericEndpoint::kRegDmaLen, 4, pattern.size()), 0);
  ASSERT_EQ(reg(hw::GenericEndpoint::kRegDmaGo, 4, 1), 0);
  auto status = [&] {
    uint32_t v = hw::GenericEndpoint::kDmaBusy;
    for (int i = 0; i < 1000 && v == hw::GenericEndpoint::kDmaBusy; ++i) {
      Message m;
      EXPECT_EQ(r.call(kRegionRead, region_access(0, hw::GenericEndpoint::kRegDmaStatus, 4), {}, &m), 0);
      if (m.payload.size() == 20) std::memcpy(&v, m.payload.data() + 16, 4);
      if (v == hw::GenericEndpoint::kDmaBusy) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return v;
  };
  ASSERT_EQ(status(), 0u);
  std::vector<uint8_t> got(pattern.size());
  ASSERT_EQ(pread(mem.get(), got.data(), got.size(), 40000 * 4096 + 7), static_cast<ssize_t>(got.size()));
  EXPECT_EQ(got, pattern);
  // One unmap over everything (and the unmapped page after it).
  EXPECT_EQ(r.call(kDmaUnmap, dma_unmap_msg(kBase, (kMaps + 1) * 4096)), 0);
  ASSERT_EQ(reg(hw::GenericEndpoint::kRegDmaGo, 4, 1), 0);
  EXPECT_EQ(status(), uint32_t{EFAULT}) << "DMA reached memory the client unmapped";
  EXPECT_EQ(r.call(kDmaMap, map_msg(0x1000, 0), {mem.get()}), 0);  // room again
  EXPECT_LE(count_fds(d_->pid()), fds0 + 2);
}

// An unmap racing the device's DMA: the device copies into a map while the
// client unmaps it (the copy started, not waited for). Once the unmap's reply
// is in, nothing more lands in that memory, and the copy ended either done
// or with EFAULT.
TEST_F(Protocol, AnUnmapRacingDeviceDmaLeavesNothingAfterItsReply) {
  Raw r(ep());
  r.version();
  constexpr uint64_t kSrc = 0x100000, kDst = 0x200000, kLen = 64 << 10;
  UniqueFd src(memfd_create("src", MFD_CLOEXEC)), dst(memfd_create("dst", MFD_CLOEXEC));
  ASSERT_EQ(ftruncate(src.get(), kLen), 0);
  ASSERT_EQ(ftruncate(dst.get(), kLen), 0);
  std::vector<uint8_t> ones(kLen, 0xa5);
  ASSERT_EQ(pwrite(src.get(), ones.data(), kLen, 0), static_cast<ssize_t>(kLen));
  auto* d = static_cast<uint8_t*>(mmap(nullptr, kLen, PROT_READ | PROT_WRITE, MAP_SHARED, dst.get(), 0));
  ASSERT_NE(d, MAP_FAILED);
  auto reg = [&](uint32_t off, unsigned w, uint64_t v) {
    std::vector<uint8_t> b(w);
    std::memcpy(b.data(), &v, w);
    return r.call(kRegionWrite, region_access(0, off, w, b));
  };
  ASSERT_EQ(r.call(kRegionWrite, region_access(VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, 2, {0x06, 0})), 0);
  ASSERT_EQ(r.call(kDmaMap, dma_map_msg(kSrc, kLen, 0, 1), {src.get()}), 0);
  ASSERT_EQ(reg(hw::GenericEndpoint::kRegDmaSrc, 8, kSrc), 0);
  ASSERT_EQ(reg(hw::GenericEndpoint::kRegDmaDst, 8, kDst), 0);
  ASSERT_EQ(reg(hw::GenericEndpoint::kRegDmaLen, 4, kLen), 0);
  auto um = dma_unmap_msg(kDst, kLen);
  int done = 0, faulted = 0;
  for (int i = 0; i < 200; ++i) {
    ASSERT_EQ(r.call(kDmaMap, dma_map_msg(kDst, kLen, 0), {dst.get()}), 0);
    ASSERT_EQ(reg(hw::GenericEndpoint::kRegDmaGo, 4, 1), 0);  // posted: the copy runs on
    ASSERT_EQ(r.call(kDmaUnmap, um), 0);
    std::memset(d, 0, kLen);  // after the reply: must stay zero
    uint32_t st = hw::GenericEndpoint::kDmaBusy;
    for (int k = 0; k < 1000 && st == hw::GenericEndpoint::kDmaBusy; ++k) {
      Message m;
      ASSERT_EQ(r.call(kRegionRead, region_access(0, hw::GenericEndpoint::kRegDmaStatus, 4), {}, &m), 0);
      std::memcpy(&st, m.payload.data() + 16, 4);
      if (st == hw::GenericEndpoint::kDmaBusy) std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    ASSERT_TRUE(st == 0 || st == EFAULT) << st;
    (st == 0 ? done : faulted)++;
    for (uint64_t k = 0; k < kLen; k += 509) ASSERT_EQ(d[k], 0) << "DMA landed after the unmap's reply, round " << i;
  }
  RecordProperty("copies_done", done);
  RecordProperty("copies_faulted", faulted);
  munmap(d, kLen);
}

// Device memory is data: a VF's BAR2 written by one tenant reads as zeros
// for the next (the last close resets the function, and the VF's FLR
// returns device memory to zeros), also through a mapping the first tenant
// kept of it.
TEST_F(Protocol, TheNextClientOfAVfFindsItsDeviceMemoryScrubbed) {
  std::vector<uint8_t> secret(4096, 0xc5);
  UniqueFd bar2;
  {
    Raw r(vf());
    r.version();
    ASSERT_EQ(r.call(kRegionWrite, region_access(VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, 2, {0x06, 0})), 0);
    ASSERT_EQ(r.call(kRegionWrite, region_access(2, 0x3000, 4096, secret)), 0);
    Message m;
    ASSERT_EQ(r.call(kRegionRead, region_access(2, 0x3000, 16), {}, &m), 0);
    ASSERT_EQ(m.payload.size(), 16u + 16u);
    EXPECT_EQ(m.payload[16], 0xc5);
    RegionInfoMsg q{64, 0, 2, 0, 0, 0};
    ASSERT_EQ(r.call(kDeviceGetRegionInfo, b(q), {}, &m), 0);
    ASSERT_EQ(m.fds.size(), 1u);
    bar2 = std::move(m.fds[0]);
  }
  Raw r(vf());
  for (int i = 0; i < 100 && !r.connected(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  r.version();
  ASSERT_EQ(r.call(kRegionWrite, region_access(VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, 2, {0x06, 0})), 0);
  Message m;
  ASSERT_EQ(r.call(kRegionRead, region_access(2, 0x3000, 4096), {}, &m), 0);
  ASSERT_EQ(m.payload.size(), 16u + 4096u);
  EXPECT_EQ(std::vector<uint8_t>(m.payload.begin() + 16, m.payload.end()), std::vector<uint8_t>(4096, 0))
      << "the last tenant's device memory";
  void* p = mmap(nullptr, 0x4000 + 4096, PROT_READ, MAP_SHARED, bar2.get(), 0);
  ASSERT_NE(p, MAP_FAILED);
  EXPECT_EQ(static_cast<uint8_t*>(p)[0x3000 + 17], 0);
  munmap(p, 0x4000 + 4096);
}

// A client's memory cannot fault the daemon: a map past the end of its file
// is refused (as pinning would fail on Linux), a file shrunk after the map
// fails the one DMA that touches the missing part (EFAULT), and the fds we
// hand out for BAR mmaps are sealed against shrinking.
TEST_F(Protocol, ClientMemoryCannotFaultTheDaemon) {
  Raw r(ep());
  r.version();
  UniqueFd small(memfd_create("small", MFD_CLOEXEC));
  ASSERT_EQ(ftruncate(small.get(), 4096), 0);
  DmaMapMsg big{32, kDmaFlagRead | kDmaFlagWrite, 0, 0x100000, 2 << 20};
  EXPECT_EQ(r.call(kDmaMap, b(big), {small.get()}), EINVAL);  // 2 MiB over a 4 KiB file
  DmaMapMsg off{32, kDmaFlagRead | kDmaFlagWrite, 8192, 0x100000, 4096};
  EXPECT_EQ(r.call(kDmaMap, b(off), {small.get()}), EINVAL);  // offset past the end
  UniqueFd efd(eventfd(0, EFD_CLOEXEC));
  DmaMapMsg odd{32, kDmaFlagRead, 0, 0x100000, 4096};
  EXPECT_EQ(r.call(kDmaMap, b(odd), {efd.get()}), EINVAL);  // not a file

  // A 2 MiB map, then the client shrinks the file to 4 KiB.
  UniqueFd mem(memfd_create("guest", MFD_CLOEXEC));
  ASSERT_EQ(ftruncate(mem.get(), 2 << 20), 0);
  DmaMapMsg map{32, kDmaFlagRead | kDmaFlagWrite, 0, 0x100000, 2 << 20};
  ASSERT_EQ(r.call(kDmaMap, b(map), {mem.get()}), 0);
  auto reg = [&](uint32_t off, unsigned w, uint64_t v) {
    std::vector<uint8_t> d(w);
    std::memcpy(d.data(), &v, w);
    return r.call(kRegionWrite, region_access(0, off, w, d));
  };
  auto rd32 = [&](uint32_t off) {
    uint32_t v = hw::GenericEndpoint::kDmaBusy;  // DMA_GO is posted: wait for the copy's end
    for (int i = 0; i < 1000 && v == hw::GenericEndpoint::kDmaBusy; ++i) {
      Message m;
      EXPECT_EQ(r.call(kRegionRead, region_access(0, off, 4), {}, &m), 0);
      if (m.payload.size() == 20) std::memcpy(&v, m.payload.data() + 16, 4);
      if (v == hw::GenericEndpoint::kDmaBusy) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return v;
  };
  ASSERT_EQ(r.call(kRegionWrite, region_access(VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, 2, {0x06, 0})), 0);
  ASSERT_EQ(reg(hw::GenericEndpoint::kRegDmaSrc, 8, 0x100000), 0);
  ASSERT_EQ(reg(hw::GenericEndpoint::kRegDmaDst, 8, 0x100000 + (1 << 20)), 0);
  ASSERT_EQ(reg(hw::GenericEndpoint::kRegDmaLen, 4, 4096), 0);
  ASSERT_EQ(reg(hw::GenericEndpoint::kRegDmaGo, 4, 1), 0);
  EXPECT_EQ(rd32(hw::GenericEndpoint::kRegDmaStatus), 0u);  // the whole file is there
  ASSERT_EQ(ftruncate(mem.get(), 4096), 0);
  ASSERT_EQ(reg(hw::GenericEndpoint::kRegDmaGo, 4, 1), 0);  // writes past the new end
  EXPECT_EQ(rd32(hw::GenericEndpoint::kRegDmaStatus), uint32_t{EFAULT});
  ASSERT_EQ(reg(hw::GenericEndpoint::kRegDmaDst, 8, 0x100000), 0);
  ASSERT_EQ(reg(hw::GenericEndpoint::kRegDmaSrc, 8, 0x100000 + (1 << 20)), 0);
  ASSERT_EQ(reg(hw::GenericEndpoint::kRegDmaGo, 4, 1), 0);  // reads past it
  EXPECT_EQ(rd32(hw::GenericEndpoint::kRegDmaStatus), uint32_t{EFAULT});
  EXPECT_EQ(kill(d_->pid(), 0), 0) << "the daemon died";
  EXPECT_TRUE(r.alive());
  // Another device is served as before.
  auto other = client::Client::connect(vf());
  ASSERT_TRUE(other) << errno_name(other.error().code);
  EXPECT_TRUE((*other)->get_info());

  // The BAR mmap fd we hand out cannot be shrunk by its receiver.
  RegionInfoMsg q{64, 0, 2, 0, 0, 0};
  Message m;
  ASSERT_EQ(r.call(kDeviceGetRegionInfo, b(q), {}, &m), 0);
  ASSERT_EQ(m.fds.size(), 1u);
  EXPECT_NE(ftruncate(m.fds[0].get(), 0), 0);
  EXPECT_EQ(errno, EPERM);
  EXPECT_NE(fcntl(m.fds[0].get(), F_GET_SEALS) & F_SEAL_SHRINK, 0);
}

TEST_F(Protocol, FdsWhereNoneAreExpectedAreClosed) {
  Raw r(ep());
  r.version();
  UniqueFd e1(eventfd(0, EFD_CLOEXEC)), e2(eventfd(0, EFD_CLOEXEC));
  vfio_device_info i{};
  i.argsz = sizeof(i);
  EXPECT_EQ(r.call(kDeviceGetInfo, b(i), {e1.get()}), EINVAL);
  EXPECT_EQ(r.call(kRegionRead, region_access(VFIO_PCI_CONFIG_REGION_INDEX, 0, 4), {e1.get(), e2.get()}), EINVAL);
  vfio_irq_set s{sizeof(vfio_irq_set), VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_ERR_IRQ_INDEX, 0, 1};
  EXPECT_EQ(r.call(kDeviceSetIrqs, b(s), {e1.get()}), EINVAL);
  // More fds than max_msg_fds (16).
  std::vector<int> many(17, e1.get());
  s = {sizeof(vfio_irq_set), VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 17};
  Header h{77, kDeviceSetIrqs, 0, 0, 0};
  // send_message refuses more than 16; build it by hand.
  std::vector<uint8_t> pl = b(s);
  h.msg_size = static_cast<uint32_t>(sizeof(h) + pl.size());
  iovec iov[2] = {{&h, sizeof(h)}, {pl.data(), pl.size()}};
  alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int) * 17)];
  msghdr mh{};
  mh.msg_iov = iov;
  mh.msg_iovlen = 2;
  mh.msg_control = ctl;
  mh.msg_controllen = sizeof(ctl);
  cmsghdr* c = CMSG_FIRSTHDR(&mh);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * 17);
  std::memcpy(CMSG_DATA(c), many.data(), sizeof(int) * 17);
  ASSERT_GT(sendmsg(r.fd(), &mh, 0), 0);
  EXPECT_EQ(r.reply_errno(), EINVAL);
  EXPECT_TRUE(r.alive());
}

TEST_F(Protocol, SetIrqsAbuse) {
  Raw r(ep());
  r.version();
  UniqueFd e(eventfd(0, EFD_CLOEXEC));
  auto set = [&](uint32_t flags, uint32_t index, uint32_t start, uint32_t count, std::vector<int> fds = {},
                 std::vector<uint8_t> bools = {}) {
    vfio_irq_set s{static_cast<uint32_t>(sizeof(vfio_irq_set) + bools.size()), flags, index, start, count};
    auto p = b(s);
    p.resize(sizeof(vfio_irq_set));
    p.insert(p.end(), bools.begin(), bools.end());
    return r.call(kDeviceSetIrqs, p, fds);
  };
  const uint32_t T = VFIO_IRQ_SET_ACTION_TRIGGER;
  EXPECT_EQ(set(VFIO_IRQ_SET_DATA_EVENTFD | T, VFIO_PCI_MSIX_IRQ_INDEX, 0, 9), EINVAL);  // beyond 8 vectors
  EXPECT_EQ(set(VFIO_IRQ_SET_DATA_EVENTFD | T, VFIO_PCI_MSIX_IRQ_INDEX, 7, 2), EINVAL);
  EXPECT_EQ(set(VFIO_IRQ_SET_DATA_EVENTFD | T, VFIO_PCI_MSIX_IRQ_INDEX, 0, 2, {e.get()}), EINVAL);  // fds != count
  EXPECT_EQ(set(VFIO_IRQ_SET_DATA_BOOL | T, VFIO_PCI_MSIX_IRQ_INDEX, 0, 2, {}, {1}), EINVAL);
  EXPECT_EQ(set(VFIO_IRQ_SET_DATA_NONE | T, 9, 0, 1), EINVAL);
  // No fds and a huge count: refused before anything is sized by it (a
  // fuzzer-found out-of-memory).
  EXPECT_EQ(set(VFIO_IRQ_SET_DATA_EVENTFD | T, VFIO_PCI_MSIX_IRQ_INDEX, 0, 0xffffffffu), EINVAL);
  EXPECT_EQ(set(VFIO_IRQ_SET_DATA_NONE, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1), ENOTTY);
  EXPECT_EQ(set(VFIO_IRQ_SET_DATA_EVENTFD | T, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1, {e.get()}), 0);
  EXPECT_EQ(set(VFIO_IRQ_SET_DATA_NONE | T, VFIO_PCI_MSIX_IRQ_INDEX, 0, 0), 0);
  EXPECT_TRUE(r.alive());
}

TEST_F(Protocol, FeatureAbuse) {
  Raw r(ep());
  r.version();
  DeviceFeatureMsg f{sizeof(DeviceFeatureMsg), VFIO_DEVICE_FEATURE_GET | (1u << 20)};
  EXPECT_EQ(r.call(kDeviceFeature, b(f)), EINVAL);
  f.flags = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIGRATION;
  EXPECT_EQ(r.call(kDeviceFeature, b(f)), EINVAL);
  f.flags = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION;
  EXPECT_EQ(r.call(kDeviceFeature, b(f)), ENOTTY);
  f.argsz = 2;
  EXPECT_EQ(r.call(kDeviceFeature, b(f)), EINVAL);
  MigDataMsg md{sizeof(MigDataMsg), 16};
  EXPECT_EQ(r.call(kMigDataRead, b(md)), EINVAL);  // no saving session
  EXPECT_TRUE(r.alive());
}

TEST_F(Protocol, UntrustableStreamsAreClosedAndOthersUnaffected) {
  {
    Raw r(ep());
    r.version();
    Header h{1, kDeviceGetInfo, 8, 0, 0};  // size below the header
    r.send_bytes(&h, sizeof(h));
    EXPECT_TRUE(r.closed_by_peer());
  }
  {
    Raw r(ep());
    r.version();
    Header h{1, kRegionWrite, 0x7fffffff, 0, 0};  // absurd size
    r.send_bytes(&h, sizeof(h));
    EXPECT_TRUE(r.closed_by_peer());
  }
  {
    Raw r(ep());
    r.version();
    Header h{1, kDeviceGetInfo, 32, 0, 0};
    r.send_bytes(&h, 8);  // a short header, then EOF
    shutdown(r.fd(), SHUT_WR);
    EXPECT_TRUE(r.closed_by_peer());
  }
  // While a hostile client sits on the endpoint mid-message, the VF serves.
  Raw hostile(ep());
  hostile.version();
  Header h{1, kRegionRead, 64, 0, 0};
  hostile.send_bytes(&h, sizeof(h));  // promises 48 bytes that never come
  auto c = client::Client::connect(vf());
  ASSERT_TRUE(c) << errno_name(c.error().code);
  EXPECT_TRUE((*c)->get_info());
}

TEST_F(Protocol, SecondClientIsRefused) {
  auto first = client::Client::connect(ep());
  ASSERT_TRUE(first);
  auto second = client::Client::connect(ep());
  ASSERT_FALSE(second);
  EXPECT_EQ(second.error().code, EBUSY);
  EXPECT_TRUE((*first)->get_info());
}

TEST_F(Protocol, PostedWritesAndWriteMulti) {
  Raw r(ep());
  r.version();
  // A failing posted write gets no reply; the next request is answered.
  r.send(kRegionWrite, region_access(20, 0, 1, {1}), kFlagNoReply);
  uint32_t v = 0x1234;
  std::vector<uint8_t> data(4);
  std::memcpy(data.data(), &v, 4);
  r.send(kRegionWrite, region_access(0, 4, 4, data), kFlagNoReply);
  Message m;
  ASSERT_EQ(r.call(kRegionRead, region_access(0, 4, 4), {}, &m), 0);
  ASSERT_EQ(m.payload.size(), 20u);
  std::memcpy(&v, m.payload.data() + 16, 4);
  EXPECT_EQ(v, 0x1234u);
  std::vector<uint8_t> multi(8 + 2 * sizeof(RegionWriteMultiEntry));
  uint64_t n = 2;
  std::memcpy(multi.data(), &n, 8);
  RegionWriteMultiEntry e{4, 0, 4, {0x78, 0x56, 0, 0}};
  std::memcpy(multi.data() + 8, &e, sizeof(e));
  e.offset = VFIO_PCI_CONFIG_REGION_INDEX == 7 ? 0x3c : 0;
  e.region = VFIO_PCI_CONFIG_REGION_INDEX;
  e.count = 1;
  e.data[0] = 0x0b;
  std::memcpy(multi.data() + 8 + sizeof(e), &e, sizeof(e));
  EXPECT_EQ(r.call(kRegionWriteMulti, multi), 0);
  ASSERT_EQ(r.call(kRegionRead, region_access(0, 4, 4), {}, &m), 0);
  std::memcpy(&v, m.payload.data() + 16, 4);
  EXPECT_EQ(v, 0x5678u);
  n = 0;
  std::memcpy(multi.data(), &n, 8);
  EXPECT_EQ(r.call(kRegionWriteMulti, multi), EINVAL);
  Raw plain(vf());  // write_multiple not negotiated: refused
  std::vector<uint8_t> p{0, 0, 0, 0};
  std::string js = R"({"capabilities":{}})";
  p.insert(p.end(), js.begin(), js.end());
  p.push_back(0);
  ASSERT_EQ(plain.call(kVersion, p), 0);
  n = 1;
  std::vector<uint8_t> one(8 + sizeof(RegionWriteMultiEntry));
  std::memcpy(one.data(), &n, 8);
  EXPECT_EQ(plain.call(kRegionWriteMulti, one), EINVAL);
}

}  // namespace
}  // namespace uvfio::e2e
