// Live migration of a busy mlx5 VF between two uvfiod daemons, driven by
// uvfio-guest over the daemons' vfio-user sockets: every descriptor
// completed exactly once, guest RAM and device memory equal to the replayed
// workload, MSI-X after the move (uvfio-guest checks these and exits
// non-zero otherwise); and the client killed at every step of a migration,
// each time leaving both devices RUNNING and usable.
#include <arpa/inet.h>
#include <netinet/in.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "client/client.h"
#include "e2e/harness.h"

namespace uvfio::e2e {
namespace {

const char* kVf = "/vfio-user/0000:08:00.0.sock";

class Migration : public ::testing::Test {
 protected:
  void start(const std::string& memory) {
    dir = make_tmpdir("mig");
    std::string seed = sh(std::string(UVFIOD_PATH) + " --print-seed").out;
    for (size_t at = 0; (at = seed.find("\"16M\"", at)) != std::string::npos; at += 2 + memory.size())
      seed.replace(at, 5, "\"" + memory + "\"");
    std::ofstream(dir + "/topo.toml") << seed;
    a = std::make_unique<Daemon>(std::vector<std::string>{"--config", dir + "/topo.toml", "--no-fuse"}, "migA");
    b = std::make_unique<Daemon>(std::vector<std::string>{"--config", dir + "/topo.toml", "--no-fuse"}, "migB");
    ASSERT_TRUE(a->wait_ready()) << a->log();
    ASSERT_TRUE(b->wait_ready()) << b->log();
  }
  void TearDown() override {
    if (a) {
      EXPECT_EQ(a->stop(), 0) << a->log();
    }
    if (b) {
      EXPECT_EQ(b->stop(), 0) << b->log();
    }
    sh("rm -rf " + dir);
  }
  CmdResult migrate(const std::string& extra = "") {
    return sh(std::string(GUEST_PATH) + " migrate --from " + a->rundir() + kVf + " --to " + b->rundir() + kVf +
              " " + extra);
  }
  // The device's migration state as a new client sees it.
  vfio::MigState state(Daemon& d) {
    for (int i = 0; i < 100; ++i) {
      auto c = client::Client::connect(d.rundir() + kVf);
      if (c) {
        auto s = (*c)->get_mig_state();
        EXPECT_TRUE(s);
        return s ? *s : vfio::MigState::kError;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the last client is still leaving
    }
    ADD_FAILURE() << "cannot connect";
    return vfio::MigState::kError;
  }
  std::string dir;
  std::unique_ptr<Daemon> a, b;
};

void expect_migrated(const CmdResult& r) {
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("pre-copy round 1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("every cookie once"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("downtime"), std::string::npos) << r.out;
  // The tool compares against the model itself; the report shows both.
  auto v = r.out.find("verify:");
  ASSERT_NE(v, std::string::npos) << r.out;
  auto i = r.out.find(" interrupts after migration");
  ASSERT_NE(i, std::string::npos) << r.out;
  auto n = r.out.rfind(' ', i - 1);
  EXPECT_GT(std::stoul(r.out.substr(n + 1, i - n - 1)), 0u) << "no interrupt at the destination: " << r.out;
}

TEST_F(Migration, BusyVfWith16MiBDeviceMemory) {
  start("16M");
  expect_migrated(migrate());
  EXPECT_EQ(state(*a), vfio::MigState::kRunning);  // the source's client left: reset, like a close
  EXPECT_EQ(state(*b), vfio::MigState::kRunning);
  // The statistics: every byte the source produced reached the destination,
  // which was out of RUNNING for a measured time.
  auto sa = sh(a->ctl("stats 0000:08:00.0 --json")), sb = sh(b->ctl("stats 0000:08:00.0 --json"));
  ASSERT_EQ(sa.status, 0) << sa.err;
  ASSERT_EQ(sb.status, 0) << sb.err;
  auto ja = nlohmann::json::parse(sa.out), jb = nlohmann::json::parse(sb.out);
  EXPECT_GT(ja["migration_bytes"].get<uint64_t>(), 1u << 20) << sa.out;  // the workload's pages at least
  EXPECT_EQ(ja["migration_bytes"], jb["migration_bytes"]) << sa.out << sb.out;
  EXPECT_GT(jb["last_stop_ms"].get<double>(), 0.0) << sb.out;
  EXPECT_GT(jb["requests"].value("MIG_DATA_WRITE", uint64_t{0}), 0u) << sb.out;
  EXPECT_GT(ja["requests"].value("MIG_DATA_READ", uint64_t{0}), 0u) << sa.out;
  // And back again, onto the device that served as the source.
  auto back = sh(std::string(GUEST_PATH) + " migrate --from " + b->rundir() + kVf + " --to " + a->rundir() + kVf);
  expect_migrated(back);
}

TEST_F(Migration, BusyVfWith256MiBDeviceMemory) {
  start("256M");
  auto r = migrate("--ms 200");
  expect_migrated(r);
  EXPECT_NE(r.out.find("256 MiB device memory"), std::string::npos) << r.out;
}

TEST_F(Migration, ClientKilledAtEveryStep) {
  start("16M");
  for (const char* step : {"connected", "logging", "precopy", "round", "stopcopy", "sent", "loaded", "running"}) {
    SCOPED_TRACE(step);
    auto r = migrate(std::string("--ms 50 --crash-at ") + step);
    EXPECT_EQ(r.status, 128 + SIGKILL) << r.out << r.err;
    // Both devices are back in RUNNING with nothing half-saved or half-loaded
    // and serve a new client's workload.
    EXPECT_EQ(state(*a), vfio::MigState::kRunning);
    EXPECT_EQ(state(*b), vfio::MigState::kRunning);
    for (Daemon* d : {a.get(), b.get()}) {
      auto run = sh(std::string(GUEST_PATH) + " run --ms 50 --socket " + d->rundir() + kVf);
      EXPECT_EQ(run.status, 0) << run.out << run.err;
    }
  }
  expect_migrated(migrate("--ms 100"));
  EXPECT_EQ(a->log().find("ERROR"), std::string::npos);
}

// A free TCP port on loopback (the kernel's pick, released for the test).
int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t l = sizeof(a);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &l);
  close(fd);
  return ntohs(a.sin_port);
}

// Source and destination as two programs (as on two hosts), the stream over TCP.
TEST_F(Migration, SourceAndDestinationAsTwoProgramsOverTcp) {
  start("16M");
  std::string hp = "127.0.0.1:" + std::to_string(free_port());
  std::string g = GUEST_PATH;
  auto r = sh(g + " receive --socket " + b->rundir() + kVf + " --listen " + hp + " > " + dir + "/recv.out 2>&1 &\n" +
              g + " migrate --from " + a->rundir() + kVf + " --to-tcp " + hp + "; src=$?\n" +
              "wait $!; dst=$?\ncat " + dir + "/recv.out\necho \"src=$src dst=$dst\"");
  ASSERT_NE(r.out.find("src=0 dst=0"), std::string::npos) << r.out << r.err;
  EXPECT_NE(r.out.find("pre-copy round 1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("every cookie once"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("verify:"), std::string::npos) << r.out;
  EXPECT_EQ(state(*a), vfio::MigState::kRunning);
  EXPECT_EQ(state(*b), vfio::MigState::kRunning);
}

TEST_F(Migration, BadArgumentsAreRefused) {
  start("16M");
  auto r = sh(std::string(GUEST_PATH) + " migrate --from " + a->rundir() + kVf + " --to " + dir + "/nope.sock");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("uvfio-guest:"), std::string::npos) << r.err;
  // Different device-memory sizes: refused before anything moves.
  auto c = sh(std::string(UVFIOD_PATH) + " --print-seed").out;
  for (size_t at; (at = c.find("\"16M\"")) != std::string::npos;) c.replace(at, 5, "\"32M\"");
  std::ofstream(dir + "/t32.toml") << c;
  Daemon other({"--config", dir + "/t32.toml", "--no-fuse"}, "migC");
  ASSERT_TRUE(other.wait_ready()) << other.log();
  auto d = sh(std::string(GUEST_PATH) + " migrate --from " + a->rundir() + kVf + " --to " + other.rundir() + kVf);
  EXPECT_EQ(d.status, 1);
  EXPECT_NE(d.err.find("different device memory sizes"), std::string::npos) << d.err;
  EXPECT_EQ(state(*a), vfio::MigState::kRunning);
  EXPECT_EQ(other.stop(), 0);
  auto n = sh(std::string(GUEST_PATH) + " migrate --from " + a->rundir() + kVf);
  EXPECT_EQ(n.status, 2);
  auto h = sh(std::string(GUEST_PATH) + " migrate --from " + a->rundir() + kVf + " --to-tcp nohost:1");
  EXPECT_EQ(h.status, 1);
  EXPECT_NE(h.err.find("bad IPv4 address"), std::string::npos) << h.err;
}

}  // namespace
}  // namespace uvfio::e2e
