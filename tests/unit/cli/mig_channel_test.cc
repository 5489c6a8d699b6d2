// SPDX-License-Identifier: BSD-3-Clause
// The migration channel (src/cli/mig_channel): addresses, and what a
// listener does with peers that are not what it expects.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <thread>

#include "cli/mig_channel.h"
#include "net_util.h"

namespace uvfio::mig {
namespace {

TEST(HostPort, TheFormsAnAdminTypes) {
  struct Case {
    const char* in;
    bool ok;
    const char* host;
    const char* port;
  } cases[] = {
      {"127.0.0.1:7000", true, "127.0.0.1", "7000"},
      {"[::1]:7000", true, "::1", "7000"},
      {"[::]:1", true, "::", "1"},
      {"hostb.example:65535", true, "hostb.example", "65535"},
      {"7000", true, "", "7000"},
      {"::1:7000", false, "", ""},  // IPv6 without brackets is ambiguous
      {"[::1]", false, "", ""},
      {"[::1]7000", false, "", ""},
      {"host:", false, "", ""},
      {"host:65536", false, "", ""},
      {"host:70000000000000000000", false, "", ""},
      {"host:-1", false, "", ""},
      {"host:12a", false, "", ""},
      {"", false, "", ""},
  };
  for (const auto& c : cases) {
    auto r = parse_hostport(c.in);
    ASSERT_EQ(static_cast<bool>(r), c.ok) << c.in;
    if (!c.ok) {
      EXPECT_EQ(r.error().code, EINVAL) << c.in;
      continue;
    }
    EXPECT_EQ(r->host, c.host) << c.in;
    EXPECT_EQ(r->port, c.port) << c.in;
  }
}

using test::free_port;

// A PSK file of our own (no certtool needed for these).
std::string psk_file(const char* key) {
  char path[] = "/tmp/uvfio-psk-XXXXXX";
  int fd = mkstemp(path);
  close(fd);
  std::ofstream(path) << "uvfio:" << key << "\n";
  return path;
}

TEST(Channel, PskRoundTripAndGarbageFirst) {
  std::string good = psk_file("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff");
  TlsOptions o;
  o.psk_file = good;
  o.timeout = std::chrono::milliseconds(3000);
  std::string hp = "127.0.0.1:" + std::to_string(free_port());
  auto l = Listener::listen(hp, o);
  ASSERT_TRUE(l) << to_string(l.error());
  std::vector<std::string> refusals;
  std::atomic<int> refused{0};
  std::unique_ptr<Channel> server;
  std::thread t([&] {
    auto ch = (*l)->next([](Channel&) -> Result<void> { return ok(); },
                         [&](const std::string& why) {
                           refusals.push_back(why);
                           ++refused;
                         });
    if (ch) server = std::move(*ch);
  });
  // Garbage where a ClientHello belongs, then a peer that closes at once:
  // each refused, and the listener carries on.
  {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(std::stoi(hp.substr(hp.find(':') + 1))));
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    std::string junk(5000, '\x16');
    (void)!write(fd, junk.data(), junk.size());
    close(fd);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    close(fd);
  }
  for (int i = 0; i < 500 && refused < 2; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  auto c = connect(hp, o);
  ASSERT_TRUE(c) << to_string(c.error());
  t.join();
  ASSERT_TRUE(server);
  EXPECT_NE((*c)->describe().find("TLS 1.3"), std::string::npos) << (*c)->describe();
  EXPECT_NE((*c)->describe().find("pre-shared key"), std::string::npos);
  // Bytes both ways, larger than one TLS record and than the write buffer.
  std::vector<uint8_t> out(3 << 20), in(out.size());
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<uint8_t>(i * 7 + 1);
  std::thread rd([&] { ASSERT_TRUE(server->read_all(in.data(), in.size())); });
  ASSERT_TRUE((*c)->write_all(out.data(), out.size()));
  ASSERT_TRUE((*c)->flush());
  rd.join();
  EXPECT_EQ(in, out);
  EXPECT_EQ((*c)->bytes_out(), out.size());
  // The end of the stream reads as such.
  (*c)->shutdown();
  uint8_t b;
  auto r = server->read_all(&b, 1);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EPIPE);
  EXPECT_EQ(refusals.size(), 2u);
  unlink(good.c_str());
}

TEST(Channel, CredentialsThatCannotBeUsedAreNamed) {
  TlsOptions o;
  o.psk_file = "/nonexistent/keys.psk";
  auto c = connect("127.0.0.1:1", o);
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code, ENOENT);
  EXPECT_NE(std::string(c.error().context).find("/nonexistent/keys.psk"), std::string::npos);
  TlsOptions x;
  x.x509_dir = "/nonexistent";
  auto l = Listener::listen("127.0.0.1:0", x);
  ASSERT_FALSE(l);
  EXPECT_NE(std::string(l.error().context).find("ca-cert.pem"), std::string::npos);
  // A key that is not hex.
  std::string bad = psk_file("not-hex");
  TlsOptions p;
  p.psk_file = bad;
  c = connect("127.0.0.1:1", p);
  ASSERT_FALSE(c);
  unlink(bad.c_str());
}

// A peer that says nothing is given up on after the timeout.
TEST(Channel, SilentServerTimesOut) {
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t al = sizeof(a);
  ASSERT_EQ(bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(listen(lfd, 1), 0);
  getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &al);
  std::string psk = psk_file("00112233445566778899aabbccddeeff");
  TlsOptions o;
  o.psk_file = psk;
  o.timeout = std::chrono::milliseconds(300);
  auto t0 = std::chrono::steady_clock::now();
  auto c = connect("127.0.0.1:" + std::to_string(ntohs(a.sin_port)), o);
  auto took = std::chrono::steady_clock::now() - t0;
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code, ETIMEDOUT) << to_string(c.error());
  EXPECT_LT(took, std::chrono::seconds(3));
  close(lfd);
  unlink(psk.c_str());
}

}  // namespace
}  // namespace uvfio::mig
