// SPDX-License-Identifier: BSD-3-Clause
// libFuzzer target: topology files (TOML) through the loader, and those it
// accepts built into a running system and torn down — the parser, every
// validation rule, and the assembly of hardware, buses and drivers from
// whatever the validation let through.
#include <cstdint>
#include <string>

#include "common.h"

using namespace uvfio;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bool quiet = (log::set_level(log::Level::kError), true);
  (void)quiet;
  if (size > 16 * 1024) return 0;
  std::string text(reinterpret_cast<const char*>(data), size);
  auto spec = daemon::parse_topology(text, "fuzz");
  if (!spec) return 0;
  auto sys = daemon::System::create(*spec);
  return 0;
}
