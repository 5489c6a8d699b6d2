// SPDX-License-Identifier: BSD-3-Clause
// What signalling an interrupt costs now that it never waits on the client:
// eventfd_signal (poll for room, then the write under a per-thread guard
// timer) against the plain write(2) it replaced, on the same eventfd, rounds
// interleaved; per signal, median of the rounds.
//   eventfd_bench [ROUNDS] [SIGNALS]
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "base/eventfd.h"
#include "base/unique_fd.h"

using namespace uvfio;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  int rounds = argc > 1 ? std::atoi(argv[1]) : 9;
  int n = argc > 2 ? std::atoi(argv[2]) : 200000;
  UniqueFd fd(eventfd(0, EFD_CLOEXEC));
  std::vector<double> plain, guarded;
  uint64_t v;
  for (int r = 0; r < rounds; ++r) {
    auto t0 = Clock::now();
    for (int i = 0; i < n; ++i) {
      uint64_t one = 1;
      if (::write(fd.get(), &one, sizeof(one)) != sizeof(one)) return 1;
    }
    plain.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / n);
    if (::read(fd.get(), &v, sizeof(v)) != sizeof(v)) return 1;
    t0 = Clock::now();
    for (int i = 0; i < n; ++i)
      if (eventfd_signal(fd.get()) != EventfdSignal::kDelivered) return 2;
    guarded.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / n);
    if (::read(fd.get(), &v, sizeof(v)) != sizeof(v)) return 1;
  }
  std::sort(plain.begin(), plain.end());
  std::sort(guarded.begin(), guarded.end());
  double p = plain[plain.size() / 2], g = guarded[guarded.size() / 2];
  std::printf("eventfd_bench: %d rounds of %d signals, medians\n", rounds, n);
  std::printf("  write(2)          %7.0f ns\n  eventfd_signal    %7.0f ns\n  ratio             %7.2f\n", p, g, g / p);
  return 0;
}
