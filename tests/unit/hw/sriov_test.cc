// SPDX-License-Identifier: BSD-3-Clause
#include "hw/sriov.h"

#include <gtest/gtest.h>

#include "hw/fabric.h"
#include "hw/mlx5/pf.h"
#include "hw/mlx5/vf.h"

namespace uvfio::hw {
namespace {

struct Recorder : FabricListener {
  std::vector<Bdf> removed;
  void function_removing(Function& f) override { removed.push_back(f.bdf()); }
};

struct SriovFixture : ::testing::Test {
  Fabric fabric;
  Recorder rec;
  mlx5::Pf* pf = nullptr;
  uint16_t pos = 0;
  void place(Bdf at, mlx5::PfParams p) {
    fabric.set_listener(&rec);
    auto created = mlx5::Pf::create(p);
    ASSERT_TRUE(created);
    auto placed = fabric.attach(std::move(*created), at);
    ASSERT_TRUE(placed);
    pf = static_cast<mlx5::Pf*>(*placed);
    pos = pf->find_ext_capability(PCI_EXT_CAP_ID_SRIOV);
    ASSERT_NE(pos, 0);
  }
  void enable(uint16_t n) {
    pf->config_write(pos + PCI_SRIOV_NUM_VF, 2, n);
    pf->config_write(pos + PCI_SRIOV_CTRL, 2, PCI_SRIOV_CTRL_VFE | PCI_SRIOV_CTRL_MSE);
  }
  void TearDown() override { fabric.set_listener(nullptr); }
};

TEST(SriovRidTest, Formula) {
  EXPECT_EQ(SriovCapability::vf_rid(0x0700, 0x100, 1, 0), 0x0800u);
  EXPECT_EQ(SriovCapability::vf_rid(0x0701, 0x1ff, 1, 0), 0x0900u);
  EXPECT_EQ(SriovCapability::vf_rid(0x0701, 0x1ff, 1, 7), 0x0907u);
  EXPECT_EQ(SriovCapability::vf_rid(0x0100, 0x80, 2, 3), 0x0186u);
}

TEST_F(SriovFixture, SeedPf0VfLandsOnBus8) {
  place(Bdf(0, 7, 0, 0), mlx5::PfParams{8, 0x100, 1, 1 << 20, 0});
  enable(1);
  Function* vf = fabric.find(Bdf(0, 8, 0, 0));
  ASSERT_NE(vf, nullptr);
  EXPECT_TRUE(vf->is_virtfn());
  EXPECT_EQ(vf->physfn(), pf);
  EXPECT_EQ(fabric.config_read(Bdf(0, 8, 0, 0), PCI_VENDOR_ID, 2), 0xffffu);  // VFs read 0xffff
  EXPECT_EQ(fabric.config_read(Bdf(0, 8, 0, 0), PCI_CLASS_REVISION, 4) >> 8, 0x020000u);
  EXPECT_EQ(fabric.find(Bdf(0, 8, 0, 1)), nullptr);
}

TEST_F(SriovFixture, StrideAndCountAndRemoval) {
  place(Bdf(0, 7, 0, 1), mlx5::PfParams{8, 0x1ff, 2, 1 << 20, 0});
  enable(3);
  EXPECT_NE(fabric.find(Bdf::from_rid(0, 0x0900)), nullptr);
  EXPECT_NE(fabric.find(Bdf::from_rid(0, 0x0902)), nullptr);
  EXPECT_NE(fabric.find(Bdf::from_rid(0, 0x0904)), nullptr);
  EXPECT_EQ(fabric.find(Bdf::from_rid(0, 0x0901)), nullptr);
  EXPECT_EQ(pf->sriov().num_enabled(), 3);
  // NumVFs is frozen while VFs are enabled.
  pf->config_write(pos + PCI_SRIOV_NUM_VF, 2, 5);
  EXPECT_EQ(pf->config_read(pos + PCI_SRIOV_NUM_VF, 2), 3u);
  pf->config_write(pos + PCI_SRIOV_CTRL, 2, 0);
  EXPECT_EQ(pf->sriov().num_enabled(), 0);
  EXPECT_EQ(fabric.find(Bdf::from_rid(0, 0x0900)), nullptr);
  ASSERT_EQ(rec.removed.size(), 3u);
  EXPECT_EQ(rec.removed[0], Bdf::from_rid(0, 0x0904));  // last VF first
  pf->config_write(pos + PCI_SRIOV_NUM_VF, 2, 5);
  EXPECT_EQ(pf->config_read(pos + PCI_SRIOV_NUM_VF, 2), 5u);
}

TEST_F(SriovFixture, NumVfsBeyondTotalIsClamped) {
  place(Bdf(0, 7, 0, 0), mlx5::PfParams{2, 0x100, 1, 1 << 20, 0});
  enable(100);
  EXPECT_EQ(pf->sriov().num_enabled(), 2);
}

TEST_F(SriovFixture, PfFlrTakesTheVfsAway) {
  place(Bdf(0, 7, 0, 0), mlx5::PfParams{8, 0x100, 1, 1 << 20, 0});
  enable(2);
  pf->function_level_reset();
  EXPECT_EQ(pf->sriov().num_enabled(), 0);
  EXPECT_EQ(fabric.find(Bdf(0, 8, 0, 0)), nullptr);
  EXPECT_EQ(rec.removed.size(), 2u);
  EXPECT_EQ(pf->config_read(pos + PCI_SRIOV_CTRL, 2), 0u);
}

TEST_F(SriovFixture, VfBarsSizeLikeBars) {
  place(Bdf(0, 7, 0, 0), mlx5::PfParams{8, 0x100, 1, 16 << 20, 0});
  uint16_t reg = pos + PCI_SRIOV_BAR + 8;  // VF BAR2, 64-bit
  pf->config_write(reg, 4, 0xffffffff);
  pf->config_write(reg + 4, 4, 0xffffffff);
  uint64_t mask = (uint64_t{pf->config_read(reg + 4, 4)} << 32) | (pf->config_read(reg, 4) & ~0xfu);
  EXPECT_EQ(~mask + 1, 16ull << 20);  // the per-VF size
  EXPECT_EQ(pf->config_read(reg, 4) & 0xf, 0xcu);
}

TEST_F(SriovFixture, VfBarRegistersAreReadOnlyZero) {
  place(Bdf(0, 7, 0, 0), mlx5::PfParams{8, 0x100, 1, 1 << 20, 0});
  enable(1);
  Function* vf = fabric.find(Bdf(0, 8, 0, 0));
  vf->config_write(PCI_BASE_ADDRESS_0, 4, 0xffffffff);
  EXPECT_EQ(vf->config_read(PCI_BASE_ADDRESS_0, 4), 0u);
  vf->config_write(PCI_COMMAND, 2, PCI_COMMAND_MEMORY);
  EXPECT_EQ(vf->config_read(PCI_COMMAND, 2) & PCI_COMMAND_MEMORY, 0u);
  EXPECT_EQ(vf->bar_memory(2)->size(), 1u << 20);
  EXPECT_EQ(vf->config_read(PCI_INTERRUPT_PIN, 1), 0u);
}

TEST(SriovParamsTest, Rejected) {
  auto bad = [](mlx5::PfParams p) { return !mlx5::Pf::create(p); };
  EXPECT_TRUE(bad({8, 0, 1, 1 << 20, 0}));        // offset 0
  EXPECT_TRUE(bad({8, 1, 0, 1 << 20, 0}));        // stride 0 with 8 VFs
  EXPECT_TRUE(bad({8, 1, 1, 3 << 20, 0}));        // not a power of two
  EXPECT_FALSE(bad({1, 1, 0, 1 << 20, 0}));       // stride 0 with one VF is fine
}

}  // namespace
}  // namespace uvfio::hw
