// SPDX-License-Identifier: BSD-3-Clause
// The VF judged by Linux itself: the real QEMU 10.2 boots Debian's kernel
// with both seed VFs; inside the guest our dmaengine driver
// (guest/linux/uvfio_vf_dma.c) registers a channel per VF and the kernel's
// own dmatest (built from the same kernel's source package) runs on every
// channel: memcpy and memset, with interrupts (two threads per channel) and
// polled (one: see guest/linux/dmatest-run.sh), random lengths and offsets,
// every byte verified; then an FLR of each VF under the bound
// driver and a run after it; then rmmod. Four machine set-ups: guest RAM in
// a shared memfd, QEMU's default RAM (DMA through messages), two vCPUs, and
// a guest IOMMU (intel-iommu, caching mode: QEMU maps and unmaps through
// vfio-user as the guest's IOMMU does). QEMU's own output must have no
// refused request. A negative run proves the checks catch corruption: the
// driver's test-only corrupt_every shortens one copy in N.
//
// Needs QEMU_PATH, the kernel and its headers from tests/qemu/prepare-guest.sh
// and the initramfs the build makes with the modules; skipped without them
// unless UVFIO_REQUIRE_QEMU is set (CI).
#include <gtest/gtest.h>

#include <map>
#include <regex>
#include <set>

#include <nlohmann/json.hpp>

#include "e2e/harness.h"
#include "e2e/qemu.h"

namespace uvfio::e2e {
namespace {

constexpr int kIterations = 500;     // per thread, per run
// dmatest-run.sh: two threads per channel with interrupts, one when polled
// (dmatest's polled mode terminates the channel's transfers after each test).
int threads_per_chan(int polled) { return polled ? 1 : 2; }
constexpr int kAfterReset = 50;      // the run after the FLR
constexpr int kAfterReload = 30;     // the run after rmmod and insmod
const char* kVfs[] = {"0000:08:00.0", "0000:09:00.0"};

struct Machine {
  const char* name;
  bool memfd;    // guest RAM shared with the device (else DMA through messages)
  int smp;
  bool iommu;    // intel-iommu, caching-mode=on; the guest boots intel_iommu=on
  int ram_mib = 512;     // QEMU's -m
  int guest_mib = 256;   // the guest kernel's mem=
};

// What the guest printed, checked; every problem found, in words (empty:
// the run passed). `iterations`: what each thread must report; `extra`:
// descriptors each VF ran before the FLR besides dmatest's.
std::vector<std::string> check_dmatest(const std::string& out, int iterations, long extra = 0) {
  std::vector<std::string> bad;
  auto section = [&](const std::string& head) -> std::string {
    size_t a = out.find(head + "\n");
    if (a == std::string::npos) a = out.find(head + "\r\n");
    if (a == std::string::npos) return "";
    size_t b = out.find("=== end", a);
    return b == std::string::npos ? "" : out.substr(a, b - a);
  };
  // The driver bound both VFs, each with its channel.
  std::regex probe(R"((\d{4}:\d\d:\d\d\.\d): uvfio VF DMA engine: (dma\d+chan\d+))");
  std::map<std::string, std::string> chan_of;  // channel -> guest BDF
  std::string drv = section("=== driver");
  for (auto it = std::sregex_iterator(drv.begin(), drv.end(), probe); it != std::sregex_iterator(); ++it)
    chan_of[(*it)[2]] = (*it)[1];
  if (chan_of.size() != 2) bad.push_back("the driver bound " + std::to_string(chan_of.size()) + " VFs, not 2");
  std::regex summary(R"(dmatest: (dma\d+chan\d+)-(copy|set)(\d+): summary (\d+) tests, (\d+) failures)");
  auto check_run = [&](int type, int polled, int n) {
    std::string head = "=== dmatest type=" + std::to_string(type) + " polled=" + std::to_string(polled) +
                       " iterations=" + std::to_string(n);
    std::string s = section(head);
    if (s.empty()) {
      bad.push_back(head + ": no output");
      return;
    }
    std::set<std::string> threads;
    for (auto it = std::sregex_iterator(s.begin(), s.end(), summary); it != std::sregex_iterator(); ++it) {
      const auto& m = *it;
      threads.insert(m[1].str() + "-" + m[2].str() + m[3].str());
      if (!chan_of.count(m[1])) bad.push_back(head + ": a channel not ours: " + m[1].str());
      if (m[2] != (type == 0 ? "copy" : "set")) bad.push_back(head + ": a thread of the wrong type: " + m.str());
      if (std::stoi(m[4]) != n) bad.push_back(head + ": " + m.str() + " (not " + std::to_string(n) + " tests)");
      if (std::stoi(m[5]) != 0) bad.push_back(head + ": " + m.str());
    }
    size_t want = chan_of.size() * static_cast<size_t>(threads_per_chan(polled));
    if (threads.size() != want)
      bad.push_back(head + ": " + std::to_string(threads.size()) + " threads reported, not " + std::to_string(want));
    if (s.find("data error") != std::string::npos || s.find("result #") != std::string::npos)
      bad.push_back(head + ": dmatest reported errors");
  };
  for (int type : {0, 1})
    for (int polled : {0, 1}) check_run(type, polled, iterations);
  // The device's own counters agree: before the FLR, every test of the four
  // runs was one descriptor, done without error, on its VF.
  std::regex reset(R"((\d{4}:\d\d:\d\d\.\d): reset: (\d+) descriptors done, (\d+) failed before it)");
  std::string rs = section("=== reset");
  int resets = 0;
  for (auto it = std::sregex_iterator(rs.begin(), rs.end(), reset); it != std::sregex_iterator(); ++it, ++resets) {
    long want = long{iterations} * (2 * threads_per_chan(0) + 2 * threads_per_chan(1)) + extra;
    if (std::stol((*it)[2]) != want || std::stol((*it)[3]) != 0)
      bad.push_back("the VF's counters before its FLR: " + it->str() + " (want " + std::to_string(want) + " done)");
  }
  if (resets != 2) bad.push_back(std::to_string(resets) + " VFs reset under the driver, not 2");
  check_run(0, 0, kAfterReset);
  if (out.find("DMATEST-RMMOD-OK") == std::string::npos) bad.push_back("rmmod uvfio_vf_dma failed");
  std::regex removed(R"(: removed: (\d+) descriptors done, (\d+) failed)");
  std::string rm = section("=== removed");
  int removals = 0;
  for (auto it = std::sregex_iterator(rm.begin(), rm.end(), removed); it != std::sregex_iterator(); ++it, ++removals) {
    if (std::stol((*it)[1]) != long{threads_per_chan(0)} * kAfterReset || std::stol((*it)[2]) != 0)
      bad.push_back("the VF's counters at remove: " + it->str());
  }
  if (removals != 2) bad.push_back(std::to_string(removals) + " VFs released at rmmod, not 2");
  // Loaded again after the remove, it works as before, and goes again.
  if (out.find("DMATEST-RELOAD-OK") == std::string::npos) bad.push_back("insmod after rmmod failed");
  check_run(1, 0, kAfterReload);
  if (out.find("DMATEST-RMMOD-AGAIN-OK") == std::string::npos) bad.push_back("the second rmmod failed");
  // QEMU refused nothing and lost nothing.
  for (const char* q : {"error reply", "hardware error", "vfio_user", "vfio-user"})
    if (out.find(q) != std::string::npos) bad.push_back(std::string("QEMU said '") + q + "'");
  if (out.find("GUEST-DONE") == std::string::npos) bad.push_back("the guest did not finish");
  return bad;
}

class QemuDmatest : public ::testing::TestWithParam<Machine> {
 protected:
  void SetUp() override {
    for (const char* need : {QEMU_PATH, GUEST_KERNEL, GUEST_INITRD, GUEST_MODULE}) {
      if (exists(need)) continue;
      if (required()) FAIL() << need << " is missing (tests/qemu/prepare-guest.sh, then the build)";
      GTEST_SKIP() << need << " is missing: run tests/qemu/prepare-guest.sh and build";
    }
    d_ = std::make_unique<Daemon>(std::vector<std::string>{"--no-fuse"}, "dmatest");
    ASSERT_TRUE(d_->wait_ready()) << d_->log();
    ASSERT_TRUE(wait_sockets({sock(kVfs[0]), sock(kVfs[1])})) << d_->log();
    dir_ = make_tmpdir("dmatest-out");
  }
  void TearDown() override {
    if (HasFailure() && d_ && !log_.empty()) {
      std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
      for (char& c : name)
        if (c == '/') c = '-';
      keep_artifacts(ARTIFACTS_DIR, name, log_, d_->log());
    }
    if (d_) {
      EXPECT_EQ(d_->stop(), 0) << d_->log();
    }
    if (!dir_.empty()) sh("rm -rf " + dir_);
  }
  std::string sock(const char* vf) const { return d_->rundir() + "/vfio-user/" + vf + ".sock"; }

  // Boots the guest and returns its console once it has powered off.
  std::string run(const Machine& s, const std::string& append) {
    std::string machine = "q35";
    if (s.memfd) machine += ",memory-backend=mem";
    if (s.iommu) machine += ",kernel-irqchip=split";
    std::vector<std::string> a = qemu_command(QEMU_PATH, machine);
    for (std::string x : {std::string("-m"), std::to_string(s.ram_mib), std::string("-smp"), std::to_string(s.smp)})
      a.push_back(x);
    if (s.memfd) {
      a.push_back("-object");
      a.push_back("memory-backend-memfd,id=mem,size=" + std::to_string(s.ram_mib) + "M,share=on");
    }
    if (s.iommu) {
      a.push_back("-device");
      a.push_back("intel-iommu,caching-mode=on");
    }
    add_guest(a, GUEST_KERNEL, GUEST_INITRD,
              "console=ttyS0 panic=-1 quiet mem=" + std::to_string(s.guest_mib) + "M" +
                  std::string(s.iommu ? " intel_iommu=on" : "") + append,
              {sock(kVfs[0]), sock(kVfs[1])});
    log_ = dir_ + "/serial.log";
    Qemu q(a, log_);
    EXPECT_TRUE(q.started());
    int st = q.wait_exit(600);
    EXPECT_EQ(st, 0) << "QEMU did not power off cleanly\n" << q.output();
    return q.output();
  }

  std::unique_ptr<Daemon> d_;
  std::string dir_, log_;
};

TEST_P(QemuDmatest, EveryChannelPassesTheKernelsDmatest) {
  std::string out = run(GetParam(), " uvfio.dmatest=" + std::to_string(kIterations));
  auto bad = check_dmatest(out, kIterations);
  for (const auto& b : bad) ADD_FAILURE() << b;
  if (!bad.empty()) std::fprintf(stderr, "%s\n", out.c_str());
}

INSTANTIATE_TEST_SUITE_P(Setups, QemuDmatest,
                         ::testing::Values(Machine{"Memfd", true, 1, false}, Machine{"DefaultRam", false, 1, false},
                                           Machine{"Smp2", true, 2, false}, Machine{"GuestIommu", true, 1, true}),
                         [](const auto& i) { return std::string(i.param.name); });

// Behind the guest IOMMU, 256 MiB mapped for each VF at the same time (the
// guest's IOMMU maps it all, QEMU maps it all for the device through
// vfio-user): each 4 MiB piece filled by the device while all are mapped,
// then checked by the guest's CPU; dmatest passes after; QEMU refused
// nothing; the daemon saw at least 256 MiB mapped at once for each VF.
TEST_F(QemuDmatest, AGuestIommuMaps256MiBForTheDevice) {
  Machine m{"Iommu1G", true, 1, true, 1024, 768};
  constexpr int kShortRun = 20;
  std::string out = run(m, " uvfio.dmatest=" + std::to_string(kShortRun) + " uvfio.maptest=256");
  size_t maps = 0;
  for (size_t at = out.find("map test: 256 MiB mapped at once in 64 pieces, filled by the device and verified");
       at != std::string::npos; at = out.find("map test: 256 MiB", at + 1))
    ++maps;
  EXPECT_EQ(maps, 2u) << out;
  // The map test's fills: 64 pieces of 4 MiB, four 1 MiB descriptors each.
  auto bad = check_dmatest(out, kShortRun, 256);
  for (const auto& b : bad) ADD_FAILURE() << b;
  // The host side. (The peak also counts the maps QEMU makes of all guest
  // RAM before the guest turns its IOMMU on; the guest's log above is what
  // shows 256 MiB mapped through it at once: the device reached every byte.)
  for (const char* vf : kVfs) {
    auto r = sh(d_->ctl(std::string("stats ") + vf + " --json"));
    ASSERT_EQ(r.status, 0) << r.err;
    auto j = nlohmann::json::parse(r.out);
    EXPECT_GE(j["dma_map_bytes_peak"].get<uint64_t>(), uint64_t{256} << 20) << vf << ": " << r.out;
    EXPECT_EQ(j["errors"].value("ENOSPC", uint64_t{0}), 0u) << r.out;
    EXPECT_EQ(j["errors"].value("EINVAL", uint64_t{0}), 0u) << r.out;
    RecordProperty(std::string("peak_map_mib_") + vf, std::to_string(j["dma_map_bytes_peak"].get<uint64_t>() >> 20));
    RecordProperty(std::string("dma_map_requests_") + vf, std::to_string(j["requests"].value("DMA_MAP", uint64_t{0})));
  }
  if (!bad.empty() || maps != 2) std::fprintf(stderr, "%s\n", out.c_str());
}

// The harness catches a device that corrupts: one copy in 7 one byte short.
class QemuDmatestNegative : public QemuDmatest {};

TEST_P(QemuDmatestNegative, ACorruptingDeviceFailsTheChecks) {
  constexpr int kShort = 40;
  std::string out = run(GetParam(), " uvfio.dmatest=" + std::to_string(kShort) + " uvfio.corrupt=7");
  auto bad = check_dmatest(out, kShort);
  bool caught = false;
  for (const auto& b : bad) caught |= b.find("type=0") != std::string::npos && b.find("failures") != std::string::npos;
  EXPECT_TRUE(caught) << "the checks passed a device that shortens copies:\n" << out;
  EXPECT_NE(out.find("data error"), std::string::npos) << out;
  // memset is not corrupted: those runs pass.
  for (const auto& b : bad) EXPECT_EQ(b.find("type=1"), std::string::npos) << b;
}

INSTANTIATE_TEST_SUITE_P(Setups, QemuDmatestNegative, ::testing::Values(Machine{"Memfd", true, 1, false}),
                         [](const auto& i) { return std::string(i.param.name); });

}  // namespace
}  // namespace uvfio::e2e
