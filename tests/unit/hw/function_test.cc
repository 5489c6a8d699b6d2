// SPDX-License-Identifier: BSD-3-Clause
#include "hw/function.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include <algorithm>
#include <cstring>

#include "hw/bridge.h"
#include "hw/capabilities.h"
#include "hw/endpoint.h"
#include "hw/mlx5/pf.h"
#include "hw/mlx5/vf.h"

namespace uvfio::hw {
namespace {

std::unique_ptr<GenericEndpoint> endpoint(const EndpointParams& p = {}) {
  auto r = GenericEndpoint::create(p);
  EXPECT_TRUE(r);
  return std::move(*r);
}

// Sizing as software does: save, write all-ones, read, restore.
uint32_t size_probe(Function& f, uint16_t reg) {
  uint32_t orig = f.config_read(reg, 4);
  f.config_write(reg, 4, 0xffffffff);
  uint32_t v = f.config_read(reg, 4);
  f.config_write(reg, 4, orig);
  return v;
}

TEST(BarSizingTest, Mem32Io64) {
  EndpointParams p;
  p.bar0_size = 8192;
  p.bar2_size = 1ull << 33;  // 8 GiB: upper dword carries size bits
  auto e = endpoint(p);
  EXPECT_EQ(size_probe(*e, PCI_BASE_ADDRESS_0), 0xffffe000u);  // 32-bit, non-prefetchable
  EXPECT_EQ(size_probe(*e, PCI_BASE_ADDRESS_1), 0xffffffe1u);  // I/O, 32 bytes
  uint32_t lo = size_probe(*e, PCI_BASE_ADDRESS_2);
  uint32_t hi = size_probe(*e, PCI_BASE_ADDRESS_3);
  EXPECT_EQ(lo, 0x0000000cu);  // 64-bit prefetchable, size bits all above 4G
  EXPECT_EQ(hi, 0xfffffffeu);
  uint64_t mask = (uint64_t{hi} << 32) | (lo & ~0xfu);
  EXPECT_EQ(~mask + 1, 1ull << 33);
  EXPECT_EQ(size_probe(*e, PCI_BASE_ADDRESS_5), 0u);  // unimplemented
}

TEST(BarSizingTest, AddressesStickWithinTheMask) {
  auto e = endpoint();
  e->config_write(PCI_BASE_ADDRESS_0, 4, 0xfebf1234);
  EXPECT_EQ(e->config_read(PCI_BASE_ADDRESS_0, 4), 0xfebf1000u);  // 4 KiB aligned, type bits kept
}

TEST(BarDescTest, Validation) {
  EXPECT_FALSE(BarDesc({BarKind::kMem32, 3000, false}).validate());
  EXPECT_FALSE(BarDesc({BarKind::kIo, 512, false}).validate());
  EXPECT_FALSE(BarDesc({BarKind::kMem32, 8, false}).validate());
  EXPECT_TRUE(BarDesc({BarKind::kMem64, 1ull << 36, true}).validate());
}

TEST(BarMemoryTest, BoundsChecked) {
  auto m = BarMemory::create(4096, "t");
  ASSERT_TRUE(m);
  EXPECT_TRUE((*m)->store(4088, 8, 0x1122334455667788ull));
  EXPECT_EQ(*(*m)->load(4088, 8), 0x1122334455667788ull);
  EXPECT_EQ(*(*m)->load(4088, 1), 0x88u);
  EXPECT_FALSE((*m)->load(4089, 8));
  EXPECT_FALSE((*m)->store(4096, 1, 0));
  EXPECT_FALSE((*m)->load(0, 3));
  EXPECT_FALSE((*m)->load(~0ull - 2, 4));  // overflow
  EXPECT_GE((*m)->fd(), 0);
}

TEST(CapabilityTest, ChainOfTheEndpoint) {
  auto e = endpoint();
  EXPECT_TRUE(e->config_read(PCI_STATUS, 2) & PCI_STATUS_CAP_LIST);
  uint16_t pm = e->find_capability(PCI_CAP_ID_PM);
  uint16_t msi = e->find_capability(PCI_CAP_ID_MSI);
  uint16_t msix = e->find_capability(PCI_CAP_ID_MSIX);
  uint16_t exp = e->find_capability(PCI_CAP_ID_EXP);
  EXPECT_EQ(pm, 0x40);
  EXPECT_NE(msi, 0);
  EXPECT_NE(msix, 0);
  EXPECT_NE(exp, 0);
  EXPECT_EQ(e->find_ext_capability(PCI_EXT_CAP_ID_PASID), 0x100);
  EXPECT_EQ(e->find_ext_capability(PCI_EXT_CAP_ID_DSN), 0x108);
  EXPECT_NE(e->find_capability(PCI_CAP_ID_SSVID), 0);
  EXPECT_EQ(e->find_capability(PCI_CAP_ID_VPD), 0);
  // MSI: 64-bit, per-vector masking, 4 vectors; Enable writable, MMC not.
  uint16_t ctrl = static_cast<uint16_t>(e->config_read(msi + PCI_MSI_FLAGS, 2));
  EXPECT_TRUE(ctrl & PCI_MSI_FLAGS_64BIT);
  EXPECT_TRUE(ctrl & PCI_MSI_FLAGS_MASKBIT);
  EXPECT_EQ((ctrl & PCI_MSI_FLAGS_QMASK) >> 1, 2);
  e->config_write(msi + PCI_MSI_FLAGS, 2, 0xffff);
  ctrl = static_cast<uint16_t>(e->config_read(msi + PCI_MSI_FLAGS, 2));
  EXPECT_EQ((ctrl & PCI_MSI_FLAGS_QMASK) >> 1, 2);
  EXPECT_TRUE(ctrl & PCI_MSI_FLAGS_ENABLE);
  // Mask bits: only as many as vectors; pending read-only.
  e->config_write(msi + PCI_MSI_MASK_64, 4, 0xffffffff);
  EXPECT_EQ(e->config_read(msi + PCI_MSI_MASK_64, 4), 0xfu);
  e->config_write(msi + PCI_MSI_MASK_64 + 4, 4, 0xffffffff);
  EXPECT_EQ(e->config_read(msi + PCI_MSI_MASK_64 + 4, 4), 0u);
  // MSI-X: table in BAR4, all vectors masked at reset; table size read-only.
  EXPECT_EQ(e->config_read(msix + PCI_MSIX_FLAGS, 2) & PCI_MSIX_FLAGS_QSIZE, 7u);
  e->config_write(msix + PCI_MSIX_FLAGS, 2, 0xffff);
  EXPECT_EQ(e->config_read(msix + PCI_MSIX_FLAGS, 2), 0xc007u);
  EXPECT_EQ(e->config_read(msix + PCI_MSIX_TABLE, 4), 4u);
  EXPECT_EQ(*e->mmio_read(4, 7 * 16 + PCI_MSIX_ENTRY_VECTOR_CTRL, 4), 1u);
}

TEST(CapabilityTest, PmStatusIsWriteOneToClear) {
  auto e = endpoint();
  uint16_t pm = e->find_capability(PCI_CAP_ID_PM);
  e->config().raw_write(pm + PCI_PM_CTRL, 2, e->config_read(pm + PCI_PM_CTRL, 2) | PCI_PM_CTRL_PME_STATUS);
  e->config_write(pm + PCI_PM_CTRL, 2, PCI_PM_CTRL_PME_STATUS | 3);
  uint16_t v = static_cast<uint16_t>(e->config_read(pm + PCI_PM_CTRL, 2));
  EXPECT_FALSE(v & PCI_PM_CTRL_PME_STATUS);
  EXPECT_EQ(v & PCI_PM_CTRL_STATE_MASK, 3);
  EXPECT_TRUE(v & PCI_PM_CTRL_NO_SOFT_RESET);  // read-only
}

TEST(FlrTest, DeviceControlBitResetsTheFunction) {
  auto e = endpoint();
  uint16_t exp = e->find_capability(PCI_CAP_ID_EXP);
  ASSERT_TRUE(e->flr_capable());
  e->config_write(PCI_COMMAND, 2, PCI_COMMAND_MASTER);
  e->config_write(PCI_BASE_ADDRESS_0, 4, 0xfe000000);
  uint16_t msix = e->find_capability(PCI_CAP_ID_MSIX);
  e->config_write(msix + PCI_MSIX_FLAGS, 2, PCI_MSIX_FLAGS_ENABLE);
  ASSERT_TRUE(e->mmio_write(4, PCI_MSIX_ENTRY_VECTOR_CTRL, 4, 0));
  uint16_t devctl = static_cast<uint16_t>(e->config_read(exp + PCI_EXP_DEVCTL, 2));
  e->config_write(exp + PCI_EXP_DEVCTL, 2, devctl | PCI_EXP_DEVCTL_BCR_FLR);
  EXPECT_EQ(e->config_read(PCI_COMMAND, 2), 0u);
  EXPECT_EQ(e->config_read(PCI_BASE_ADDRESS_0, 4), 0u);
  EXPECT_EQ(e->config_read(msix + PCI_MSIX_FLAGS, 2) & PCI_MSIX_FLAGS_ENABLE, 0u);
  EXPECT_EQ(*e->mmio_read(4, PCI_MSIX_ENTRY_VECTOR_CTRL, 4), 1u);  // masked again
  EXPECT_EQ(e->config_read(exp + PCI_EXP_DEVCTL, 2) & PCI_EXP_DEVCTL_BCR_FLR, 0u);  // reads 0
}

TEST(FlrTest, ByteWriteOfTheHighByteAlsoResets) {
  auto e = endpoint();
  uint16_t exp = e->find_capability(PCI_CAP_ID_EXP);
  e->config_write(PCI_COMMAND, 2, PCI_COMMAND_MASTER);
  e->config_write(exp + PCI_EXP_DEVCTL + 1, 1, 0x80);
  EXPECT_EQ(e->config_read(PCI_COMMAND, 2), 0u);
}

// The capability offsets recorded at build time are what the walk finds.
TEST(CapabilityTest, RecordedAtBuildAsTheWalkFindsThem) {
  auto e = endpoint();
  for (unsigned id = 0; id < 256; ++id) EXPECT_EQ(e->find_capability(static_cast<uint8_t>(id)), e->walk_capability(static_cast<uint8_t>(id))) << id;
  for (unsigned id = 0; id < 0x40; ++id) EXPECT_EQ(e->find_ext_capability(static_cast<uint16_t>(id)), e->walk_ext_capability(static_cast<uint16_t>(id))) << id;
  EXPECT_NE(e->find_capability(PCI_CAP_ID_MSIX), 0);
  EXPECT_EQ(e->find_ext_capability(0x1234), 0);  // beyond the table: walked
}

// Hostile capability chains: walkers must terminate and never leave the
// capability area, whatever the pointers say.
TEST(HostileChainTest, StandardLoopsAndBadPointers) {
  auto e = endpoint();
  ConfigSpace& c = e->config();
  uint16_t pm = e->find_capability(PCI_CAP_ID_PM);
  c.raw_write(pm + 1, 1, pm);  // self loop
  EXPECT_EQ(e->walk_capability(PCI_CAP_ID_MSIX), 0);
  EXPECT_EQ(e->walk_capability(PCI_CAP_ID_PM), pm);
  c.raw_write(pm + 1, 1, 0x10);  // into the header
  EXPECT_EQ(e->walk_capability(PCI_CAP_ID_MSIX), 0);
  c.raw_write(PCI_CAPABILITY_LIST, 1, 0x43);  // unaligned: the low bits are ignored
  EXPECT_EQ(e->walk_capability(PCI_CAP_ID_PM), pm);
  c.raw_write(PCI_CAPABILITY_LIST, 1, 0x00);
  EXPECT_EQ(e->walk_capability(PCI_CAP_ID_PM), 0);
  // Two caps pointing at each other.
  c.raw_write(PCI_CAPABILITY_LIST, 1, 0x40);
  c.raw_write(0x41, 1, 0x50);
  c.raw_write(0x50, 1, 0x01);
  c.raw_write(0x51, 1, 0x40);
  EXPECT_EQ(e->walk_capability(PCI_CAP_ID_EXP), 0);
  c.raw_write(PCI_STATUS, 2, 0);  // no capability list at all
  EXPECT_EQ(e->walk_capability(PCI_CAP_ID_PM), 0);
  // What was found at build time stands: the pointers are read-only.
  EXPECT_EQ(e->find_capability(PCI_CAP_ID_PM), pm);
}

TEST(HostileChainTest, ExtendedLoopsAndTerminators) {
  auto e = endpoint();
  ConfigSpace& c = e->config();
  c.raw_write(0x100, 4, PCI_EXT_CAP_ID_DSN | (1u << 16) | (0x100u << 20));  // next = itself
  EXPECT_EQ(e->walk_ext_capability(PCI_EXT_CAP_ID_SRIOV), 0);
  c.raw_write(0x100, 4, PCI_EXT_CAP_ID_DSN | (1u << 16) | (0x040u << 20));  // next below 0x100
  EXPECT_EQ(e->walk_ext_capability(PCI_EXT_CAP_ID_SRIOV), 0);
  c.raw_write(0x100, 4, 0xffffffff);
  EXPECT_EQ(e->walk_ext_capability(PCI_EXT_CAP_ID_DSN), 0);
  ConfigSpace legacy(kConfigSizeLegacy);
  (void)legacy;
}

TEST(ModelTest, BridgesAndMlx5Identities) {
  auto rp = Bridge::create(BridgeKind::kRootPort);
  ASSERT_TRUE(rp);
  EXPECT_TRUE((*rp)->is_bridge());
  EXPECT_EQ((*rp)->config_read(PCI_CLASS_REVISION, 4) >> 8, 0x060400u);
  (*rp)->config_write(PCI_SECONDARY_BUS, 1, 5);
  EXPECT_EQ((*rp)->config_read(PCI_SECONDARY_BUS, 1), 5u);
  uint16_t exp = (*rp)->find_capability(PCI_CAP_ID_EXP);
  EXPECT_EQ(((*rp)->config_read(exp + PCI_EXP_FLAGS, 2) >> 4) & 0xf, PCI_EXP_TYPE_ROOT_PORT);
  auto pf = mlx5::Pf::create({});
  ASSERT_TRUE(pf);
  EXPECT_EQ((*pf)->config_read(0, 4), 0x101d15b3u);
  EXPECT_EQ((*pf)->config_read(PCI_CLASS_REVISION, 4) >> 8, 0x020000u);
  EXPECT_NE((*pf)->find_ext_capability(PCI_EXT_CAP_ID_SRIOV), 0);
  EXPECT_NE((*pf)->find_capability(PCI_CAP_ID_MSIX), 0);
}

}  // namespace
}  // namespace uvfio::hw

namespace uvfio::hw {
namespace {

// Bulk MMIO gives the bytes access-by-access reads give, wherever the range
// falls: registers, plain memory, the MSI-X table and PBA; and it copies
// only what no register or MSI-X structure owns.
TEST(BulkMmioTest, BlockReadsEqualAccessByAccessReads) {
  auto e = *GenericEndpoint::create();
  // BAR0: registers then plain memory; BAR4: the MSI-X table and PBA.
  for (unsigned bar : {0u, 4u}) {
    uint64_t size = e->bar_desc(bar).size;
    std::vector<uint8_t> scratch(size);
    for (size_t i = 0; i < size; ++i) scratch[i] = static_cast<uint8_t>(i * 13 + bar);
    // Fill the plain parts through the block path, then read both ways.
    ASSERT_TRUE(e->mmio_write_block(bar, 0, scratch));
    // The bytes landing on DMA_GO start a copy on the engine's thread: its
    // status and count change until it is done (slowly under TSan).
    if (bar == 0) {
      for (int i = 0; i < 5000 && *e->mmio_read(0, GenericEndpoint::kRegDmaStatus, 4) == GenericEndpoint::kDmaBusy; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      ASSERT_NE(*e->mmio_read(0, GenericEndpoint::kRegDmaStatus, 4), GenericEndpoint::kDmaBusy);
    }
    std::vector<uint8_t> block(size), single(size);
    ASSERT_TRUE(e->mmio_read_block(bar, 0, block));
    for (uint64_t off = 0; off < size; off += 4) {
      uint64_t v = *e->mmio_read(bar, off, 4);
      std::memcpy(single.data() + off, &v, 4);
    }
    EXPECT_EQ(block, single) << "BAR" << bar;
    // An odd-sized, unaligned window agrees too.
    std::vector<uint8_t> part(1001);
    ASSERT_TRUE(e->mmio_read_block(bar, 3, part));
    EXPECT_TRUE(std::equal(part.begin(), part.end(), single.begin() + 3)) << "BAR" << bar;
  }
  EXPECT_EQ(e->plain_run(0, 0, 4096), 0u) << "BAR0 starts with a register";
  uint16_t msix = e->find_capability(PCI_CAP_ID_MSIX);
  ASSERT_NE(msix, 0);
  EXPECT_EQ(e->plain_run(4, 0, 4096), 0u) << "the MSI-X table is at BAR4's start";
  EXPECT_GT(e->plain_run(2, 0, 4096), 0u) << "BAR2 is plain memory";
}

}  // namespace
}  // namespace uvfio::hw
