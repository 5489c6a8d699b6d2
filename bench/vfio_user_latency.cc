// SPDX-License-Identifier: BSD-3-Clause
// REGION_READ of 4 bytes through the vfio-user client library against the
// server, and in the same run the floor: a raw AF_UNIX ping-pong of the same
// message sizes (32-byte request, 36-byte reply) where each side does one
// read and one write per round trip. Both in blocking and busy-poll modes.
// Prints median and p99 latency, ops/s, and the ratio to the floor.
//
// Usage: vfio_user_latency [iterations per round] [rounds]
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "base/log.h"
#include "client/client.h"
#include "daemon/system.h"
#include "vfio_user/server.h"

using namespace uvfio;
using Clock = std::chrono::steady_clock;

namespace {

const char* kTopology = R"(
[[device]]
address = "0000:00:03.0"
model = "endpoint"
driver_override = "vfio-pci"
)";

struct Stats {
  double median_ns = 0, p99_ns = 0, ops = 0;
};

Stats summarize(std::vector<double>& ns) {
  std::sort(ns.begin(), ns.end());
  Stats s;
  s.median_ns = ns[ns.size() / 2];
  s.p99_ns = ns[ns.size() * 99 / 100];
  double total = 0;
  for (double v : ns) total += v;
  s.ops = 1e9 * static_cast<double>(ns.size()) / total;
  return s;
}

// The floor: one recv and one send per side per round trip.
class Floor {
 public:
  explicit Floor(bool spin) : spin_(spin) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) std::abort();
    a_ = sv[0];
    b_ = sv[1];
    t_ = std::thread([this] {
      char req[64], rep[36] = {};
      for (;;) {
        ssize_t n;
        do n = recv(b_, req, sizeof(req), spin_ ? MSG_DONTWAIT : 0);
        while (n < 0 && (errno == EAGAIN || errno == EINTR));
        if (n <= 0) return;
        if (send(b_, rep, sizeof(rep), MSG_NOSIGNAL) != sizeof(rep)) return;
      }
    });
  }
  ~Floor() {
    shutdown(a_, SHUT_RDWR);
    t_.join();
    close(a_);
    close(b_);
  }
  void round_trip() {
    char req[32] = {}, rep[64];
    if (send(a_, req, sizeof(req), MSG_NOSIGNAL) != sizeof(req)) std::abort();
    ssize_t got = 0;
    while (got < 36) {
      ssize_t n = recv(a_, rep + got, sizeof(rep) - static_cast<size_t>(got), spin_ ? MSG_DONTWAIT : 0);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (n <= 0) std::abort();
      got += n;
    }
  }

 private:
  bool spin_;
  int a_ = -1, b_ = -1;
  std::thread t_;
};

std::vector<double> time_it(size_t iters, auto&& fn) {
  std::vector<double> ns(iters);
  for (size_t i = 0; i < iters; ++i) {
    auto t0 = Clock::now();
    fn();
    ns[i] = std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
  }
  return ns;
}

}  // namespace

int main(int argc, char** argv) {
  size_t iters = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 50000;
  int rounds = argc > 2 ? std::atoi(argv[2]) : 5;
  log::set_level(log::Level::kWarn);
  auto spec = daemon::parse_topology(kTopology, "bench");
  auto sys = daemon::System::create(*spec);
  if (!sys) return 1;
  char dir[] = "/tmp/uvfio-bench-XXXXXX";
  if (!mkdtemp(dir)) return 1;
  std::printf("# vfio-user REGION_READ(4 bytes) vs raw AF_UNIX ping-pong, %zu round trips x %d rounds\n", iters, rounds);
  std::printf("%-9s %-14s %12s %12s %12s %8s\n", "mode", "path", "median(ns)", "p99(ns)", "ops/s", "ratio");
  for (bool spin : {false, true}) {
    vfio_user::ServerOptions sopts;
    sopts.busy_poll = spin;
    auto server = vfio_user::Server::start((*sys)->vfio_registry(), std::string(dir) + "/vfio-user", sopts);
    if (!server) return 1;
    uint32_t v;
    std::span<uint8_t> buf(reinterpret_cast<uint8_t*>(&v), 4);
    std::vector<double> ours, base;
    // Interleave rounds so both see the same machine noise. Only one pair of
    // threads is alive at a time: a spinning peer of the other path would
    // steal a core (2 cores here).
    for (int r = 0; r < rounds; ++r) {
      {
        Floor floor(spin);
        auto f = time_it(iters, [&] { floor.round_trip(); });
        base.insert(base.end(), f.begin(), f.end());
      }
      {
        auto c = client::Client::connect(std::string(dir) + "/vfio-user/0000:00:03.0.sock");
        if (!c) return 1;
        (*c)->set_busy_poll(spin);
        auto o = time_it(iters, [&] {
          if (!(*c)->region_read(0, 4, buf)) std::abort();
        });
        ours.insert(ours.end(), o.begin(), o.end());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the server notices the hang-up
    }
    Stats sb = summarize(base), so = summarize(ours);
    const char* mode = spin ? "busy-poll" : "blocking";
    std::printf("%-9s %-14s %12.0f %12.0f %12.0f %8s\n", mode, "AF_UNIX floor", sb.median_ns, sb.p99_ns, sb.ops, "1.00");
    std::printf("%-9s %-14s %12.0f %12.0f %12.0f %8.2f\n", mode, "vfio-user", so.median_ns, so.p99_ns, so.ops,
                so.median_ns / sb.median_ns);
    server->reset();
  }
  rmdir((std::string(dir) + "/vfio-user").c_str());
  rmdir(dir);
  return 0;
}
