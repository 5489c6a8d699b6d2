#include "hw/iommu.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

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
  EXPECT_EQ(d.unmap(0x0, 4096).error().code, ENOENT);           // must match exactly
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

}  // namespace
}  // namespace uvfio::hw
