// The mlx5 PF's command interface and its firmware acting on the VFs:
// migration state query, suspend/resume, save/load images by DMA, the page
// tracker of the VF's DMA writes.
#include <gtest/gtest.h>

#include <cstring>

#include "hw/fabric.h"
#include "hw/iommu.h"
#include "hw/mlx5/mlx5.h"

namespace uvfio::hw::mlx5 {
namespace {

constexpr uint64_t kMailbox = 0x1000, kBuf = 0x100000;

struct Board {
  Fabric fabric;
  Pf* pf = nullptr;
  Vf* vf = nullptr;
  IommuDomain pf_dom, vf_dom;
  std::vector<uint8_t> drv = std::vector<uint8_t>(8 << 20);    // the PF driver's memory
  std::vector<uint8_t> guest = std::vector<uint8_t>(1 << 20);  // the VF's guest memory
  Board() {
    auto p = Pf::create(PfParams{2, 0x100, 1, 1 << 20, 0});
    pf = static_cast<Pf*>(*fabric.attach(std::move(*p), Bdf(0, 7, 0, 0)));
    uint16_t pos = pf->find_ext_capability(PCI_EXT_CAP_ID_SRIOV);
    pf->config_write(pos + PCI_SRIOV_NUM_VF, 2, 1);
    pf->config_write(pos + PCI_SRIOV_CTRL, 2, PCI_SRIOV_CTRL_VFE);
    vf = static_cast<Vf*>(fabric.find(Bdf(0, 8, 0, 0)));
    (void)pf_dom.map_host(0, drv.size(), drv.data(), kDmaRead | kDmaWrite);
    (void)vf_dom.map_host(0, guest.size(), guest.data(), kDmaRead | kDmaWrite);
    pf->set_iommu(&pf_dom);
    vf->set_iommu(&vf_dom);
    vf->config_write(PCI_COMMAND, 2, PCI_COMMAND_MASTER);
  }
  ~Board() {
    vf->set_iommu(nullptr);
    pf->set_iommu(nullptr);
  }
  FwMailbox cmd(FwMailbox in) {
    std::memcpy(drv.data() + kMailbox, &in, sizeof(in));
    (void)pf->mmio_write(0, pfreg::kCmdMailbox, 8, kMailbox);
    (void)pf->mmio_write(0, pfreg::kCmdDoorbell, 4, 1);
    FwMailbox out;
    std::memcpy(&out, drv.data() + kMailbox, sizeof(out));
    return out;
  }
  FwMailbox op(FwCmd c, uint16_t op_mod = 0, uint32_t flags = 0, uint64_t buf_len = 0, uint64_t arg0 = 0,
               uint64_t arg1 = 0, uint16_t fn = 1) {
    FwMailbox m{};
    m.opcode = static_cast<uint16_t>(c);
    m.op_mod = op_mod;
    m.function_id = fn;
    m.flags = flags;
    m.buf_iova = kBuf;
    m.buf_len = buf_len;
    m.arg0 = arg0;
    m.arg1 = arg1;
    return cmd(m);
  }
};

TEST(Mlx5PfTest, IdentityAndErrors) {
  Board b;
  EXPECT_EQ(*b.pf->mmio_read(0, pfreg::kId, 4), pfreg::kIdValue);
  EXPECT_EQ(b.op(FwCmd::kQueryVhcaMigrationState, 0, 0, 0, 0, 0, 2).status, static_cast<uint32_t>(ENODEV));
  EXPECT_EQ(b.op(FwCmd::kQueryVhcaMigrationState, 0, 0, 0, 0, 0, 0).status, static_cast<uint32_t>(ENODEV));
  EXPECT_EQ(b.op(static_cast<FwCmd>(77)).status, static_cast<uint32_t>(EOPNOTSUPP));
  EXPECT_EQ(b.op(FwCmd::kSuspendVhca, 9).status, static_cast<uint32_t>(EINVAL));
  // A mailbox the firmware cannot reach: the status register says so.
  (void)b.pf->mmio_write(0, pfreg::kCmdMailbox, 8, 0x7000000000ull);
  (void)b.pf->mmio_write(0, pfreg::kCmdDoorbell, 4, 1);
  EXPECT_EQ(*b.pf->mmio_read(0, pfreg::kCmdStatus, 4), pfreg::kStatusDone | (uint32_t{EFAULT} << 8));
}

TEST(Mlx5PfTest, SuspendResumeQueryAndSaveLoad) {
  Board src, dst;
  std::memset(src.vf->bar_memory(2)->data() + 4096 * 3, 0x3c, 4096);
  EXPECT_EQ(src.op(FwCmd::kSuspendVhca, kOpModInitiator).status, 0u);
  EXPECT_TRUE(src.vf->quiesced());
  EXPECT_EQ(src.op(FwCmd::kSuspendVhca, kOpModResponder).status, 0u);
  FwMailbox q = src.op(FwCmd::kQueryVhcaMigrationState);
  ASSERT_EQ(q.status, 0u);
  uint64_t need = q.out0;
  EXPECT_GT(need, (1u << 20));  // every page, plus header and registers
  // Too small a buffer: ENOSPC with the size needed, nothing consumed.
  FwMailbox small = src.op(FwCmd::kSaveVhcaState, 0, 0, 4096);
  EXPECT_EQ(small.status, static_cast<uint32_t>(ENOSPC));
  EXPECT_EQ(small.out0, need);
  FwMailbox save = src.op(FwCmd::kSaveVhcaState, 0, 0, src.drv.size() - kBuf);
  ASSERT_EQ(save.status, 0u);
  EXPECT_EQ(save.out0, need);
  // Hand the image to the destination's driver memory and load it there.
  std::memcpy(dst.drv.data() + kBuf, src.drv.data() + kBuf, save.out0);
  EXPECT_EQ(dst.op(FwCmd::kLoadVhcaState, 0, 0, save.out0).status, 0u);
  EXPECT_EQ(std::memcmp(dst.vf->bar_memory(2)->data(), src.vf->bar_memory(2)->data(), 1 << 20), 0);
  // Incremental after the full one: only what changed.
  src.vf->bar_memory(2)->data()[10] = 1;
  FwMailbox inc = src.op(FwCmd::kSaveVhcaState, 0, kFwIncremental, src.drv.size() - kBuf);
  ASSERT_EQ(inc.status, 0u);
  EXPECT_LT(inc.out0, 2 * 4096u);
  std::memcpy(dst.drv.data() + kBuf, src.drv.data() + kBuf, inc.out0);
  EXPECT_EQ(dst.op(FwCmd::kLoadVhcaState, 0, 0, inc.out0).status, 0u);
  EXPECT_EQ(dst.vf->bar_memory(2)->data()[10], 1);
  // A corrupt image is refused.
  dst.drv[kBuf] ^= 0xff;
  EXPECT_EQ(dst.op(FwCmd::kLoadVhcaState, 0, 0, inc.out0).status, static_cast<uint32_t>(EINVAL));
  EXPECT_EQ(src.op(FwCmd::kResumeVhca, kOpModResponder).status, 0u);
  EXPECT_TRUE(src.vf->quiesced());  // the responder side alone does not restart DMA
  EXPECT_EQ(src.op(FwCmd::kResumeVhca, kOpModInitiator).status, 0u);
  EXPECT_FALSE(src.vf->quiesced());
}

TEST(Mlx5PfTest, PageTrackerReportsAndClearsTheVfsDmaWrites) {
  Board b;
  uint64_t ranges[2] = {0x40000, 0x40000};  // iova, length
  std::memcpy(b.drv.data() + kBuf, ranges, sizeof(ranges));
  ASSERT_EQ(b.op(FwCmd::kCreatePageTracker, 0, 0, 16, 4096, 1).status, 0u);
  EXPECT_EQ(b.op(FwCmd::kCreatePageTracker, 0, 0, 16, 4096, 1).status, static_cast<uint32_t>(EBUSY));
  // The VF writes three pages inside the range and one outside.
  std::vector<uint8_t> x(100, 1);
  ASSERT_TRUE(b.vf_dom.write(0x41000, x));
  ASSERT_TRUE(b.vf_dom.write(0x44ff0, std::vector<uint8_t>(32, 2)));  // straddles two pages
  ASSERT_TRUE(b.vf_dom.write(0x10000, x));                             // not tracked
  FwMailbox r = b.op(FwCmd::kReportPageTracker, 0, 0, 4096, 0x40000, 0x40000);
  ASSERT_EQ(r.status, 0u);
  ASSERT_EQ(r.out0, 3u);
  EXPECT_EQ(r.out1, 0u);
  uint64_t pages[3];
  std::memcpy(pages, b.drv.data() + kBuf, sizeof(pages));
  EXPECT_EQ(pages[0], 0x41000u);
  EXPECT_EQ(pages[1], 0x44000u);
  EXPECT_EQ(pages[2], 0x45000u);
  // Cleared by the report; a small output buffer reports "more".
  EXPECT_EQ(b.op(FwCmd::kReportPageTracker, 0, 0, 4096, 0x40000, 0x40000).out0, 0u);
  ASSERT_TRUE(b.vf_dom.write(0x41000, x));
  ASSERT_TRUE(b.vf_dom.write(0x42000, x));
  r = b.op(FwCmd::kReportPageTracker, 0, 0, 8, 0x40000, 0x40000);
  EXPECT_EQ(r.out0, 1u);
  EXPECT_EQ(r.out1, 1u);
  EXPECT_EQ(b.op(FwCmd::kDestroyPageTracker).status, 0u);
  EXPECT_EQ(b.op(FwCmd::kReportPageTracker, 0, 0, 8, 0x40000, 0x40000).status, static_cast<uint32_t>(EINVAL));
  EXPECT_EQ(b.op(FwCmd::kCreatePageTracker, 0, 0, 16, 1000, 1).status, static_cast<uint32_t>(EINVAL));  // page size
}

}  // namespace
}  // namespace uvfio::hw::mlx5
