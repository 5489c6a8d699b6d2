// SPDX-License-Identifier: BSD-3-Clause
// The kernel's own VFIO selftests (tools/testing/selftests/vfio, from the
// newest Debian kernel source that has them: tests/kselftest/) against both
// seed VFs, inside the real QEMU 10.2 with a guest IOMMU (intel-iommu,
// caching mode): the guest's own VFIO modules bind each VF to vfio-pci, and
// the selftests drive it through the guest's type1 IOMMU, QEMU maps and
// unmaps for the device through vfio-user as the guest's IOMMU does. Their
// TAP output is parsed: every expected test on both VFs in both type1 modes
// passes, the only skips are the ones named below with their reason, and
// QEMU refused nothing. A negative run proves the harness is live: the
// daemon's test-only fault switch makes every 5th VF copy complete with a
// wrong status, and vfio_pci_driver_test fails.
//
// Needs QEMU_PATH, the kernel, its vfio modules and the kernel source from
// tests/qemu/prepare-guest.sh, and the initramfs the build makes with the
// selftests; skipped without them unless UVFIO_REQUIRE_QEMU is set (CI).
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "e2e/harness.h"
#include "e2e/qemu.h"

namespace uvfio::e2e {
namespace {

const char* kVfs[] = {"0000:08:00.0", "0000:09:00.0"};  // the seed topology's VFs (host side)
const char* kModes[] = {"vfio_type1_iommu", "vfio_type1v2_iommu"};

// One result line of the harness's TAP: "ok 3 fixture.variant.test # SKIP why".
struct Result {
  bool ok = false;
  std::string skip;  // the reason, when skipped
};

// section "prog|mode|guest bdf" -> test name -> result.
using Results = std::map<std::string, std::map<std::string, Result>>;

struct GuestRun {
  Results results;
  std::vector<std::string> guest_vfs;  // the VFs the guest bound to vfio-pci
  std::map<std::string, int> exit_codes;
  std::string out;
};

GuestRun parse(const std::string& out) {
  GuestRun r;
  r.out = out;
  std::istringstream in(out);
  std::string line, section;
  std::regex head(R"(^=== kselftest (\S+) mode=(\S+) bdf=(\S+))");
  std::regex tap(R"(^(not ok|ok) \d+ (\S+)(?: # SKIP ?(.*))?)");
  std::regex end(R"(^=== end rc=(\d+))");
  std::regex vf(R"(^KSELFTEST-VF (\S+) driver=vfio-pci group=\d+)");
  std::smatch m;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (std::regex_search(line, m, head)) {
      section = m[1].str() + "|" + m[2].str() + "|" + m[3].str();
      r.results[section];
    } else if (!section.empty() && std::regex_search(line, m, tap)) {
      r.results[section][m[2].str()] = Result{m[1].str() == "ok", m[3].matched ? m[3].str() : ""};
    } else if (!section.empty() && std::regex_search(line, m, end)) {
      r.exit_codes[section] = std::stoi(m[1].str());
      section.clear();
    } else if (std::regex_search(line, m, vf)) {
      r.guest_vfs.push_back(m[1].str());
    }
  }
  return r;
}

// Every test the suite must have run on one VF, by section, with the skips
// it may report and why (this guest kernel and this device).
struct Expected {
  std::string prog, mode;
  std::vector<std::string> tests;
  std::map<std::string, std::string> may_skip;  // test -> a word of the reason
  // Tests of the guest kernel alone that the 6.1 guest kernel fails, with
  // the line it fails with (docs/kselftest.md): accepted as ok or as exactly
  // that failure.
  std::map<std::string, std::string> guest_kernel_fails = {};
};

std::vector<Expected> expected() {
  std::vector<Expected> e;
  for (const char* mode : kModes)
    e.push_back({"vfio_pci_device_test", mode,
                 {"vfio_pci_device_test.config_space_read_write", "vfio_pci_device_test.validate_bars",
                  "vfio_pci_device_test.reset", "vfio_pci_irq_test.msi.enable_trigger_disable",
                  "vfio_pci_irq_test.msix.enable_trigger_disable"},
                 // The VF has MSI-X only, as VFs usually do.
                 {{"vfio_pci_irq_test.msi.enable_trigger_disable", "MSI: not supported"}}});
  Expected map{"vfio_dma_mapping_test", "variants", {}, {}};
  Expected mmio{"vfio_dma_mapping_mmio_test", "variants", {}, {}};
  Expected drv{"vfio_pci_driver_test", "variants", {}, {}};
  for (std::string mode : kModes) {
    for (const char* kind : {"anonymous", "anonymous_hugetlb_2mb", "anonymous_hugetlb_1gb"})
      map.tests.push_back("vfio_dma_mapping_test." + mode + "_" + kind + ".dma_map_unmap");
    for (const char* t : {"unmap_range", "unmap_all", "overflow"})
      map.tests.push_back("vfio_dma_map_limit_test." + mode + "." + t);
    // A map whose end wraps around: type1 returns EOVERFLOW since 6.18,
    // EINVAL before. The guest's type1 refuses it; QEMU and uvfio never see it.
    map.guest_kernel_fails["vfio_dma_map_limit_test." + mode + ".overflow"] =
        "overflow:Expected rc (-22) == -EOVERFLOW (-75)";
    for (const char* t : {"map_full_bar", "map_partial_bar", "map_bar_misaligned"})
      mmio.tests.push_back("vfio_dma_mapping_mmio_test." + mode + "." + t);
    for (const char* t : {"init_remove", "memcpy_success", "memcpy_from_unmapped_iova", "memcpy_to_unmapped_iova",
                          "send_msi", "mix_and_match", "memcpy_storm"})
      drv.tests.push_back("vfio_pci_driver_test." + mode + "." + t);
  }
  e.push_back(map);
  e.push_back(mmio);
  e.push_back(drv);
  return e;
}

class QemuKselftest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* need : {QEMU_PATH, GUEST_KERNEL, GUEST_INITRD, KSELFTEST_BIN}) {
      if (exists(need)) continue;
      if (required()) FAIL() << need << " is missing (tests/qemu/prepare-guest.sh, then the build)";
      GTEST_SKIP() << need << " is missing: run tests/qemu/prepare-guest.sh and build";
    }
    dir_ = make_tmpdir("kselftest-out");
  }
  void start_daemon(std::vector<std::string> extra = {}) {
    extra.push_back("--no-fuse");
    d_ = std::make_unique<Daemon>(extra, "kselftest");
    ASSERT_TRUE(d_->wait_ready()) << d_->log();
    ASSERT_TRUE(wait_sockets({sock(kVfs[0]), sock(kVfs[1])})) << d_->log();
  }
  void TearDown() override {
    if (HasFailure() && d_ && !log_.empty()) {
      std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
      keep_artifacts(ARTIFACTS_DIR, "kselftest-" + name, log_, d_->log());
    }
    if (d_) {
      EXPECT_EQ(d_->stop(), 0) << d_->log();
    }
    if (!dir_.empty()) sh("rm -rf " + dir_);
  }
  std::string sock(const char* vf) const { return d_->rundir() + "/vfio-user/" + vf + ".sock"; }

  // Boots the guest (4 GiB of shared RAM, a 1 GiB and eight 2 MiB huge
  // pages, a CPU with 1 GiB pages) and returns its console once it has
  // powered off.
  std::string run(const std::string& which = "") {
    std::vector<std::string> a = qemu_command(QEMU_PATH, "q35,memory-backend=mem,kernel-irqchip=split");
    for (std::string x : {"-cpu", "max", "-m", "4096", "-smp", "1", "-object",
                          "memory-backend-memfd,id=mem,size=4096M,share=on", "-device", "intel-iommu,caching-mode=on"})
      a.push_back(x);
    add_guest(a, GUEST_KERNEL, GUEST_INITRD,
              "console=ttyS0 panic=-1 quiet intel_iommu=on hugepagesz=1G hugepages=1 uvfio.kselftest" + which,
              {sock(kVfs[0]), sock(kVfs[1])});
    log_ = dir_ + "/serial.log";
    Qemu q(a, log_);
    EXPECT_TRUE(q.started());
    int st = q.wait_exit(1200);
    EXPECT_EQ(st, 0) << "QEMU did not power off cleanly\n" << q.output();
    return q.output();
  }

  std::unique_ptr<Daemon> d_;
  std::string dir_, log_;
};

TEST_F(QemuKselftest, TheKernelsVfioSelftestsPassOnBothVfs) {
  start_daemon();
  GuestRun r = parse(run());
  ASSERT_NE(r.out.find("KSELFTEST-DONE"), std::string::npos) << "the guest did not finish\n" << r.out;
  for (const char* q : {"error reply", "hardware error", "KSELFTEST-INSMOD-FAILED"})
    EXPECT_EQ(r.out.find(q), std::string::npos) << "the output has '" << q << "'";
  ASSERT_EQ(r.guest_vfs.size(), 2u) << "both VFs bound to the guest's vfio-pci\n" << r.out;
  int passed = 0, skipped = 0, guest_kernel = 0;
  for (const auto& bdf : r.guest_vfs)
    for (const auto& e : expected()) {
      std::string section = e.prog + "|" + e.mode + "|" + bdf;
      auto it = r.results.find(section);
      if (it == r.results.end()) {
        ADD_FAILURE() << section << ": did not run";
        continue;
      }
      // The selftest's exit status: 0, or 1 when all it failed is what this
      // guest kernel fails.
      bool only_guest_kernel = true;
      for (const auto& [name, res] : it->second) only_guest_kernel &= res.ok || e.guest_kernel_fails.count(name) > 0;
      EXPECT_TRUE(r.exit_codes[section] == 0 || (r.exit_codes[section] == 1 && only_guest_kernel))
          << section << ": exit status " << r.exit_codes[section];
      for (const auto& t : e.tests) {
        auto res = it->second.find(t);
        if (res == it->second.end()) {
          ADD_FAILURE() << section << " " << t << ": no result";
          continue;
        }
        if (!res->second.ok && e.guest_kernel_fails.count(t)) {
          EXPECT_NE(r.out.find(e.guest_kernel_fails.at(t)), std::string::npos)
              << section << " " << t << ": failed otherwise than this guest kernel does";
          ++guest_kernel;
          continue;
        }
        EXPECT_TRUE(res->second.ok) << section << " " << t << ": not ok";
        if (!res->second.skip.empty()) {
          auto why = e.may_skip.find(t);
          EXPECT_TRUE(why != e.may_skip.end() && res->second.skip.find(why->second) != std::string::npos)
              << section << " " << t << ": skipped (" << res->second.skip << ")";
          ++skipped;
        } else if (res->second.ok) {
          ++passed;
        }
      }
      // Nothing ran that is not listed (a new test in a newer source is
      // looked at, not passed unseen).
      for (const auto& [name, res] : it->second)
        EXPECT_NE(std::find(e.tests.begin(), e.tests.end(), name), e.tests.end())
            << section << " " << name << ": not in the expected list (" << (res.ok ? "ok" : "not ok") << ")";
    }
  RecordProperty("passed", passed);
  RecordProperty("skipped", skipped);
  RecordProperty("guest_kernel_failures", guest_kernel);
  std::printf("VFIO selftests: %d passed, %d skipped, %d failed as the 6.1 guest kernel does (%s)\n", passed,
              skipped, guest_kernel,
              slurp(std::string(KSELFTEST_BIN).substr(0, std::string(KSELFTEST_BIN).rfind('/')) + "/VERSION").c_str());
  if (HasFailure()) std::fprintf(stderr, "%s\n", r.out.c_str());
}

// The harness is live: with the daemon's test-only fault switch every 5th
// VF copy completes with EIO, and vfio_pci_driver_test fails: a storm of
// 4096 copies cannot pass in either mode, and the driver reports the status.
TEST_F(QemuKselftest, ADeviceThatFailsCopiesFailsTheDriverTest) {
  setenv("UVFIO_TEST_FAULT_VF_COPY", "5", 1);
  start_daemon();
  unsetenv("UVFIO_TEST_FAULT_VF_COPY");
  GuestRun r = parse(run("=driver"));
  // (kselftest-run.sh runs memcpy_success and memcpy_storm only, on one VF.)
  ASSERT_NE(r.out.find("KSELFTEST-DONE"), std::string::npos) << "the guest did not finish\n" << r.out;
  ASSERT_FALSE(r.guest_vfs.empty());
  std::string section = "vfio_pci_driver_test|variants|" + r.guest_vfs[0];
  ASSERT_TRUE(r.results.count(section)) << r.out;
  EXPECT_NE(r.exit_codes[section], 0) << "vfio_pci_driver_test passed a device that fails copies\n" << r.out;
  for (const char* mode : kModes) {
    std::string t = std::string("vfio_pci_driver_test.") + mode + ".memcpy_storm";
    ASSERT_TRUE(r.results[section].count(t)) << t << "\n" << r.out;
    EXPECT_FALSE(r.results[section][t].ok) << t << " passed";
  }
  EXPECT_NE(r.out.find("failed: status 5"), std::string::npos) << "the driver names the status (EIO)\n" << r.out;
  EXPECT_NE(d_->log().find("TEST FAULT INJECTION"), std::string::npos) << d_->log();
}

}  // namespace
}  // namespace uvfio::e2e
