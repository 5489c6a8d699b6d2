// SPDX-License-Identifier: BSD-3-Clause
// Shared by the libFuzzer targets: a quiet log and a System built from a
// topology, rebuilt when an input has changed it beyond use.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "base/log.h"
#include "daemon/system.h"
#include "daemon/topology.h"

namespace uvfio::fuzz {

inline std::unique_ptr<daemon::System> make_system(const std::string& toml) {
  log::set_level(log::Level::kError);
  auto spec = daemon::parse_topology(toml, "fuzz");
  if (!spec) {
    std::fprintf(stderr, "fuzz topology: %s\n", spec.error().message.c_str());
    std::abort();
  }
  auto sys = daemon::System::create(*spec);
  if (!sys) {
    std::fprintf(stderr, "fuzz system: %s\n", sys.error().message.c_str());
    std::abort();
  }
  return std::move(*sys);
}

// An endpoint under vfio-pci and an mlx5 PF with two VFs under
// mlx5_vfio_pci behind a bridge: every driver and model.
inline const char* kAllModels = R"(
[[device]]
address = "0000:00:02.0"
model = "root-port"
secondary_bus = 1
subordinate_bus = 4

[[device]]
address = "0000:01:00.0"
model = "mlx5-pf"
total_vfs = 4
first_vf_offset = 1
num_vfs = 2
device_memory = "1M"
vf_driver_override = "mlx5_vfio_pci"

[[device]]
address = "0000:00:03.0"
model = "endpoint"
driver_override = "vfio-pci"
)";

}  // namespace uvfio::fuzz
