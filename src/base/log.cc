// SPDX-License-Identifier: BSD-3-Clause
#include "base/log.h"

#include <atomic>
#include <cstdio>
#include <mutex>
#include <string>

namespace uvfio::log {
namespace {
std::atomic<Level> g_level{Level::kInfo};
std::mutex g_mu;
const char* tag(Level l) {
  switch (l) {
    case Level::kDebug: return "debug";
    case Level::kInfo: return "info";
    case Level::kWarn: return "warn";
    case Level::kError: return "error";
  }
  return "?";
}
}  // namespace

void set_level(Level l) { g_level = l; }
Level level() { return g_level; }

void write(Level l, std::string_view prefix, std::string_view msg) {
  std::string line = fmt::format("uvfio {}: {}{}{}\n", tag(l), prefix, prefix.empty() ? "" : ": ", msg);
  std::lock_guard lk(g_mu);
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace uvfio::log
