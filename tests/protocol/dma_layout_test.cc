// SPDX-License-Identifier: BSD-3-Clause
// Server->client DMA in both wire layouts, against a running uvfiod, with a
// scripted client that answers DMA_READ and checks every DMA_WRITE byte for
// byte: the spec's (u64 address, u64 count, data at 16) and QEMU 10.x's
// (u64 offset, u32 count, data at 12, 4 bytes of padding). Auto mode tells
// them apart with a read-only probe; a wrong-sized or error reply fails that
// one DMA; transfers are split at the client's max_data_xfer_size.
//
// The device is the generic endpoint: writing DMA_GO makes it copy DMA_LEN
// bytes from DMA_SRC to DMA_DST through its IOMMU domain on its own DMA
// thread; DMA_STATUS says when it is over.
#include <gtest/gtest.h>

#include <cstring>

#include "e2e/harness.h"
#include "hw/endpoint.h"
#include "protocol/raw.h"

namespace uvfio::e2e {
namespace {

using EP = hw::GenericEndpoint;

const char* kTopology = R"(
[[device]]
address = "0000:00:03.0"
model = "endpoint"
driver_override = "vfio-pci"
)";

constexpr uint64_t kSrc = 0x100000, kDst = 0x200000, kMapSize = 0x100000;

struct Daemon1 {
  std::string dir;
  std::unique_ptr<Daemon> d;
  explicit Daemon1(const char* layout) {
    dir = make_tmpdir("dmalay");
    std::ofstream(dir + "/topo.toml") << kTopology;
    d = std::make_unique<Daemon>(
        std::vector<std::string>{"--config", dir + "/topo.toml", "--no-fuse", "--dma-layout", layout}, "dmalay");
  }
  ~Daemon1() {
    EXPECT_EQ(d->stop(), 0) << d->log();
    d.reset();
    sh("rm -rf " + dir);
  }
  std::string sock() { return d->rundir() + "/vfio-user/0000:00:03.0.sock"; }
};

// A client that keeps its memory for the two ranges and answers the
// server's DMA requests as one of the two layouts would.
class Script {
 public:
  enum Layout { kSpec, kQemu };
  Script(const std::string& sock, Layout l, uint32_t max_xfer = 1 << 20) : r_(sock), layout_(l) {
    std::string js = R"({"capabilities":{"max_msg_fds":16,"max_data_xfer_size":)" + std::to_string(max_xfer) + "}}";
    std::vector<uint8_t> v{0, 0, 0, 0};
    v.insert(v.end(), js.begin(), js.end());
    v.push_back(0);
    EXPECT_EQ(r_.call(kVersion, v), 0);
    for (uint64_t base : {kSrc, kDst}) {
      DmaMapMsg m{32, kDmaFlagRead | kDmaFlagWrite, 0, base, kMapSize};
      EXPECT_EQ(r_.call(kDmaMap, b(m)), 0);  // no fd: reached by messages only
    }
    src_.resize(kMapSize);
    dst_.assign(kMapSize, 0);
    for (size_t i = 0; i < src_.size(); ++i) src_[i] = static_cast<uint8_t>(i * 13 + 5);
    // Memory decode and bus mastering on.
    EXPECT_EQ(r_.call(kRegionWrite, region_access(VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, 2, {0x06, 0x00})), 0);
  }
  Raw& raw() { return r_; }
  const std::vector<uint8_t>& dst() const { return dst_; }

  // What the script does with the next DMA message.
  enum Answer { kNormal, kShortReply, kErrorReply, kRefuseProbe, kAnswerProbe };
  struct Seen {
    uint16_t cmd = 0;
    uint64_t address = 0, count = 0;
    size_t payload = 0;
  };

  // Starts DMA_GO (a posted write: the copy runs on the device's thread)
  // and serves its DMA messages while polling DMA_STATUS until the copy is
  // over. Returns the DMA messages seen, in order.
  std::vector<Seen> go(uint64_t src, uint64_t dst, uint32_t len, std::vector<Answer> answers = {}) {
    write_reg(EP::kRegDmaSrc, 8, src);
    write_reg(EP::kRegDmaDst, 8, dst);
    write_reg(EP::kRegDmaLen, 4, len);
    std::vector<uint8_t> one{1, 0, 0, 0};
    r_.send(kRegionWrite, region_access(0, EP::kRegDmaGo, 4, one));
    std::vector<Seen> seen;
    for (;;) {
      auto m = recv_message(r_.fd());
      EXPECT_TRUE(m);
      if (!m) return seen;
      if ((m->hdr.flags & kFlagsTypeMask) == kTypeReply) {
        if (m->hdr.command == kRegionRead) {
          uint32_t st = EP::kDmaBusy;
          if (m->payload.size() == 20) std::memcpy(&st, m->payload.data() + 16, 4);
          status_ = st;
          if (st != EP::kDmaBusy) return seen;
        }
        r_.send(kRegionRead, region_access(0, EP::kRegDmaStatus, 4));  // poll
        continue;
      }
      Answer a = seen.size() < answers.size() ? answers[seen.size()] : kNormal;
      seen.push_back(serve(*m, a));
    }
  }
  uint32_t status() const { return status_; }  // of the last go()
  uint32_t count() { return static_cast<uint32_t>(read_reg(EP::kRegDmaCount, 4)); }

 private:
  Seen serve(const Message& m, Answer a) {
    Seen s;
    s.cmd = m.hdr.command;
    s.payload = m.payload.size();
    EXPECT_GE(m.payload.size(), 16u);
    std::memcpy(&s.address, m.payload.data(), 8);
    uint64_t count64;
    std::memcpy(&count64, m.payload.data() + 8, 8);
    uint32_t count32;
    std::memcpy(&count32, m.payload.data() + 8, 4);
    s.count = layout_ == kSpec ? count64 : count32;
    Header h{m.hdr.msg_id, m.hdr.command, 0, kTypeReply, 0};
    if (a == kErrorReply || a == kRefuseProbe) {
      h.flags |= kFlagError;
      h.error_no = a == kErrorReply ? EFAULT : EINVAL;
      EXPECT_TRUE(send_message(r_.fd(), h, {}));
      return s;
    }
    uint8_t* mem = s.address >= kDst ? dst_.data() + (s.address - kDst) : src_.data() + (s.address - kSrc);
    if (m.hdr.command == kDmaRead) {
      uint64_t n = a == kAnswerProbe ? count32 : s.count;
      std::vector<uint8_t> rep;
      if (layout_ == kSpec) {
        rep.resize(16 + n);
        DmaRwMsg q{s.address, n};
        std::memcpy(rep.data(), &q, 16);
        std::memcpy(rep.data() + 16, mem, n);
      } else {
        rep.assign(16 + n, 0);  // QEMU: count + 32 bytes with the header
        QemuDmaRwMsg q{s.address, static_cast<uint32_t>(n)};
        std::memcpy(rep.data(), &q, 12);
        std::memcpy(rep.data() + 12, mem, n);
      }
      if (a == kShortReply) rep.pop_back();
      EXPECT_TRUE(send_message(r_.fd(), h, rep));
    } else {
      EXPECT_EQ(m.hdr.command, kDmaWrite);
      // The exact bytes: header fields, data, and (QEMU) 4 bytes of padding.
      size_t data_at = layout_ == kSpec ? 16 : 12;
      EXPECT_EQ(m.payload.size(), data_at + s.count + (layout_ == kSpec ? 0 : 4));
      if (layout_ == kQemu) {
        EXPECT_EQ(std::memcmp(m.payload.data() + 12 + s.count, "\0\0\0\0", 4), 0);
      } else {
        EXPECT_EQ(count64, s.count);
      }
      std::memcpy(mem, m.payload.data() + data_at, std::min<size_t>(s.count, m.payload.size() - data_at));
      if (layout_ == kSpec) {
        DmaWriteReplyMsg rep{s.address, static_cast<uint32_t>(s.count)};
        std::vector<uint8_t> p(sizeof(rep));
        std::memcpy(p.data(), &rep, sizeof(rep));
        if (a == kShortReply) p.pop_back();
        EXPECT_TRUE(send_message(r_.fd(), h, p));
      } else {
        std::vector<uint8_t> p;
        if (a == kShortReply) p.assign(3, 0);
        EXPECT_TRUE(send_message(r_.fd(), h, p));  // QEMU: the header alone
      }
    }
    return s;
  }
  void write_reg(uint32_t off, unsigned w, uint64_t v) {
    std::vector<uint8_t> d(w);
    std::memcpy(d.data(), &v, w);
    EXPECT_EQ(r_.call(kRegionWrite, region_access(0, off, w, d)), 0);
  }
  uint64_t read_reg(uint32_t off, unsigned w) {
    Message m;
    EXPECT_EQ(r_.call(kRegionRead, region_access(0, off, w), {}, &m), 0);
    uint64_t v = 0;
    if (m.payload.size() == 16 + w) std::memcpy(&v, m.payload.data() + 16, w);
    return v;
  }

  Raw r_;
  Layout layout_;
  uint32_t status_ = 0;
  std::vector<uint8_t> src_, dst_;
};

TEST(DmaLayout, AutoDetectsTheSpecsLayout) {
  Daemon1 d("auto");
  ASSERT_TRUE(d.d->wait_ready()) << d.d->log();
  Script s(d.sock(), Script::kSpec);
  auto seen = s.go(kSrc + 64, kDst + 128, 5000, {Script::kRefuseProbe});
  // The probe (a read of 2^32 + 8 bytes), refused; then the copy.
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0].cmd, kDmaRead);
  EXPECT_EQ(seen[0].count, (uint64_t{1} << 32) | 8);
  EXPECT_EQ(seen[0].address, kSrc + 64);
  EXPECT_EQ(seen[1].cmd, kDmaRead);
  EXPECT_EQ(seen[1].count, 5000u);
  EXPECT_EQ(seen[2].cmd, kDmaWrite);
  EXPECT_EQ(seen[2].count, 5000u);
  EXPECT_EQ(s.status(), 0u);
  EXPECT_EQ(s.count(), 1u);
  std::vector<uint8_t> want(5000);
  for (size_t i = 0; i < want.size(); ++i) want[i] = static_cast<uint8_t>((64 + i) * 13 + 5);
  EXPECT_EQ(std::memcmp(s.dst().data() + 128, want.data(), want.size()), 0);
  EXPECT_NE(d.d->log().find("DMA layout: the spec's (u64 count, data at 16): the client refused a read of 2^32+8"),
            std::string::npos)
      << d.d->log();
  // Decided once per connection: the next copy sends no probe.
  seen = s.go(kSrc, kDst, 100);
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_EQ(s.count(), 2u);
}

TEST(DmaLayout, AutoDetectsQemusLayout) {
  Daemon1 d("auto");
  ASSERT_TRUE(d.d->wait_ready()) << d.d->log();
  Script s(d.sock(), Script::kQemu);
  auto seen = s.go(kSrc, kDst, 3, {Script::kAnswerProbe});  // 3 bytes: the padding matters most
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0].count, 3u);  // QEMU reads the probe's u32 count: min(8, the DMA's length)
  EXPECT_EQ(seen[1].count, 3u);
  EXPECT_EQ(seen[1].payload, 16u);  // QEMU requires 16 payload bytes at least
  EXPECT_EQ(seen[2].cmd, kDmaWrite);
  EXPECT_EQ(seen[2].payload, 12u + 3 + 4);
  EXPECT_EQ(s.status(), 0u);
  EXPECT_EQ(std::memcmp(s.dst().data(), "\x05\x12\x1f", 3), 0);
  EXPECT_NE(d.d->log().find("DMA layout: QEMU's (u32 count, data at 12): the client answered a read of 2^32+3 "
                            "bytes with 3"),
            std::string::npos)
      << d.d->log();
  seen = s.go(kSrc + 4096, kDst + 4096, 65536);
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_EQ(s.status(), 0u);
  std::vector<uint8_t> want(65536);
  for (size_t i = 0; i < want.size(); ++i) want[i] = static_cast<uint8_t>((4096 + i) * 13 + 5);
  EXPECT_EQ(std::memcmp(s.dst().data() + 4096, want.data(), want.size()), 0);
}

TEST(DmaLayout, ExplicitModesSendNoProbeAndSplitAtTheClientsMaximum) {
  for (auto [mode, layout] : {std::pair{"qemu", Script::kQemu}, std::pair{"spec", Script::kSpec}}) {
    SCOPED_TRACE(mode);
    Daemon1 d(mode);
    ASSERT_TRUE(d.d->wait_ready()) << d.d->log();
    Script s(d.sock(), layout, 4096);  // the client takes at most 4 KiB per message
    auto seen = s.go(kSrc, kDst, 2 * 4096 + 100);
    ASSERT_EQ(seen.size(), 6u);
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(seen[i].cmd, kDmaRead);
      EXPECT_EQ(seen[i].count, i < 2 ? 4096u : 100u);
      EXPECT_EQ(seen[i].address, kSrc + 4096u * i);
      EXPECT_EQ(seen[3 + i].cmd, kDmaWrite);
      EXPECT_EQ(seen[3 + i].count, i < 2 ? 4096u : 100u);
    }
    EXPECT_EQ(s.status(), 0u);
    std::vector<uint8_t> want(2 * 4096 + 100);
    for (size_t i = 0; i < want.size(); ++i) want[i] = static_cast<uint8_t>(i * 13 + 5);
    EXPECT_EQ(std::memcmp(s.dst().data(), want.data(), want.size()), 0);
    EXPECT_EQ(d.d->log().find("DMA layout:"), std::string::npos) << "explicit modes do not probe";
  }
}

TEST(DmaLayout, AWrongSizedOrErrorReplyFailsThatDmaOnly) {
  for (auto layout : {Script::kSpec, Script::kQemu}) {
    SCOPED_TRACE(layout == Script::kSpec ? "spec" : "qemu");
    Daemon1 d(layout == Script::kSpec ? "spec" : "qemu");
    ASSERT_TRUE(d.d->wait_ready()) << d.d->log();
    Script s(d.sock(), layout);
    // A DMA_READ reply one byte short: EIO, nothing written.
    auto seen = s.go(kSrc, kDst, 64, {Script::kShortReply});
    EXPECT_EQ(seen.size(), 1u);
    EXPECT_EQ(s.status(), uint32_t{EIO});
    EXPECT_EQ(s.dst()[0], 0);
    // An error reply: its errno.
    seen = s.go(kSrc, kDst, 64, {Script::kErrorReply});
    EXPECT_EQ(s.status(), uint32_t{EFAULT});
    // A DMA_WRITE reply of the wrong size: EIO.
    seen = s.go(kSrc, kDst, 64, {Script::kNormal, Script::kShortReply});
    EXPECT_EQ(seen.size(), 2u);
    EXPECT_EQ(s.status(), uint32_t{EIO});
    // The connection and the device go on.
    seen = s.go(kSrc, kDst, 64);
    EXPECT_EQ(s.status(), 0u);
    EXPECT_EQ(s.count(), 1u);
    EXPECT_TRUE(s.raw().alive());
  }
}

}  // namespace
}  // namespace uvfio::e2e
