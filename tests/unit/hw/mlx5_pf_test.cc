// SPDX-License-Identifier: BSD-3-Clause
// The mlx5 PF's command interface and its firmware acting on the VFs:
// migration state query, suspend/resume, save/load images by DMA, the page
// tracker of the VF's DMA writes.
#include <gtest/gtest.h>

#include <condition_variable>
#include <cstring>
#include <mutex>

#include "hw/fabric.h"
#include "hw/iommu.h"
#include "hw/mlx5/pf.h"
#include "hw/mlx5/vf.h"

namespace uvfio::hw::mlx5 {
namespace {

constexpr uint64_t kQueue = 0x1000, kBuf = 0x100000;

// The PF's completions, as a driver's interrupt handler sees them: MSI-X
// vector `slot` (message data = slot).
struct Completions : IrqSink {
  std::mutex mu;
  std::condition_variable cv;
  uint32_t done = 0;
  void msi(uint64_t, uint32_t data) override {
    std::lock_guard lk(mu);
    done |= 1u << data;
    cv.notify_all();
  }
  void intx(bool) override {}
  bool wait(unsigned slot, std::chrono::milliseconds t = std::chrono::seconds(10)) {
    std::unique_lock lk(mu);
    bool ok = cv.wait_for(lk, t, [&] { return done & (1u << slot); });
    done &= ~(1u << slot);
    return ok;
  }
};

struct Board {
  Fabric fabric;
  Pf* pf = nullptr;
  Vf* vf = nullptr;
  IommuDomain pf_dom, vf_dom;
  Completions irq;
  std::vector<uint8_t> drv = std::vector<uint8_t>(8 << 20);    // the PF driver's memory
  std::vector<uint8_t> guest = std::vector<uint8_t>(1 << 20);  // the VF's guest memory
  Board() {
    auto p = Pf::create(PfParams{2, 0x100, 1, 1 << 20, 0});
    pf = static_cast<Pf*>(*fabric.attach(std::move(*p), Bdf(0, 7, 0, 0)));
    uint16_t pos = pf->find_ext_capability(PCI_EXT_CAP_ID_SRIOV);
    pf->config_write(pos + PCI_SRIOV_NUM_VF, 2, 2);
    pf->config_write(pos + PCI_SRIOV_CTRL, 2, PCI_SRIOV_CTRL_VFE);
    vf = static_cast<Vf*>(fabric.find(Bdf(0, 8, 0, 0)));
    (void)pf_dom.map_host(0, drv.size(), drv.data(), kDmaRead | kDmaWrite);
    (void)vf_dom.map_host(0, guest.size(), guest.data(), kDmaRead | kDmaWrite);
    pf->set_iommu(&pf_dom);
    vf->set_iommu(&vf_dom);
    vf->config_write(PCI_COMMAND, 2, PCI_COMMAND_MASTER);
    // MSI-X: one vector per command slot, data = the slot.
    uint16_t msix = pf->find_capability(PCI_CAP_ID_MSIX);
    for (unsigned i = 0; i < kCmdSlots; ++i) {
      (void)pf->mmio_write(0, kMsixTableOffset + i * 16, 4, 0xfee00000);
      (void)pf->mmio_write(0, kMsixTableOffset + i * 16 + 8, 4, i);
      (void)pf->mmio_write(0, kMsixTableOffset + i * 16 + 12, 4, 0);
    }
    pf->set_irq_sink(&irq);
    pf->config_write(msix + PCI_MSIX_FLAGS, 2, PCI_MSIX_FLAGS_ENABLE);
    (void)pf->mmio_write(0, pfreg::kCmdqBase, 8, kQueue);
  }
  ~Board() {
    pf->set_irq_sink(nullptr);
    vf->set_iommu(nullptr);
    pf->set_iommu(nullptr);
  }
  CmdEntry* entry(unsigned slot) { return reinterpret_cast<CmdEntry*>(drv.data() + kQueue + slot * kCmdEntrySize); }
  // Posts a command in `slot` without waiting.
  void post(FwMailbox in, unsigned slot = 0) {
    CmdEntry e{};
    e.mb = in;
    e.owner = kOwnerFirmware;
    std::memcpy(entry(slot), &e, sizeof(e));
    (void)pf->mmio_write(0, pfreg::kCmdqDoorbell, 4, 1u << slot);
  }
  FwMailbox complete(unsigned slot = 0) {
    EXPECT_TRUE(irq.wait(slot)) << "no completion in slot " << slot;
    CmdEntry e;
    std::memcpy(&e, entry(slot), sizeof(e));
    EXPECT_EQ(e.owner, kOwnerDriver);
    return e.mb;
  }
  FwMailbox cmd(FwMailbox in, unsigned slot = 0) {
    post(in, slot);
    return complete(slot);
  }
  static FwMailbox mk(FwCmd c, uint16_t op_mod = 0, uint32_t flags = 0, uint64_t buf_len = 0, uint64_t arg0 = 0,
                      uint64_t arg1 = 0, uint16_t fn = 1, uint64_t buf = kBuf) {
    FwMailbox m{};
    m.opcode = static_cast<uint16_t>(c);
    m.op_mod = op_mod;
    m.function_id = fn;
    m.flags = flags;
    m.buf_iova = buf;
    m.buf_len = buf_len;
    m.arg0 = arg0;
    m.arg1 = arg1;
    return m;
  }
  FwMailbox op(FwCmd c, uint16_t op_mod = 0, uint32_t flags = 0, uint64_t buf_len = 0, uint64_t arg0 = 0,
               uint64_t arg1 = 0, uint16_t fn = 1) {
    return cmd(mk(c, op_mod, flags, buf_len, arg0, arg1, fn));
  }
  // A whole image through SAVE commands of `chunk` bytes, as chunks.
  std::vector<std::vector<uint8_t>> save(uint32_t flags, uint64_t chunk = 64 << 10) {
    std::vector<std::vector<uint8_t>> out;
    uint32_t f = flags | kFwStart;
    for (int guard = 0; guard < 10000; ++guard) {
      FwMailbox r = op(FwCmd::kSaveVhcaState, 0, f, chunk);
      EXPECT_EQ(r.status, 0u);
      if (r.status) break;
      out.emplace_back(drv.begin() + kBuf, drv.begin() + static_cast<long>(kBuf + r.out0));
      f = flags;
      if (!r.out1) break;
    }
    return out;
  }
  uint32_t load(const std::vector<std::vector<uint8_t>>& img) {
    for (size_t i = 0; i < img.size(); ++i) {
      std::memcpy(drv.data() + kBuf, img[i].data(), img[i].size());
      FwMailbox r = op(FwCmd::kLoadVhcaState, 0, i == 0 ? kFwStart : 0, img[i].size());
      if (r.status) return r.status;
      if ((r.out0 == 1) != (i + 1 == img.size())) return EPROTO;
    }
    return 0;
  }
};

size_t total(const std::vector<std::vector<uint8_t>>& img) {
  size_t n = 0;
  for (auto& c : img) n += c.size();
  return n;
}

TEST(Mlx5PfTest, IdentityAndErrors) {
  Board b;
  EXPECT_EQ(*b.pf->mmio_read(0, pfreg::kId, 4), pfreg::kIdValue);
  EXPECT_EQ(*b.pf->mmio_read(0, pfreg::kCmdqSlots, 4), kCmdSlots);
  EXPECT_EQ(b.op(FwCmd::kQueryVhcaMigrationState, 0, 0, 0, 0, 0, 3).status, static_cast<uint32_t>(ENODEV));
  EXPECT_EQ(b.op(FwCmd::kQueryVhcaMigrationState, 0, 0, 0, 0, 0, 0).status, static_cast<uint32_t>(ENODEV));
  EXPECT_EQ(b.op(static_cast<FwCmd>(77)).status, static_cast<uint32_t>(EOPNOTSUPP));
  EXPECT_EQ(b.op(FwCmd::kSuspendVhca, 9).status, static_cast<uint32_t>(EINVAL));
  EXPECT_EQ(b.op(FwCmd::kSaveVhcaState, 0, kFwStart, 4096).status, static_cast<uint32_t>(EINVAL));  // below the minimum chunk
  EXPECT_EQ(b.op(FwCmd::kSaveVhcaState, 0, 0, 64 << 10).status, static_cast<uint32_t>(EINVAL));  // no image started
  // A queue the firmware cannot reach: no completion, nothing else happens.
  (void)b.pf->mmio_write(0, pfreg::kCmdqBase, 8, 0x7000000000ull);
  (void)b.pf->mmio_write(0, pfreg::kCmdqDoorbell, 4, 1);
  EXPECT_FALSE(b.irq.wait(0, std::chrono::milliseconds(200)));
  (void)b.pf->mmio_write(0, pfreg::kCmdqBase, 8, kQueue);
  EXPECT_EQ(b.op(FwCmd::kResumeVhca, kOpModResponder).status, 0u);
}

TEST(Mlx5PfTest, SuspendResumeQueryAndSaveLoadInChunks) {
  Board src, dst;
  std::memset(src.vf->bar_memory(2)->data() + 4096 * 3, 0x3c, 4096);
  EXPECT_EQ(src.op(FwCmd::kSuspendVhca, kOpModInitiator).status, 0u);
  EXPECT_TRUE(src.vf->quiesced());
  EXPECT_EQ(src.op(FwCmd::kSuspendVhca, kOpModResponder).status, 0u);
  FwMailbox q = src.op(FwCmd::kQueryVhcaMigrationState);
  ASSERT_EQ(q.status, 0u);
  auto img = src.save(kFwTrack, kFwMinChunk);  // tracked: incremental images follow
  EXPECT_EQ(total(img), q.out0);
  EXPECT_GT(img.size(), 1u);
  for (auto& c : img) EXPECT_LE(c.size(), kFwMinChunk);
  EXPECT_EQ(dst.load(img), 0u);
  EXPECT_EQ(std::memcmp(dst.vf->bar_memory(2)->data(), src.vf->bar_memory(2)->data(), 1 << 20), 0);
  // Incremental after the full one: only what changed.
  src.vf->bar_memory(2)->data()[10] = 1;
  auto inc = src.save(kFwIncremental);
  EXPECT_LT(total(inc), 2 * 4096u);
  EXPECT_EQ(dst.load(inc), 0u);
  EXPECT_EQ(dst.vf->bar_memory(2)->data()[10], 1);
  // An untracked image (a session without pre-copy) records nothing: the
  // next incremental one is full.
  auto untracked = src.save(0);
  src.vf->bar_memory(2)->data()[11] = 1;
  EXPECT_GE(total(src.save(kFwIncremental)), total(untracked));
  // A corrupt image is refused.
  inc[0][0] ^= 0xff;
  EXPECT_EQ(dst.load(inc), static_cast<uint32_t>(EINVAL));
  EXPECT_EQ(src.op(FwCmd::kResumeVhca, kOpModResponder).status, 0u);
  EXPECT_TRUE(src.vf->quiesced());  // the responder side alone does not restart DMA
  EXPECT_EQ(src.op(FwCmd::kResumeVhca, kOpModInitiator).status, 0u);
  EXPECT_FALSE(src.vf->quiesced());
}

// Commands for different VFs run side by side: a suspend that waits on VF 1
// (its engine is busy) does not hold up VF 2's commands.
TEST(Mlx5PfTest, SlotsRunInParallelAcrossFunctions) {
  Board b;
  Vf* vf2 = static_cast<Vf*>(b.fabric.find(Bdf(0, 8, 0, 1)));
  ASSERT_NE(vf2, nullptr);
  // VF 1's engine: a copy whose source read never completes, as a client
  // that does not answer its DMA.
  struct Stuck : IommuDomain::RemoteDma {
    std::mutex mu;
    std::condition_variable cv;
    bool release = false;
    bool entered = false;  // the engine is inside the copy
    Result<void> read(uint64_t, std::span<uint8_t> out) override {
      std::unique_lock lk(mu);
      entered = true;
      cv.notify_all();
      cv.wait(lk, [&] { return release; });
      std::memset(out.data(), 0, out.size());
      return ok();
    }
    Result<void> write(uint64_t, std::span<const uint8_t>) override { return ok(); }
    void cancel() override {}
  };
  auto stuck = std::make_shared<Stuck>();
  ASSERT_TRUE(b.vf_dom.map_remote(0x100000, 0x100000, kDmaRead | kDmaWrite));
  b.vf_dom.set_remote(stuck);
  VfDescriptor d{static_cast<uint8_t>(VfOp::kCopy), 0, 0, 4096, 0x100000, 0x2000, 1};
  std::memcpy(b.guest.data() + 0x10000, &d, sizeof(d));
  (void)b.vf->mmio_write(0, vfreg::kSqBase, 8, 0x10000);
  (void)b.vf->mmio_write(0, vfreg::kCqBase, 8, 0x20000);
  (void)b.vf->mmio_write(0, vfreg::kSqSize, 4, 16);
  (void)b.vf->mmio_write(0, vfreg::kCqSize, 4, 16);
  (void)b.vf->mmio_write(0, vfreg::kCtrl, 4, 1);
  (void)b.vf->mmio_write(0, vfreg::kSqTail, 4, 1);
  {
    // The engine has taken the descriptor (else SUSPEND would simply find
    // it idle and hold the queue).
    std::unique_lock lk(stuck->mu);
    ASSERT_TRUE(stuck->cv.wait_for(lk, std::chrono::seconds(5), [&] { return stuck->entered; }));
  }
  b.post(Board::mk(FwCmd::kSuspendVhca, kOpModInitiator), 0);  // waits for the stuck descriptor
  FwMailbox other = b.cmd(Board::mk(FwCmd::kQueryVhcaMigrationState, 0, 0, 0, 0, 0, 2), 1);
  EXPECT_EQ(other.status, 0u) << "VF 2's command waited for VF 1";
  EXPECT_FALSE(b.irq.wait(0, std::chrono::milliseconds(50)));  // VF 1's suspend is still waiting
  {
    std::lock_guard lk(stuck->mu);
    stuck->release = true;
    stuck->cv.notify_all();
  }
  FwMailbox s = b.complete(0);
  EXPECT_EQ(s.status, 0u);
  EXPECT_TRUE(b.vf->quiesced());
  b.vf_dom.set_remote(nullptr);
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
