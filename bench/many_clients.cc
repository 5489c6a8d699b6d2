// SPDX-License-Identifier: BSD-3-Clause
// Many VFs, one closed-loop client each, against a running uvfiod: each
// client (a thread with a raw socket — not uvfio's client library) sends
// VERSION, then REGION_READs of 4 bytes of BAR0 back to back for the run's
// duration, recording every request's latency. Prints aggregate ops/s, the
// per-client ops min/max (fairness), latency p50/p99/max over all requests,
// and the daemon's thread count with the VFs idle and under load.
//
// Usage: many_clients DAEMON_PID SOCKET_DIR SECONDS
//   (every *.sock in SOCKET_DIR gets one client)
#include <dirent.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct __attribute__((packed)) Hdr {
  uint16_t id, cmd;
  uint32_t size, flags, err;
};

bool send_all(int fd, const void* p, size_t n) {
  while (n) {
    ssize_t r = ::send(fd, p, n, MSG_NOSIGNAL);
    if (r <= 0) return false;
    p = static_cast<const char*>(p) + r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool recv_all(int fd, void* p, size_t n) {
  while (n) {
    ssize_t r = ::recv(fd, p, n, 0);
    if (r <= 0) return false;
    p = static_cast<char*>(p) + r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

int threads_of(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("Threads:", 0) == 0) return std::atoi(line.c_str() + 8);
  return -1;
}

struct Result {
  uint64_t ops = 0;
  std::vector<uint32_t> lat_us;
  bool failed = false;
};

void client(const std::string& path, Clock::time_point until, std::atomic<int>& ready, Result& res) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof(a.sun_path), "%s", path.c_str());
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    res.failed = true;
    ++ready;
    return;
  }
  std::string js = R"({"capabilities":{"max_msg_fds":8}})";
  std::vector<char> v(16 + 4 + js.size() + 1, 0);
  Hdr h{1, 1, static_cast<uint32_t>(v.size()), 0, 0};
  std::memcpy(v.data(), &h, 16);
  std::memcpy(v.data() + 20, js.data(), js.size());
  Hdr rh{};
  char body[4096];
  if (!send_all(fd, v.data(), v.size()) || !recv_all(fd, &rh, 16) || rh.size < 16 || rh.size - 16 > sizeof(body) ||
      !recv_all(fd, body, rh.size - 16) || (rh.flags & 0x20)) {
    res.failed = true;
    ++ready;
    close(fd);
    return;
  }
  ++ready;
  res.lat_us.reserve(1 << 16);
  uint16_t id = 2;
  char req[32], rep[36];
  while (Clock::now() < until) {
    Hdr q{id, 9, 32, 0, 0};
    uint64_t off = 0;
    uint32_t region = 0, count = 4;
    std::memcpy(req, &q, 16);
    std::memcpy(req + 16, &off, 8);
    std::memcpy(req + 24, &region, 4);
    std::memcpy(req + 28, &count, 4);
    auto t0 = Clock::now();
    if (!send_all(fd, req, 32) || !recv_all(fd, rep, 36)) {
      res.failed = true;
      break;
    }
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count();
    res.lat_us.push_back(static_cast<uint32_t>(us));
    ++res.ops;
    ++id;
  }
  close(fd);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s DAEMON_PID SOCKET_DIR SECONDS\n", argv[0]);
    return 2;
  }
  int pid = std::atoi(argv[1]);
  std::string dir = argv[2];
  double secs = std::atof(argv[3]);
  std::vector<std::string> socks;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      std::string n = e->d_name;
      if (n.size() > 5 && n.substr(n.size() - 5) == ".sock") socks.push_back(dir + "/" + n);
    }
    closedir(d);
  }
  std::sort(socks.begin(), socks.end());
  int idle_threads = threads_of(pid);
  std::printf("%zu VF sockets; daemon threads with every VF idle: %d\n", socks.size(), idle_threads);
  std::vector<Result> res(socks.size());
  std::atomic<int> ready{0};
  auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(secs + 1));
  std::vector<std::thread> ts;
  for (size_t i = 0; i < socks.size(); ++i)
    ts.emplace_back(client, socks[i], until, std::ref(ready), std::ref(res[i]));
  while (ready < static_cast<int>(socks.size())) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  int busy_threads = threads_of(pid);
  for (auto& t : ts) t.join();
  std::vector<uint32_t> all;
  uint64_t total = 0, mn = UINT64_MAX, mx = 0;
  int failed = 0;
  for (auto& r : res) {
    if (r.failed) ++failed;
    total += r.ops;
    mn = std::min(mn, r.ops);
    mx = std::max(mx, r.ops);
    all.insert(all.end(), r.lat_us.begin(), r.lat_us.end());
  }
  std::sort(all.begin(), all.end());
  if (all.empty()) return 1;
  std::printf("daemon threads under load: %d\n", busy_threads);
  std::printf("clients failed: %d\n", failed);
  std::printf("aggregate: %.0f ops/s over %.1f s\n", static_cast<double>(total) / (secs + 1), secs + 1);
  std::printf("per-client ops: min %llu max %llu  min/max %.2f\n", static_cast<unsigned long long>(mn),
              static_cast<unsigned long long>(mx), mx ? static_cast<double>(mn) / static_cast<double>(mx) : 0.0);
  std::printf("latency us: p50 %u  p99 %u  max %u\n", all[all.size() / 2], all[all.size() * 99 / 100], all.back());
  return failed ? 1 : 0;
}
