// SPDX-License-Identifier: BSD-3-Clause
// The migration channel's bulk throughput: GiB of 1 MiB writes from
// mig::connect to a mig::Listener over 127.0.0.1, plain TCP against TLS 1.3
// (X.509, PSK), interleaved rounds; medians. The credentials come from
// tests/tls/make-creds.sh.
// Usage: tls_channel_bench CREDS_DIR [ROUNDS] [MIB]
#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <thread>
#include <vector>

#include "cli/mig_channel.h"

using namespace uvfio;

namespace {

double one(const mig::TlsOptions& o, int port, size_t mib) {
  std::string hp = fmt::format("127.0.0.1:{}", port);
  auto l = mig::Listener::listen(hp, o);
  if (!l) {
    fmt::print(stderr, "listen: {}\n", to_string(l.error()));
    std::exit(1);
  }
  std::thread sink([&] {
    auto ch = (*l)->next([](mig::Channel&) -> Result<void> { return ok(); }, [](const std::string&) {});
    if (!ch) return;
    std::vector<uint8_t> buf(1 << 20);
    for (size_t i = 0; i < mib; ++i)
      if (!(*ch)->read_all(buf.data(), buf.size())) return;
    uint8_t done = 1;
    (void)(*ch)->write_all(&done, 1);
    (void)(*ch)->flush();
  });
  auto c = mig::connect(hp, o);
  if (!c) {
    fmt::print(stderr, "connect: {}\n", to_string(c.error()));
    std::exit(1);
  }
  std::vector<uint8_t> buf(1 << 20);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<uint8_t>(i * 131 + 7);
  auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < mib; ++i)
    if (!(*c)->write_all(buf.data(), buf.size())) std::exit(1);
  uint8_t done = 0;
  if (!(*c)->read_all(&done, 1)) std::exit(1);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  sink.join();
  return static_cast<double>(mib) / s;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    fmt::print(stderr, "usage: {} CREDS_DIR [ROUNDS] [MIB]\n", argv[0]);
    return 2;
  }
  std::string creds = argv[1];
  int rounds = argc > 2 ? std::atoi(argv[2]) : 5;
  size_t mib = argc > 3 ? std::strtoul(argv[3], nullptr, 10) : 1024;
  mig::TlsOptions plain, x509, psk;
  plain.insecure = true;
  x509.x509_dir = creds + "/good";
  x509.hostname = "127.0.0.1";
  psk.psk_file = creds + "/good.psk";
  std::vector<double> p, x, k;
  int port = 48000 + static_cast<int>(std::chrono::steady_clock::now().time_since_epoch().count() % 1000);
  for (int r = 0; r < rounds; ++r) {
    p.push_back(one(plain, port++, mib));
    x.push_back(one(x509, port++, mib));
    k.push_back(one(psk, port++, mib));
  }
  fmt::print("{} MiB per run, {} rounds, medians (MiB/s):\n", mib, rounds);
  fmt::print("plain TCP   {:8.0f}\n", median(p));
  fmt::print("TLS X.509   {:8.0f}   ratio to plain {:.2f}\n", median(x), median(x) / median(p));
  fmt::print("TLS PSK     {:8.0f}   ratio to plain {:.2f}\n", median(k), median(k) / median(p));
}
