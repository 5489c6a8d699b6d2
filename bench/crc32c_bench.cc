// SPDX-License-Identifier: BSD-3-Clause
// CRC32C throughput: uvfio::crc32c (three interleaved streams of the SSE4.2
// instruction over each 4080-byte block) against one stream of the same
// instruction (the implementation it replaced, kept here as the baseline)
// and against memcpy of the same bytes; a migration record (4100 bytes) and
// 1 MiB. Rounds interleaved, median GB/s of the rounds, ratios to the
// baseline. Pin it (taskset -c 1) on a quiet machine.
//   crc32c_bench [ROUNDS] [MIB_PER_ROUND]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "base/crc32c.h"

using Clock = std::chrono::steady_clock;

namespace {

__attribute__((target("sse4.2"))) uint32_t one_stream(uint32_t crc, const uint8_t* p, size_t n) {
  uint64_t c = ~crc;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = __builtin_ia32_crc32di(c, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
  return ~c32;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = argc > 1 ? std::atoi(argv[1]) : 9;
  size_t per_round = (argc > 2 ? std::strtoull(argv[2], nullptr, 0) : 256) << 20;
  std::vector<uint8_t> src(1 << 20), dst(1 << 20);
  std::mt19937_64 rng(1);
  for (auto& b : src) b = static_cast<uint8_t>(rng());
  std::printf("%-10s %12s %12s %12s %10s %10s\n", "size", "one_GB/s", "uvfio_GB/s", "memcpy_GB/s", "uvfio/one",
              "uvfio/memcpy");
  for (size_t size : {size_t{4100}, size_t{1} << 20}) {
    size_t reps = per_round / size;
    std::vector<double> one, ours, copy;
    volatile uint32_t sink = 0;
    for (int r = 0; r < rounds; ++r) {
      auto t0 = Clock::now();
      for (size_t i = 0; i < reps; ++i) sink = sink + one_stream(0, src.data(), size);
      auto t1 = Clock::now();
      for (size_t i = 0; i < reps; ++i) sink = sink + uvfio::crc32c(0, src.data(), size);
      auto t2 = Clock::now();
      for (size_t i = 0; i < reps; ++i) {
        std::memcpy(dst.data(), src.data(), size);
        sink = sink + dst[i % size];
      }
      auto t3 = Clock::now();
      double bytes = double(reps) * double(size);
      one.push_back(bytes / std::chrono::duration<double, std::nano>(t1 - t0).count());
      ours.push_back(bytes / std::chrono::duration<double, std::nano>(t2 - t1).count());
      copy.push_back(bytes / std::chrono::duration<double, std::nano>(t3 - t2).count());
    }
    if (uvfio::crc32c(0, src.data(), size) != one_stream(0, src.data(), size)) {
      std::fprintf(stderr, "crc32c_bench: the two implementations disagree at %zu bytes\n", size);
      return 1;
    }
    std::printf("%-10zu %12.2f %12.2f %12.2f %10.2f %10.2f\n", size, median(one), median(ours), median(copy),
                median(ours) / median(one), median(ours) / median(copy));
  }
  return 0;
}
