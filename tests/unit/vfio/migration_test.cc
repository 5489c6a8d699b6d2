// SPDX-License-Identifier: BSD-3-Clause
// The migration v2 graph, exhaustively: every (from, to) pair for every
// supported-state set, against the kernel's arcs, shortest paths and the
// ERROR termination. And the device-level loop with a fake driver.
#include "vfio/migration.h"

#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <queue>
#include <set>

#include "vfio/device.h"

namespace uvfio::vfio {
namespace {

using S = MigState;
const uint64_t kFlagSets[] = {kMigStopCopy, kMigStopCopy | kMigP2P, kMigStopCopy | kMigPreCopy,
                              kMigStopCopy | kMigP2P | kMigPreCopy};

// The direct arcs a driver implements (reference §3.2), per feature set.
std::set<std::pair<S, S>> arcs(uint64_t flags) {
  std::set<std::pair<S, S>> a{{S::kStop, S::kStopCopy}, {S::kStopCopy, S::kStop}, {S::kStop, S::kResuming},
                              {S::kResuming, S::kStop}};
  bool p2p = flags & kMigP2P, pre = flags & kMigPreCopy;
  if (!p2p) a.insert({{S::kRunning, S::kStop}, {S::kStop, S::kRunning}});
  if (p2p)
    a.insert({{S::kRunning, S::kRunningP2P}, {S::kRunningP2P, S::kRunning}, {S::kRunningP2P, S::kStop},
              {S::kStop, S::kRunningP2P}});
  if (pre && !p2p) a.insert({{S::kRunning, S::kPreCopy}, {S::kPreCopy, S::kRunning}, {S::kPreCopy, S::kStopCopy}});
  if (pre && p2p)
    a.insert({{S::kRunning, S::kPreCopy}, {S::kPreCopy, S::kRunning}, {S::kPreCopy, S::kPreCopyP2P},
              {S::kPreCopyP2P, S::kPreCopy}, {S::kPreCopyP2P, S::kRunningP2P}, {S::kPreCopyP2P, S::kStopCopy},
              {S::kRunningP2P, S::kPreCopyP2P}});
  return a;
}

bool saving(S s) { return s == S::kPreCopy || s == S::kPreCopyP2P || s == S::kStopCopy; }

// Independent oracle: BFS over the arcs. A saving-group state may be passed
// through only while the path has not left the saving group (PRE_COPY ->
// PRE_COPY_P2P -> STOP_COPY); STOP_COPY -> PRE_COPY(_P2P) is forbidden.
int shortest(uint64_t flags, S from, S to) {
  if (from == S::kStopCopy && (to == S::kPreCopy || to == S::kPreCopyP2P)) return -1;
  auto a = arcs(flags);
  struct Node { S s; bool in_group; };
  std::map<std::pair<S, bool>, int> dist;
  std::queue<Node> q;
  dist[{from, saving(from)}] = 0;
  q.push({from, saving(from)});
  while (!q.empty()) {
    Node c = q.front();
    q.pop();
    int d = dist[{c.s, c.in_group}];
    if (c.s == to) return d;
    if (c.s != from && saving(c.s) && !c.in_group) continue;  // cannot pass through
    for (auto& [x, y] : a) {
      if (x != c.s) continue;
      Node n{y, c.in_group && saving(y)};
      if (dist.count({n.s, n.in_group})) continue;
      dist[{n.s, n.in_group}] = d + 1;
      q.push(n);
    }
  }
  return -1;
}

TEST(MigrationGraphTest, EveryPairForEveryFeatureSet) {
  int checked = 0;
  for (uint64_t flags : kFlagSets) {
    auto a = arcs(flags);
    for (uint32_t f = 0; f < kNumMigStates; ++f) {
      for (uint32_t t = 0; t < kNumMigStates; ++t) {
        S from = static_cast<S>(f), to = static_cast<S>(t);
        if (!mig_state_supported(from, flags)) {
          EXPECT_EQ(mig_next_state(from, to, flags).error().code, EINVAL);
          continue;
        }
        if (!mig_state_supported(to, flags)) {
          EXPECT_EQ(mig_next_state(from, to, flags).error().code, EINVAL) << to_string(from) << "->" << to_string(to);
          continue;
        }
        int want = shortest(flags, from, to);
        S cur = from;
        int steps = 0;
        std::string path = to_string(from);
        bool failed = false;
        while (cur != to && steps < 10) {
          auto n = mig_next_state(cur, to, flags);
          if (!n) {
            failed = true;
            EXPECT_EQ(n.error().code, EINVAL);
            break;
          }
          EXPECT_TRUE(a.count({cur, *n})) << "not an arc: " << to_string(cur) << "->" << to_string(*n) << " flags "
                                          << flags;
          if (steps > 0 && !saving(from)) {
            EXPECT_FALSE(saving(cur)) << "saving state inside a path: " << path;
          }
          cur = *n;
          path += std::string("->") + to_string(cur);
          ++steps;
        }
        if (want < 0) {
          EXPECT_TRUE(failed) << path << " should be refused (flags " << flags << ")";
        } else {
          EXPECT_FALSE(failed) << to_string(from) << "->" << to_string(to) << " flags " << flags;
          EXPECT_EQ(cur, to) << path;
          EXPECT_EQ(steps, want) << path << " is not the shortest (flags " << flags << ")";
        }
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 4 * 4 + 5 * 5 + 5 * 5 + 7 * 7);
}

TEST(MigrationGraphTest, KernelTableSpotChecks) {
  const uint64_t all = kMigStopCopy | kMigP2P | kMigPreCopy;
  // The forbidden arcs end in ERROR, which the skip loop must not spin on.
  EXPECT_EQ(mig_next_state(S::kStopCopy, S::kPreCopy, all).error().code, EINVAL);
  EXPECT_EQ(mig_next_state(S::kStopCopy, S::kPreCopyP2P, all).error().code, EINVAL);
  EXPECT_EQ(mig_next_state(S::kStopCopy, S::kPreCopy, kMigStopCopy | kMigPreCopy).error().code, EINVAL);
  EXPECT_EQ(mig_next_state(S::kRunning, S::kError, all).error().code, EINVAL);
  EXPECT_EQ(mig_next_state(S::kError, S::kRunning, all).error().code, EINVAL);
  EXPECT_EQ(mig_next_state(static_cast<S>(9), S::kRunning, all).error().code, EINVAL);
  // Without P2P, RUNNING->STOP is direct; with it, through RUNNING_P2P.
  EXPECT_EQ(*mig_next_state(S::kRunning, S::kStop, kMigStopCopy), S::kStop);
  EXPECT_EQ(*mig_next_state(S::kRunning, S::kStop, all), S::kRunningP2P);
  EXPECT_EQ(*mig_next_state(S::kPreCopy, S::kStopCopy, all), S::kPreCopyP2P);
  EXPECT_EQ(*mig_next_state(S::kPreCopy, S::kStopCopy, kMigStopCopy | kMigPreCopy), S::kStopCopy);
  EXPECT_EQ(*mig_next_state(S::kResuming, S::kRunning, all), S::kStop);
  EXPECT_EQ(mig_table(S::kRunningP2P, S::kPreCopyP2P), S::kPreCopyP2P);
}

// ---- The device-level loop, with a fake driver -----------------------------------------

class FakeFile : public MigrationFile {};

class FakeMigDevice : public Device {
 public:
  FakeMigDevice(uint64_t flags) : Device("fake"), flags_(flags) {}
  std::vector<std::pair<S, S>> arcs_done;
  std::pair<S, S> fail_on{S::kError, S::kError};
  bool logging = true;
  std::vector<DmaRange> log_ranges;
  uint64_t log_page = 0;

 protected:
  Result<void> open_device(const OpenArgs&) override { return ok(); }
  void close_device() override {}
  Result<vfio_device_info> info() override { return vfio_device_info{}; }
  Result<RegionInfo> region_info(uint32_t) override { return Error(EINVAL); }
  Result<size_t> read(uint32_t, uint64_t, std::span<uint8_t>) override { return Error(EINVAL); }
  Result<size_t> write(uint32_t, uint64_t, std::span<const uint8_t>) override { return Error(EINVAL); }
  Result<MmapArea> mmap(uint32_t) override { return Error(EINVAL); }
  Result<vfio_irq_info> irq_info(uint32_t index) override {
    vfio_irq_info i{};
    i.index = index;
    i.count = 1;
    return i;
  }
  Result<void> irqs(IrqSet&) override { return ok(); }
  Result<void> do_reset() override { return ok(); }
  uint64_t migration_flags() const override { return flags_; }
  Result<std::shared_ptr<MigrationFile>> migration_arc(S from, S to) override {
    if (std::make_pair(from, to) == fail_on) return Error(EIO, "arc failed");
    arcs_done.emplace_back(from, to);
    bool opens = (from == S::kRunning && to == S::kPreCopy) || (from == S::kRunningP2P && to == S::kPreCopyP2P) ||
                 (from == S::kStop && to == S::kStopCopy) || (from == S::kStop && to == S::kResuming);
    return opens ? std::make_shared<FakeFile>() : std::shared_ptr<MigrationFile>();
  }
  Result<uint64_t> migration_data_size() override { return uint64_t{12345}; }
  bool has_dma_logging() const override { return logging; }
  Result<void> log_start(uint64_t& page_size, const std::vector<DmaRange>& r) override {
    log_ranges = r;
    log_page = page_size;
    page_size = 8192;  // the device picks its granularity
    return ok();
  }
  Result<void> log_stop() override { return ok(); }
  Result<void> log_read_and_clear(uint64_t iova, uint64_t, uint64_t page, std::vector<uint64_t>& bm) override {
    // Dirty: the page at iova + 3 pages and the one at + 64 pages.
    (void)iova;
    bm[0] |= 1ull << 3;
    if (bm.size() > 1) bm[1] |= 1ull;
    (void)page;
    return ok();
  }

 private:
  uint64_t flags_;
};

std::vector<uint8_t> state_payload(S s) {
  vfio_device_feature_mig_state st{static_cast<uint32_t>(s), -1};
  std::vector<uint8_t> p(sizeof(st));
  std::memcpy(p.data(), &st, sizeof(st));
  return p;
}

constexpr uint32_t kSetState = VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE;

TEST(MigrationLoopTest, WalksArcsAndReturnsTheStream) {
  FakeMigDevice d(kMigStopCopy | kMigP2P | kMigPreCopy);
  ASSERT_TRUE(d.open());
  auto r = d.device_feature(kSetState, state_payload(S::kStopCopy));
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->file);
  std::vector<std::pair<S, S>> want{{S::kRunning, S::kRunningP2P}, {S::kRunningP2P, S::kStop}, {S::kStop, S::kStopCopy}};
  EXPECT_EQ(d.arcs_done, want);
  EXPECT_EQ(d.mig_state(), S::kStopCopy);
  // GET reports it; data_fd is -1.
  uint8_t buf[8] = {};
  auto g = d.device_feature(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, buf);
  vfio_device_feature_mig_state st;
  std::memcpy(&st, g->data.data(), sizeof(st));
  EXPECT_EQ(st.device_state, static_cast<uint32_t>(S::kStopCopy));
  EXPECT_EQ(st.data_fd, -1);
  // STOP_COPY -> PRE_COPY is refused without moving.
  EXPECT_EQ(d.device_feature(kSetState, state_payload(S::kPreCopy)).error().code, EINVAL);
  EXPECT_EQ(d.mig_state(), S::kStopCopy);
  // Back to RUNNING: no stream.
  auto back = d.device_feature(kSetState, state_payload(S::kRunning));
  ASSERT_TRUE(back);
  EXPECT_FALSE(back->file);
  EXPECT_EQ(d.mig_state(), S::kRunning);
}

TEST(MigrationLoopTest, AFailedArcStopsWhereItWas) {
  FakeMigDevice d(kMigStopCopy | kMigP2P);
  ASSERT_TRUE(d.open());
  d.fail_on = {S::kRunningP2P, S::kStop};
  EXPECT_EQ(d.device_feature(kSetState, state_payload(S::kStop)).error().code, EIO);
  EXPECT_EQ(d.mig_state(), S::kRunningP2P);
  ASSERT_TRUE(d.reset());
  EXPECT_EQ(d.mig_state(), S::kRunning);  // reset returns to RUNNING
}

TEST(MigrationFeatureTest, ChecksAndProbe) {
  FakeMigDevice d(kMigStopCopy);
  ASSERT_TRUE(d.open());
  uint8_t buf[16] = {};
  auto m = d.device_feature(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION, buf);
  ASSERT_TRUE(m);
  uint64_t flags;
  std::memcpy(&flags, m->data.data(), 8);
  EXPECT_EQ(flags, kMigStopCopy);
  EXPECT_TRUE(d.device_feature(VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION, {}));
  EXPECT_EQ(d.device_feature(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIGRATION, buf).error().code, EINVAL);
  EXPECT_EQ(d.device_feature(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION, std::span<const uint8_t>(buf, 4))
                .error()
                .code,
            EINVAL);
  EXPECT_EQ(d.device_feature(VFIO_DEVICE_FEATURE_MIGRATION, buf).error().code, EINVAL);  // neither GET nor SET
  EXPECT_EQ(d.device_feature(kSetState, std::span<const uint8_t>(buf, 4)).error().code, EINVAL);
  EXPECT_EQ(d.device_feature(kSetState, state_payload(S::kRunningP2P)).error().code, EINVAL);  // no P2P
  auto sz = d.device_feature(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, buf);
  ASSERT_TRUE(sz);
  uint64_t len;
  std::memcpy(&len, sz->data.data(), 8);
  EXPECT_EQ(len, 12345u);
}

std::vector<uint8_t> start_payload(uint64_t page, std::vector<DmaRange> ranges) {
  std::vector<uint8_t> p(16 + ranges.size() * 16);
  uint32_t n = static_cast<uint32_t>(ranges.size());
  std::memcpy(p.data(), &page, 8);
  std::memcpy(p.data() + 8, &n, 4);
  for (size_t i = 0; i < ranges.size(); ++i) {
    std::memcpy(p.data() + 16 + 16 * i, &ranges[i].iova, 8);
    std::memcpy(p.data() + 24 + 16 * i, &ranges[i].length, 8);
  }
  return p;
}

TEST(DmaLoggingTest, ArgumentChecks) {
  FakeMigDevice d(kMigStopCopy);
  ASSERT_TRUE(d.open());
  const uint32_t start = VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START;
  // Zero ranges is all of the device's DMA (the vfio-user spec; libvfio-user's
  // client sends it); tested below with the other lenient cases.
  EXPECT_EQ(d.device_feature(start, start_payload(0, {{0, 4096}})).error().code, EINVAL);
  EXPECT_EQ(d.device_feature(start, start_payload(4096, {{0, 0}, {8192, 0}})).error().code, EINVAL);
  std::vector<DmaRange> many(257, DmaRange{0, 4096});
  for (size_t i = 0; i < many.size(); ++i) many[i].iova = i * 8192;
  EXPECT_EQ(d.device_feature(start, start_payload(4096, many)).error().code, E2BIG);
  EXPECT_EQ(d.device_feature(start, start_payload(4096, {{100, 4096}})).error().code, EINVAL);
  EXPECT_EQ(d.device_feature(start, start_payload(4096, {{0, 100}})).error().code, EINVAL);
  EXPECT_EQ(d.device_feature(start, start_payload(4096, {{~0ull - 4095, 8192}})).error().code, EOVERFLOW);
  EXPECT_EQ(d.device_feature(start, start_payload(4096, {{0, 8192}, {4096, 4096}})).error().code, EINVAL);
  EXPECT_EQ(d.device_feature(start, start_payload(3000, {{0, 8192}})).error().code, EINVAL);  // 8192 % 3000
  auto ok = d.device_feature(start, start_payload(4096, {{0x100000, 0x10000}, {0, 4096}}));
  ASSERT_TRUE(ok);
  EXPECT_EQ(d.log_ranges.size(), 2u);
  uint64_t chosen;
  std::memcpy(&chosen, ok->data.data(), 8);
  EXPECT_EQ(chosen, 8192u);
  // REPORT: the bitmap follows the 24-byte request; bit n = iova + n * page.
  // The caller's buffer (the ioctl's argsz) must hold the bitmap too.
  uint64_t req[5] = {0x100000, 65 * 4096, 4096, 0, 0};
  const uint32_t report = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT;
  EXPECT_EQ(d.device_feature(report, std::span<const uint8_t>(reinterpret_cast<uint8_t*>(req), 32)).error().code,
            EINVAL);  // room for one bitmap word, two are needed
  auto rep = d.device_feature(report, std::span<const uint8_t>(reinterpret_cast<uint8_t*>(req), 40));
  ASSERT_TRUE(rep);
  ASSERT_EQ(rep->data.size(), 24u + 16);
  uint64_t w0, w1;
  std::memcpy(&w0, rep->data.data() + 24, 8);
  std::memcpy(&w1, rep->data.data() + 32, 8);
  EXPECT_EQ(w0, 1ull << 3);
  EXPECT_EQ(w1, 1ull);
  req[2] = 2048;
  EXPECT_EQ(d.device_feature(report, std::span<const uint8_t>(reinterpret_cast<uint8_t*>(req), 24)).error().code, EINVAL);
  req[2] = 4096;
  req[1] = 0;
  EXPECT_EQ(d.device_feature(report, std::span<const uint8_t>(reinterpret_cast<uint8_t*>(req), 24)).error().code, EINVAL);
  req[0] = ~0ull - 10;
  req[1] = 4096;
  EXPECT_EQ(d.device_feature(report, std::span<const uint8_t>(reinterpret_cast<uint8_t*>(req), 24)).error().code,
            EOVERFLOW);
  EXPECT_TRUE(d.device_feature(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, {}));
  d.logging = false;
  EXPECT_EQ(d.device_feature(start, start_payload(4096, {{0, 4096}})).error().code, ENOTTY);
}

// Where the kernel's ioctl and vfio-user differ, the vfio-user peers win,
// and where the kernel is lenient (vfio_ioctl_device_feature_logging_start
// refuses neither an empty range nor a page size that is not a power of
// two), so are we.
TEST(DmaLoggingTest, VfioIoctlDeviceFeatureLoggingStartLeniency) {
  const uint32_t start = VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START;
  const uint32_t stop = VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP;
  FakeMigDevice d(kMigStopCopy);
  ASSERT_TRUE(d.open());
  // Zero ranges: everything the device may reach.
  auto all = d.device_feature(start, start_payload(4096, {}));
  ASSERT_TRUE(all) << all.error().context;
  ASSERT_EQ(d.log_ranges.size(), 1u);
  EXPECT_EQ(d.log_ranges[0].iova, 0u);
  EXPECT_EQ(d.log_ranges[0].length, 0 - uint64_t{4096});
  ASSERT_TRUE(d.device_feature(stop, {}));
  // An empty range beside a real one is dropped, not refused.
  ASSERT_TRUE(d.device_feature(start, start_payload(4096, {{0x10000, 0}, {0, 4096}})));
  ASSERT_EQ(d.log_ranges.size(), 1u);
  EXPECT_EQ(d.log_ranges[0].iova, 0u);
  ASSERT_TRUE(d.device_feature(stop, {}));
  // 12 KiB pages: ranges in multiples of 12 KiB; the driver is asked for
  // the next power of two (16 KiB), and the granule it chose (this fake
  // always takes 8 KiB) is written back.
  auto odd = d.device_feature(start, start_payload(3 * 4096, {{0, 6 * 4096}}));
  ASSERT_TRUE(odd) << odd.error().context;
  EXPECT_EQ(d.log_page, 16384u);
  uint64_t chosen;
  std::memcpy(&chosen, odd->data.data(), 8);
  EXPECT_EQ(chosen, 8192u);
  ASSERT_TRUE(d.device_feature(stop, {}));
}

TEST(RegionInfoTest, CapabilityChainsAndArgsz) {
  RegionInfo r;
  r.info.argsz = sizeof(r.info);
  r.info.index = 9;
  vfio_region_info_cap_type t{};
  t.type = 0x80000000 | 0x15b3;
  t.subtype = 1;
  append_cap(r.caps, sizeof(r.info), VFIO_REGION_INFO_CAP_TYPE, 1,
             std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&t) + 8, sizeof(t) - 8));
  uint8_t sparse[8 + 16] = {};
  uint32_t nr = 1;
  std::memcpy(sparse, &nr, 4);
  append_cap(r.caps, sizeof(r.info), VFIO_REGION_INFO_CAP_SPARSE_MMAP, 1, sparse);
  auto full = encode_region_info(r, 1024);
  vfio_region_info i;
  std::memcpy(&i, full.data(), sizeof(i));
  EXPECT_EQ(i.cap_offset, sizeof(i));
  EXPECT_EQ(i.argsz, full.size());
  vfio_info_cap_header h1, h2;
  std::memcpy(&h1, full.data() + sizeof(i), sizeof(h1));
  EXPECT_EQ(h1.id, VFIO_REGION_INFO_CAP_TYPE);
  ASSERT_NE(h1.next, 0u);
  ASSERT_LT(h1.next, full.size());
  std::memcpy(&h2, full.data() + h1.next, sizeof(h2));
  EXPECT_EQ(h2.id, VFIO_REGION_INFO_CAP_SPARSE_MMAP);
  EXPECT_EQ(h2.next, 0u);
  EXPECT_EQ(h1.next % 8, 0u);
  auto small = encode_region_info(r, 32);
  EXPECT_EQ(small.size(), sizeof(i));
  std::memcpy(&i, small.data(), sizeof(i));
  EXPECT_EQ(i.cap_offset, 0u);
  EXPECT_EQ(i.argsz, full.size());
  EXPECT_TRUE(i.flags & VFIO_REGION_INFO_FLAG_CAPS);
}

}  // namespace
}  // namespace uvfio::vfio
