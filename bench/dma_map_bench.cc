// SPDX-License-Identifier: BSD-3-Clause
// What a DMA map costs the device's IOMMU domain: a guest IOMMU makes QEMU
// map guest RAM a page at a time (65,535 maps of 4 KiB, each DMA_MAP
// bringing its own fd of the same memfd), against one map of the same
// 256 MiB. Both in the same run, rounds interleaved; per operation, median
// of the rounds. Unmaps: one by one (as per-page invalidations), and the
// whole range at once (type1's wide unmap).
//   dma_map_bench [ROUNDS]
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "hw/iommu.h"

using namespace uvfio;
using Clock = std::chrono::steady_clock;

namespace {

constexpr uint64_t kPages = 65535, kPage = 4096, kBase = 1ull << 32;

double ns_since(Clock::time_point t0) { return std::chrono::duration<double, std::nano>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = argc > 1 ? std::atoi(argv[1]) : 5;
  UniqueFd mem(memfd_create("guest", MFD_CLOEXEC));
  if (ftruncate(mem.get(), static_cast<off_t>((kPages + 1) * kPage)) != 0) return 1;
  std::vector<double> page_map, page_unmap, page_wide_unmap, big_map, big_unmap;
  for (int r = 0; r < rounds; ++r) {
    {
      hw::IommuDomain d;
      auto t0 = Clock::now();
      for (uint64_t i = 0; i < kPages; ++i)
        if (!d.map_fd(kBase + i * kPage, kPage, UniqueFd(dup(mem.get())), i * kPage, hw::kDmaRead | hw::kDmaWrite))
          return 2;
      page_map.push_back(ns_since(t0) / kPages);
      t0 = Clock::now();
      for (uint64_t i = 0; i < kPages; ++i)
        if (!d.unmap(kBase + i * kPage, kPage)) return 3;
      page_unmap.push_back(ns_since(t0) / kPages);
      for (uint64_t i = 0; i < kPages; ++i)
        (void)d.map_fd(kBase + i * kPage, kPage, UniqueFd(dup(mem.get())), i * kPage, hw::kDmaRead | hw::kDmaWrite);
      t0 = Clock::now();
      if (!d.unmap(kBase, kPages * kPage)) return 4;
      page_wide_unmap.push_back(ns_since(t0) / kPages);
    }
    {
      hw::IommuDomain d;
      constexpr int kBig = 1000;
      double map_ns = 0, unmap_ns = 0;
      for (int k = 0; k < kBig; ++k) {
        auto t0 = Clock::now();
        if (!d.map_fd(kBase, kPages * kPage, UniqueFd(dup(mem.get())), 0, hw::kDmaRead | hw::kDmaWrite)) return 5;
        map_ns += ns_since(t0);
        t0 = Clock::now();
        if (!d.unmap(kBase, kPages * kPage)) return 6;
        unmap_ns += ns_since(t0);
      }
      big_map.push_back(map_ns / kBig);
      big_unmap.push_back(unmap_ns / kBig);
    }
  }
  double pm = median(page_map), pu = median(page_unmap), pw = median(page_wide_unmap);
  double bm = median(big_map), bu = median(big_unmap);
  std::printf("dma_map_bench: %d rounds, medians per operation\n", rounds);
  std::printf("  4 KiB map (fd each, one file)   %8.0f ns   (65,535 of them: %.1f ms)\n", pm, pm * kPages / 1e6);
  std::printf("  4 KiB unmap, one by one         %8.0f ns\n", pu);
  std::printf("  4 KiB maps, one wide unmap      %8.0f ns per map removed (%.1f ms in all)\n", pw, pw * kPages / 1e6);
  std::printf("  256 MiB map (one)               %8.0f ns\n", bm);
  std::printf("  256 MiB unmap (one)             %8.0f ns\n", bu);
  std::printf("  ratio: a page map / the whole map %.2f; 65,535 page maps / one whole map %.0f\n", pm / bm,
              pm * kPages / bm);
  return 0;
}
