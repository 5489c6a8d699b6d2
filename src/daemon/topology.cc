// SPDX-License-Identifier: BSD-3-Clause
// Topology file parsing and validation. toml11 reports syntax errors by
// exception; they are caught here, at the boundary, and become TopologyError.
#include "daemon/topology.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <toml.hpp>

namespace uvfio::daemon {
namespace {

using Err = TopologyError;

struct Ctx {
  const std::string& origin;
  std::string where;  // "device[3]"
  Err err(const std::string& key, const std::string& why) const {
    return Err{fmt::format("{}: {}{}{}: {}", origin, where, key.empty() ? "" : ".", key, why)};
  }
};

Result<int64_t, Err> get_int(const toml::table& t, const Ctx& c, const std::string& key, int64_t lo, int64_t hi,
                             int64_t dflt) {
  auto it = t.find(key);
  if (it == t.end()) return dflt;
  if (!it->second.is_integer()) return c.err(key, "expected an integer");
  int64_t v = it->second.as_integer();
  if (v < lo || v > hi) return c.err(key, fmt::format("{} is out of range [{}, {}]", v, lo, hi));
  return v;
}

Result<std::string, Err> get_str(const toml::table& t, const Ctx& c, const std::string& key, bool required) {
  auto it = t.find(key);
  if (it == t.end()) {
    if (required) return c.err(key, "missing");
    return std::string();
  }
  if (!it->second.is_string()) return c.err(key, "expected a string");
  return it->second.as_string().str;
}

#define TRYT(expr)                                  \
  ({                                                \
    auto&& r_ = (expr);                             \
    if (!r_) return r_.error();                     \
    std::move(r_).value();                          \
  })

const std::map<std::string, Model>& model_names() {
  static const std::map<std::string, Model> m{{"root-port", Model::kRootPort},
                                              {"switch-upstream", Model::kSwitchUpstream},
                                              {"switch-downstream", Model::kSwitchDownstream},
                                              {"mlx5-pf", Model::kMlx5Pf},
                                              {"endpoint", Model::kEndpoint}};
  return m;
}

bool is_bridge(Model m) {
  return m == Model::kRootPort || m == Model::kSwitchUpstream || m == Model::kSwitchDownstream;
}

Result<DeviceSpec, Err> parse_device(const toml::table& t, const Ctx& c, bool plugins) {
  DeviceSpec d;
  std::string addr = TRYT(get_str(t, c, "address", true));
  auto bdf = Bdf::parse(addr);
  if (!bdf) return c.err("address", fmt::format("'{}' is not a PCI address (dddd:bb:dd.f)", addr));
  if (bdf->domain() != 0) return c.err("address", "only PCI domain 0000 is emulated");
  d.address = *bdf;
  std::string model = TRYT(get_str(t, c, "model", true));
  auto m = model_names().find(model);
  if (m == model_names().end() && !plugins)
    return c.err("model", fmt::format("unknown model '{}' (root-port, switch-upstream, switch-downstream, "
                                      "mlx5-pf, endpoint; or one a [[plugin]] brings)", model));
  if (m == model_names().end()) {
    // A plugin's: whether one provides it is known once plugins are loaded
    // (System::create); its keys are the factory's to check.
    d.model = Model::kPlugin;
    d.plugin_model = model;
    d.driver_override = TRYT(get_str(t, c, "driver_override", false));
    for (auto& [k, v] : t) {
      if (k == "address" || k == "model" || k == "driver_override") continue;
      if (v.is_integer()) d.params[k] = static_cast<int64_t>(v.as_integer());
      else if (v.is_string()) d.params[k] = v.as_string().str;
      else if (v.is_boolean()) d.params[k] = v.as_boolean();
      else return c.err(k, "expected an integer, a string or a boolean");
    }
    return d;
  }
  d.model = m->second;
  std::set<std::string> allowed{"address", "model"};
  if (is_bridge(d.model)) {
    allowed.insert({"secondary_bus", "subordinate_bus"});
    if (!t.count("secondary_bus")) return c.err("secondary_bus", "missing (bridges need bus numbers)");
    if (!t.count("subordinate_bus")) return c.err("subordinate_bus", "missing (bridges need bus numbers)");
    d.secondary_bus = static_cast<uint8_t>(TRYT(get_int(t, c, "secondary_bus", 1, 255, 0)));
    d.subordinate_bus = static_cast<uint8_t>(TRYT(get_int(t, c, "subordinate_bus", 1, 255, 0)));
    if (d.secondary_bus <= d.address.bus())
      return c.err("secondary_bus", fmt::format("{} must be above the bridge's own bus {}", d.secondary_bus,
                                                d.address.bus()));
    if (d.subordinate_bus < d.secondary_bus)
      return c.err("subordinate_bus", fmt::format("{} is below secondary_bus {}", d.subordinate_bus, d.secondary_bus));
  } else if (d.model == Model::kMlx5Pf) {
    allowed.insert({"total_vfs", "first_vf_offset", "vf_stride", "num_vfs", "vf_driver_override", "device_memory",
                    "driver_override"});
    d.driver_override = TRYT(get_str(t, c, "driver_override", false));
    d.total_vfs = static_cast<uint16_t>(TRYT(get_int(t, c, "total_vfs", 1, 256, 8)));
    d.first_vf_offset = static_cast<uint16_t>(TRYT(get_int(t, c, "first_vf_offset", 1, 0xffff, 1)));
    d.vf_stride = static_cast<uint16_t>(TRYT(get_int(t, c, "vf_stride", d.total_vfs > 1 ? 1 : 0, 0xffff, 1)));
    d.num_vfs = static_cast<uint16_t>(TRYT(get_int(t, c, "num_vfs", 0, 0xffff, 0)));
    if (d.num_vfs > d.total_vfs)
      return c.err("num_vfs", fmt::format("{} exceeds total_vfs ({})", d.num_vfs, d.total_vfs));
    d.vf_driver_override = TRYT(get_str(t, c, "vf_driver_override", false));
    if (d.vf_driver_override.size() >= 4095 || d.vf_driver_override.find('\n') != std::string::npos)
      return c.err("vf_driver_override", "not a driver name");
    auto it = t.find("device_memory");
    if (it != t.end()) {
      Result<uint64_t> sz = Error(EINVAL);
      if (it->second.is_integer() && it->second.as_integer() > 0)
        sz = static_cast<uint64_t>(it->second.as_integer());
      else if (it->second.is_string())
        sz = parse_size(it->second.as_string().str);
      if (!sz) return c.err("device_memory", "expected a size such as 16M or 268435456");
      if ((*sz & (*sz - 1)) || *sz < 4096 || *sz > (64ull << 30))
        return c.err("device_memory", fmt::format("{} is not a power of two between 4K and 64G", *sz));
      d.device_memory = *sz;
    }
  } else if (d.model == Model::kEndpoint) {
    allowed.insert({"vendor", "device", "class", "driver_override"});
    d.vendor = static_cast<uint16_t>(TRYT(get_int(t, c, "vendor", 0, 0xfffe, 0x1b36)));
    d.device = static_cast<uint16_t>(TRYT(get_int(t, c, "device", 0, 0xffff, 0x0005)));
    d.class_code = static_cast<uint32_t>(TRYT(get_int(t, c, "class", 0, 0xffffff, 0x00ff00)));
    d.driver_override = TRYT(get_str(t, c, "driver_override", false));
  }
  for (auto& [k, v] : t)
    if (!allowed.count(k)) return c.err(k, fmt::format("unknown key for model {}", model));
  return d;
}

}  // namespace

const char* to_string(Model m) {
  for (auto& [name, model] : model_names())
    if (model == m) return name.c_str();
  return m == Model::kPlugin ? "plugin" : "?";
}

bool is_builtin_model(std::string_view name) { return model_names().count(std::string(name)) != 0; }

Result<uint64_t> parse_size(const std::string& s) {
  if (s.empty()) return Error(EINVAL);
  size_t i = 0;
  uint64_t v = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
    if (v > (~0ull >> 4)) return Error(ERANGE);
    v = v * 10 + (s[i++] - '0');
  }
  if (i == 0) return Error(EINVAL);
  std::string unit = s.substr(i);
  uint64_t mul = 1;
  if (unit.empty() || unit == "B") mul = 1;
  else if (unit == "K" || unit == "KiB") mul = 1ull << 10;
  else if (unit == "M" || unit == "MiB") mul = 1ull << 20;
  else if (unit == "G" || unit == "GiB") mul = 1ull << 30;
  else return Error(EINVAL);
  if (v > (~0ull / mul)) return Error(ERANGE);
  return v * mul;
}

Result<void, TopologyError> validate_topology(const TopologySpec& spec, const std::string& origin) {
  std::map<Bdf, size_t> at;
  for (size_t i = 0; i < spec.devices.size(); ++i) {
    const DeviceSpec& d = spec.devices[i];
    Ctx c{origin, fmt::format("device[{}]", i)};
    if (!at.emplace(d.address, i).second)
      return c.err("address", fmt::format("{} is used twice", d.address.str()));
  }
  // Which bridge (if any) owns each bus: the one whose secondary it is.
  std::map<uint8_t, size_t> bus_owner;
  for (size_t i = 0; i < spec.devices.size(); ++i) {
    const DeviceSpec& d = spec.devices[i];
    if (!is_bridge(d.model)) continue;
    Ctx c{origin, fmt::format("device[{}]", i)};
    if (bus_owner.count(d.secondary_bus))
      return c.err("secondary_bus", fmt::format("bus {:02x} already belongs to another bridge", d.secondary_bus));
    bus_owner[d.secondary_bus] = i;
  }
  auto range_of_bus = [&](uint8_t bus) -> std::pair<int, int> {
    auto it = bus_owner.find(bus);
    if (it == bus_owner.end()) return {0, bus == 0 ? 255 : -1};
    return {spec.devices[it->second].secondary_bus, spec.devices[it->second].subordinate_bus};
  };
  for (size_t i = 0; i < spec.devices.size(); ++i) {
    const DeviceSpec& d = spec.devices[i];
    Ctx c{origin, fmt::format("device[{}]", i)};
    uint8_t bus = d.address.bus();
    if (bus != 0 && !bus_owner.count(bus))
      return c.err("address", fmt::format("bus {:02x} is behind no bridge: {} is unreachable", bus, d.address.str()));
    if (d.address.fn() != 0 && !at.count(Bdf(0, bus, d.address.dev(), 0)))
      return c.err("address", fmt::format("{} has no function 0, so it cannot be found", d.address.str()));
    if (is_bridge(d.model) && bus != 0) {
      auto [lo, hi] = range_of_bus(bus);
      if (d.secondary_bus < lo || d.subordinate_bus > hi)
        return c.err("subordinate_bus", fmt::format("buses {:02x}-{:02x} do not fit in the parent's {:02x}-{:02x}",
                                                    d.secondary_bus, d.subordinate_bus, lo, hi));
    }
    if (is_bridge(d.model)) {
      for (size_t j = 0; j < spec.devices.size(); ++j) {
        const DeviceSpec& o = spec.devices[j];
        if (j == i || !is_bridge(o.model) || o.address.bus() != bus) continue;
        if (d.secondary_bus <= o.subordinate_bus && o.secondary_bus <= d.subordinate_bus)
          return c.err("secondary_bus", fmt::format("bus range overlaps that of sibling {}", o.address.str()));
      }
    }
    if (d.model == Model::kMlx5Pf) {
      auto [lo, hi] = range_of_bus(bus);
      for (uint32_t v = 0; v < d.total_vfs; ++v) {
        uint32_t rid = uint32_t{d.address.id()} + d.first_vf_offset + v * d.vf_stride;
        if (rid > 0xffff) return c.err("first_vf_offset", fmt::format("VF {} would be beyond bus ff", v));
        Bdf vf = Bdf::from_rid(0, static_cast<uint16_t>(rid));
        if (static_cast<int>(vf.bus()) < lo || static_cast<int>(vf.bus()) > hi)
          return c.err("first_vf_offset", fmt::format("VF {} at {} is outside the buses {:02x}-{:02x} its bridge "
                                                      "forwards", v, vf.str(), lo, hi));
        if (at.count(vf)) return c.err("first_vf_offset", fmt::format("VF {} at {} collides with a device", v, vf.str()));
        if (bus_owner.count(vf.bus()) && vf.bus() != bus)
          return c.err("first_vf_offset", fmt::format("VF {} at {} lands on a bus owned by a bridge", v, vf.str()));
      }
    }
  }
  // VFs of different PFs must not collide either.
  std::map<Bdf, Bdf> vfs;
  for (size_t i = 0; i < spec.devices.size(); ++i) {
    const DeviceSpec& d = spec.devices[i];
    if (d.model != Model::kMlx5Pf) continue;
    for (uint32_t v = 0; v < d.total_vfs; ++v) {
      Bdf vf = Bdf::from_rid(0, static_cast<uint16_t>(d.address.id() + d.first_vf_offset + v * d.vf_stride));
      auto [it, fresh] = vfs.emplace(vf, d.address);
      if (!fresh)
        return Ctx{origin, fmt::format("device[{}]", i)}.err(
            "first_vf_offset", fmt::format("VF {} at {} collides with a VF of {}", v, vf.str(), it->second.str()));
    }
  }
  return {};
}

namespace {
// Where `s` stops being UTF-8 (RFC 3629: no overlongs, surrogates or code
// points past U+10FFFF), or npos.
size_t invalid_utf8_at(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t n;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      n = 1;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      n = 2;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      n = 3;
      cp = c & 0x07;
    } else {
      return i;
    }
    if (s.size() - i <= n) return i;
    for (size_t k = 1; k <= n; ++k) {
      auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return i;
      cp = (cp << 6) | (cc & 0x3f);
    }
    static const uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += n + 1;
  }
  return std::string_view::npos;
}

// How deeply arrays and inline tables nest, outside strings and comments.
// toml11 parses nesting by recursion: a file of a few thousand '[' would
// overflow the daemon's stack, so the depth is checked before it parses.
size_t nesting_depth(std::string_view s) {
  size_t depth = 0, max = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '#') {
      while (i < s.size() && s[i] != '\n') ++i;
    } else if (c == '"' || c == '\'') {
      bool multi = s.substr(i, 3) == std::string(3, c);
      i += multi ? 3 : 1;
      for (; i < s.size(); ++i) {
        if (c == '"' && s[i] == '\\') {
          ++i;  // an escape: the next character is not a quote
        } else if (s[i] == c && (!multi || s.substr(i, 3) == std::string(3, c))) {
          if (multi) i += 2;
          break;
        } else if (!multi && s[i] == '\n') {
          break;  // unterminated: toml11 says where
        }
      }
    } else if (c == '[' || c == '{') {
      max = std::max(max, ++depth);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return max;
}
constexpr size_t kMaxNesting = 64;
}  // namespace

Result<TopologySpec, TopologyError> parse_topology(const std::string& text, const std::string& origin) {
  // TOML documents are UTF-8; saying so here, with where, also keeps
  // toml11 3.7's error path for bad UTF-8 in a literal string (which reads
  // out of bounds) from ever being reached.
  if (size_t at = invalid_utf8_at(text); at != std::string_view::npos) {
    size_t line = 1 + static_cast<size_t>(std::count(text.begin(), text.begin() + static_cast<long>(at), '\n'));
    return Err{fmt::format("{}: line {}: not valid UTF-8 (TOML files are UTF-8)", origin, line)};
  }
  if (nesting_depth(text) > kMaxNesting)
    return Err{fmt::format("{}: arrays or inline tables nested more than {} deep", origin, kMaxNesting)};
  toml::value root;
  try {
    std::istringstream in(text);
    root = toml::parse(in, origin);
  } catch (const std::exception& e) {
    return Err{fmt::format("{}: syntax error: {}", origin, e.what())};
  }
  if (!root.is_table()) return Err{origin + ": not a TOML table"};
  TopologySpec spec;
  if (auto it = root.as_table().find("plugin"); it != root.as_table().end()) {
    if (!it->second.is_array()) return Err{origin + ": plugin: expected an array of tables ([[plugin]])"};
    const auto& arr = it->second.as_array();
    for (size_t i = 0; i < arr.size(); ++i) {
      Ctx c{origin, fmt::format("plugin[{}]", i)};
      if (!arr[i].is_table()) return c.err("", "expected a table");
      for (auto& [k, v] : arr[i].as_table())
        if (k != "path") return c.err(k, "unknown key (a [[plugin]] has a path)");
      std::string path = TRYT(get_str(arr[i].as_table(), c, "path", true));
      if (path.empty() || path.find('\0') != std::string::npos) return c.err("path", "not a file name");
      spec.plugins.push_back(std::move(path));
    }
  }
  for (auto& [k, v] : root.as_table()) {
    if (k == "plugin") continue;
    if (k != "device")
      return Err{fmt::format("{}: {}: unknown top-level key (expected [[device]] and [[plugin]] tables)", origin, k)};
    if (!v.is_array()) return Err{origin + ": device: expected an array of tables ([[device]])"};
    const auto& arr = v.as_array();
    for (size_t i = 0; i < arr.size(); ++i) {
      Ctx c{origin, fmt::format("device[{}]", i)};
      if (!arr[i].is_table()) return c.err("", "expected a table");
      spec.devices.push_back(TRYT(parse_device(arr[i].as_table(), c, !spec.plugins.empty())));
    }
  }
  if (spec.devices.empty()) return Err{origin + ": no [[device]] tables: nothing to emulate"};
  TRYT(validate_topology(spec, origin));
  std::stable_sort(spec.devices.begin(), spec.devices.end(),
                   [](const DeviceSpec& a, const DeviceSpec& b) { return a.address < b.address; });
  return spec;
}

Result<TopologySpec, TopologyError> load_topology_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Err{fmt::format("{}: cannot open: {}", path, std::strerror(errno))};
  std::stringstream ss;
  ss << in.rdbuf();
  if (ss.str().size() > (1 << 20)) return Err{path + ": larger than 1 MiB"};
  TopologySpec spec = TRYT(parse_topology(ss.str(), path));
  // A plugin's relative path is relative to the file that names it.
  std::string dir = path.find('/') == std::string::npos ? "." : path.substr(0, path.rfind('/'));
  if (dir.empty()) dir = "/";
  for (std::string& p : spec.plugins)
    if (p[0] != '/') p = dir + "/" + p;
  return spec;
}

std::string seed_topology_toml() {
  return R"(# The seed topology (ARCHITECTURE.md): a root port, a PCIe switch and two
# mlx5 PFs; each PF enables one VF, bound to mlx5_vfio_pci.
[[device]]
address = "0000:00:02.0"
model = "root-port"
secondary_bus = 0x05
subordinate_bus = 0x09

[[device]]
address = "0000:05:00.0"
model = "switch-upstream"
secondary_bus = 0x06
subordinate_bus = 0x09

[[device]]
address = "0000:06:00.0"
model = "switch-downstream"
secondary_bus = 0x07
subordinate_bus = 0x09

[[device]]
address = "0000:07:00.0"
model = "mlx5-pf"
total_vfs = 8
first_vf_offset = 0x100   # VF0 = 0000:08:00.0
vf_stride = 1
num_vfs = 1
vf_driver_override = "mlx5_vfio_pci"
device_memory = "16M"

[[device]]
address = "0000:07:00.1"
model = "mlx5-pf"
total_vfs = 8
first_vf_offset = 0x1ff   # VF0 = 0000:09:00.0
vf_stride = 1
num_vfs = 1
vf_driver_override = "mlx5_vfio_pci"
device_memory = "16M"
)";
}

TopologySpec seed_topology() {
  auto r = parse_topology(seed_topology_toml(), "<seed>");
  if (!r) std::abort();  // the built-in document is ours: a failure is a bug
  return *r;
}

}  // namespace uvfio::daemon
