// SPDX-License-Identifier: BSD-3-Clause
// The topology file: which emulated functions exist, where, and how they
// start (TOML; docs/topology.md has the format). With no file, uvfiod uses
// the seed topology of ARCHITECTURE.md.
//
// Parsing validates everything before anything is built: a bad file is
// refused with "FILE: device[N].key: reason" and nothing starts.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "base/bdf.h"
#include "base/result.h"
#include "sdk/plugin.h"

namespace uvfio::daemon {

enum class Model { kRootPort, kSwitchUpstream, kSwitchDownstream, kMlx5Pf, kEndpoint, kPlugin };

const char* to_string(Model m);
// A model name uvfiod builds itself ("mlx5-pf", ...): plugins cannot take it.
bool is_builtin_model(std::string_view name);

struct DeviceSpec {
  Bdf address;
  Model model = Model::kEndpoint;
  // Bridges.
  uint8_t secondary_bus = 0;
  uint8_t subordinate_bus = 0;
  // mlx5 PF.
  uint16_t total_vfs = 8;
  uint16_t first_vf_offset = 1;
  uint16_t vf_stride = 1;
  uint16_t num_vfs = 0;
  std::string vf_driver_override;
  uint64_t device_memory = 16 << 20;
  // Generic endpoint.
  uint16_t vendor = 0x1b36;
  uint16_t device = 0x0005;
  uint32_t class_code = 0x00ff00;
  std::string driver_override;
  // A plugin's model (Model::kPlugin): its name and the table's other keys.
  std::string plugin_model;
  std::map<std::string, sdk::ModelParams::Value> params;
};

struct TopologySpec {
  // [[plugin]] path = "...": shared objects loaded before anything is built,
  // in this order (a relative path is relative to the topology file).
  std::vector<std::string> plugins;
  std::vector<DeviceSpec> devices;  // sorted by address
};

struct TopologyError {
  std::string message;
};

// Parses and validates a TOML document; `origin` names it in errors.
Result<TopologySpec, TopologyError> parse_topology(const std::string& text, const std::string& origin);
Result<TopologySpec, TopologyError> load_topology_file(const std::string& path);
// Checks the cross-device rules (bus ranges, reachability, VF addresses).
Result<void, TopologyError> validate_topology(const TopologySpec& spec, const std::string& origin);

// The seed: root port 00:02.0 → switch 05:00.0 → 06:00.0 → mlx5 PFs
// 07:00.0 (First VF Offset 0x100) and 07:00.1 (0x1ff), one VF each, VFs with
// driver_override=mlx5_vfio_pci.
TopologySpec seed_topology();
// The seed as a TOML document (what `uvfiod --print-seed` writes).
std::string seed_topology_toml();

// "16M", "256MiB", "1G", "4096" → bytes. EINVAL otherwise.
Result<uint64_t> parse_size(const std::string& s);

}  // namespace uvfio::daemon
