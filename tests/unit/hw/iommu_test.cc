// SPDX-License-Identifier: BSD-3-Clause
#include "hw/iommu.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>

#include <vector>

namespace uvfio::hw {
namespace {

UniqueFd memfd(size_t size) {
  UniqueFd fd(memfd_create("dma", MFD_CLOEXEC));
  EXPECT_EQ(ftruncate(fd.get(), static_cast<off_t>(size)), 0);
  return fd;
}

TEST(IommuTest, MapReadWriteThroughAnFd) {
  IommuDomain d;
  UniqueFd fd = memfd(3 * 4096);
  int raw = dup(fd.get());
  ASSERT_TRUE(d.map_fd(0x10000, 2 * 4096, std::move(fd), 4096, kDmaRead | kDmaWrite));
  std::vector<uint8_t> in(100, 0xab), out(100);
  ASSERT_TRUE(d.write(0x10000 + 4090, in));  // crosses a page
  ASSERT_TRUE(d.read(0x10000 + 4090, out));
  EXPECT_EQ(in, out);
  uint8_t b = 0;
  ASSERT_EQ(pread(raw, &b, 1, 4096 + 4090), 1);  // landed at fd offset 4096 + 4090
  EXPECT_EQ(b, 0xab);
  close(raw);
}

TEST(IommuTest, ErrorsAndNoPartialEffect) {
  IommuDomain d;
  std::vector<uint8_t> mem(8192, 0), ro(4096, 0x11);
  ASSERT_TRUE(d.map_host(0x0, 8192, mem.data(), kDmaRead | kDmaWrite));
  ASSERT_TRUE(d.map_host(0x4000, 4096, ro.data(), kDmaRead));
  EXPECT_EQ(d.map_host(0x1000, 4096, mem.data(), kDmaRead).error().code, EEXIST);
  EXPECT_EQ(d.map_host(0x3000, 8192, mem.data(), kDmaRead).error().code, EEXIST);
  EXPECT_EQ(d.map_host(0x8000, 100, mem.data(), kDmaRead).error().code, EINVAL);
  EXPECT_EQ(d.map_host(0x8001, 4096, mem.data(), kDmaRead).error().code, EINVAL);
  EXPECT_EQ(d.map_host(~0ull - 4095, 8192, mem.data(), kDmaRead).error().code, EOVERFLOW);
  std::vector<uint8_t> buf(16, 0xff);
  EXPECT_EQ(d.write(0x4000, buf).error().code, EPERM);          // read-only
  EXPECT_EQ(d.read(0x2000, buf).error().code, EFAULT);          // hole
  EXPECT_EQ(d.write(0x2000 - 8, buf).error().code, EFAULT);     // straddles into the hole
  EXPECT_EQ(mem[0x2000 - 8], 0);                                // nothing written
  EXPECT_EQ(d.read(~0ull - 4, buf).error().code, EFAULT);       // wraps
  EXPECT_EQ(d.unmap(0x0, 4096).error().code, EINVAL);           // would split the map
  ASSERT_TRUE(d.unmap(0x0, 8192));
  EXPECT_EQ(d.read(0x0, buf).error().code, EFAULT);
  EXPECT_EQ(d.num_maps(), 1u);
  d.unmap_all();
  EXPECT_EQ(d.num_maps(), 0u);
}

TEST(IommuTest, WriteObserverSeesDmaWrites) {
  IommuDomain d;
  std::vector<uint8_t> mem(4096);
  ASSERT_TRUE(d.map_host(0x1000, 4096, mem.data(), kDmaRead | kDmaWrite));
  std::vector<std::pair<uint64_t, uint64_t>> seen;
  d.set_write_observer([&](uint64_t a, uint64_t n) { seen.emplace_back(a, n); });
  std::vector<uint8_t> buf(10);
  ASSERT_TRUE(d.write(0x1010, buf));
  ASSERT_TRUE(d.read(0x1010, buf));
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0], std::make_pair(uint64_t{0x1010}, uint64_t{10}));
}

TEST(IommuTest, MapLimit) {
  IommuDomain d;
  d.set_max_maps(2);
  std::vector<uint8_t> mem(3 * 4096);
  ASSERT_TRUE(d.map_host(0, 4096, mem.data(), kDmaRead));
  ASSERT_TRUE(d.map_host(4096, 4096, mem.data() + 4096, kDmaRead));
  EXPECT_EQ(d.map_host(8192, 4096, mem.data() + 8192, kDmaRead).error().code, ENOSPC);
}

size_t open_fds() {
  size_t n = 0;
  for (int fd = 0; fd < 65536; ++fd) n += fcntl(fd, F_GETFD) >= 0;
  return n;
}

// VFIO_IOMMU_UNMAP_DMA's rules (type1 v2, vfio_dma_do_unmap): every map
// wholly inside the range goes; a map straddling either end is EINVAL and
// nothing is removed; a range with no map succeeds with nothing removed.
TEST(IommuTest, UnmapRemovesEveryMapInsideItsRangeAsType1) {
  IommuDomain d;
  std::vector<uint8_t> mem(16 * 4096);
  for (uint64_t i = 0; i < 8; ++i) ASSERT_TRUE(d.map_host(0x10000 + i * 4096, 4096, mem.data() + i * 4096, kDmaRead));
  ASSERT_TRUE(d.map_host(0x20000, 4 * 4096, mem.data() + 8 * 4096, kDmaRead));
  EXPECT_EQ(*d.unmap(0x10000, 4 * 4096), 4u * 4096);  // four maps at once
  EXPECT_EQ(d.num_maps(), 5u);
  EXPECT_EQ(*d.unmap(0x0, 0x10000), 0u);              // covers nothing: fine
  EXPECT_EQ(*d.unmap(0x0, 0x14000), 0u);              // ends where the removed ones were
  EXPECT_EQ(d.unmap(0x21000, 4096).error().code, EINVAL);    // inside a map
  EXPECT_EQ(d.unmap(0x1f000, 0x2000).error().code, EINVAL);  // reaches into a map's start
  EXPECT_EQ(d.unmap(0x16000, 0xb000).error().code, EINVAL);  // two whole maps, then half of the big one
  EXPECT_EQ(d.num_maps(), 5u) << "a refused unmap removed something";
  EXPECT_EQ(d.unmap(0x10000, 100).error().code, EINVAL);     // unaligned
  EXPECT_EQ(d.unmap(0x10000, 0).error().code, EINVAL);
  EXPECT_EQ(d.unmap(~0ull & ~0xfffull, 0x2000).error().code, EINVAL);  // wraps
  EXPECT_EQ(*d.unmap(0x0, 1ull << 40), 4u * 4096 + 4 * 4096);  // everything
  EXPECT_EQ(d.num_maps(), 0u);
  std::vector<uint8_t> buf(8);
  EXPECT_EQ(d.read(0x20000, buf).error().code, EFAULT);
}

// A guest IOMMU maps RAM a page at a time: 65,535 maps of one memfd (the
// advertised max_dma_maps) hold one fd and one mapping, the next map is
// ENOSPC, and all of it goes with the maps.
TEST(IommuTest, PageMapsOfOneFileShareItsFdAndMapping) {
  size_t fds0 = open_fds();
  {
    IommuDomain d;
    constexpr uint64_t kMaps = 65535;
    UniqueFd f = memfd((kMaps + 1) * 4096);
    for (uint64_t i = 0; i < kMaps; ++i) {
      // The client sends a new fd with every map.
      auto r = d.map_fd(0x100000000ull + i * 4096, 4096, UniqueFd(dup(f.get())), i * 4096, kDmaRead | kDmaWrite);
      ASSERT_TRUE(r) << i << ": " << errno_name(r.error().code);
    }
    EXPECT_EQ(d.num_maps(), kMaps);
    EXPECT_EQ(d.num_files(), 1u);
    EXPECT_EQ(d.mapped_bytes(), (kMaps + 1) * 4096);  // the file once, not a mapping per map
    EXPECT_EQ(open_fds(), fds0 + 2);                  // ours and the domain's
    auto r = d.map_fd(0x0, 4096, UniqueFd(dup(f.get())), kMaps * 4096, kDmaRead);
    EXPECT_EQ(r.error().code, ENOSPC);
    // DMA through maps of neighbouring pages lands at the right file offsets.
    std::vector<uint8_t> in(8192, 0x5c), out(8192);
    ASSERT_TRUE(d.write(0x100000000ull + 100 * 4096 + 2048, in));
    uint8_t b = 0;
    ASSERT_EQ(pread(f.get(), &b, 1, 101 * 4096 + 2047), 1);
    EXPECT_EQ(b, 0x5c);
    ASSERT_TRUE(d.read(0x100000000ull + 100 * 4096 + 2048, out));
    EXPECT_EQ(in, out);
    EXPECT_EQ(*d.unmap(0x100000000ull, kMaps * 4096), kMaps * 4096);
    EXPECT_EQ(d.num_files(), 0u);
    EXPECT_EQ(d.mapped_bytes(), 0u);
    EXPECT_EQ(open_fds(), fds0 + 1) << "the file's fd outlived its maps";
  }
  EXPECT_EQ(open_fds(), fds0);
}

TEST(IommuTest, DistinctFilesAndAddressSpaceAreBounded) {
  IommuDomain d;
  d.set_max_files(3);
  std::vector<UniqueFd> files;
  for (int i = 0; i < 4; ++i) files.push_back(memfd(2 * 4096));
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(d.map_fd(uint64_t(i) << 20, 4096, UniqueFd(dup(files[i].get())), 0, kDmaRead));
  EXPECT_EQ(d.map_fd(3u << 20, 4096, UniqueFd(dup(files[3].get())), 0, kDmaRead).error().code, ENOSPC);
  // A file already held still takes maps.
  EXPECT_TRUE(d.map_fd(4u << 20, 4096, UniqueFd(dup(files[0].get())), 4096, kDmaRead));
  // Room again once a file's last map goes.
  ASSERT_TRUE(d.unmap(1u << 20, 4096));
  EXPECT_TRUE(d.map_fd(3u << 20, 4096, UniqueFd(dup(files[3].get())), 0, kDmaRead));

  IommuDomain e;
  e.set_max_mapped_bytes(4 * 4096);
  UniqueFd big = memfd(8 * 4096);
  EXPECT_EQ(e.map_fd(0, 8 * 4096, UniqueFd(dup(big.get())), 0, kDmaRead).error().code, ENOSPC);
  EXPECT_EQ(e.num_files(), 0u);
}

// A read-only fd maps read-only; a later read-write fd of the same file
// gives writable maps; a writable map through a read-only fd is EACCES.
TEST(IommuTest, ReadOnlyAndReadWriteFdsOfOneFile) {
  IommuDomain d;
  UniqueFd f = memfd(4 * 4096);
  char path[64];
  snprintf(path, sizeof(path), "/proc/self/fd/%d", f.get());
  UniqueFd ro(open(path, O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(ro);
  EXPECT_EQ(d.map_fd(0x0, 4096, UniqueFd(dup(ro.get())), 0, kDmaRead | kDmaWrite).error().code, EACCES);
  ASSERT_TRUE(d.map_fd(0x0, 4096, UniqueFd(dup(ro.get())), 0, kDmaRead));
  ASSERT_TRUE(d.map_fd(0x1000, 4096, UniqueFd(dup(f.get())), 4096, kDmaRead | kDmaWrite));
  std::vector<uint8_t> buf(16, 1);
  EXPECT_EQ(d.write(0x0, buf).error().code, EPERM);
  EXPECT_TRUE(d.write(0x1000, buf));
  EXPECT_EQ(d.num_files(), 1u);
}

// Device DMA racing unmaps of its range: every DMA succeeds or fails with
// EFAULT, and once an unmap has returned nothing more lands in that memory.
TEST(IommuTest, UnmapRacingDeviceDma) {
  IommuDomain d;
  UniqueFd f = memfd(64 * 4096);
  auto* p = static_cast<uint8_t*>(mmap(nullptr, 64 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, f.get(), 0));
  ASSERT_NE(p, MAP_FAILED);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> ok{0}, faults{0}, other{0};
  std::thread dma([&] {
    std::vector<uint8_t> in(3 * 4096, 0xee);
    while (!stop) {
      auto r = d.write(0x40000 + 4096, in);
      if (r) ok++;
      else (r.error().code == EFAULT ? faults : other)++;
    }
  });
  // At least 300 rounds, and on until the DMA thread has both landed and
  // faulted (a loaded machine may not schedule it for a while), at most 30 s.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  for (int round = 0; round < 300 || ((ok == 0 || faults == 0) && std::chrono::steady_clock::now() < deadline);
       ++round) {
    for (uint64_t i = 0; i < 16; ++i)
      ASSERT_TRUE(d.map_fd(0x40000 + i * 4096, 4096, UniqueFd(dup(f.get())), i * 4096, kDmaRead | kDmaWrite));
    std::this_thread::yield();
    ASSERT_EQ(*d.unmap(0x40000, 16 * 4096), 16u * 4096);
    std::memset(p, 0, 16 * 4096);  // after the unmap: must stay zero
    if (round % 8 == 0) std::this_thread::sleep_for(std::chrono::microseconds(100));
    for (int k = 0; k < 16 * 4096; k += 512) ASSERT_EQ(p[k], 0) << "DMA landed after its unmap returned";
  }
  stop = true;
  dma.join();
  EXPECT_EQ(other.load(), 0u);
  EXPECT_GT(faults.load(), 0u);
  EXPECT_GT(ok.load(), 0u);
  munmap(p, 64 * 4096);
}

}  // namespace
}  // namespace uvfio::hw

namespace uvfio::hw {
namespace {

// A peer (a vfio-user client) holding the memory behind remote maps, which
// records every request it is given and refuses those touching `bad`.
struct RecordingPeer : IommuDomain::RemoteDma {
  std::vector<uint8_t> mem = std::vector<uint8_t>(0x300000);
  std::vector<std::vector<std::pair<uint64_t, size_t>>> calls;  // each read_many/write_many: its requests
  uint64_t bad = ~0ull;  // a byte whose request is refused (EFAULT)
  int fail_all = 0;      // every request fails with this
  int refuse(uint64_t iova, size_t n) const {
    if (fail_all) return fail_all;
    return bad >= iova && bad < iova + n ? EFAULT : 0;
  }
  Result<void> read(uint64_t iova, std::span<uint8_t> out) override {
    if (int e = refuse(iova, out.size())) return Error(e);
    std::memcpy(out.data(), mem.data() + iova, out.size());
    return ok();
  }
  Result<void> write(uint64_t iova, std::span<const uint8_t> in) override {
    if (int e = refuse(iova, in.size())) return Error(e);
    std::memcpy(mem.data() + iova, in.data(), in.size());
    return ok();
  }
  void record(std::span<Seg> segs) {
    calls.emplace_back();
    for (const Seg& s : segs) calls.back().emplace_back(s.iova, s.buf.size());
  }
  void read_many(std::span<Seg> segs) override {
    record(segs);
    RemoteDma::read_many(segs);
  }
  void write_many(std::span<Seg> segs) override {
    record(segs);
    RemoteDma::write_many(segs);
  }
  void cancel() override {}
};

using Ops = std::vector<IommuDomain::DmaOp>;

// Ops of `n` bytes each at `iovas`, into consecutive pieces of `buf`.
Ops ops_at(std::vector<uint8_t>& buf, std::initializer_list<uint64_t> iovas, size_t n) {
  Ops ops;
  size_t at = 0;
  for (uint64_t iova : iovas) {
    ops.push_back({iova, std::span<uint8_t>(buf.data() + at, n), 0});
    at += n;
  }
  return ops;
}

class RemoteMerge : public ::testing::Test {
 protected:
  void SetUp() override {
    // Two remote maps, one right after the other.
    ASSERT_TRUE(d.map_remote(0x10000, 0x10000, kDmaRead | kDmaWrite));
    ASSERT_TRUE(d.map_remote(0x20000, 0x10000, kDmaRead | kDmaWrite));
    for (size_t i = 0; i < peer->mem.size(); ++i) peer->mem[i] = static_cast<uint8_t>(i * 7 + (i >> 12));
    d.set_remote(peer);
  }
  IommuDomain d;
  std::shared_ptr<RecordingPeer> peer = std::make_shared<RecordingPeer>();
  std::vector<uint8_t> buf = std::vector<uint8_t>(0x4000);
};

// Buffers one after another at IOVAs one after another: one request, and
// every op gets its own bytes.
TEST_F(RemoteMerge, AdjacentOpsGoAsOneRequest) {
  Ops ops = ops_at(buf, {0x11000, 0x12000, 0x13000, 0x14000}, 0x1000);
  d.read_many(ops);
  ASSERT_EQ(peer->calls.size(), 1u);
  ASSERT_EQ(peer->calls[0].size(), 1u);
  EXPECT_EQ(peer->calls[0][0], (std::pair<uint64_t, size_t>{0x11000, 0x4000}));
  for (const auto& op : ops) EXPECT_EQ(op.err, 0);
  EXPECT_EQ(std::memcmp(buf.data(), peer->mem.data() + 0x11000, 0x4000), 0);
  // Writes too, landing where each op says.
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<uint8_t>(0xa0 + i % 13);
  Ops w = ops_at(buf, {0x1a000, 0x1c000}, 0x2000);
  d.write_many(w);
  ASSERT_EQ(peer->calls.size(), 2u);
  EXPECT_EQ(peer->calls[1], (std::vector<std::pair<uint64_t, size_t>>{{0x1a000, 0x4000}}));
  EXPECT_EQ(std::memcmp(buf.data(), peer->mem.data() + 0x1a000, 0x4000), 0);
}

// Not merged: a gap between the IOVAs, buffers not one after another, or
// two maps (the client sees each map as its own region).
TEST_F(RemoteMerge, OnlyWhatContinuesInOneMapIsMerged) {
  auto check = [&](Ops& ops) {
    d.read_many(ops);
    EXPECT_EQ(peer->calls.back().size(), 2u);
    for (const auto& op : ops) {
      EXPECT_EQ(op.err, 0);
      EXPECT_EQ(std::memcmp(op.buf.data(), peer->mem.data() + op.iova, op.buf.size()), 0);
    }
  };
  Ops gap = ops_at(buf, {0x11000, 0x13000}, 0x1000);
  check(gap);
  Ops swapped{{0x11000, std::span<uint8_t>(buf.data() + 0x1000, 0x1000), 0},
              {0x12000, std::span<uint8_t>(buf.data(), 0x1000), 0}};
  check(swapped);
  Ops across = ops_at(buf, {0x1f000, 0x20000}, 0x1000);
  check(across);
  EXPECT_EQ(peer->calls.size(), 3u);
  // One op across the two maps is two requests as well.
  Ops one{{0x1f800, std::span<uint8_t>(buf.data(), 0x1000), 0}};
  d.read_many(one);
  EXPECT_EQ(peer->calls.back(), (std::vector<std::pair<uint64_t, size_t>>{{0x1f800, 0x800}, {0x20000, 0x800}}));
}

// A merged request stays at 128 KiB: 64 adjacent 4 KiB buffers are two.
TEST_F(RemoteMerge, MergedRequestsStaySmall) {
  ASSERT_TRUE(d.map_remote(0x100000, 0x100000, kDmaRead | kDmaWrite));
  std::vector<uint8_t> big(64 * 4096);
  Ops ops;
  for (size_t i = 0; i < 64; ++i) ops.push_back({0x100000 + i * 4096, std::span<uint8_t>(big.data() + i * 4096, 4096), 0});
  d.read_many(ops);
  EXPECT_EQ(peer->calls.back(), (std::vector<std::pair<uint64_t, size_t>>{{0x100000, 0x20000}, {0x120000, 0x20000}}));
  EXPECT_EQ(std::memcmp(big.data(), peer->mem.data() + 0x100000, big.size()), 0);
}

// A merged request the client refuses is carried again op by op: only the
// op owning the refused byte fails, the others get their data.
TEST_F(RemoteMerge, ARefusedMergedRequestFailsOnlyItsOwnOp) {
  peer->bad = 0x12010;
  Ops ops = ops_at(buf, {0x11000, 0x12000, 0x13000, 0x14000}, 0x1000);
  d.read_many(ops);
  ASSERT_EQ(peer->calls.size(), 2u);
  EXPECT_EQ(peer->calls[0].size(), 1u);
  EXPECT_EQ(peer->calls[1].size(), 4u);
  EXPECT_EQ(ops[0].err, 0);
  EXPECT_EQ(ops[1].err, EFAULT);
  EXPECT_EQ(ops[2].err, 0);
  EXPECT_EQ(ops[3].err, 0);
  EXPECT_EQ(std::memcmp(buf.data() + 0x2000, peer->mem.data() + 0x13000, 0x2000), 0);
  // A peer that is gone or cancelled fails every op at once, no retry.
  for (int e : {ECANCELED, ECONNRESET, ETIMEDOUT}) {
    peer->calls.clear();
    peer->fail_all = e;
    d.write_many(ops);
    EXPECT_EQ(peer->calls.size(), 1u) << e;
    for (const auto& op : ops) EXPECT_EQ(op.err, e);
  }
}

}  // namespace
}  // namespace uvfio::hw
