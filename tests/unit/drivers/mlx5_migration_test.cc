// SPDX-License-Identifier: BSD-3-Clause
// mlx5_vfio_pci's migration v2 between two systems (two "daemons", in
// process): PRE_COPY rounds, STOP_COPY, DMA logging of the guest's memory,
// RESUMING and RUNNING on the destination, the workload carrying on; and the
// fault cases: corrupt, truncated and foreign streams, the PF going away
// mid-migration.
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <set>
#include <thread>

#include "base/crc32c.h"
#include "daemon/system.h"
#include "drivers/mlx5_vfio_pci/migration.h"
#include "hw/mlx5/pf.h"
#include "hw/mlx5/vf.h"

namespace uvfio {
namespace {

using S = vfio::MigState;
using namespace hw::mlx5;
using drivers::mlx5_vfio_pci::max_record_payload;
using drivers::mlx5_vfio_pci::RecordHeader;
using drivers::mlx5_vfio_pci::RecordTag;

const Bdf kVf(0, 8, 0, 0);
constexpr uint64_t kRing = 0x10000, kCq = 0x20000, kData = 0x100000, kGuest = 4 << 20;

struct Side {
  std::unique_ptr<daemon::System> sys;
  vfio::Device* dev = nullptr;
  std::vector<uint8_t> guest = std::vector<uint8_t>(kGuest);
  explicit Side(const std::string& memory = "16M") {
    auto t = daemon::seed_topology();
    for (auto& d : t.devices)
      if (d.model == daemon::Model::kMlx5Pf) d.device_memory = *daemon::parse_size(memory);
    sys = std::move(*daemon::System::create(t));
    dev = sys->vfio_device(kVf);
    EXPECT_NE(dev, nullptr);
    EXPECT_TRUE(dev->open());
    EXPECT_TRUE(dev->iommu().map_host(0, guest.size(), guest.data(), hw::kDmaRead | hw::kDmaWrite));
  }
  ~Side() {
    if (dev) dev->close();
  }
  void w(uint32_t reg, uint64_t v, unsigned width = 4) {
    ASSERT_TRUE(dev->region_write(0, reg, std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&v), width)));
  }
  uint64_t r(uint32_t reg, unsigned width = 4) {
    uint64_t v = 0;
    EXPECT_TRUE(dev->region_read(0, reg, std::span<uint8_t>(reinterpret_cast<uint8_t*>(&v), width)));
    return v;
  }
  void cfg16(uint16_t off, uint16_t v) {
    ASSERT_TRUE(dev->region_write(VFIO_PCI_CONFIG_REGION_INDEX, off,
                                  std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&v), 2)));
  }
  Result<vfio::FeatureReply> set_state(S s) {
    vfio_device_feature_mig_state st{static_cast<uint32_t>(s), -1};
    return dev->device_feature(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
                               std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&st), sizeof(st)));
  }
  Vf& hwvf() { return static_cast<Vf&>(*sys->fabric().find(kVf)); }
  // An eventfd wired to vector 0 of an interrupt index (SET_IRQS TRIGGER).
  UniqueFd irq_eventfd(uint32_t index) {
    UniqueFd efd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    vfio::IrqSet s;
    s.flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
    s.index = index;
    s.count = 1;
    s.fds.emplace_back(dup(efd.get()));
    EXPECT_TRUE(dev->set_irqs(std::move(s)));
    return efd;
  }
  // DMA_LOGGING_REPORT over all guest RAM at 4 KiB (the buffer holds the
  // request and room for the bitmap: the ioctl's argsz): the IOVAs of the
  // pages the device dirtied.
  Result<std::set<uint64_t>> dirty_pages() {
    std::vector<uint64_t> rep(3 + kGuest / 4096 / 64 + 1, 0);
    rep[0] = 0;
    rep[1] = kGuest;
    rep[2] = 4096;
    auto report = TRY(dev->device_feature(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
                                          std::span<const uint8_t>(reinterpret_cast<uint8_t*>(rep.data()),
                                                                   rep.size() * 8)));
    std::set<uint64_t> dirty;
    for (uint64_t p = 0; p < kGuest / 4096; ++p) {
      uint64_t word;
      std::memcpy(&word, report.data.data() + 24 + (p / 64) * 8, 8);
      if (word >> (p % 64) & 1) dirty.insert(p * 4096);
    }
    return dirty;
  }
  uint32_t tail = 0;
  void post(VfOp op, uint32_t len, uint64_t src, uint64_t dst, uint64_t cookie) {
    VfDescriptor d{static_cast<uint8_t>(op), 0, 0, len, src, dst, cookie};
    std::memcpy(guest.data() + kRing + (tail % 256) * sizeof(d), &d, sizeof(d));
    ++tail;
  }
  void start_queue() {
    cfg16(PCI_COMMAND, PCI_COMMAND_MASTER | PCI_COMMAND_MEMORY);
    w(vfreg::kSqBase, kRing, 8);
    w(vfreg::kSqSize, 256);
    w(vfreg::kCqBase, kCq, 8);
    w(vfreg::kCqSize, 256);
    w(vfreg::kCtrl, vfreg::kCtrlEnable);
  }
};

// Drains a saving stream: everything available now (PRE_COPY) or to the end.
std::vector<uint8_t> drain(vfio::MigrationFile& f, bool to_eof) {
  std::vector<uint8_t> out;
  std::vector<uint8_t> buf(1 << 20);
  for (;;) {
    auto n = f.read(buf);
    if (!n) {
      EXPECT_EQ(n.error().code, ENOMSG);
      EXPECT_FALSE(to_eof);
      return out;
    }
    if (*n == 0) return out;
    out.insert(out.end(), buf.begin(), buf.begin() + static_cast<long>(*n));
  }
}

// Writes a stream in random segments, as a transport would.
Result<void> feed(vfio::MigrationFile& f, const std::vector<uint8_t>& s, unsigned seed) {
  std::mt19937 rng(seed);
  size_t at = 0;
  while (at < s.size()) {
    size_t n = std::min<size_t>(s.size() - at, 1 + rng() % 70000);
    TRY(f.write(std::span<const uint8_t>(s.data() + at, n)));
    at += n;
  }
  return ok();
}

// DMA logging START with zero ranges (the vfio-user spec, libvfio-user's
// client) tracks all of the VF's DMA: the PF's page tracker reports the
// pages the device wrote wherever they are.
TEST(Mlx5Migration, DmaLoggingWithZeroRangesTracksEverything) {
  Side a;
  a.start_queue();
  std::vector<uint8_t> start(16, 0);
  uint64_t page = 4096;
  std::memcpy(start.data(), &page, 8);  // num_ranges 0
  ASSERT_TRUE(a.dev->device_feature(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, start));
  // Fill two pages far apart (and the completion ring).
  a.post(VfOp::kFill, 4096, 0xab, kData, 1);
  a.post(VfOp::kFill, 4096, 0xcd, kGuest - 4096, 2);
  a.w(vfreg::kSqTail, a.tail);
  ASSERT_TRUE(a.hwvf().wait_idle(std::chrono::seconds(10)));
  ASSERT_EQ(a.guest[kGuest - 1], 0xcd);
  auto report = a.dirty_pages();
  ASSERT_TRUE(report);
  const std::set<uint64_t>& dirty = *report;
  EXPECT_TRUE(dirty.count(kData));
  EXPECT_TRUE(dirty.count(kGuest - 4096));
  EXPECT_TRUE(dirty.count(kCq));
  EXPECT_FALSE(dirty.count(kData + 4096));
  EXPECT_TRUE(a.dev->device_feature(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, {}));
}

TEST(Mlx5Migration, PreCopyStopCopyResumeAndCarryOn) {
  Side a, b;
  a.start_queue();
  // Workload: 100 descriptors moving guest data into device memory and back.
  for (int i = 0; i < 64 * 1024; ++i) a.guest[kData + i] = static_cast<uint8_t>(i * 7);
  for (uint32_t i = 0; i < 50; ++i) a.post(VfOp::kToDevice, 1024, kData + i * 1024, i * 4096, i);
  a.w(vfreg::kSqTail, a.tail);
  // DMA logging of the guest memory, as a VMM starts it before pre-copy.
  uint64_t ctl[4] = {4096, 1, 0, kGuest};  // page_size, num_ranges|rsvd, {iova, length}
  std::vector<uint8_t> start(16 + 16);
  std::memcpy(start.data(), &ctl[0], 8);
  uint32_t nr = 1;
  std::memcpy(start.data() + 8, &nr, 4);
  std::memcpy(start.data() + 16, &ctl[2], 16);
  ASSERT_TRUE(a.dev->device_feature(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, start));
  // mlx5vf_start_page_tracker(): a tracker already running is EINVAL.
  auto again = a.dev->device_feature(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, start);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, EINVAL);
  // The VMM's first copy of guest RAM. A real VMM copies while DMA runs and
  // relies on the dirty log for what changed under it; here the copy waits
  // for the engine so that the test itself does not race with the device
  // (TSan). The log still has to report the completions written since START.
  ASSERT_TRUE(a.hwvf().wait_idle(std::chrono::seconds(10)));
  std::vector<uint8_t> dst_guest = a.guest;

  auto pre = a.set_state(S::kPreCopy);
  ASSERT_TRUE(pre);
  ASSERT_TRUE(pre->file);
  auto info = pre->file->precopy_info();
  ASSERT_TRUE(info);
  // The initial image is all of device memory: every page, those never
  // written as their index alone, the 50 written in full.
  EXPECT_GE(info->initial_bytes, (16u << 20) / 4096 * 4 + 50 * 4100);
  std::vector<uint8_t> stream = drain(*pre->file, false);
  EXPECT_EQ(pre->file->precopy_info()->initial_bytes, 0u);
  // More work while pre-copying, and a write through "the mmap" of BAR2.
  for (uint32_t i = 50; i < 100; ++i) a.post(VfOp::kToDevice, 1024, kData + i * 1024, i * 4096, i);
  // CPU writes (the descriptors) are the VMM's own dirty log's business,
  // not the device's: the "VMM" copies what it wrote.
  std::memcpy(dst_guest.data() + kRing, a.guest.data() + kRing, 256 * sizeof(VfDescriptor));
  a.w(vfreg::kSqTail, a.tail);
  ASSERT_TRUE(a.hwvf().wait_idle(std::chrono::seconds(5)));
  a.hwvf().bar_memory(2)->data()[15 << 20] = 0x99;
  EXPECT_GT(pre->file->precopy_info()->dirty_bytes, 0u);
  auto round2 = drain(*pre->file, false);
  EXPECT_GT(round2.size(), 0u);
  stream.insert(stream.end(), round2.begin(), round2.end());
  // Stop: PRE_COPY -> PRE_COPY_P2P -> STOP_COPY, the same stream to its end.
  auto stop = a.set_state(S::kStopCopy);
  ASSERT_TRUE(stop) << errno_name(stop.error().code);
  EXPECT_FALSE(stop->file);
  auto last = drain(*pre->file, true);
  stream.insert(stream.end(), last.begin(), last.end());
  // Guest pages the device dirtied since logging started.
  auto report = a.dirty_pages();
  ASSERT_TRUE(report);
  for (uint64_t page : *report) std::memcpy(dst_guest.data() + page, a.guest.data() + page, 4096);
  EXPECT_GT(report->size(), 0u);  // the completion ring at least
  EXPECT_EQ(dst_guest, a.guest) << "DMA logging missed a page the device wrote";

  // Destination: STOP -> RESUMING, the stream in random pieces, -> RUNNING.
  std::memcpy(b.guest.data(), dst_guest.data(), dst_guest.size());
  ASSERT_TRUE(b.set_state(S::kStop));
  auto res = b.set_state(S::kResuming);
  ASSERT_TRUE(res);
  ASSERT_TRUE(res->file);
  ASSERT_TRUE(feed(*res->file, stream, 1));
  ASSERT_TRUE(b.set_state(S::kRunning));
  EXPECT_EQ(std::memcmp(b.hwvf().bar_memory(2)->data(), a.hwvf().bar_memory(2)->data(), 16 << 20), 0);
  EXPECT_EQ(b.r(vfreg::kSqHead), 100u);
  EXPECT_EQ(b.r(vfreg::kCqTail), 100u);
  // The workload carries on at the destination, with interrupts.
  b.cfg16(PCI_COMMAND, PCI_COMMAND_MASTER | PCI_COMMAND_MEMORY);
  UniqueFd efd = b.irq_eventfd(VFIO_PCI_MSIX_IRQ_INDEX);
  b.w(vfreg::kIrqVector, 0);
  b.w(vfreg::kIrqCtrl, 1);
  b.tail = a.tail;
  b.post(VfOp::kFill, 64, 0xab, kData + 0x80000, 100);
  b.w(vfreg::kSqTail, b.tail);
  ASSERT_TRUE(b.hwvf().wait_idle(std::chrono::seconds(5)));
  uint64_t v = 0;
  EXPECT_EQ(::read(efd.get(), &v, 8), 8);
  std::set<uint64_t> cookies;
  for (uint32_t i = 0; i < 101; ++i) {
    VfCompletion c;
    std::memcpy(&c, b.guest.data() + kCq + i * sizeof(c), sizeof(c));
    EXPECT_EQ(c.status, 0u) << i;
    cookies.insert(c.cookie);
  }
  EXPECT_EQ(cookies.size(), 101u);  // every descriptor completed exactly once
  EXPECT_EQ(b.guest[kData + 0x80000 + 63], 0xab);
}

// The saving side fills every read but the stream's last, whatever its size:
// a read with room for a record of the firmware's smallest chunk has the
// chunk written straight into it; a smaller tail takes a small chunk that
// the next read finishes; a read too small for any chunk gets a whole one
// staged and handed out piece by piece (not a firmware command per read).
// Every cut gives a stream of valid records that loads to the same memory.
TEST(Mlx5Migration, ReadsOfAnySizeAreFilledAndTheStreamLoads) {
  Side a;
  uint8_t* dm = a.hwvf().bar_memory(2)->data();
  std::mt19937 rng(5);
  for (uint64_t page = 0; page < (16u << 20) / 4096; page += 3)
    for (int i = 0; i < 4096; i += 4) {
      uint32_t v = static_cast<uint32_t>(rng());
      std::memcpy(dm + page * 4096 + i, &v, 4);
    }
  auto& pf = static_cast<Pf&>(*a.sys->fabric().find(Bdf(0, 7, 0, 0)));
  for (size_t read_size : {size_t{1} << 20, (size_t{1} << 20) + 3, size_t{8215}, size_t{8216}, size_t{65553}, (size_t{256} << 10) + 24, size_t{300000},
                           size_t{4096}, size_t{100}}) {
    SCOPED_TRACE(read_size);
    ASSERT_TRUE(a.set_state(S::kStop));
    auto sc = a.set_state(S::kStopCopy);
    ASSERT_TRUE(sc);
    ASSERT_TRUE(sc->file);
    unsigned saves = 0;
    pf.set_command_log([&](const FwMailbox& mb) { saves += mb.opcode == static_cast<uint16_t>(FwCmd::kSaveVhcaState); });
    std::vector<uint8_t> stream, buf(read_size);
    std::vector<size_t> reads;
    for (;;) {
      auto n = sc->file->read(buf);
      ASSERT_TRUE(n) << errno_name(n.error().code);
      if (*n == 0) break;
      reads.push_back(*n);
      stream.insert(stream.end(), buf.begin(), buf.begin() + static_cast<long>(*n));
    }
    pf.set_command_log(nullptr);
    for (size_t i = 0; i + 1 < reads.size(); ++i) ASSERT_EQ(reads[i], read_size) << "read " << i;
    // Records back to back, each checksummed, to END.
    size_t at = 0, chunks = 0;
    bool end = false;
    while (at < stream.size()) {
      RecordHeader h;
      ASSERT_LE(at + sizeof(h), stream.size());
      std::memcpy(&h, stream.data() + at, sizeof(h));
      ASSERT_LE(h.size, stream.size() - at - sizeof(h));
      EXPECT_EQ(crc32c(0, stream.data() + at + sizeof(h), h.size), h.crc);
      if (h.tag == static_cast<uint32_t>(RecordTag::kFwData)) {
        EXPECT_LE(h.size, max_record_payload());
        ++chunks;
      }
      end = h.tag == static_cast<uint32_t>(RecordTag::kEnd);
      at += sizeof(h) + h.size;
    }
    EXPECT_TRUE(end);
    EXPECT_EQ(chunks, saves);
    // At most two chunks per large read; whole chunks for small ones, never
    // a firmware command per read.
    if (read_size >= (256u << 10) + sizeof(RecordHeader)) EXPECT_LE(saves, 2 * reads.size());
    else EXPECT_EQ(saves, (stream.size() + (1u << 20) - 1) / (1u << 20));
    ASSERT_TRUE(a.set_state(S::kStop));
    Side b;
    ASSERT_TRUE(b.set_state(S::kStop));
    auto res = b.set_state(S::kResuming);
    ASSERT_TRUE(res);
    ASSERT_TRUE(feed(*res->file, stream, 3));
    ASSERT_TRUE(b.set_state(S::kStop));
    EXPECT_EQ(std::memcmp(b.hwvf().bar_memory(2)->data(), dm, 16 << 20), 0);
  }
}

TEST(Mlx5Migration, CorruptTruncatedAndForeignStreamsAreRefused) {
  Side a;
  ASSERT_TRUE(a.set_state(S::kStop));
  auto sc = a.set_state(S::kStopCopy);
  ASSERT_TRUE(sc);
  auto stream = drain(*sc->file, true);
  ASSERT_TRUE(a.set_state(S::kStop));
  Side b;
  auto resume = [&](const std::vector<uint8_t>& s) -> Result<void> {
    if (b.dev->mig_state() != S::kStop) {
      TRY(b.dev->reset());
      TRY(b.set_state(S::kStop));
    }
    auto r = TRY(b.set_state(S::kResuming));
    auto w = feed(*r.file, s, 2);
    auto done = b.set_state(S::kStop);
    if (!w) return w.error();
    if (!done) return done.error();
    return ok();
  };
  auto corrupt = stream;
  corrupt[corrupt.size() / 2] ^= 0x40;
  EXPECT_EQ(resume(corrupt).error().code, EINVAL);
  EXPECT_EQ(b.dev->mig_state(), S::kResuming);  // the arc failed: still RESUMING
  auto truncated = stream;
  truncated.resize(truncated.size() - 40);  // END and a bit more gone
  EXPECT_EQ(resume(truncated).error().code, EINVAL);
  Side other("32M");
  ASSERT_TRUE(other.set_state(S::kStop));
  auto osc = other.set_state(S::kStopCopy);
  auto foreign = drain(*osc->file, true);
  EXPECT_EQ(resume(foreign).error().code, EINVAL);
  // After a reset the device works, and the good stream goes in.
  ASSERT_TRUE(b.dev->reset());
  EXPECT_EQ(b.dev->mig_state(), S::kRunning);
  EXPECT_TRUE(resume(stream));
  EXPECT_TRUE(b.set_state(S::kRunning));
}

// mlx5fv_vf_event(MLX5_PF_NOTIFY_DISABLE_VF): the PF's services going
// closes the migration files and the page tracker, and nothing else: the
// state stays, no REQ is sent, and the next step that needs the firmware
// fails with ENOTCONN, leaving the state where it was.
TEST(Mlx5Migration, Mlx5fvVfEventDisableVfKeepsTheStateAndFailsTheNextStep) {
  Side a;
  a.start_queue();
  UniqueFd req = a.irq_eventfd(VFIO_PCI_REQ_IRQ_INDEX);
  std::vector<uint8_t> start(32, 0);
  uint64_t ctl[4] = {4096, 1, 0, kGuest};
  std::memcpy(start.data(), &ctl[0], 8);
  uint32_t nr = 1;
  std::memcpy(start.data() + 8, &nr, 4);
  std::memcpy(start.data() + 16, &ctl[2], 16);
  ASSERT_TRUE(a.dev->device_feature(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, start));
  auto pre = a.set_state(S::kPreCopy);
  ASSERT_TRUE(pre);
  // The PF's aux device goes (mlx5_core's aux half unbound): the VF stays,
  // its PF services do not.
  ASSERT_TRUE(a.sys->core().tree().write("bus/auxiliary/drivers/mlx5_vfio_pci.vfio_pci_ex/unbind",
                                         "mlx5_core.vfio_pci.2048"));
  EXPECT_EQ(a.dev->mig_state(), S::kPreCopy);
  std::vector<uint8_t> buf(64);
  EXPECT_EQ(pre->file->read(buf).error().code, ENODEV);  // the file was closed
  uint64_t v = 0;
  EXPECT_EQ(::read(req.get(), &v, 8), -1) << "REQ for a PF going";
  EXPECT_EQ(errno, EAGAIN);
  // Leaving PRE_COPY for RUNNING needs no firmware: it works.
  ASSERT_TRUE(a.set_state(S::kRunning));
  // A step that needs the firmware fails, and the state stays.
  EXPECT_EQ(a.set_state(S::kStop).error().code, ENOTCONN);
  EXPECT_EQ(a.dev->mig_state(), S::kRunning);
  // DMA logging went with the tracker: a report is refused, a new START
  // needs the PF.
  uint64_t rep[4] = {0, kGuest, 4096, 0};
  EXPECT_FALSE(a.dev->device_feature(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
                                     std::span<const uint8_t>(reinterpret_cast<uint8_t*>(rep), 32)));
  EXPECT_EQ(a.dev->device_feature(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_DMA_LOGGING_START, start).error().code,
            ENOTCONN);
  // The device still works as a device.
  ASSERT_TRUE(a.dev->reset());
  EXPECT_EQ(a.dev->mig_state(), S::kRunning);
}


// `echo 1 > reset` on a VF in use (pci_reset_function with the driver bound):
// mlx5_vfio_pci's reset_done ends the migration session and the device is
// RUNNING again (mlx5vf_pci_aer_reset_done); the function's config (bus
// master) comes back from the PCI core's saved state.
TEST(Mlx5Migration, SysfsResetEndsTheSessionAndLeavesRunning) {
  Side a;
  a.start_queue();
  auto pre = a.set_state(S::kPreCopy);
  ASSERT_TRUE(pre);
  ASSERT_EQ(a.dev->mig_state(), S::kPreCopy);
  unsigned flrs = a.hwvf().flr_count();
  uint32_t cmd = a.sys->fabric().config_read(kVf, PCI_COMMAND, 2);
  ASSERT_TRUE(cmd & PCI_COMMAND_MASTER);  // (a VF's Memory Space bit is hardwired 0)
  ASSERT_TRUE(a.sys->core().tree().write("bus/pci/devices/0000:08:00.0/reset", "1"));
  EXPECT_EQ(a.hwvf().flr_count(), flrs + 1);
  EXPECT_EQ(a.dev->mig_state(), S::kRunning);
  std::vector<uint8_t> buf(16);
  EXPECT_EQ(pre->file->read(buf).error().code, ENODEV);
  EXPECT_EQ(a.sys->fabric().config_read(kVf, PCI_COMMAND, 2), cmd);
  // The queue was reset with the function: the user programs it again.
  EXPECT_EQ(a.r(vfreg::kCtrl), 0u);
  EXPECT_TRUE(a.set_state(S::kStop));
  EXPECT_TRUE(a.set_state(S::kRunning));
}

TEST(Mlx5Migration, SourceAbortsBackToRunningWithTheWorkloadIntact) {
  Side a;
  a.start_queue();
  for (uint32_t i = 0; i < 20; ++i) a.post(VfOp::kFill, 512, i, kData + i * 512, i);
  a.w(vfreg::kSqTail, a.tail);
  auto pre = a.set_state(S::kPreCopy);
  ASSERT_TRUE(pre);
  (void)drain(*pre->file, false);
  // The attempt fails (say the destination went away): back to RUNNING.
  ASSERT_TRUE(a.set_state(S::kRunning));
  std::vector<uint8_t> buf(16);
  EXPECT_EQ(pre->file->read(buf).error().code, ENODEV);  // the session ended
  for (uint32_t i = 20; i < 40; ++i) a.post(VfOp::kFill, 512, i, kData + i * 512, i);
  a.w(vfreg::kSqTail, a.tail);
  ASSERT_TRUE(a.hwvf().wait_idle(std::chrono::seconds(5)));
  EXPECT_EQ(a.r(vfreg::kCqTail), 40u);
  for (uint32_t i = 0; i < 40; ++i) EXPECT_EQ(a.guest[kData + i * 512 + 511], i);
  // And a second attempt works from scratch.
  auto again = a.set_state(S::kPreCopy);
  ASSERT_TRUE(again);
  EXPECT_GT(again->file->precopy_info()->initial_bytes, 0u);
}

TEST(Mlx5Migration, SriovDisabledWhileTheVfIsOpen) {
  Side a;
  UniqueFd req = a.irq_eventfd(VFIO_PCI_REQ_IRQ_INDEX);
  auto pre = a.set_state(S::kPreCopy);
  ASSERT_TRUE(pre);
  a.sys->vfio_registry().set_request_interval(std::chrono::milliseconds(20));
  vfio::Device* dev = a.dev;
  std::atomic<bool> done{false};
  std::thread admin([&] {
    EXPECT_TRUE(a.sys->core().tree().write("bus/pci/devices/0000:07:00.0/sriov_numvfs", "0"));
    done = true;
  });
  // The user hears REQ (the VF is being removed); its migration file was
  // closed when the PF's services went (mlx5vf_cmd_close_migratable), the
  // state kept.
  pollfd p{req.get(), POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 5000), 1);
  std::vector<uint8_t> buf(16);
  for (int i = 0; i < 200 && pre->file->read(buf).error().code != ENODEV; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(pre->file->read(buf).error().code, ENODEV);
  EXPECT_EQ(dev->mig_state(), S::kPreCopy);
  EXPECT_FALSE(done);  // waiting for the user, not crashing or going on
  dev->close();
  admin.join();
  a.dev = nullptr;
  EXPECT_EQ(a.sys->pci().find(kVf), nullptr);
  EXPECT_EQ(a.sys->vfio_device(kVf), nullptr);
}


// One firmware command as the arc test records it: "SUSPEND/I", "SAVE/incr".
std::string describe(const FwMailbox& mb) {
  bool incr = mb.flags & kFwIncremental;
  switch (static_cast<FwCmd>(mb.opcode)) {
    case FwCmd::kQueryVhcaMigrationState: return incr ? "QUERY/incr" : "QUERY";
    case FwCmd::kSuspendVhca: return mb.op_mod == kOpModInitiator ? "SUSPEND/I" : "SUSPEND/R";
    case FwCmd::kResumeVhca: return mb.op_mod == kOpModInitiator ? "RESUME/I" : "RESUME/R";
    case FwCmd::kSaveVhcaState: return !(mb.flags & kFwStart) ? "SAVE/more" : incr ? "SAVE/incr" : "SAVE/full";
    case FwCmd::kLoadVhcaState: return (mb.flags & kFwStart) ? "LOAD" : "LOAD/more";
    case FwCmd::kCreatePageTracker: return "TRACKER_CREATE";
    case FwCmd::kReportPageTracker: return "TRACKER_REPORT";
    case FwCmd::kDestroyPageTracker: return "TRACKER_DESTROY";
  }
  return "?";
}

// Each arc against the PF firmware commands mlx5 issues for it
// (reference/kernel-vfio.md §3.6), the VF's function id on every command.
TEST(Mlx5Migration, ArcsIssueMlx5sFirmwareCommands) {
  Side a;
  auto& pf = static_cast<Pf&>(*a.sys->fabric().find(Bdf(0, 7, 0, 0)));
  std::vector<std::string> log;
  std::set<uint16_t> fids;
  pf.set_command_log([&](const FwMailbox& mb) {
    log.push_back(describe(mb));
    fids.insert(mb.function_id);
  });
  using V = std::vector<std::string>;
  std::shared_ptr<vfio::MigrationFile> file;
  auto arc = [&](S to) {
    log.clear();
    auto r = a.set_state(to);
    EXPECT_TRUE(r) << vfio::to_string(to);
    if (r && r->file) file = r->file;
    return log;
  };
  EXPECT_EQ(arc(S::kRunningP2P), V{"SUSPEND/I"});
  EXPECT_EQ(arc(S::kStop), V{"SUSPEND/R"});
  EXPECT_EQ(arc(S::kRunningP2P), V{"RESUME/R"});
  EXPECT_EQ(arc(S::kRunning), V{"RESUME/I"});
  // RUNNING -> PRE_COPY: the size hint; the initial full image leaves the
  // device as the stream is read (chunk by chunk), not at the arc.
  EXPECT_EQ(arc(S::kPreCopy), V{"QUERY"});
  ASSERT_TRUE(file);
  log.clear();
  (void)drain(*file, false);
  ASSERT_FALSE(log.empty());
  EXPECT_EQ(log.front(), "SAVE/full");
  EXPECT_EQ(arc(S::kPreCopyP2P), V{"SUSPEND/I"});
  // PRE_COPY_P2P -> STOP_COPY: stop responding; the final image
  // (incremental: the full one was taken) follows in the stream.
  EXPECT_EQ(arc(S::kStopCopy), V{"SUSPEND/R"});
  log.clear();
  (void)drain(*file, true);
  ASSERT_FALSE(log.empty());
  EXPECT_EQ(log.front(), "SAVE/incr");
  EXPECT_EQ(arc(S::kStop), V{});  // tear down only
  // STOP -> STOP_COPY without pre-copy: a full image, read as it is taken.
  EXPECT_EQ(arc(S::kStopCopy), V{"QUERY"});
  ASSERT_TRUE(file);
  log.clear();
  auto stream = drain(*file, true);
  ASSERT_FALSE(log.empty());
  EXPECT_EQ(log.front(), "SAVE/full");
  EXPECT_EQ(arc(S::kStop), V{});
  // STOP -> RESUMING opens the write side without a command; each image
  // chunk written is one LOAD; RESUMING -> STOP tears down only.
  EXPECT_EQ(arc(S::kResuming), V{});
  ASSERT_TRUE(file);
  log.clear();
  ASSERT_TRUE(feed(*file, stream, 7));
  ASSERT_FALSE(log.empty());
  EXPECT_EQ(log.front(), "LOAD");
  for (size_t i = 1; i < log.size(); ++i) EXPECT_EQ(log[i], "LOAD/more");
  EXPECT_EQ(arc(S::kStop), V{});
  EXPECT_EQ(arc(S::kRunningP2P), V{"RESUME/R"});
  EXPECT_EQ(arc(S::kRunning), V{"RESUME/I"});
  EXPECT_EQ(fids, std::set<uint16_t>{1});  // VF 0 is firmware function 1
  pf.set_command_log(nullptr);
}

}  // namespace
}  // namespace uvfio
