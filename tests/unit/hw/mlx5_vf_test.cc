// SPDX-License-Identifier: BSD-3-Clause
// The mlx5 VF model's work queue: descriptors executed on the device's own
// thread through its IOMMU domain, completions and MSI-X, errors contained.
#include <sys/stat.h>

#include <fcntl.h>
#include <gtest/gtest.h>

#include <cstring>
#include <set>

#include "base/crc32c.h"
#include "hw/fabric.h"
#include "hw/iommu.h"
#include "hw/mlx5/pf.h"
#include "hw/mlx5/vf.h"

namespace uvfio::hw::mlx5 {
namespace {

struct Sink : IrqSink {
  std::atomic<int> msgs{0};
  void msi(uint64_t, uint32_t) override { ++msgs; }
  void intx(bool) override {}
};

constexpr uint64_t kRing = 0x10000, kCq = 0x20000, kData = 0x100000;

struct VfFixture : ::testing::Test {
  Fabric fabric;
  Pf* pf = nullptr;
  Vf* vf = nullptr;
  IommuDomain dom;
  std::vector<uint8_t> mem = std::vector<uint8_t>(4 << 20);
  Sink sink;
  void SetUp() override {
    auto p = Pf::create(PfParams{2, 0x100, 1, 1 << 20, 0});
    pf = static_cast<Pf*>(*fabric.attach(std::move(*p), Bdf(0, 7, 0, 0)));
    uint16_t pos = pf->find_ext_capability(PCI_EXT_CAP_ID_SRIOV);
    pf->config_write(pos + PCI_SRIOV_NUM_VF, 2, 1);
    pf->config_write(pos + PCI_SRIOV_CTRL, 2, PCI_SRIOV_CTRL_VFE | PCI_SRIOV_CTRL_MSE);
    vf = static_cast<Vf*>(fabric.find(Bdf(0, 8, 0, 0)));
    ASSERT_NE(vf, nullptr);
    ASSERT_TRUE(dom.map_host(0, mem.size(), mem.data(), kDmaRead | kDmaWrite));
    vf->set_iommu(&dom);
    vf->set_irq_sink(&sink);
    vf->config_write(PCI_COMMAND, 2, PCI_COMMAND_MASTER);
    // MSI-X on, vector 2 unmasked, programmed.
    uint16_t msix = vf->find_capability(PCI_CAP_ID_MSIX);
    vf->config_write(msix + PCI_MSIX_FLAGS, 2, PCI_MSIX_FLAGS_ENABLE);
    ASSERT_TRUE(vf->mmio_write(0, kMsixTableOffset + 2 * 16, 4, 0xfee00000));
    ASSERT_TRUE(vf->mmio_write(0, kMsixTableOffset + 2 * 16 + 12, 4, 0));
    w(vfreg::kSqBase, kRing, 8);
    w(vfreg::kSqSize, 16);
    w(vfreg::kCqBase, kCq, 8);
    w(vfreg::kCqSize, 16);
    w(vfreg::kIrqVector, 2);
    w(vfreg::kIrqCtrl, 1);
    w(vfreg::kCtrl, vfreg::kCtrlEnable);
  }
  void TearDown() override {
    if (vf) {
      vf->set_irq_sink(nullptr);
      vf->set_iommu(nullptr);
    }
  }
  void w(uint32_t reg, uint64_t v, unsigned width = 4) { ASSERT_TRUE(vf->mmio_write(0, reg, width, v)); }
  uint64_t r(uint32_t reg, unsigned width = 4) { return *vf->mmio_read(0, reg, width); }
  uint32_t tail = 0;
  void post(VfOp op, uint32_t len, uint64_t src, uint64_t dst, uint64_t cookie) {
    VfDescriptor d{static_cast<uint8_t>(op), 0, 0, len, src, dst, cookie};
    std::memcpy(mem.data() + kRing + (tail % 16) * sizeof(d), &d, sizeof(d));
    ++tail;
  }
  void ring() {
    w(vfreg::kSqTail, tail);
    ASSERT_TRUE(vf->wait_idle(std::chrono::seconds(5)));
  }
  VfCompletion completion(uint32_t i) {
    VfCompletion c;
    std::memcpy(&c, mem.data() + kCq + (i % 16) * sizeof(c), sizeof(c));
    return c;
  }
};

// Guest memory reached through "messages": a peer serving the device's
// DMA from `mem`, counting ring fetches, completion writes and batches.
struct Remote : IommuDomain::RemoteDma {
  std::vector<uint8_t>& mem;
  std::atomic<int> ring_reads{0}, cq_writes{0}, read_batches{0};
  explicit Remote(std::vector<uint8_t>& m) : mem(m) {}
  Result<void> read(uint64_t iova, std::span<uint8_t> out) override {
    if (iova >= kRing && iova < kRing + 16 * sizeof(VfDescriptor)) ++ring_reads;
    std::memcpy(out.data(), mem.data() + iova, out.size());
    return ok();
  }
  Result<void> write(uint64_t iova, std::span<const uint8_t> in) override {
    if (iova >= kCq && iova < kCq + 16 * sizeof(VfCompletion)) ++cq_writes;
    std::memcpy(mem.data() + iova, in.data(), in.size());
    return ok();
  }
  void read_many(std::span<Seg> segs) override {
    ++read_batches;
    RemoteDma::read_many(segs);
  }
  void cancel() override {}
};

TEST_F(VfFixture, ExecutesEveryOperation) {
  EXPECT_EQ(r(vfreg::kId), vfreg::kIdValue);
  for (int i = 0; i < 4096; ++i) mem[kData + i] = static_cast<uint8_t>(i * 31);
  post(VfOp::kCopy, 4096, kData, kData + 0x10000, 1);
  post(VfOp::kToDevice, 4096, kData, 0x800, 2);
  post(VfOp::kFromDevice, 4096, 0x800, kData + 0x20000, 3);
  post(VfOp::kFill, 100, 0x5a, kData + 0x30000, 4);
  post(VfOp::kCrc32c, 9, kData + 0x40000, 0, 5);
  std::memcpy(mem.data() + kData + 0x40000, "123456789", 9);
  ring();
  EXPECT_EQ(r(vfreg::kSqHead), 5u);
  EXPECT_EQ(r(vfreg::kCqTail), 5u);
  for (uint32_t i = 0; i < 5; ++i) {
    EXPECT_EQ(completion(i).cookie, i + 1);
    EXPECT_EQ(completion(i).status, 0u) << i;
  }
  EXPECT_EQ(std::memcmp(mem.data() + kData, mem.data() + kData + 0x10000, 4096), 0);
  EXPECT_EQ(std::memcmp(mem.data() + kData, vf->bar_memory(2)->data() + 0x800, 4096), 0);
  EXPECT_EQ(std::memcmp(mem.data() + kData, mem.data() + kData + 0x20000, 4096), 0);
  EXPECT_EQ(mem[kData + 0x30000 + 99], 0x5a);
  EXPECT_EQ(completion(4).result, 0xe3069283u);  // CRC32C("123456789")
  EXPECT_EQ(r(vfreg::kCountDone, 8), 5u);
  EXPECT_EQ(r(vfreg::kBytes, 8), 4096u * 3 + 100 + 9);
  EXPECT_GE(sink.msgs.load(), 1);
}

// Guest memory reached through messages (a client's memory without an fd):
// the queue fetches the descriptors posted with one read per batch (up to
// the ring's end) and writes their completions together, not a read and a
// write per descriptor; results, order and counters are as one by one.
TEST_F(VfFixture, DescriptorsAreFetchedAndCompletedInBatches) {
  IommuDomain remote_dom;
  ASSERT_TRUE(remote_dom.map_remote(0, mem.size(), kDmaRead | kDmaWrite));
  auto peer = std::make_shared<Remote>(mem);
  remote_dom.set_remote(peer);
  vf->set_iommu(&remote_dom);
  for (uint32_t i = 0; i < 13; ++i) post(VfOp::kFill, 64, i, kData + i * 64, 100 + i);
  ring();
  EXPECT_EQ(peer->ring_reads.load(), 1);  // 13 descriptors, one read
  EXPECT_EQ(peer->cq_writes.load(), 1);
  // 10 more across the ring's end: 3 up to it, then 7 from its start.
  for (uint32_t i = 13; i < 23; ++i) post(VfOp::kFill, 64, i, kData + i * 64, 100 + i);
  w(vfreg::kCqHead, 13);  // the guest consumed the first completions
  ring();
  EXPECT_EQ(peer->ring_reads.load(), 3);
  EXPECT_EQ(peer->cq_writes.load(), 3);
  EXPECT_EQ(r(vfreg::kSqHead), 23u);
  EXPECT_EQ(r(vfreg::kCqTail), 23u);
  EXPECT_EQ(r(vfreg::kCountDone), 23u);
  EXPECT_EQ(r(vfreg::kBytes), 23u * 64);
  for (uint32_t i = 7; i < 23; ++i) {  // the ring holds the last 16
    EXPECT_EQ(completion(i).cookie, 100 + i) << i;
    EXPECT_EQ(completion(i).status, 0u) << i;
    EXPECT_EQ(mem[kData + i * 64 + 63], i) << i;
  }
  vf->set_iommu(&dom);
}

// Through messages the queue pipelines: a wave's guest reads go out
// together, then its writes. Results must still be those of one descriptor
// after the other: a read of memory an earlier descriptor of the batch
// writes sees that write, device memory is touched in order, a failing
// DMA fails its descriptor only.
TEST_F(VfFixture, PipelinedBatchesKeepTheOrderOfOneByOne) {
  IommuDomain remote_dom;
  ASSERT_TRUE(remote_dom.map_remote(0, mem.size(), kDmaRead | kDmaWrite));
  auto peer = std::make_shared<Remote>(mem);
  remote_dom.set_remote(peer);
  vf->set_iommu(&remote_dom);
  const uint64_t a = kData, b = kData + 0x10000, c = kData + 0x20000, e = kData + 0x30000;
  for (int i = 0; i < 4096; ++i) mem[a + i] = static_cast<uint8_t>(i * 13);
  post(VfOp::kFill, 4096, 0x77, b, 1);             // writes b
  post(VfOp::kCopy, 4096, b, c, 2);                // reads b: must see the fill
  post(VfOp::kToDevice, 4096, a, 0x1000, 3);       // device memory from a
  post(VfOp::kFromDevice, 4096, 0x1000, e, 4);     // back out: what 3 put there
  post(VfOp::kCopy, 4096, 0x7fff0000, c, 5);       // unmapped source: EFAULT, c untouched
  post(VfOp::kCrc32c, 4096, c, 0, 6);              // reads c, written by 2
  post(VfOp::kToDevice, 4096, b, 0x1000, 7);       // device memory again, after 4 read it
  ring();
  EXPECT_EQ(r(vfreg::kSqHead), 7u);
  for (uint32_t i = 0; i < 7; ++i) EXPECT_EQ(completion(i).cookie, i + 1);
  for (uint32_t i : {0u, 1u, 2u, 3u, 5u, 6u}) EXPECT_EQ(completion(i).status, 0u) << i;
  EXPECT_EQ(completion(4).status, static_cast<uint32_t>(EFAULT));
  EXPECT_EQ(mem[c + 4095], 0x77);
  EXPECT_EQ(std::memcmp(mem.data() + e, mem.data() + a, 4096), 0);
  std::vector<uint8_t> fill(4096, 0x77);
  EXPECT_EQ(completion(5).result, crc32c(0, fill.data(), fill.size()));
  EXPECT_EQ(vf->bar_memory(2)->data()[0x1000 + 100], 0x77);
  EXPECT_GE(peer->read_batches.load(), 2);  // the hazard at 2 (and at 6) split the batch
  EXPECT_LT(peer->read_batches.load(), 7);  // but not into one wave per descriptor
  EXPECT_EQ(r(vfreg::kCountErr), 1u);
  vf->set_iommu(&dom);
}

TEST_F(VfFixture, BadDmaFailsTheDescriptorOnly) {
  dom.unmap_all();
  std::vector<uint8_t> small(0x40000);
  ASSERT_TRUE(dom.map_host(0, small.size(), small.data(), kDmaRead | kDmaWrite));
  std::vector<uint8_t> ro(4096, 7);
  ASSERT_TRUE(dom.map_host(0x80000, 4096, ro.data(), kDmaRead));
  auto post_to = [&](VfOp op, uint32_t len, uint64_t src, uint64_t dst, uint64_t cookie) {
    VfDescriptor d{static_cast<uint8_t>(op), 0, 0, len, src, dst, cookie};
    std::memcpy(small.data() + kRing + (tail % 16) * sizeof(d), &d, sizeof(d));
    ++tail;
  };
  post_to(VfOp::kCopy, 64, 0x30000, 0x900000, 1);            // unmapped destination
  post_to(VfOp::kCopy, 64, 0x30000, 0x80000, 2);             // read-only destination
  post_to(VfOp::kToDevice, 64, 0x30000, (1 << 20) - 8, 3);   // past device memory
  post_to(VfOp::kCopy, (1 << 20) + 1, 0, 0x30000, 4);        // too long
  post_to(static_cast<VfOp>(99), 4, 0, 0, 5);                // unknown op
  post_to(VfOp::kFill, 16, 0xab, 0x30000, 6);                // fine
  w(vfreg::kSqTail, tail);
  ASSERT_TRUE(vf->wait_idle(std::chrono::seconds(5)));
  auto comp = [&](uint32_t i) {
    VfCompletion c;
    std::memcpy(&c, small.data() + kCq + i * sizeof(c), sizeof(c));
    return c;
  };
  EXPECT_EQ(comp(0).status, static_cast<uint32_t>(EFAULT));
  EXPECT_EQ(comp(1).status, static_cast<uint32_t>(EPERM));
  EXPECT_EQ(comp(2).status, static_cast<uint32_t>(EINVAL));
  EXPECT_EQ(comp(3).status, static_cast<uint32_t>(EINVAL));
  EXPECT_EQ(comp(4).status, static_cast<uint32_t>(EOPNOTSUPP));
  EXPECT_EQ(comp(5).status, 0u);
  EXPECT_EQ(ro[0], 7);
  EXPECT_EQ(r(vfreg::kCountErr, 8), 5u);
  EXPECT_FALSE(r(vfreg::kStatus) & vfreg::kStatusError);
}

TEST_F(VfFixture, UnreachableRingStopsTheQueueInError) {
  w(vfreg::kCtrl, 0);
  w(vfreg::kSqBase, 0x7000000, 8);  // outside the map
  w(vfreg::kCtrl, vfreg::kCtrlEnable);
  tail = 1;
  w(vfreg::kSqTail, 1);
  ASSERT_TRUE(vf->wait_idle(std::chrono::seconds(5)));
  EXPECT_TRUE(r(vfreg::kStatus) & vfreg::kStatusError);
  EXPECT_EQ(r(vfreg::kSqHead), 0u);
}

TEST_F(VfFixture, QuiesceHoldsAndResumeContinues) {
  vf->quiesce();
  EXPECT_TRUE(vf->quiesced());
  EXPECT_TRUE(r(vfreg::kStatus) & vfreg::kStatusQuiesced);
  post(VfOp::kFill, 8, 1, kData, 1);
  w(vfreg::kSqTail, tail);
  // Idle with the descriptor pending: the engine decides under the queue
  // lock, so had it taken it, wait_idle() would have waited for it.
  ASSERT_TRUE(vf->wait_idle(std::chrono::seconds(5)));
  EXPECT_EQ(r(vfreg::kSqHead), 0u);  // nothing taken while quiesced
  vf->resume();
  ASSERT_TRUE(vf->wait_idle(std::chrono::seconds(5)));
  EXPECT_EQ(r(vfreg::kSqHead), 1u);
}

TEST_F(VfFixture, FullCompletionRingWaitsForTheGuest) {
  for (int i = 0; i < 16; ++i) post(VfOp::kFill, 8, 1, kData, i);
  ring();
  EXPECT_EQ(r(vfreg::kCqTail), 16u);
  for (int i = 0; i < 4; ++i) post(VfOp::kFill, 8, 2, kData, 100 + i);
  w(vfreg::kSqTail, tail);
  ASSERT_TRUE(vf->wait_idle(std::chrono::seconds(5)));  // as above: idle, work pending
  EXPECT_EQ(r(vfreg::kCqTail), 16u);  // the ring is full
  w(vfreg::kCqHead, 16);              // the guest consumed them
  ASSERT_TRUE(vf->wait_idle(std::chrono::seconds(5)));
  EXPECT_EQ(r(vfreg::kCqTail), 20u);
  EXPECT_EQ(completion(19).cookie, 103u);
}

TEST_F(VfFixture, BusMasterOffAndFlr) {
  vf->config_write(PCI_COMMAND, 2, 0);
  post(VfOp::kFill, 8, 1, kData, 1);
  w(vfreg::kSqTail, tail);
  ASSERT_TRUE(vf->wait_idle(std::chrono::seconds(5)));
  EXPECT_TRUE(r(vfreg::kStatus) & vfreg::kStatusError);  // cannot even fetch
  vf->function_level_reset();
  EXPECT_EQ(r(vfreg::kStatus), vfreg::kStatusReady);
  EXPECT_EQ(r(vfreg::kSqBase, 8), 0u);
  EXPECT_EQ(r(vfreg::kCtrl), 0u);
}

TEST(Crc32cTest, KnownValue) {
  EXPECT_EQ(uvfio::crc32c(0, reinterpret_cast<const uint8_t*>("123456789"), 9), 0xe3069283u);
  EXPECT_EQ(uvfio::crc32c(0, nullptr, 0), 0u);
}

}  // namespace
}  // namespace uvfio::hw::mlx5

namespace uvfio::hw::mlx5 {
namespace {

// A second VF on its own fabric, sharing the guest memory (as a migrated
// guest would have it on the destination).
struct Dest {
  Fabric fabric;
  Vf* vf = nullptr;
  IommuDomain dom;
  explicit Dest(std::vector<uint8_t>& mem) {
    auto p = Pf::create(PfParams{2, 0x100, 1, 1 << 20, 0});
    Pf* pf = static_cast<Pf*>(*fabric.attach(std::move(*p), Bdf(0, 7, 0, 0)));
    uint16_t pos = pf->find_ext_capability(PCI_EXT_CAP_ID_SRIOV);
    pf->config_write(pos + PCI_SRIOV_NUM_VF, 2, 1);
    pf->config_write(pos + PCI_SRIOV_CTRL, 2, PCI_SRIOV_CTRL_VFE);
    vf = static_cast<Vf*>(fabric.find(Bdf(0, 8, 0, 0)));
    (void)dom.map_host(0, mem.size(), mem.data(), kDmaRead | kDmaWrite);
    vf->set_iommu(&dom);
    vf->config_write(PCI_COMMAND, 2, PCI_COMMAND_MASTER);
  }
  ~Dest() { vf->set_iommu(nullptr); }
};

// An image as the firmware takes it: chunks of whole records.
using Image = std::vector<std::vector<uint8_t>>;
Image save_image(Vf& vf, Vf::SaveMode mode, size_t chunk = 64 << 10, uint64_t* announced = nullptr) {
  Image img;
  auto size = vf.save_begin(mode);
  EXPECT_TRUE(size);
  if (announced) *announced = size.value_or(0);
  for (int guard = 0; guard < 100000; ++guard) {
    std::vector<uint8_t> c(chunk);
    auto r = vf.save_next(c);
    EXPECT_TRUE(r);
    if (!r) break;
    c.resize(r->bytes);
    img.push_back(std::move(c));
    if (r->remaining == 0) break;
  }
  return img;
}
size_t total(const Image& img) {
  size_t n = 0;
  for (auto& c : img) n += c.size();
  return n;
}
Result<void> load_image(Vf& vf, const Image& img) {
  for (size_t i = 0; i < img.size(); ++i) {
    bool done = TRY(vf.load_chunk(img[i], i == 0));
    if (done != (i + 1 == img.size())) return Error(EPROTO, "image ended in the wrong chunk");
  }
  return ok();
}

TEST_F(VfFixture, FullImageCarriesRegistersAndDeviceMemory) {
  for (int p : {2, 3, 90, 200}) std::memset(vf->bar_memory(2)->data() + p * 4096, 0x42 + p, 4096);
  w(vfreg::kScratch, 0x1234);
  post(VfOp::kFill, 16, 9, kData, 1);
  ring();
  vf->quiesce();
  uint64_t pending = vf->pending_state_bytes(Vf::SaveMode::kFull), announced = 0;
  auto img = save_image(*vf, Vf::SaveMode::kFull, kFwMinChunk, &announced);
  EXPECT_EQ(total(img), announced);
  EXPECT_EQ(total(img), pending);
  EXPECT_GT(img.size(), 2u);
  for (auto& c : img) EXPECT_LE(c.size(), size_t{kFwMinChunk});
  // Sparse: only the pages written travel whole, the rest as zero pages.
  EXPECT_EQ(total(img), size_t{32 + 336 + 4 * 4100 + (256 - 4) * 4 + 4});
  Dest d(mem);
  std::memset(d.vf->bar_memory(2)->data(), 0x77, 1 << 20);  // stale contents are replaced, zeros too
  ASSERT_TRUE(load_image(*d.vf, img));
  EXPECT_EQ(*d.vf->mmio_read(0, vfreg::kScratch, 4), 0x1234u);
  EXPECT_EQ(*d.vf->mmio_read(0, vfreg::kSqHead, 4), 1u);
  EXPECT_EQ(*d.vf->mmio_read(0, vfreg::kCountDone, 8), 1u);
  EXPECT_EQ(std::memcmp(d.vf->bar_memory(2)->data(), vf->bar_memory(2)->data(), 1 << 20), 0);
  // The destination's queue carries on from there.
  post(VfOp::kFill, 16, 7, kData + 64, 2);
  ASSERT_TRUE(d.vf->mmio_write(0, vfreg::kSqTail, 4, tail));
  ASSERT_TRUE(d.vf->wait_idle(std::chrono::seconds(5)));
  EXPECT_EQ(*d.vf->mmio_read(0, vfreg::kCqTail, 4), 2u);
  EXPECT_EQ(completion(1).cookie, 2u);
}

// A full image's announced size comes from the memfd's block count, not a
// walk of its pages: it must still match the image, whatever the extents
// look like (runs, single pages, the first and the last page, a page
// written and punched out again).
TEST_F(VfFixture, FullImageSizeFromBlockCountMatchesTheImage) {
  BarMemory* dm = vf->bar_memory(2);
  uint64_t pages = dm->size() / 4096;
  for (uint64_t p : {uint64_t{0}, uint64_t{5}, uint64_t{6}, uint64_t{7}, uint64_t{40}, uint64_t{41}, pages - 1})
    std::memset(dm->data() + p * 4096, 0x5a, 4096);
  for (uint64_t p = 100; p < 180; p += 3) std::memset(dm->data() + p * 4096, 0x11, 4096);
  std::memset(dm->data() + 60 * 4096, 0x22, 4096);
  ASSERT_EQ(fallocate(dm->fd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 60 * 4096, 4096), 0);
  vf->quiesce();
  uint64_t pending = vf->pending_state_bytes(Vf::SaveMode::kFull), announced = 0;
  auto img = save_image(*vf, Vf::SaveMode::kFull, kFwMinChunk, &announced);
  EXPECT_EQ(pending, announced);
  EXPECT_EQ(total(img), pending);
  uint64_t data = 7 + 27;  // the pages written above, the punched one not
  EXPECT_EQ(pending, 32 + 336 + data * 4100 + (pages - data) * 4 + 4);
}

TEST_F(VfFixture, IncrementalImagesSeeDeviceAndMmapWrites) {
  (void)save_image(*vf, Vf::SaveMode::kFull);
  uint64_t header = vf->pending_state_bytes(Vf::SaveMode::kIncremental);
  EXPECT_LT(header, 4096u);  // registers only: no page changed
  // Two pages written by the device (TO_DEVICE), one through "the mmap".
  for (int i = 0; i < 8192; ++i) mem[kData + i] = 1;
  post(VfOp::kToDevice, 8192, kData, 4 * 4096, 1);
  ring();
  vf->bar_memory(2)->data()[100 * 4096 + 5] ^= 0xff;
  EXPECT_EQ(vf->pending_state_bytes(Vf::SaveMode::kIncremental), header + 3 * (4 + 4096));
  auto inc = save_image(*vf, Vf::SaveMode::kIncremental);
  EXPECT_EQ(total(inc), header + 3 * (4 + 4096));
  EXPECT_EQ(vf->pending_state_bytes(Vf::SaveMode::kIncremental), header);  // nothing new since
  // Full then incremental onto a destination gives the same memory.
  Dest d(mem);
  Vf& src = *vf;
  ASSERT_TRUE(load_image(*d.vf, save_image(src, Vf::SaveMode::kFull)));
  src.bar_memory(2)->data()[7] = 0x77;
  ASSERT_TRUE(load_image(*d.vf, save_image(src, Vf::SaveMode::kIncremental)));
  EXPECT_EQ(std::memcmp(d.vf->bar_memory(2)->data(), src.bar_memory(2)->data(), 1 << 20), 0);
  // A page written back to all zeros goes as a zero page, and the
  // destination's copy becomes zeros too.
  std::memset(src.bar_memory(2)->data() + 100 * 4096, 0, 4096);
  auto z = save_image(src, Vf::SaveMode::kIncremental);
  EXPECT_EQ(total(z), header + 4);
  ASSERT_TRUE(load_image(*d.vf, z));
  EXPECT_EQ(std::memcmp(d.vf->bar_memory(2)->data(), src.bar_memory(2)->data(), 1 << 20), 0);
}

TEST_F(VfFixture, AnImageAbandonedHalfWayMakesTheNextOneFull) {
  std::memset(vf->bar_memory(2)->data(), 0x11, 64 << 10);  // 16 data pages
  (void)save_image(*vf, Vf::SaveMode::kFull);
  std::memset(vf->bar_memory(2)->data(), 0x22, 64 << 10);
  ASSERT_TRUE(vf->save_begin(Vf::SaveMode::kIncremental));
  std::vector<uint8_t> c(kFwMinChunk);
  ASSERT_TRUE(vf->save_next(c));  // one page sent, then the session is gone
  uint64_t size = 0;
  auto next = save_image(*vf, Vf::SaveMode::kIncremental, 64 << 10, &size);
  EXPECT_EQ(size, vf->pending_state_bytes(Vf::SaveMode::kFull)) << "not a full image";
  EXPECT_EQ(vf->save_next(c).error().code, EINVAL);  // none in progress now
  std::vector<uint8_t> small(100);
  ASSERT_TRUE(vf->save_begin(Vf::SaveMode::kFull));
  EXPECT_EQ(vf->save_next(small).error().code, EINVAL);  // below the minimum chunk
}

TEST_F(VfFixture, BadImagesAreRefused) {
  for (int p : {12, 100, 200}) std::memset(vf->bar_memory(2)->data() + p * 4096, 0x33, 4096);
  auto img = save_image(*vf, Vf::SaveMode::kFull, kFwMinChunk);
  ASSERT_GT(img.size(), 2u);
  Dest d(mem);
  std::memset(d.vf->bar_memory(2)->data(), 0x5a, 4096);
  auto bad = img;
  bad[0][0] ^= 1;  // magic: refused before anything is applied
  EXPECT_EQ(load_image(*d.vf, bad).error().code, EINVAL);
  EXPECT_EQ(d.vf->bar_memory(2)->data()[0], 0x5a);
  EXPECT_EQ(d.vf->load_chunk(std::span<const uint8_t>(img[0].data(), 10), true).error().code, EINVAL);
  EXPECT_EQ(d.vf->load_chunk(img[1], false).error().code, EINVAL);  // no image started
  bad = img;
  bad.back().pop_back();  // truncated terminator
  EXPECT_EQ(load_image(*d.vf, bad).error().code, EINVAL);
  bad = img;
  uint32_t huge = 0x7fffff;  // a page index out of range, in a later chunk
  std::memcpy(bad[1].data(), &huge, 4);
  EXPECT_EQ(load_image(*d.vf, bad).error().code, EINVAL);
  bad = img;
  bad[1].resize(bad[1].size() - 10);  // a partial record
  EXPECT_EQ(load_image(*d.vf, bad).error().code, EINVAL);
  ASSERT_TRUE(load_image(*d.vf, img));  // and the good one still loads
  EXPECT_EQ(std::memcmp(d.vf->bar_memory(2)->data(), vf->bar_memory(2)->data(), 1 << 20), 0);
}

// Device memory nobody wrote is never touched by an image: a large device
// costs lseeks, not memory.
TEST(VfImage, UntouchedDeviceMemoryStaysUnallocated) {
  Fabric fabric;
  auto p = Pf::create(PfParams{1, 0x100, 1, uint64_t{1} << 30, 0});  // 1 GiB of device memory
  Pf* pf = static_cast<Pf*>(*fabric.attach(std::move(*p), Bdf(0, 7, 0, 0)));
  uint16_t pos = pf->find_ext_capability(PCI_EXT_CAP_ID_SRIOV);
  pf->config_write(pos + PCI_SRIOV_NUM_VF, 2, 1);
  pf->config_write(pos + PCI_SRIOV_CTRL, 2, PCI_SRIOV_CTRL_VFE);
  Vf* vf = static_cast<Vf*>(fabric.find(Bdf(0, 8, 0, 0)));
  ASSERT_NE(vf, nullptr);
  std::memset(vf->bar_memory(2)->data() + (512 << 20), 0x44, 8192);
  auto img = save_image(*vf, Vf::SaveMode::kFull, 1 << 20);
  EXPECT_LE(total(img), size_t{(1 << 30) / 4096 * 4 + 2 * 4100 + 1024});
  struct stat st;
  ASSERT_EQ(fstat(vf->bar_memory(2)->fd(), &st), 0);
  EXPECT_LE(st.st_blocks * 512, 64 << 10) << "the image allocated device memory";
}

TEST_F(VfFixture, QueueMovesWithNothingLostOrDoneTwice) {
  for (int i = 0; i < 15; ++i) post(VfOp::kFill, 4096, static_cast<uint64_t>(i), kData + i * 4096, 1000 + i);
  w(vfreg::kSqTail, tail);  // the source starts on them...
  vf->quiesce();            // ...and stops wherever it got to
  uint32_t done_here = static_cast<uint32_t>(r(vfreg::kSqHead));
  auto img = save_image(*vf, Vf::SaveMode::kFull);
  Dest d(mem);
  ASSERT_TRUE(load_image(*d.vf, img));
  ASSERT_TRUE(d.vf->wait_idle(std::chrono::seconds(5)));
  EXPECT_EQ(*d.vf->mmio_read(0, vfreg::kSqHead, 4), 15u);
  EXPECT_EQ(*d.vf->mmio_read(0, vfreg::kCqTail, 4), 15u);
  std::set<uint64_t> cookies;
  for (uint32_t i = 0; i < 15; ++i) {
    EXPECT_EQ(completion(i).status, 0u);
    cookies.insert(completion(i).cookie);
  }
  EXPECT_EQ(cookies.size(), 15u);
  EXPECT_EQ(r(vfreg::kSqHead), done_here);  // the source did not go on
  for (int i = 0; i < 15; ++i) EXPECT_EQ(mem[kData + i * 4096 + 4095], i);
}

}  // namespace
}  // namespace uvfio::hw::mlx5
