// SPDX-License-Identifier: BSD-3-Clause
// One misbehaving client costs only its own device: against a running
// uvfiod (--client-timeout-ms 600), a client that never sends VERSION, one
// that stops mid-message and one that never reads its replies are each
// dropped after the timeout, while the other device answers at once the
// whole time; the dropped device then takes a new client.
#include <fcntl.h>
#include <linux/pci_regs.h>
#include <linux/vfio.h>
#include <poll.h>
#include <dirent.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "e2e/harness.h"
#include "protocol/raw.h"

namespace uvfio::e2e {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int kTimeoutMs = 600;

class Isolation : public ::testing::Test {
 protected:
  void SetUp() override {
    dir = make_tmpdir("isolation");
    std::ofstream(dir + "/topo.toml") << kEndpointAndVfTopology;
    d = std::make_unique<Daemon>(std::vector<std::string>{"--config", dir + "/topo.toml", "--no-fuse",
                                                          "--client-timeout-ms", std::to_string(kTimeoutMs),
                                                          "--reactors", "1"},
                                 "isolation");
    ASSERT_TRUE(d->wait_ready()) << d->log();
    other = std::make_unique<Raw>(sock("0000:00:10.0"));
    ASSERT_TRUE(other->connected());
    other->version();
  }
  void TearDown() override {
    other.reset();
    EXPECT_EQ(d->stop(), 0) << d->log();
    d.reset();
    sh("rm -rf " + dir);
  }
  std::string sock(const std::string& bdf) { return d->rundir() + "/vfio-user/" + bdf + ".sock"; }

  // Seconds until the server closes `r` (reading and discarding whatever
  // it sends), while the other device is asked for its info every 50 ms,
  // each answer expected within 1 s. -1 if still open after 10 s.
  double closed_after(Raw& r, Clock::time_point since) {
    std::vector<char> buf(1 << 16);
    while (Clock::now() - since < std::chrono::seconds(10)) {
      pollfd p{r.fd(), POLLIN, 0};
      if (poll(&p, 1, 50) > 0) {
        ssize_t n = recv(r.fd(), buf.data(), buf.size(), MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno == ECONNRESET)) {
          return std::chrono::duration<double>(Clock::now() - since).count();
        }
      }
      auto t0 = Clock::now();
      EXPECT_TRUE(other->alive());
      EXPECT_LT(Clock::now() - t0, std::chrono::seconds(1)) << "the other device was held up";
    }
    return -1;
  }
  // The device takes a new client and answers it.
  void serves_again(const std::string& bdf) {
    Raw again(sock(bdf));
    ASSERT_TRUE(again.connected());
    again.version();
    EXPECT_TRUE(again.alive());
  }

  std::string dir;
  std::unique_ptr<Daemon> d;
  std::unique_ptr<Raw> other;
};

TEST_F(Isolation, AClientThatNeverSendsVersionIsDropped) {
  auto t0 = Clock::now();
  Raw silent(sock("0000:00:03.0"));
  ASSERT_TRUE(silent.connected());
  double s = closed_after(silent, t0);
  ASSERT_GE(s, 0) << "still connected after 10 s";
  EXPECT_GE(s, kTimeoutMs / 1000.0 * 0.9);
  EXPECT_NE(d->log().find("no VERSION in time"), std::string::npos) << d->log();
  serves_again("0000:00:03.0");
}

TEST_F(Isolation, AClientStalledMidMessageIsDropped) {
  Raw stalled(sock("0000:00:03.0"));
  ASSERT_TRUE(stalled.connected());
  stalled.version();
  // Half a header, then nothing.
  Header h{7, kDeviceGetInfo, sizeof(Header) + sizeof(DeviceInfoMsg), 0, 0};
  stalled.send_bytes(&h, 8);
  auto t0 = Clock::now();
  double s = closed_after(stalled, t0);
  ASSERT_GE(s, 0) << "still connected after 10 s";
  EXPECT_GE(s, kTimeoutMs / 1000.0 * 0.9);
  EXPECT_NE(d->log().find("stalled mid-message"), std::string::npos) << d->log();
  serves_again("0000:00:03.0");
}

TEST_F(Isolation, AClientThatDoesNotReadItsRepliesIsDropped) {
  Raw greedy(sock("0000:00:03.0"));
  ASSERT_TRUE(greedy.connected());
  greedy.version();
  // Reads of 16 KiB of BAR2, sent as long as the socket takes them and never
  // read: more than the kernel's socket buffers hold (the server asks for
  // one that takes a 1 MiB reply at once, and a client can send only a few
  // hundred requests before its own buffer is full), so the server's
  // output to this client stays stuck in its own queue.
  uint16_t mem = PCI_COMMAND_MEMORY;
  ASSERT_EQ(greedy.call(kRegionWrite, region_access(VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, 2,
                                                    std::vector<uint8_t>{static_cast<uint8_t>(mem), 0})),
            0);
  Header h{0, kRegionRead, sizeof(Header) + sizeof(RegionAccessMsg), 0, 0};
  RegionAccessMsg a{0, VFIO_PCI_BAR2_REGION_INDEX, 16 << 10};
  std::vector<uint8_t> msg(h.msg_size);
  size_t sent_msgs = 0;
  bool full = false;
  for (auto deadline = Clock::now() + std::chrono::seconds(2); Clock::now() < deadline;) {
    h.msg_id = static_cast<uint16_t>(sent_msgs);
    std::memcpy(msg.data(), &h, sizeof(h));
    std::memcpy(msg.data() + sizeof(h), &a, sizeof(a));
    ssize_t n = ::send(greedy.fd(), msg.data(), msg.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
      full = errno == EAGAIN;  // the server stopped reading: its output is bounded
      break;
    }
    ASSERT_EQ(n, static_cast<ssize_t>(msg.size())) << "partial send";
    ++sent_msgs;
  }
  EXPECT_TRUE(full) << "the server kept taking requests (" << sent_msgs << ") it could not answer";
  EXPECT_GT(sent_msgs, 64u);
  // The other device is served the whole time; this client goes once its
  // output has made no progress for the timeout.
  auto t0 = Clock::now();
  for (int i = 0; i < 20; ++i) {
    auto t = Clock::now();
    EXPECT_TRUE(other->alive());
    EXPECT_LT(Clock::now() - t, std::chrono::seconds(1));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  double s = closed_after(greedy, t0);
  ASSERT_GE(s, 0) << "still connected after 10 s";
  EXPECT_NE(d->log().find("does not read its replies"), std::string::npos) << d->log();
  serves_again("0000:00:03.0");
}

TEST_F(Isolation, ASecondClientGetsEbusyAndTheFirstKeepsItsDevice) {
  Raw first(sock("0000:00:03.0"));
  ASSERT_TRUE(first.connected());
  first.version();
  Raw second(sock("0000:00:03.0"));
  ASSERT_TRUE(second.connected());
  auto r = recv_message(second.fd());
  ASSERT_TRUE(r);
  EXPECT_EQ(r->hdr.flags & (kFlagsTypeMask | kFlagError), kTypeReply | kFlagError);
  EXPECT_EQ(r->hdr.error_no, static_cast<uint32_t>(EBUSY));
  EXPECT_TRUE(second.closed_by_peer());
  EXPECT_TRUE(first.alive());
}

// A client hands over an eventfd whose counter it has filled (a blocking
// one: write(2) to it would sleep until the client reads) as its REQ
// trigger, then fires it. The kernel's eventfd_signal never waits; neither
// may the daemon: the reply comes, the other device on the same reactor is
// served, the signal is counted as dropped, and SIGTERM still ends uvfiod.
TEST_F(Isolation, AFullEventfdBlocksNobody) {
  Raw hostile(sock("0000:00:03.0"));
  ASSERT_TRUE(hostile.connected());
  hostile.version();
  UniqueFd efd(eventfd(0, EFD_CLOEXEC));
  uint64_t full = 0xfffffffffffffffeULL;
  ASSERT_EQ(::write(efd.get(), &full, sizeof(full)), 8);
  ASSERT_EQ(hostile.call(kDeviceSetIrqs,
                         irq_set_msg(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_REQ_IRQ_INDEX, 0, 1),
                         {efd.get()}),
            0);
  for (int i = 0; i < 20; ++i) {
    auto t0 = Clock::now();
    ASSERT_EQ(hostile.call(kDeviceSetIrqs,
                           irq_set_msg(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_REQ_IRQ_INDEX, 0, 1)),
              0);
    EXPECT_LT(Clock::now() - t0, std::chrono::seconds(1));
    t0 = Clock::now();
    EXPECT_TRUE(other->alive());
    EXPECT_LT(Clock::now() - t0, std::chrono::seconds(1)) << "the other device was held up";
  }
  // The same through MSI-X triggers (the device's own interrupts go there).
  UniqueFd mfd(eventfd(0, EFD_CLOEXEC));
  ASSERT_EQ(::write(mfd.get(), &full, sizeof(full)), 8);
  ASSERT_EQ(hostile.call(kDeviceSetIrqs,
                         irq_set_msg(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1),
                         {mfd.get()}),
            0);
  ASSERT_EQ(hostile.call(kDeviceSetIrqs,
                         irq_set_msg(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_MSIX_IRQ_INDEX, 0, 1)),
            0);
  EXPECT_TRUE(other->alive());
  uint64_t v = 0;
  ASSERT_EQ(::read(efd.get(), &v, sizeof(v)), 8);
  EXPECT_EQ(v, full) << "a signal was added to a full counter";
  auto res = sh(d->ctl("stats 0000:00:03.0 --json"));
  ASSERT_EQ(res.status, 0) << res.err;
  auto j = nlohmann::json::parse(res.out);
  EXPECT_EQ(j["interrupts_dropped"].get<uint64_t>(), 21u) << res.out;
  // Once the client has room again, signals arrive.
  ASSERT_EQ(hostile.call(kDeviceSetIrqs,
                         irq_set_msg(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_PCI_REQ_IRQ_INDEX, 0, 1)),
            0);
  ASSERT_EQ(::read(efd.get(), &v, sizeof(v)), 8);
  EXPECT_EQ(v, 1u);
}

double cpu_seconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::istringstream rest(s.substr(s.rfind(')') + 2));
  std::string f;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> f; ++i) {
    if (i == 14) utime = std::stoull(f);
    if (i == 15) stime = std::stoull(f);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// One client takes every fd the daemon may open (its fd limit lowered so the
// per-client cap does not stop it first): its own maps then fail with
// EMFILE, a new client is told EMFILE at once instead of waiting, the
// control socket answers, nothing spins, the other client is served
// throughout, and once that client leaves everything works again.
TEST_F(Isolation, OutOfFileDescriptorsCostsOnlyNewWork) {
  pid_t pid = d->pid();
  int base = count_fds(pid);
  rlimit old{}, low{};
  ASSERT_EQ(prlimit(pid, RLIMIT_NOFILE, nullptr, &old), 0);
  low.rlim_cur = static_cast<rlim_t>(base + 40);  // the soft limit: restored at the end
  low.rlim_max = old.rlim_max;
  ASSERT_EQ(prlimit(pid, RLIMIT_NOFILE, &low, nullptr), 0);
  auto hostile = std::make_unique<Raw>(sock("0000:00:03.0"));
  ASSERT_TRUE(hostile->connected());
  hostile->version();
  std::vector<UniqueFd> files;
  int mapped = 0, err = 0;
  for (int i = 0; i < 200 && !err; ++i) {
    UniqueFd f(memfd_create("hostile", MFD_CLOEXEC));
    ASSERT_EQ(ftruncate(f.get(), 4096), 0);
    auto p = dma_map_msg(uint64_t(i) << 20, 4096, 0, 1);  // READ
    err = hostile->call(kDmaMap, p, {f.get()});
    if (!err) ++mapped;
    files.push_back(std::move(f));
  }
  EXPECT_EQ(err, EMFILE) << "after " << mapped << " maps";
  EXPECT_GT(mapped, 10);
  EXPECT_TRUE(hostile->alive()) << "the client was dropped for the fds it could not send";
  EXPECT_TRUE(other->alive());
  // New clients get an answer, at once, and no spinning follows.
  double cpu0 = cpu_seconds(pid);
  auto t0 = Clock::now();
  for (int i = 0; i < 20; ++i) {
    Raw late(sock("0000:00:10.0"));
    ASSERT_TRUE(late.connected());
    auto r = recv_message(late.fd());
    ASSERT_TRUE(r) << "no answer";
    EXPECT_EQ(r->hdr.flags & kFlagError, kFlagError);
    EXPECT_TRUE(r->hdr.error_no == EMFILE || r->hdr.error_no == EBUSY) << r->hdr.error_no;
    EXPECT_TRUE(late.closed_by_peer());
  }
  auto ctl = sh("timeout 10 " + d->ctl("list"));
  EXPECT_NE(ctl.status, 124) << "uvfioctl list hung";
  if (ctl.status != 0) {
    EXPECT_TRUE(ctl.err.find("file descriptors") != std::string::npos ||
                ctl.err.find("Too many open files") != std::string::npos)
        << ctl.err;
  }
  std::this_thread::sleep_for(std::chrono::seconds(1));
  double busy = (cpu_seconds(pid) - cpu0) / std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_LT(busy, 0.5) << "the daemon spins while out of fds";
  for (int i = 0; i < 5; ++i) {
    auto t = Clock::now();
    EXPECT_TRUE(other->alive());
    EXPECT_LT(Clock::now() - t, std::chrono::seconds(1));
  }
  // The client leaves: its fds go, and new clients are served again.
  hostile.reset();
  files.clear();
  for (int i = 0; i < 100 && count_fds(pid) > base + 2; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_LE(count_fds(pid), base + 2);
  ASSERT_EQ(prlimit(pid, RLIMIT_NOFILE, &old, nullptr), 0);
  serves_again("0000:00:03.0");
  EXPECT_EQ(sh(d->ctl("list")).status, 0);
}

}  // namespace
}  // namespace uvfio::e2e
