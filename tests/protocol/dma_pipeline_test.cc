// SPDX-License-Identifier: BSD-3-Clause
// The mlx5 VF's work queue over DMA messages, seen from the client: a
// scripted VMM (bytes from the vfio-user spec and the VF's documented
// registers and descriptors, docs/devices/mlx5-vf.md) whose memory has no
// fd, so every ring and buffer access is a DMA_READ or DMA_WRITE it answers
// in QEMU 10.x's layout. The device fetches the posted descriptors with one
// read, sends all of a batch's source reads before it waits for the first
// answer, then all the destination writes, then the completions together;
// buffers laid out one after another go as one read and one write.
#include <linux/pci_regs.h>
#include <poll.h>

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "e2e/harness.h"
#include "protocol/raw.h"

namespace uvfio::e2e {
namespace {

// docs/devices/mlx5-vf.md: BAR0 registers, the descriptor and completion.
enum : uint32_t { kSqBase = 0x10, kSqSize = 0x18, kSqTail = 0x1c, kCqBase = 0x28, kCqSize = 0x30, kCtrl = 0x3c };
enum : uint8_t { kOpCopy = 1 };
struct __attribute__((packed)) Desc {
  uint8_t op, flags;
  uint16_t rsvd;
  uint32_t len;
  uint64_t src, dst, cookie;
};
struct __attribute__((packed)) Compl {
  uint64_t cookie;
  uint32_t status, result;
};
constexpr uint64_t kIova = 0x100000, kMem = 1 << 20, kRing = 0x0, kCq = 0x1000, kData = 0x10000;
constexpr uint32_t kDescs = 8, kLen = 4096;

// `adjacent`: each descriptor's buffers right after the previous one's (one
// request each way); else a buffer's length apart (one request per buffer).
void run_queue(bool adjacent) {
  const uint64_t stride = adjacent ? kLen : 2 * kLen;
  auto src = [&](uint32_t i) { return kData + i * stride; };
  auto dst = [&](uint32_t i) { return kData + kDescs * stride + i * stride; };
  std::string dir = make_tmpdir("dmapipe");
  std::ofstream(dir + "/topo.toml") << kEndpointAndVfTopology;  // the VF: 0000:00:10.0
  Daemon d({"--config", dir + "/topo.toml", "--no-fuse", "--dma-layout", "qemu"}, "dmapipe");
  ASSERT_TRUE(d.wait_ready()) << d.log();
  Raw r(d.rundir() + "/vfio-user/0000:00:10.0.sock");
  ASSERT_TRUE(r.connected());
  r.version();
  DmaMapMsg map{32, kDmaFlagRead | kDmaFlagWrite, 0, kIova, kMem};
  ASSERT_EQ(r.call(kDmaMap, b(map)), 0);  // no fd: reached by messages only
  ASSERT_EQ(r.call(kRegionWrite, region_access(VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, 2, {0x06, 0x00})), 0);
  std::vector<uint8_t> mem(kMem, 0);
  for (uint32_t i = 0; i < kDescs; ++i) {
    Desc ds{kOpCopy, 0, 0, kLen, kIova + src(i), kIova + dst(i), 100 + i};
    std::memcpy(mem.data() + kRing + i * sizeof(Desc), &ds, sizeof(ds));
    for (uint32_t k = 0; k < kLen; ++k) mem[src(i) + k] = static_cast<uint8_t>(i * 31 + k);
  }
  auto reg = [&](uint32_t off, uint64_t v, unsigned w) {
    std::vector<uint8_t> data(w);
    std::memcpy(data.data(), &v, w);
    ASSERT_EQ(r.call(kRegionWrite, region_access(0, off, w, data)), 0);
  };
  reg(kSqBase, kIova + kRing, 8);
  reg(kSqSize, 64, 4);
  reg(kCqBase, kIova + kCq, 8);
  reg(kCqSize, 64, 4);
  reg(kCtrl, 1, 4);
  // The doorbell, posted; then the device's requests, as they come.
  std::vector<uint8_t> tail(4);
  uint32_t t = kDescs;
  std::memcpy(tail.data(), &t, 4);
  r.send(kRegionWrite, region_access(0, kSqTail, 4, tail));
  // The device's next request. The doorbell's reply may come before,
  // between or after them (the reactor answers it while the device's
  // thread already works): it is counted, not taken for a request.
  int doorbell_replies = 0;
  auto next = [&]() -> Message {
    for (;;) {
      pollfd p{r.fd(), POLLIN, 0};
      EXPECT_EQ(poll(&p, 1, 3000), 1) << "no message from the device";
      auto m = recv_message(r.fd());
      EXPECT_TRUE(m);
      if (!m) return Message{};
      if ((m->hdr.flags & kFlagsTypeMask) != kTypeReply) return std::move(*m);
      EXPECT_EQ(m->hdr.command, kRegionWrite);
      ++doorbell_replies;
    }
  };
  auto addr_count = [](const Message& m, uint64_t& a, uint32_t& n) {
    std::memcpy(&a, m.payload.data(), 8);
    std::memcpy(&n, m.payload.data() + 8, 4);  // QEMU's layout: u64 offset, u32 count
  };
  auto answer_read = [&](const Message& m) {
    uint64_t a;
    uint32_t n;
    addr_count(m, a, n);
    std::vector<uint8_t> rep(16 + n, 0);
    std::memcpy(rep.data(), m.payload.data(), 12);
    std::memcpy(rep.data() + 12, mem.data() + (a - kIova), n);
    Header h{m.hdr.msg_id, m.hdr.command, 0, kTypeReply, 0};
    ASSERT_TRUE(send_message(r.fd(), h, rep));
  };
  auto answer_write = [&](const Message& m) {
    uint64_t a;
    uint32_t n;
    addr_count(m, a, n);
    ASSERT_EQ(m.payload.size(), 12u + n + 4u);
    std::memcpy(mem.data() + (a - kIova), m.payload.data() + 12, n);
    Header h{m.hdr.msg_id, m.hdr.command, 0, kTypeReply, 0};
    ASSERT_TRUE(send_message(r.fd(), h, {}));
  };
  Message m = next();
  // One fetch of every posted descriptor.
  ASSERT_EQ(m.hdr.command, kDmaRead);
  uint64_t a;
  uint32_t n;
  addr_count(m, a, n);
  EXPECT_EQ(a, kIova + kRing);
  EXPECT_EQ(n, kDescs * sizeof(Desc));
  answer_read(m);
  // Every source read, before any is answered (adjacent: one read of all).
  uint32_t requests = adjacent ? 1 : kDescs;
  uint32_t each = adjacent ? kDescs * kLen : kLen;
  std::vector<Message> reads;
  for (uint32_t i = 0; i < requests; ++i) reads.push_back(next());
  for (uint32_t i = 0; i < requests; ++i) {
    ASSERT_EQ(reads[i].hdr.command, kDmaRead) << i;
    addr_count(reads[i], a, n);
    EXPECT_EQ(a, kIova + src(i)) << i;
    EXPECT_EQ(n, each);
  }
  for (auto& q : reads) answer_read(q);
  // Every destination write, in order, before any is answered.
  std::vector<Message> writes;
  for (uint32_t i = 0; i < requests; ++i) writes.push_back(next());
  for (uint32_t i = 0; i < requests; ++i) {
    ASSERT_EQ(writes[i].hdr.command, kDmaWrite) << i;
    addr_count(writes[i], a, n);
    EXPECT_EQ(a, kIova + dst(i)) << i;
    EXPECT_EQ(n, each);
  }
  for (auto& q : writes) answer_write(q);
  // The completions, together.
  m = next();
  ASSERT_EQ(m.hdr.command, kDmaWrite);
  addr_count(m, a, n);
  EXPECT_EQ(a, kIova + kCq);
  EXPECT_EQ(n, kDescs * sizeof(Compl));
  answer_write(m);
  for (uint32_t i = 0; i < kDescs; ++i) {
    Compl c;
    std::memcpy(&c, mem.data() + kCq + i * sizeof(c), sizeof(c));
    EXPECT_EQ(c.cookie, 100u + i);
    EXPECT_EQ(c.status, 0u);
    EXPECT_EQ(std::memcmp(mem.data() + dst(i), mem.data() + src(i), kLen), 0) << i;
  }
  if (doorbell_replies == 0) {  // not come yet: it is the next message
    Message rep = [&] {
      auto got = recv_message(r.fd());
      return got ? std::move(*got) : Message{};
    }();
    EXPECT_EQ(rep.hdr.command, kRegionWrite);
    EXPECT_EQ(rep.hdr.flags & kFlagsTypeMask, kTypeReply);
    ++doorbell_replies;
  }
  EXPECT_EQ(doorbell_replies, 1);
  EXPECT_TRUE(r.alive());
  sh("rm -rf " + dir);
}

TEST(DmaPipeline, TheVfQueueSendsABatchsRequestsBeforeItsFirstAnswer) { run_queue(false); }

TEST(DmaPipeline, AdjacentBuffersGoAsOneRequestEachWay) { run_queue(true); }

}  // namespace
}  // namespace uvfio::e2e
