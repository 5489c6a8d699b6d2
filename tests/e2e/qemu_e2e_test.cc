// SPDX-License-Identifier: BSD-3-Clause
// The real peer: unmodified QEMU 10.2 (vfio-user-pci) boots Debian's Linux
// kernel with both seed VFs attached over uvfiod's sockets. Inside the guest
// lspci decodes them and vf_check (tests/qemu/guest/vf_check.c) drives each
// VF as a guest driver would: registers at every width, every work-queue
// opcode with its result checked, device memory through BAR2, and an MSI-X
// vector programmed in the guest, which the guest kernel logs on delivery.
// Host side: QEMU killed and started again on the same sockets, and the
// devices serve the new guest.
//
// Needs QEMU_PATH, the kernel from tests/qemu/prepare-guest.sh and the
// initramfs the build makes. Without them the tests skip, unless
// UVFIO_REQUIRE_QEMU is set (CI), where that is a failure. On failure the
// serial console and the daemon's log are kept under ARTIFACTS_DIR.
#include <gtest/gtest.h>

#include <map>
#include <regex>
#include <set>

#include "e2e/harness.h"
#include "e2e/qemu.h"

namespace uvfio::e2e {
namespace {

const char* kVfs[] = {"0000:08:00.0", "0000:09:00.0"};
// What vf_check reports for each VF; every one must PASS.
const char* kChecks[] = {"command",     "bar0-mmap",  "bar2-mmap",   "id",           "version",
                         "status-ready", "id-narrow", "scratch",     "sq-base-halves", "cq-base-64",
                         "guest-ram",   "msix-cap",   "queue-on",    "completions",  "completion-order",
                         "fill",        "copy",       "to-device",   "from-device",  "crc32c",
                         "count-done",  "bytes",      "count-err",   "msix-delivered"};

// Guest RAM in a shared memfd (DMA_MAP carries the fd: the device maps it)
// or QEMU's default anonymous RAM (no fd: DMA_READ/DMA_WRITE messages in
// QEMU's layout, which the server detects).
enum class Ram { kMemfd, kDefault };

class QemuGuest : public ::testing::TestWithParam<Ram> {
 protected:
  void SetUp() override {
    for (const char* need : {QEMU_PATH, GUEST_KERNEL, GUEST_INITRD}) {
      if (exists(need)) continue;
      if (required()) FAIL() << need << " is missing (tests/qemu/prepare-guest.sh; the build makes the initramfs)";
      GTEST_SKIP() << need << " is missing: run tests/qemu/prepare-guest.sh (UVFIO_REQUIRE_QEMU makes this a failure)";
    }
    d_ = std::make_unique<Daemon>(std::vector<std::string>{"--no-fuse"}, "qemu");
    ASSERT_TRUE(d_->wait_ready()) << d_->log();
    for (const char* vf : kVfs)
      ASSERT_TRUE(wait_socket(sock(vf))) << d_->log();
    dir_ = make_tmpdir("qemu-out");
  }
  void TearDown() override {
    if (HasFailure() && d_) {
      // Keep what the guest printed and what the daemon logged.
      std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
      for (char& c : name)
        if (c == '/') c = '-';
      sh(std::string("mkdir -p ") + ARTIFACTS_DIR);
      for (auto& [i, path] : logs_) sh("cp " + path + " " + ARTIFACTS_DIR + "/" + name + "-qemu" + std::to_string(i) + ".log");
      std::ofstream(std::string(ARTIFACTS_DIR) + "/" + name + "-uvfiod.log") << d_->log();
      std::fprintf(stderr, "qemu: serial console and daemon log kept in %s\n", ARTIFACTS_DIR);
    }
    if (d_) {
      EXPECT_EQ(d_->stop(), 0) << d_->log();
    }
    if (!dir_.empty()) sh("rm -rf " + dir_);
  }
  static bool wait_socket(const std::string& p) {
    for (int i = 0; i < 500; ++i) {
      if (can_connect(p)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }
  // Waits up to 5 s for `what` in the daemon's log.
  bool wait_log(const std::string& what) {
    for (int i = 0; i < 500; ++i) {
      if (d_->log().find(what) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }
  std::string sock(const char* vf) const { return d_->rundir() + "/vfio-user/" + vf + ".sock"; }

  // The command lines README.md shows (scripts/run-qemu.sh).
  std::vector<std::string> qemu_args(const std::string& extra_append = "") const {
    bool memfd = GetParam() == Ram::kMemfd;
    std::vector<std::string> a = qemu_command(QEMU_PATH, memfd ? "q35,memory-backend=mem" : "q35");
    for (std::string x : {"-m", "512", "-smp", "1"}) a.push_back(x);
    if (memfd) {
      a.push_back("-object");
      a.push_back("memory-backend-memfd,id=mem,size=512M,share=on");
    }
    add_guest(a, GUEST_KERNEL, GUEST_INITRD, "console=ttyS0 panic=-1 quiet mem=256M" + extra_append,
              {sock(kVfs[0]), sock(kVfs[1])});
    return a;
  }
  std::unique_ptr<Qemu> boot(const std::string& extra_append = "") {
    std::string log = dir_ + "/serial" + std::to_string(logs_.size()) + ".log";
    logs_.emplace_back(logs_.size(), log);
    auto q = std::make_unique<Qemu>(qemu_args(extra_append), log);
    EXPECT_TRUE(q->started());
    return q;
  }

  // Everything the guest must have printed for a passing run.
  void expect_guest_passed(const std::string& out) {
    EXPECT_NE(out.find("GUEST-BOOT-OK"), std::string::npos) << out;
    // lspci in the guest: both VFs, decoded with their BARs and capabilities.
    size_t a = out.find("=== lspci"), b = out.find("=== end lspci");
    ASSERT_NE(a, std::string::npos) << out;
    ASSERT_NE(b, std::string::npos) << out;
    std::string lspci = out.substr(a, b - a);
    auto count = [&](const std::string& what) {
      size_t n = 0;
      for (size_t at = lspci.find(what); at != std::string::npos; at = lspci.find(what, at + 1)) ++n;
      return n;
    };
    EXPECT_EQ(count("Ethernet controller [0200]: Mellanox Technologies ConnectX Family mlx5Gen Virtual Function [15b3:101e]"), 2u) << lspci;
    EXPECT_EQ(count("Region 0: Memory at"), 2u) << lspci;
    EXPECT_EQ(count("(64-bit, prefetchable) [size=64K]"), 2u) << lspci;
    EXPECT_EQ(count("(64-bit, prefetchable) [size=16M]"), 2u) << lspci;
    EXPECT_EQ(count("Capabilities: [40] Express (v2)"), 2u) << lspci;
    EXPECT_EQ(count("FLReset+"), 2u) << lspci;
    EXPECT_EQ(count("Capabilities: [7c] MSI-X: Enable- Count=8 Masked-"), 2u) << lspci;
    EXPECT_EQ(count("Vector table: BAR=0 offset=00002000"), 2u) << lspci;
    EXPECT_EQ(count("PBA: BAR=0 offset=00003000"), 2u) << lspci;
    // vf_check: both VFs found, every check passed on each.
    EXPECT_NE(out.find("VFCHECK - found PASS 2 mlx5 VF(s)"), std::string::npos) << out;
    std::regex line(R"(VFCHECK (\S+) (\S+) (PASS|FAIL))");
    std::map<std::string, std::set<std::string>> passed;
    for (auto it = std::sregex_iterator(out.begin(), out.end(), line); it != std::sregex_iterator(); ++it) {
      EXPECT_EQ((*it)[3], "PASS") << it->str();
      if ((*it)[3] == "PASS") passed[(*it)[1]].insert((*it)[2]);
    }
    std::vector<std::string> bdfs;
    for (auto& [bdf, checks] : passed)
      if (bdf != "-" && bdf != "ALL") bdfs.push_back(bdf);
    ASSERT_EQ(bdfs.size(), 2u) << out;
    for (auto& bdf : bdfs)
      for (const char* c : kChecks) EXPECT_TRUE(passed[bdf].count(c)) << bdf << ": no PASS for " << c;
    EXPECT_NE(out.find("VFCHECK ALL PASS"), std::string::npos) << out;
    EXPECT_NE(out.find("GUEST-DONE"), std::string::npos) << out;
    // QEMU itself complained of nothing about the devices.
    EXPECT_EQ(out.find("vfio-user"), std::string::npos) << out;
  }

  std::unique_ptr<Daemon> d_;
  std::string dir_;
  std::vector<std::pair<size_t, std::string>> logs_;
};

// How the device reached guest RAM, as the daemon logged it per connection.
void expect_dma_path(const std::string& log, Ram ram, size_t connections) {
  size_t qemu = 0;
  for (size_t at = log.find("DMA layout: QEMU's"); at != std::string::npos; at = log.find("DMA layout: QEMU's", at + 1))
    ++qemu;
  if (ram == Ram::kMemfd) {
    EXPECT_EQ(log.find("DMA layout:"), std::string::npos) << "memfd RAM needs no DMA messages\n" << log;
  } else {
    EXPECT_EQ(qemu, connections) << "QEMU's layout detected once per connection\n" << log;
  }
}

TEST_P(QemuGuest, BootsWithBothVfsAndDrivesThem) {
  auto q = boot();
  int st = q->wait_exit(150);
  std::string out = q->output();
  EXPECT_EQ(st, 0) << out;
  expect_guest_passed(out);
  // Both devices served a client and saw it go.
  for (const char* vf : kVfs) {
    EXPECT_TRUE(wait_log(std::string(vf) + ": vfio-user: client connected")) << d_->log();
    EXPECT_TRUE(wait_log(std::string(vf) + ": vfio-user: client disconnected")) << d_->log();
  }
  expect_dma_path(d_->log(), GetParam(), 2);
}

TEST_P(QemuGuest, QemuKilledAndStartedAgainOnTheSameSockets) {
  // First guest: runs everything, then holds the devices until QEMU dies.
  auto q1 = boot(" uvfio.hold");
  ASSERT_TRUE(q1->wait_for("GUEST-HOLDING", 150)) << q1->output();
  expect_guest_passed(q1->output());
  q1->kill();
  // The server notices both clients gone (the device keeps its state).
  for (const char* vf : kVfs) EXPECT_TRUE(wait_log(std::string(vf) + ": vfio-user: client disconnected")) << d_->log();
  // A new QEMU on the same sockets: a fresh guest drives both devices again.
  auto q2 = boot();
  int st = q2->wait_exit(150);
  std::string out = q2->output();
  EXPECT_EQ(st, 0) << out;
  expect_guest_passed(out);
  for (const char* vf : kVfs) EXPECT_TRUE(wait_log(std::string(vf) + ": vfio-user: client disconnected")) << d_->log();
  expect_dma_path(d_->log(), GetParam(), 4);
}

INSTANTIATE_TEST_SUITE_P(Ram, QemuGuest, ::testing::Values(Ram::kMemfd, Ram::kDefault),
                         [](const auto& i) { return i.param == Ram::kMemfd ? "Memfd" : "DefaultRam"; });

}  // namespace
}  // namespace uvfio::e2e
