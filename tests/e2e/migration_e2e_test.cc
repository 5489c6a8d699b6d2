// SPDX-License-Identifier: BSD-3-Clause
// Live migration of a busy mlx5 VF between two uvfiod daemons, driven by
// uvfio-guest over the daemons' vfio-user sockets: every descriptor
// completed exactly once, guest RAM and device memory equal to the replayed
// workload, MSI-X after the move (uvfio-guest checks these and exits
// non-zero otherwise); and the client killed at every step of a migration,
// each time leaving both devices RUNNING and usable.
#include <arpa/inet.h>
#include <netinet/in.h>

#include <poll.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "client/client.h"
#include "base/unique_fd.h"
#include "e2e/harness.h"
#include "net_util.h"

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
    // TSan slows the migrating tool ten-fold; with another test beside it
    // on two cores, one of its steps can outlast the default 10 s a client
    // may leave a reply unread (CI saw a reset once).
#if defined(__SANITIZE_THREAD__)
    const char* timeout = "60000";
#else
    const char* timeout = "10000";
#endif
    std::vector<std::string> args{"--config", dir + "/topo.toml", "--no-fuse", "--client-timeout-ms", timeout};
    a = std::make_unique<Daemon>(args, "migA");
    b = std::make_unique<Daemon>(args, "migB");
    ASSERT_TRUE(a->wait_ready()) << a->log();
    ASSERT_TRUE(b->wait_ready()) << b->log();
  }
  void TearDown() override {
    bool failed = HasFailure();
    if (a) {
      EXPECT_EQ(a->stop(), 0) << a->log();
      if (failed) std::fprintf(stderr, "--- source daemon's log\n%s\n", a->log().c_str());
    }
    if (b) {
      EXPECT_EQ(b->stop(), 0) << b->log();
      if (failed) std::fprintf(stderr, "--- destination daemon's log\n%s\n", b->log().c_str());
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

using test::free_port;

// Source and destination as two programs (as on two hosts), the stream over TCP.
TEST_F(Migration, SourceAndDestinationAsTwoProgramsOverTcp) {
  start("16M");
  std::string hp = "127.0.0.1:" + std::to_string(free_port());
  std::string g = GUEST_PATH;
  auto r = sh(g + " receive --insecure --socket " + b->rundir() + kVf + " --listen " + hp + " > " + dir +
              "/recv.out 2>&1 &\n" + g + " migrate --insecure --from " + a->rundir() + kVf + " --to-tcp " + hp +
              "; src=$?\n" +
              "wait $!; dst=$?\ncat " + dir + "/recv.out\necho \"src=$src dst=$dst\"");
  ASSERT_NE(r.out.find("src=0 dst=0"), std::string::npos) << r.out << r.err;
  EXPECT_NE(r.out.find("pre-copy round 1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("every cookie once"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("verify:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("is plain TCP (--insecure)"), std::string::npos) << r.out;  // both ends say so
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
  auto h = sh(std::string(GUEST_PATH) + " migrate --from " + a->rundir() + kVf + " --to-tcp nohost.invalid:1 --insecure");
  EXPECT_EQ(h.status, 1);
  EXPECT_NE(h.err.find("cannot resolve 'nohost.invalid'"), std::string::npos) << h.err;
  // Over TCP, credentials or an explicit --insecure.
  h = sh(std::string(GUEST_PATH) + " migrate --from " + a->rundir() + kVf + " --to-tcp 127.0.0.1:1");
  EXPECT_EQ(h.status, 2);
  EXPECT_NE(h.err.find("needs credentials"), std::string::npos) << h.err;
  h = sh(std::string(GUEST_PATH) + " migrate --from " + a->rundir() + kVf + " --to-tcp 127.0.0.1:1 --insecure --timeout-ms 300");
  EXPECT_EQ(h.status, 1);
  EXPECT_NE(h.err.find("cannot reach the destination 127.0.0.1:1 (tried for 300 ms): Connection refused"),
            std::string::npos) << h.err;
}

// ---- TLS on the migration channel (issue 13) ---------------------------------

bool ipv6_loopback() {
  int fd = socket(AF_INET6, SOCK_STREAM, 0);
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_addr = in6addr_loopback;
  bool ok = fd >= 0 && bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  if (fd >= 0) close(fd);
  return ok;
}

class TlsMigration : public Migration {
 protected:
  void SetUp() override {
    start("16M");
    creds = dir + "/creds";
    auto r = sh(std::string(TLS_CREDS_SCRIPT) + " " + creds);
    ASSERT_EQ(r.status, 0) << r.err;
  }
  void TearDown() override {
    sh("pkill -f 'receive --socket " + b->rundir() + "' || true");
    Migration::TearDown();
  }
  // A `receive` in the background; its output and exit status go to recv.out.
  void receive(const std::string& listen, const std::string& creds_args) {
    recv_out = dir + "/recv.out";
    sh("(" + std::string(GUEST_PATH) + " receive --socket " + b->rundir() + kVf + " --listen " + listen + " " +
       creds_args + "; echo \"rc=$?\") > " + recv_out + " 2>&1 &");
    for (int i = 0; i < 750 && slurp(recv_out).find("listening on") == std::string::npos; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    ASSERT_NE(slurp(recv_out).find("listening on"), std::string::npos) << slurp(recv_out);
  }
  CmdResult migrate_tcp(const std::string& to, const std::string& creds_args) {
    return sh(std::string(GUEST_PATH) + " migrate --from " + a->rundir() + kVf + " --to-tcp " + to + " " + creds_args);
  }
  // The receive's output once it has exited (or what it said so far).
  std::string receive_result() {
    for (int i = 0; i < 1500 && slurp(recv_out).find("rc=") == std::string::npos; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return slurp(recv_out);
  }
  // A refused attempt: a clear message, the source RUNNING, and nothing of a
  // device state reached the destination VF.
  void expect_refused(const CmdResult& r, const std::string& says) {
    EXPECT_EQ(r.status, 1) << r.out << r.err;
    EXPECT_NE(r.err.find(says), std::string::npos) << r.err;
    EXPECT_EQ(r.out.find("pre-copy"), std::string::npos) << r.out;
    EXPECT_EQ(state(*a), vfio::MigState::kRunning);
    auto st = sh(b->ctl("stats 0000:08:00.0 --json"));
    ASSERT_EQ(st.status, 0) << st.err;
    auto j = nlohmann::json::parse(st.out);
    EXPECT_EQ(j["migration_state"], "RUNNING") << st.out;
    EXPECT_EQ(j["migration_bytes"].get<uint64_t>(), 0u) << st.out;
    EXPECT_EQ(j["requests"].value("MIG_DATA_WRITE", uint64_t{0}), 0u) << st.out;
  }
  std::string creds, recv_out;
};

TEST_F(TlsMigration, X509BothEndsVerifiedAndEveryImpostorRefused) {
  std::string hp = "127.0.0.1:" + std::to_string(free_port());
  receive(hp, "--tls-x509-dir " + creds + "/good --tls-authz uvfio-client");
  // Our CA does not know the destination's certificate.
  expect_refused(migrate_tcp(hp, "--tls-x509-dir " + creds + "/other"), "The certificate issuer is unknown");
  // The certificate names someone else.
  expect_refused(migrate_tcp(hp, "--tls-x509-dir " + creds + "/good --tls-hostname elsewhere.example"),
                 "The name in the certificate does not match");
  // A client without TLS.
  expect_refused(migrate_tcp(hp, "--insecure"), "the destination closed the connection before accepting");
  // A client whose certificate the destination's CA did not sign.
  sh("cp " + creds + "/good/ca-cert.pem " + creds + "/other/ca-cert.pem");  // it trusts the server, not vice versa
  expect_refused(migrate_tcp(hp, "--tls-x509-dir " + creds + "/other"), "TLS: refused by the peer: Certificate");  // (not sent: the destination asked for its CA's)
  // Signed by the right CA, but not a source --tls-authz admits.
  expect_refused(migrate_tcp(hp, "--tls-x509-dir " + creds + "/intruder"), "TLS: refused by the peer: Access was denied");
  // The destination heard each attempt and is still waiting; now the real one.
  auto r = migrate_tcp("localhost:" + hp.substr(hp.find(':') + 1), "--tls-x509-dir " + creds + "/good");
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("TLS 1.3, AES-256-GCM"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("X.509, both ends verified"), std::string::npos) << r.out;
  auto out = receive_result();
  EXPECT_NE(out.find("rc=0"), std::string::npos) << out;
  EXPECT_NE(out.find("every cookie once"), std::string::npos) << out;
  EXPECT_NE(out.find("verify:"), std::string::npos) << out;
  size_t refusals = 0;
  for (size_t at = 0; (at = out.find("refused a connection from", at)) != std::string::npos; ++at) ++refusals;
  EXPECT_EQ(refusals, 5u) << out;
  EXPECT_NE(out.find("names 'uvfio-intruder', not one --tls-authz admits"), std::string::npos) << out;
  EXPECT_EQ(state(*b), vfio::MigState::kRunning);
}

TEST_F(TlsMigration, PreSharedKeyOverIpv6) {
  if (!ipv6_loopback()) GTEST_SKIP() << "no IPv6 loopback on this machine";
  std::string hp = "[::1]:" + std::to_string(free_port());
  receive(hp, "--tls-psk-file " + creds + "/good.psk");
  expect_refused(migrate_tcp(hp, "--tls-psk-file " + creds + "/wrong.psk"), "TLS handshake refused by the peer");
  // An identity the file does not have: refused before connecting.
  expect_refused(migrate_tcp(hp, "--tls-psk-file " + creds + "/good.psk --tls-psk-user nobody"),
                 "no key for identity 'nobody'");
  // Authenticated, but the offer does not fit the destination: refused
  // with the reason, before it enters RESUMING.
  expect_refused(migrate_tcp(hp, "--tls-psk-file " + creds + "/good.psk --ram 16"),
                 "the destination refused the migration: different guest RAM sizes");
  auto r = migrate_tcp(hp, "--tls-psk-file " + creds + "/good.psk");
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("pre-shared key"), std::string::npos) << r.out;
  auto out = receive_result();
  EXPECT_NE(out.find("rc=0"), std::string::npos) << out;
  EXPECT_NE(out.find("refused a connection from [::1]:"), std::string::npos) << out;
  EXPECT_NE(out.find("verify:"), std::string::npos) << out;
}

// A TLS client against a plain listener, and a peer that connects and says
// nothing: neither holds up the migration that follows.
TEST_F(TlsMigration, PlainListenerAndSilentPeers) {
  std::string port = std::to_string(free_port());
  receive(port, "--insecure --timeout-ms 30000");
  expect_refused(migrate_tcp("127.0.0.1:" + port, "--tls-psk-file " + creds + "/good.psk --timeout-ms 2000"),
                 "TLS handshake");
  int silent = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(std::stoi(port)));
  ASSERT_EQ(connect(silent, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  auto r = migrate_tcp("127.0.0.1:" + port, "--insecure");
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  close(silent);
  auto out = receive_result();
  EXPECT_NE(out.find("rc=0"), std::string::npos) << out;
  EXPECT_NE(out.find("not a uvfio migration stream (a TLS client?"), std::string::npos) << out;
}

// Silent TCP connections held open by someone who can reach the listener
// (no TLS, nothing sent) keep nobody out: a new connection takes the place
// of the oldest unauthenticated one of its source, and the source retries
// within its timeout if its own connection was the one dropped.
TEST_F(TlsMigration, SilentConnectionsHoldUpNobody) {
  std::string port = std::to_string(free_port());
  std::string hp = "127.0.0.1:" + port;
  receive(hp, "--tls-x509-dir " + creds + "/good");
  std::vector<UniqueFd> silent;
  for (int i = 0; i < 50; ++i) {
    UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(std::stoi(port)));
    ASSERT_EQ(connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    silent.push_back(std::move(fd));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  auto t0 = std::chrono::steady_clock::now();
  auto r = migrate_tcp(hp, "--tls-x509-dir " + creds + "/good");
  double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_LT(took, 8.0) << "the migration waited for the silent peers' handshake timeout";
  auto out = receive_result();
  EXPECT_NE(out.find("rc=0"), std::string::npos) << out;
  EXPECT_NE(out.find("dropped, unauthenticated, for a newer connection"), std::string::npos) << out;
}

int threads_of(const std::string& pattern) {
  auto r = sh("pgrep -n -f '" + pattern + "'");
  if (r.status != 0) return -1;
  std::string status = slurp("/proc/" + std::to_string(std::stoi(r.out)) + "/status");
  size_t at = status.find("Threads:");
  return at == std::string::npos ? -1 : std::stoi(status.substr(at + 8));
}

// A flood of connections closed at once with RST, before any TLS: each
// connection's thread is released when it ends (they once piled up until a
// migration won, and the listener aborted when no thread could be made).
TEST_F(TlsMigration, AConnectionFloodCostsBoundedResources) {
  std::string port = std::to_string(free_port());
  std::string hp = "127.0.0.1:" + port;
  receive(hp, "--tls-x509-dir " + creds + "/good");
  std::string pattern = "receive --socket " + b->rundir();
  int peak = 0;
  for (int i = 0; i < 3000; ++i) {
    // Non-blocking: a SYN the full backlog dropped is not waited for.
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(std::stoi(port)));
    if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 || errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      (void)poll(&p, 1, 50);
      linger l{1, 0};  // close with RST
      setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    }
    close(fd);
    if (i % 500 == 0) peak = std::max(peak, threads_of(pattern));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  int after = threads_of(pattern);
  ASSERT_GT(after, 0) << "the listener died:\n" << slurp(recv_out);
  EXPECT_LT(std::max(peak, after), 80) << "threads pile up per connection";
  auto r = migrate_tcp(hp, "--tls-x509-dir " + creds + "/good");
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_NE(receive_result().find("rc=0"), std::string::npos) << slurp(recv_out);
}

// The destination dies mid-stream: the source says so and exits 1 (it was
// once killed by SIGPIPE, exit 141, without a word), and its VF runs on.
TEST_F(TlsMigration, TheDestinationDyingMidStreamIsReportedInWords) {
  std::string hp = "127.0.0.1:" + std::to_string(free_port());
  recv_out = dir + "/recv.out";
  std::string src_out = dir + "/src.out";
  sh("(" + std::string(GUEST_PATH) + " receive --socket " + b->rundir() + kVf + " --listen " + hp +
     " --ram 1024 --tls-psk-file " + creds + "/good.psk; echo \"rc=$?\") > " + recv_out + " 2>&1 &");
  for (int i = 0; i < 750 && slurp(recv_out).find("listening on") == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  sh("(" + std::string(GUEST_PATH) + " migrate --from " + a->rundir() + kVf + " --to-tcp " + hp +
     " --ram 1024 --ms 100 --tls-psk-file " + creds + "/good.psk; echo \"rc=$?\") > " + src_out + " 2>&1 &");
  // Streaming has begun (1 GiB of guest RAM to go): the destination dies.
  for (int i = 0; i < 6000 && slurp(src_out).find("migrating (") == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_NE(slurp(src_out).find("migrating ("), std::string::npos) << slurp(recv_out) << slurp(src_out);
  auto killed = sh("pkill -KILL -f 'receive --socket " + b->rundir() + "'");
  ASSERT_EQ(killed.status, 0) << killed.out << killed.err;
  std::string out;
  for (int i = 0; i < 3000 && (out = slurp(src_out)).find("rc=") == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_NE(out.find("rc=1"), std::string::npos) << out << "\nreceive:\n" << slurp(recv_out);
  EXPECT_NE(out.find("uvfio-guest: "), std::string::npos) << out;
  // In words: the peer closed the connection (EPIPE, ECONNRESET), or, when
  // it dies with our data unread, the send timed out.
  EXPECT_TRUE(out.find("closed the connection") != std::string::npos || out.find("stream send") != std::string::npos)
      << out;
  for (int i = 0; i < 250 && state(*a) != vfio::MigState::kRunning; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(state(*a), vfio::MigState::kRunning);
}

}  // namespace
}  // namespace uvfio::e2e
