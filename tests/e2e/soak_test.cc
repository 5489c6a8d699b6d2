// SPDX-License-Identifier: BSD-3-Clause
// The soak: a bounded run of mixed hostile and honest clients across 32 VFs
// while two admins storm the control plane, one through uvfioctl (SR-IOV
// off and on), one through the FUSE tree (unbind and bind). At the end: the
// daemon alive, its fds and threads back to the baseline, RSS within a stated
// bound, the FUSE tree equal to what uvfioctl lists, and every honest
// client's DMA verified (uvfio-guest run checks every descriptor's result
// and the guest RAM and device memory it wrote).
//
// Duration: UVFIO_SOAK_SECONDS (default 40). Results: docs/reliability.md.
#include <gtest/gtest.h>
#include <linux/vfio.h>
#include <sys/eventfd.h>
#include <sys/mman.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <random>
#include <thread>

#include "e2e/harness.h"
#include "protocol/raw.h"

namespace uvfio::e2e {
namespace {

using Clock = std::chrono::steady_clock;

bool exists_file(const std::string& p) { return access(p.c_str(), F_OK) == 0; }

// Four PFs of 8 VFs each: PF k at 00:0(4+k).0, its VFs at 00:(10+k).0-7.
std::string topology() {
  std::string t;
  for (int k = 0; k < 4; ++k)
    t += "[[device]]\naddress = \"0000:00:0" + std::to_string(4 + k) +
         ".0\"\nmodel = \"mlx5-pf\"\ntotal_vfs = 8\nnum_vfs = 8\nfirst_vf_offset = 0x60\n"
         "vf_driver_override = \"mlx5_vfio_pci\"\n\n";
  return t;
}
std::string vf(int pf, int i) {
  char b[32];
  std::snprintf(b, sizeof(b), "0000:00:%02x.%d", 0x10 + pf, i);
  return b;
}

// Requests that may fail (the device may be unbinding): the reply's errno,
// -1 when the connection is gone. Never asserts.
int call(int fd, uint16_t cmd, const std::vector<uint8_t>& p, std::vector<int> fds = {}) {
  static std::atomic<uint16_t> id{1};
  Header h{id++, cmd, 0, 0, 0};
  if (!send_message(fd, h, p, fds)) return -1;
  auto m = recv_message(fd);
  if (!m) return -1;
  return (m->hdr.flags & kFlagError) ? static_cast<int>(m->hdr.error_no) : 0;
}
bool version(int fd) {
  std::string js = R"({"capabilities":{"max_msg_fds":16}})";
  std::vector<uint8_t> p{0, 0, 0, 0};
  p.insert(p.end(), js.begin(), js.end());
  p.push_back(0);
  return call(fd, kVersion, p) == 0;
}

// One hostile session of kind `k` against `sock` (whatever the device does
// with it, only that client may suffer).
void hostile(const std::string& sock, int k, std::mt19937& rng) {
  Raw r(sock);
  if (!r.connected()) return;  // unbound right now: fine
  switch (k) {
    case 0: {  // garbage
      std::vector<uint8_t> junk(1 + rng() % 300);
      for (auto& b : junk) b = static_cast<uint8_t>(rng());
      (void)::send(r.fd(), junk.data(), junk.size(), MSG_NOSIGNAL);
      break;
    }
    case 1: {  // a full blocking eventfd as REQ trigger, fired
      if (!version(r.fd())) break;
      UniqueFd efd(eventfd(0, EFD_CLOEXEC));
      uint64_t full = 0xfffffffffffffffeULL;
      (void)!::write(efd.get(), &full, 8);
      (void)call(r.fd(), kDeviceSetIrqs,
                 irq_set_msg(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_REQ_IRQ_INDEX, 0, 1),
                 {efd.get()});
      for (int i = 0; i < 5; ++i)
        (void)call(r.fd(), kDeviceSetIrqs,
                   irq_set_msg(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_REQ_IRQ_INDEX, 0, 1));
      break;
    }
    case 2: {  // distinct files until the daemon says no, then a shrunk one
      if (!version(r.fd())) break;
      for (int i = 0; i < 300; ++i) {
        UniqueFd f(memfd_create("hostile", MFD_CLOEXEC));
        if (ftruncate(f.get(), 4096) != 0) break;
        auto p = dma_map_msg(uint64_t(i) << 20, 4096, 0);
        int e = call(r.fd(), kDmaMap, p, {f.get()});
        if (e) break;  // ENOSPC at the per-device cap, or gone
        if (i == 3) (void)ftruncate(f.get(), 0);
      }
      break;
    }
    case 3:  // silent, then gone
      std::this_thread::sleep_for(std::chrono::milliseconds(50 + rng() % 200));
      break;
    case 4: {  // half a message, then gone
      Header h{1, kDeviceGetInfo, sizeof(Header) + 16, 0, 0};
      (void)::send(r.fd(), &h, 9, MSG_NOSIGNAL);
      break;
    }
    default: {  // a burst of requests, replies never read
      if (!version(r.fd())) break;
      RegionAccessMsg a{0, VFIO_PCI_CONFIG_REGION_INDEX, 256};
      for (int i = 0; i < 200; ++i) {
        Header h{static_cast<uint16_t>(i), kRegionRead, sizeof(Header) + sizeof(a), 0, 0};
        std::vector<uint8_t> m(h.msg_size);
        std::memcpy(m.data(), &h, sizeof(h));
        std::memcpy(m.data() + sizeof(h), &a, sizeof(a));
        if (::send(r.fd(), m.data(), m.size(), MSG_DONTWAIT | MSG_NOSIGNAL) < 0) break;
      }
      break;
    }
  }
}

TEST(Soak, HostileAndHonestClientsUnderAdminStorms) {
  int seconds = std::getenv("UVFIO_SOAK_SECONDS") ? std::atoi(std::getenv("UVFIO_SOAK_SECONDS")) : 40;
  std::string dir = make_tmpdir("soak");
  std::ofstream(dir + "/topo.toml") << topology();
  Daemon d({"--config", dir + "/topo.toml", "--client-timeout-ms", "1000"}, "soak");
  ASSERT_TRUE(d.wait_ready()) << d.log();
  bool fuse = false;
  for (int i = 0; i < 100 && !(fuse = exists_file(d.sys() + "/bus/pci/devices/" + vf(3, 7))); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (!fuse && fuse_required()) FAIL() << "FUSE is required (UVFIO_REQUIRE_FUSE) but not mounted\n" << d.log();
  if (!fuse) GTEST_SKIP() << "no FUSE here: the second admin needs the mounted tree";
  for (int i = 0; i < 500 && !can_connect(d.rundir() + "/vfio-user/" + vf(3, 7) + ".sock"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  // (The readiness probe's connection may still be open in the daemon.)
  Usage base = settled_usage(d.pid());
  auto deadline = Clock::now() + std::chrono::seconds(seconds);
  std::atomic<int> honest_runs{0}, honest_failed{0}, hostile_sessions{0}, storms_a{0}, storms_b{0};
  std::vector<std::string> failures;
  std::mutex fail_mu;
  std::vector<std::thread> ts;
  // Honest tenants on PF0 and PF1 (nobody unbinds those): the DMA workload
  // of uvfio-guest, every result checked.
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([&, t] {
      for (int n = 0; Clock::now() < deadline; ++n) {
        std::string s = d.rundir() + "/vfio-user/" + vf(t % 2, (t / 2) * 4 + n % 4) + ".sock";
        auto r = sh(std::string(GUEST_PATH) + " run --socket " + s + " --ms 400 --ram 8");
        ++honest_runs;
        if (r.status != 0 || r.out.find("verify:") == std::string::npos) {
          ++honest_failed;
          std::lock_guard lk(fail_mu);
          failures.push_back(s + ": " + r.out + r.err);
        }
      }
    });
  }
  // Hostile tenants on PF2's VFs (which admin B unbinds and binds).
  for (int t = 0; t < 3; ++t) {
    ts.emplace_back([&, t] {
      std::mt19937 rng(1234 + t);
      while (Clock::now() < deadline) {
        hostile(d.rundir() + "/vfio-user/" + vf(2, rng() % 8) + ".sock", static_cast<int>(rng() % 6), rng);
        ++hostile_sessions;
      }
    });
  }
  // Admin A, through uvfioctl: PF3's VFs off and on.
  ts.emplace_back([&] {
    while (Clock::now() < deadline) {
      sh(d.ctl("sriov 0000:00:07.0 0") + " >/dev/null; " + d.ctl("sriov 0000:00:07.0 8") + " >/dev/null");
      ++storms_a;
    }
  });
  // Admin B, through the FUSE tree: PF2's VFs unbound and bound again (an
  // unbind waits for the device's client to leave).
  ts.emplace_back([&] {
    std::mt19937 rng(99);
    std::string drv = d.sys() + "/bus/pci/drivers/mlx5_vfio_pci/";
    while (Clock::now() < deadline) {
      std::string f = vf(2, rng() % 8);
      sh("echo " + f + " > " + drv + "unbind; echo " + f + " > " + drv + "bind");
      ++storms_b;
    }
  });
  for (auto& t : ts) t.join();
  // Everything back as it was.
  ASSERT_EQ(kill(d.pid(), 0), 0) << "uvfiod died\n" << d.log();
  ASSERT_EQ(sh(d.ctl("sriov 0000:00:07.0 8")).status, 0) << d.log();
  for (int i = 0; i < 8; ++i) {
    std::string f = vf(2, i);
    if (sh("readlink " + d.sys() + "/bus/pci/devices/" + f + "/driver").status != 0)
      sh("echo " + f + " > " + d.sys() + "/bus/pci/drivers/mlx5_vfio_pci/bind");
  }
  Usage after = usage_back_to(d.pid(), base);  // clients' cleanups, idle pool workers (5 s)
  RecordProperty("seconds", seconds);
  RecordProperty("honest_runs", honest_runs.load());
  RecordProperty("hostile_sessions", hostile_sessions.load());
  RecordProperty("sriov_cycles", storms_a.load());
  RecordProperty("unbind_bind_cycles", storms_b.load());
  RecordProperty("rss_kb_before", base.rss_kb);
  RecordProperty("rss_kb_after", after.rss_kb);
  std::printf("soak: %d s, %d honest runs (%d failed), %d hostile sessions, %d sriov cycles, %d unbind/bind; "
              "fds %ld -> %ld, threads %ld -> %ld, RSS %ld -> %ld kB\n",
              seconds, honest_runs.load(), honest_failed.load(), hostile_sessions.load(), storms_a.load(),
              storms_b.load(), base.fds, after.fds, base.threads, after.threads, base.rss_kb, after.rss_kb);
  EXPECT_GT(honest_runs.load(), 4);
  EXPECT_GT(hostile_sessions.load(), 20);
  EXPECT_GT(storms_a.load(), 2);
  EXPECT_GT(storms_b.load(), 2);
  EXPECT_EQ(honest_failed.load(), 0);
  for (auto& f : failures) ADD_FAILURE() << "honest client: " << f;
  EXPECT_EQ(after.fds, base.fds) << "fds leaked";
  EXPECT_LE(after.threads, base.threads) << "threads left: " << base.names << " -> " << after.names;
#if !defined(__SANITIZE_THREAD__) && !defined(__SANITIZE_ADDRESS__)
  EXPECT_LT(after.rss_kb, base.rss_kb + 64 * 1024) << "RSS " << base.rss_kb << " -> " << after.rss_kb << " kB";
#endif
  // The FUSE tree and uvfioctl agree on every function and its driver.
  auto fuse_ls = sh("ls " + d.sys() + "/bus/pci/devices");
  auto ctl_ls = sh(d.ctl("ls bus/pci/devices"));
  ASSERT_EQ(ctl_ls.status, 0) << ctl_ls.err;
  EXPECT_EQ(fuse_ls.out, ctl_ls.out);
  std::istringstream names(ctl_ls.out);
  int functions = 0;
  for (std::string f; names >> f; ++functions) {
    auto a = sh("readlink " + d.sys() + "/bus/pci/devices/" + f + "/driver");
    auto b = sh(d.ctl("readlink bus/pci/devices/" + f + "/driver"));
    EXPECT_EQ(a.out, b.out) << f;
  }
  EXPECT_EQ(functions, 4 + 32);
  // And every VF still serves.
  for (int pf = 0; pf < 4; ++pf)
    for (int i = 0; i < 8; ++i) {
      Raw c(d.rundir() + "/vfio-user/" + vf(pf, i) + ".sock");
      ASSERT_TRUE(c.connected()) << vf(pf, i);
      EXPECT_TRUE(version(c.fd())) << vf(pf, i);
      EXPECT_TRUE(c.alive()) << vf(pf, i);
    }
  EXPECT_EQ(d.stop(), 0) << d.log();
  sh("rm -rf " + dir);
}

}  // namespace
}  // namespace uvfio::e2e
