// SPDX-License-Identifier: BSD-3-Clause
// Statistics counters: relaxed atomics, bumped on hot paths, read by the
// attribute tree. One process-wide switch (uvfiod --no-stats) turns every
// bump into a predicted branch, so their cost can be measured against
// nothing (bench/latency.sh stats).
#pragma once

#include <atomic>
#include <cstdint>

namespace uvfio {

inline std::atomic<bool> g_stats_enabled{true};

struct Counter {
  std::atomic<uint64_t> v{0};
  void add(uint64_t n = 1) {
    if (g_stats_enabled.load(std::memory_order_relaxed)) v.fetch_add(n, std::memory_order_relaxed);
  }
  // A gauge's value (e.g. the last downtime); off with the counters too.
  void set(uint64_t n) {
    if (g_stats_enabled.load(std::memory_order_relaxed)) v.store(n, std::memory_order_relaxed);
  }
  uint64_t get() const { return v.load(std::memory_order_relaxed); }
};

}  // namespace uvfio
