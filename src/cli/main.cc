// SPDX-License-Identifier: BSD-3-Clause
// uvfioctl: the admin CLI. Talks to uvfiod over DIR/control.sock and works on
// the attribute tree the way an admin works on /sys: ls, cat, readlink,
// write, plus tree/list views and bind/unbind/sriov shortcuts.
// Errors print the errno text and exit non-zero.
#include <csignal>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "base/bdf.h"
#include "base/unique_fd.h"
#include "client/client.h"
#include "base/rundir.h"
#include "sysfs/control.h"
#include "sysfs/fuse_fs.h"
#include "sysfs/remote_tree.h"

using namespace uvfio;
using nlohmann::json;

namespace {

[[noreturn]] void die(const std::string& what, const Error& e) {
  std::fprintf(stderr, "uvfioctl: %s: %s\n", what.c_str(), errno_name(e.code).c_str());
  std::exit(1);
}

template <class T>
T must(Result<T> r, const std::string& what) {
  if (!r) die(what, r.error());
  return std::move(*r);
}
void must(Result<void> r, const std::string& what) {
  if (!r) die(what, r.error());
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string base_name(const std::string& p) {
  size_t s = p.rfind('/');
  return s == std::string::npos ? p : p.substr(s + 1);
}

struct DevInfo {
  std::string name;
  std::string path;  // devices/pci0000:00/...
  std::string vendor, device, cls, driver;
  std::string physfn;
  std::string vfio;  // "vfio3" when the function is a VFIO device
  int sriov_num = -1, sriov_total = -1;
  int secondary = -1, subordinate = -1;
};

// Reads what `list` and `tree` show, from the tree as lspci reads /sys.
std::vector<DevInfo> collect(sysfs::ControlClient& c) {
  std::vector<DevInfo> out;
  auto entries = must(c.ls("bus/pci/devices"), "ls bus/pci/devices");
  for (auto& [name, kind] : entries) {
    DevInfo d;
    d.name = name;
    std::string base = "bus/pci/devices/" + name;
    std::string target = must(c.readlink(base), "readlink " + base);
    // "../../../devices/..." relative to bus/pci/devices
    size_t pos = target.find("devices/");
    d.path = pos == std::string::npos ? target : target.substr(pos);
    d.vendor = trim(c.read(base + "/vendor").value_or("?"));
    d.device = trim(c.read(base + "/device").value_or("?"));
    d.cls = trim(c.read(base + "/class").value_or("?"));
    auto drv = c.readlink(base + "/driver");
    d.driver = drv ? base_name(*drv) : "";
    auto pf = c.readlink(base + "/physfn");
    if (pf) d.physfn = base_name(*pf);
    auto tot = c.read(base + "/sriov_totalvfs");
    if (tot) {
      d.sriov_total = std::atoi(tot->c_str());
      d.sriov_num = std::atoi(c.read(base + "/sriov_numvfs").value_or("0").c_str());
    }
    auto vd = c.ls(base + "/vfio-dev");
    if (vd && !vd->empty()) d.vfio = (*vd)[0].first;
    auto sec = c.read(base + "/secondary_bus_number");
    if (sec) {
      d.secondary = std::atoi(sec->c_str());
      d.subordinate = std::atoi(c.read(base + "/subordinate_bus_number").value_or("0").c_str());
    }
    out.push_back(d);
  }
  return out;
}

std::string strip0x(const std::string& s) { return s.rfind("0x", 0) == 0 ? s.substr(2) : s; }

void cmd_list(sysfs::ControlClient& c, bool as_json) {
  auto devs = collect(c);
  if (as_json) {
    json a = json::array();
    for (auto& d : devs) {
      json o{{"address", d.name}, {"vendor", d.vendor}, {"device", d.device}, {"class", d.cls},
             {"driver", d.driver.empty() ? json(nullptr) : json(d.driver)}};
      if (!d.physfn.empty()) o["physfn"] = d.physfn;
      o["vfio"] = d.vfio.empty() ? json(nullptr) : json(d.vfio);
      if (d.sriov_total >= 0) o["sriov"] = json{{"numvfs", d.sriov_num}, {"totalvfs", d.sriov_total}};
      a.push_back(o);
    }
    std::cout << a.dump(2) << "\n";
    return;
  }
  std::printf("%-13s %-10s %-7s %-15s %-7s %s\n", "ADDRESS", "ID", "CLASS", "DRIVER", "VFIO", "SR-IOV");
  for (auto& d : devs) {
    std::string sriov;
    if (d.sriov_total >= 0) sriov = std::to_string(d.sriov_num) + "/" + std::to_string(d.sriov_total) + " VFs";
    if (!d.physfn.empty()) sriov = "VF of " + d.physfn;
    std::printf("%-13s %-10s %-7s %-15s %-7s %s\n", d.name.c_str(),
                (strip0x(d.vendor) + ":" + strip0x(d.device)).c_str(), strip0x(d.cls).c_str(),
                d.driver.empty() ? "-" : d.driver.c_str(), d.vfio.empty() ? "-" : d.vfio.c_str(), sriov.c_str());
  }
}

// `lspci -tv`'s drawing, over the sysfs parent chain (so VFs show under their
// PF's bridge, as Linux's sysfs places them).
struct TreeNode {
  const DevInfo* dev = nullptr;
  std::string name;
  std::vector<TreeNode*> kids;
};

void print_it(std::string& line) {
  std::cout << line << "\n";
  for (char& ch : line) ch = (ch == '+' || ch == '|') ? '|' : ' ';
}

void show_dev(const TreeNode& n, std::string line, int bus);

void show_bus(const std::vector<TreeNode*>& kids, std::string line, int bus) {
  if (kids.empty()) {
    print_it(line);
  } else if (kids.size() == 1) {
    show_dev(*kids[0], line + "--", bus);
  } else {
    for (size_t i = 0; i < kids.size(); ++i) {
      std::string l = line + (i + 1 < kids.size() ? "+-" : "\\-");
      show_dev(*kids[i], l, bus);
      // print_it rewrote the shared prefix; recompute it as lspci does.
      for (char& ch : line) ch = (ch == '+' || ch == '|') ? '|' : ' ';
    }
  }
}

void show_dev(const TreeNode& n, std::string line, int bus) {
  auto b = Bdf::parse(n.name);
  std::string label = n.name;
  if (b) {
    char tmp[40];
    if (b->bus() == bus) std::snprintf(tmp, sizeof(tmp), "%02x.%x", b->dev(), b->fn());
    else std::snprintf(tmp, sizeof(tmp), "%02x:%02x.%x", b->bus(), b->dev(), b->fn());
    label = tmp;
  }
  line += label;
  const DevInfo* d = n.dev;
  if (d && d->secondary >= 0) {
    char tmp[40];
    if (d->secondary == d->subordinate) std::snprintf(tmp, sizeof(tmp), "-[%02x]--", d->secondary);
    else std::snprintf(tmp, sizeof(tmp), "-[%02x-%02x]--", d->secondary, d->subordinate);
    show_bus(n.kids, line + tmp, d->secondary);
    return;
  }
  if (d) {
    line += "  [" + strip0x(d->vendor) + ":" + strip0x(d->device) + "]";
    if (!d->driver.empty()) line += " " + d->driver;
  }
  print_it(line);
}

void cmd_tree(sysfs::ControlClient& c) {
  auto devs = collect(c);
  std::map<std::string, TreeNode> nodes;  // by path
  std::vector<std::string> roots;
  for (auto& d : devs) {
    TreeNode& n = nodes[d.path];
    n.dev = &d;
    n.name = d.name;
  }
  for (auto& d : devs) {
    std::string parent = d.path.substr(0, d.path.rfind('/'));
    if (!nodes.count(parent)) {
      TreeNode& r = nodes[parent];
      r.name = base_name(parent);
      if (std::find(roots.begin(), roots.end(), parent) == roots.end()) roots.push_back(parent);
    }
    nodes[parent].kids.push_back(&nodes[d.path]);
  }
  for (auto& [p, n] : nodes)
    std::sort(n.kids.begin(), n.kids.end(), [](TreeNode* a, TreeNode* b) { return a->name < b->name; });
  std::sort(roots.begin(), roots.end());
  for (size_t i = 0; i < roots.size(); ++i) {
    TreeNode& r = nodes[roots[i]];
    std::string dom = r.name.rfind("pci", 0) == 0 ? r.name.substr(3) : r.name;  // "0000:00"
    std::string line = roots.size() == 1 ? "-" : (i == 0 ? "-+-" : (i + 1 < roots.size() ? " +-" : " \\-"));
    line += "[" + dom + "]-";
    int bus = std::stoi(dom.substr(dom.find(':') + 1), nullptr, 16);
    show_bus(r.kids, line, bus);
  }
}

const char* region_name(uint32_t i) {
  static const char* names[] = {"BAR0", "BAR1", "BAR2", "BAR3", "BAR4", "BAR5", "ROM", "CONFIG", "VGA"};
  return i < 9 ? names[i] : "device-specific";
}
const char* irq_name(uint32_t i) {
  static const char* names[] = {"INTx", "MSI", "MSI-X", "ERR", "REQ"};
  return i < 5 ? names[i] : "?";
}

std::unique_ptr<client::Client> vfio_connect(const std::string& rundir, const Bdf& b, const std::string& token) {
  std::string path = rundir + "/vfio-user/" + b.str() + ".sock";
  client::ConnectOptions o;
  if (!token.empty()) o.vf_token = must(vfio::parse_uuid(token), "--vf-token " + token);
  auto c = client::Client::connect(path, o);
  if (!c) die("cannot open " + b.str() + " over vfio-user (" + path + ")", c.error());
  return std::move(*c);
}

// What a VMM sees of the device over vfio-user.
void cmd_info(client::Client& c, const Bdf& b, bool as_json) {
  vfio_device_info i = must(c.get_info(), "GET_INFO");
  json out{{"address", b.str()}, {"flags", json::array()}, {"regions", json::array()}, {"irqs", json::array()}};
  if (i.flags & VFIO_DEVICE_FLAGS_PCI) out["flags"].push_back("PCI");
  if (i.flags & VFIO_DEVICE_FLAGS_RESET) out["flags"].push_back("RESET");
  for (uint32_t r = 0; r < i.num_regions; ++r) {
    auto ri = c.get_region_info(r);
    if (!ri) {
      // VGA answers EINVAL on anything that is not a VGA device, as Linux.
      std::string why = r == VFIO_PCI_VGA_REGION_INDEX && ri.error().code == EINVAL ? "absent (not a VGA device)"
                                                                                  : errno_name(ri.error().code);
      out["regions"].push_back(json{{"index", r}, {"name", region_name(r)}, {"error", why}});
      continue;
    }
    json f = json::array();
    if (ri->info.flags & VFIO_REGION_INFO_FLAG_READ) f.push_back("READ");
    if (ri->info.flags & VFIO_REGION_INFO_FLAG_WRITE) f.push_back("WRITE");
    if (ri->info.flags & VFIO_REGION_INFO_FLAG_MMAP) f.push_back("MMAP");
    json caps = json::array();
    size_t base = sizeof(vfio_region_info), at = ri->info.cap_offset;
    while (at >= base && at + sizeof(vfio_info_cap_header) <= base + ri->caps.size()) {
      vfio_info_cap_header h;
      std::memcpy(&h, ri->caps.data() + (at - base), sizeof(h));
      caps.push_back(h.id == VFIO_REGION_INFO_CAP_SPARSE_MMAP   ? "SPARSE_MMAP"
                     : h.id == VFIO_REGION_INFO_CAP_TYPE        ? "TYPE"
                     : h.id == VFIO_REGION_INFO_CAP_MSIX_MAPPABLE ? "MSIX_MAPPABLE"
                                                                : "?");
      if (!h.next || h.next <= at) break;
      at = h.next;
    }
    out["regions"].push_back(json{{"index", r}, {"name", region_name(r)}, {"size", ri->info.size}, {"flags", f},
                                  {"caps", caps}});
  }
  for (uint32_t q = 0; q < i.num_irqs; ++q) {
    auto ii = c.get_irq_info(q);
    if (!ii) {
      out["irqs"].push_back(json{{"index", q}, {"name", irq_name(q)}, {"error", errno_name(ii.error().code)}});
      continue;
    }
    json f = json::array();
    if (ii->flags & VFIO_IRQ_INFO_EVENTFD) f.push_back("EVENTFD");
    if (ii->flags & VFIO_IRQ_INFO_MASKABLE) f.push_back("MASKABLE");
    if (ii->flags & VFIO_IRQ_INFO_AUTOMASKED) f.push_back("AUTOMASKED");
    if (ii->flags & VFIO_IRQ_INFO_NORESIZE) f.push_back("NORESIZE");
    out["irqs"].push_back(json{{"index", q}, {"name", irq_name(q)}, {"count", ii->count}, {"flags", f}});
  }
  // Features: MIGRATION's flags by GET (ENOTTY: the device does not
  // migrate); DMA logging and the VF token by PROBE of their SET.
  json feats = json::object();
  auto mig = c.device_feature(VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION, {}, 8);
  if (mig && mig->size() >= 8) {
    uint64_t mf;
    std::memcpy(&mf, mig->data(), 8);
    json m = json::array();
    if (mf & VFIO_MIGRATION_STOP_COPY) m.push_back("STOP_COPY");
    if (mf & VFIO_MIGRATION_P2P) m.push_back("P2P");
    if (mf & VFIO_MIGRATION_PRE_COPY) m.push_back("PRE_COPY");
    feats["migration"] = m;
    auto st = c.get_mig_state();
    if (st) feats["migration_state"] = vfio::to_string(*st);
  } else if (!mig && mig.error().code != ENOTTY) {
    die("DEVICE_FEATURE MIGRATION", mig.error());
  } else {
    feats["migration"] = nullptr;
  }
  auto probe = [&](uint32_t feature) {
    auto r = c.device_feature(VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_SET | feature);
    if (!r && r.error().code != ENOTTY) die("DEVICE_FEATURE PROBE", r.error());
    return static_cast<bool>(r);
  };
  feats["dma_logging"] = probe(VFIO_DEVICE_FEATURE_DMA_LOGGING_START);
  feats["vf_token"] = probe(VFIO_DEVICE_FEATURE_PCI_VF_TOKEN);
  out["features"] = feats;
  if (as_json) {
    std::cout << out.dump(2) << "\n";
    return;
  }
  std::printf("%s: flags %s\n", b.str().c_str(), out["flags"].dump().c_str());
  std::printf("regions:\n");
  for (auto& r : out["regions"]) {
    if (r.contains("error")) {
      std::printf("  %-2u %-8s %s\n", r["index"].get<unsigned>(), r["name"].get<std::string>().c_str(),
                  r["error"].get<std::string>().c_str());
      continue;
    }
    std::printf("  %-2u %-8s size %-10llu %s %s\n", r["index"].get<unsigned>(), r["name"].get<std::string>().c_str(),
                static_cast<unsigned long long>(r["size"].get<uint64_t>()), r["flags"].dump().c_str(),
                r["caps"].empty() ? "" : r["caps"].dump().c_str());
  }
  std::printf("irqs:\n");
  for (auto& q : out["irqs"]) {
    if (q.contains("error")) {
      std::printf("  %-2u %-6s %s\n", q["index"].get<unsigned>(), q["name"].get<std::string>().c_str(),
                  q["error"].get<std::string>().c_str());
      continue;
    }
    std::printf("  %-2u %-6s count %-4u %s\n", q["index"].get<unsigned>(), q["name"].get<std::string>().c_str(),
                q["count"].get<unsigned>(), q["flags"].dump().c_str());
  }
  std::printf("migration: %s\n", feats["migration"].is_null() ? "not supported" : feats["migration"].dump().c_str());
  if (feats.contains("migration_state"))
    std::printf("migration state: %s\n", feats["migration_state"].get<std::string>().c_str());
  std::printf("dma logging: %s\n", feats["dma_logging"].get<bool>() ? "supported" : "not supported");
  std::printf("vf token: %s\n", feats["vf_token"].get<bool>() ? "settable (SR-IOV PF)" : "no");
}

// The virtualized config space as `lspci -xxxx` prints it, so that
// `lspci -F FILE` can decode it.
void cmd_config(client::Client& c, const Bdf& b) {
  auto ri = must(c.get_region_info(VFIO_PCI_CONFIG_REGION_INDEX), "config region");
  std::vector<uint8_t> cfg(ri.info.size);
  size_t n = must(c.region_read(VFIO_PCI_CONFIG_REGION_INDEX, 0, cfg), "read config space");
  cfg.resize(n);
  if (b.domain()) std::printf("%s Device\n", b.str().c_str());
  else std::printf("%02x:%02x.%x Device\n", b.bus(), b.dev(), b.fn());
  for (size_t i = 0; i < cfg.size(); i += 16) {
    std::printf("%02zx:", i);
    for (size_t j = i; j < i + 16 && j < cfg.size(); ++j) std::printf(" %02x", cfg[j]);
    std::printf("\n");
  }
  std::printf("\n");
}

// ---- stats / top: the counters under vfio-dev/vfioN/stats/ ----------------------

struct DevStats {
  std::string address, vfio, state;
  std::map<std::string, uint64_t> num;       // one-value files
  std::map<std::string, uint64_t> requests;  // by command (non-zero only)
  std::map<std::string, uint64_t> errors;    // by errno name
  uint64_t total_requests = 0, total_errors = 0;
  double last_stop_ms = 0;
  bool served = false;  // has a vfio-user endpoint (requests file)
};

constexpr const char* kNumFiles[] = {"region_bytes_read", "region_bytes_written", "dma_ops", "dma_bytes",
                                     "dma_maps", "dma_map_bytes", "dma_map_bytes_peak",
                                     "interrupts", "interrupts_dropped", "migration_bytes"};

// "   count NAME" lines (requests, errors).
std::map<std::string, uint64_t> count_lines(const std::string& text, uint64_t& total) {
  std::map<std::string, uint64_t> out;
  std::istringstream in(text);
  uint64_t n;
  std::string name;
  while (in >> n >> name) {
    total += n;
    if (n) out[name] = n;
  }
  return out;
}

std::vector<DevStats> read_stats(sysfs::ControlClient& c, const std::string& only) {
  std::vector<DevStats> out;
  for (auto& d : collect(c)) {
    if (!only.empty() && d.name != only) continue;
    if (d.vfio.empty()) continue;
    std::string dir = "bus/pci/devices/" + d.name + "/vfio-dev/" + d.vfio + "/stats/";
    DevStats s;
    s.address = d.name;
    s.vfio = d.vfio;
    // A device unbound between the listing and here is simply left out.
    auto st = c.read(dir + "migration_state");
    if (!st) continue;
    s.state = trim(*st);
    for (const char* f : kNumFiles) s.num[f] = std::strtoull(c.read(dir + f).value_or("0").c_str(), nullptr, 10);
    s.last_stop_ms = std::strtod(c.read(dir + "last_stop_ms").value_or("0").c_str(), nullptr);
    if (auto r = c.read(dir + "requests")) {
      s.served = true;
      s.requests = count_lines(*r, s.total_requests);
      s.errors = count_lines(c.read(dir + "errors").value_or(""), s.total_errors);
    }
    out.push_back(std::move(s));
  }
  return out;
}

std::string human(double v) {
  const char* units[] = {"", "K", "M", "G", "T"};
  int u = 0;
  while (v >= 1000 && u < 4) v /= 1000, ++u;
  char b[32];
  std::snprintf(b, sizeof(b), u ? "%.1f%s" : "%.0f%s", v, units[u]);
  return b;
}

// Prometheus's text exposition format (version 0.0.4): one family per
// metric, its HELP and TYPE first; counters end in _total; label values
// escaped. Families with no samples are left out.
std::string prometheus_label(const std::string& v) {
  std::string o;
  for (char ch : v) {
    if (ch == '\\' || ch == '"') o += '\\';
    if (ch == '\n') {
      o += "\\n";
      continue;
    }
    o += ch;
  }
  return o;
}

std::string prometheus_text(const std::vector<DevStats>& all) {
  struct Family {
    const char* name;
    const char* type;
    const char* help;
    std::string samples;
  };
  std::vector<Family> fams;
  auto family = [&](const char* name, const char* type, const char* help) -> std::string& {
    for (auto& f : fams)
      if (!std::strcmp(f.name, name)) return f.samples;
    fams.push_back(Family{name, type, help, ""});
    return fams.back().samples;
  };
  // The files of vfio-dev/vfioN/stats/ and what they become.
  struct Num {
    const char* file;
    const char* metric;
    const char* type;
    const char* help;
  };
  static const Num kNums[] = {
      {"region_bytes_read", "uvfio_region_read_bytes_total", "counter", "Bytes the VFIO user read from the device's regions."},
      {"region_bytes_written", "uvfio_region_written_bytes_total", "counter", "Bytes the VFIO user wrote to the device's regions."},
      {"dma_ops", "uvfio_dma_operations_total", "counter", "DMA operations the device made through its IOMMU domain."},
      {"dma_bytes", "uvfio_dma_bytes_total", "counter", "Bytes the device moved by DMA."},
      {"dma_maps", "uvfio_dma_maps", "gauge", "DMA mappings the VFIO user holds now."},
      {"dma_map_bytes", "uvfio_dma_map_bytes", "gauge", "Bytes the VFIO user has mapped for DMA now."},
      {"dma_map_bytes_peak", "uvfio_dma_map_bytes_peak", "gauge", "The most bytes mapped for DMA at once."},
      {"interrupts", "uvfio_interrupts_total", "counter", "Interrupts signalled to the VFIO user's eventfds."},
      {"interrupts_dropped", "uvfio_interrupts_dropped_total", "counter", "Interrupts not signalled: the user's eventfd was full."},
      {"migration_bytes", "uvfio_migration_bytes_total", "counter", "Bytes of migration data read or written."},
  };
  static const char* kStates[] = {"ERROR", "STOP", "RUNNING", "STOP_COPY", "RESUMING", "RUNNING_P2P", "PRE_COPY",
                                  "PRE_COPY_P2P"};
  for (const DevStats& s : all) {
    std::string dev = "device=\"" + prometheus_label(s.address) + "\",vfio=\"" + prometheus_label(s.vfio) + "\"";
    for (const Num& n : kNums) {
      auto it = s.num.find(n.file);
      family(n.metric, n.type, n.help) += fmt::format("{}{{{}}} {}\n", n.metric, dev, it == s.num.end() ? 0 : it->second);
    }
    family("uvfio_last_stop_seconds", "gauge", "How long the device was last out of RUNNING/PRE_COPY (a migration's downtime).") +=
        fmt::format("uvfio_last_stop_seconds{{{}}} {}\n", dev, s.last_stop_ms / 1000.0);
    std::string& st = family("uvfio_migration_state", "gauge", "The device's VFIO migration state: 1 for the state it is in.");
    for (const char* name : kStates)
      st += fmt::format("uvfio_migration_state{{{},state=\"{}\"}} {}\n", dev, name, s.state == name ? 1 : 0);
    if (!s.served) continue;
    std::string& rq = family("uvfio_requests_total", "counter", "vfio-user requests served, by command.");
    for (auto& [cmd, n] : s.requests)
      rq += fmt::format("uvfio_requests_total{{{},command=\"{}\"}} {}\n", dev, prometheus_label(cmd), n);
    std::string& er = family("uvfio_request_errors_total", "counter", "vfio-user requests answered with an error, by errno.");
    for (auto& [e, n] : s.errors)
      er += fmt::format("uvfio_request_errors_total{{{},errno=\"{}\"}} {}\n", dev, prometheus_label(e), n);
  }
  std::string out;
  for (auto& f : fams) {
    if (f.samples.empty()) continue;
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", f.name, f.help, f.name, f.type);
    out += f.samples;
  }
  return out;
}

// Writes `text` to `path` as node_exporter's textfile collector wants it:
// a temporary file in the same directory, renamed over the old one, so a
// scrape never sees half a file.
void write_atomically(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp." + std::to_string(getpid());
  UniqueFd fd(open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd) die("stats --output " + tmp, Error(errno));
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = write(fd.get(), text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int e = errno;
      unlink(tmp.c_str());
      die("stats --output " + tmp, Error(e));
    }
    done += static_cast<size_t>(n);
  }
  if (fsync(fd.get()) != 0 || rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    unlink(tmp.c_str());
    die("stats --output " + path, Error(e));
  }
}

void cmd_stats(sysfs::ControlClient& c, const std::string& bdf, bool as_json, const std::string& format = "",
               const std::string& output = "") {
  std::string only;
  if (!bdf.empty()) {
    auto b = Bdf::parse(bdf);
    if (!b) die("stats: " + bdf, b.error());
    only = b->str();
  }
  auto all = read_stats(c, only);
  if (!only.empty() && all.empty()) die("stats " + only + " (not bound to a VFIO driver)", Error(ENODEV));
  if (format == "prometheus") {
    std::string text = prometheus_text(all);
    if (output.empty()) std::cout << text;
    else write_atomically(output, text);
    return;
  }
  if (format == "json") as_json = true;
  if (as_json) {
    json a = json::array();
    for (auto& s : all) {
      json o{{"address", s.address}, {"vfio", s.vfio}, {"migration_state", s.state}, {"last_stop_ms", s.last_stop_ms}};
      for (auto& [k, v] : s.num) o[k] = v;
      if (s.served) {
        o["requests"] = s.requests;
        o["errors"] = s.errors;
      }
      a.push_back(o);
    }
    std::cout << (only.empty() ? a : a[0]).dump(2) << "\n";
    return;
  }
  std::printf("%-13s %-7s %-10s %8s %8s %8s %8s %8s %8s %9s %8s %7s\n", "ADDRESS", "VFIO", "STATE", "REQS", "ERRS",
              "RD", "WR", "DMA", "DMABYTES", "IRQS", "MIGBYTES", "STOPms");
  for (auto& s : all) {
    std::printf("%-13s %-7s %-10s %8s %8s %8s %8s %8s %8s %9s %8s %7.2f\n", s.address.c_str(), s.vfio.c_str(),
                s.state.c_str(), s.served ? human(double(s.total_requests)).c_str() : "-",
                s.served ? human(double(s.total_errors)).c_str() : "-",
                human(double(s.num["region_bytes_read"])).c_str(), human(double(s.num["region_bytes_written"])).c_str(),
                human(double(s.num["dma_ops"])).c_str(), human(double(s.num["dma_bytes"])).c_str(),
                human(double(s.num["interrupts"])).c_str(), human(double(s.num["migration_bytes"])).c_str(),
                s.last_stop_ms);
  }
  if (only.empty()) return;
  const DevStats& s = all[0];
  if (!s.requests.empty()) {
    std::printf("\nrequests:\n");
    for (auto& [k, v] : s.requests) std::printf("  %-26s %llu\n", k.c_str(), static_cast<unsigned long long>(v));
  }
  if (!s.errors.empty()) {
    std::printf("\nerrors:\n");
    for (auto& [k, v] : s.errors) std::printf("  %-26s %llu\n", k.c_str(), static_cast<unsigned long long>(v));
  }
}

// Rates between two samples, busiest device first; `iterations` frames (0:
// until interrupted), `delay` seconds apart. On a terminal each frame
// replaces the last, as top does; otherwise frames follow one another (top -b).
void cmd_top(sysfs::ControlClient& c, int iterations, double delay) {
  bool tty = isatty(STDOUT_FILENO);
  auto prev = read_stats(c, "");
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; iterations <= 0 || i < iterations; ++i) {
    std::this_thread::sleep_for(std::chrono::duration<double>(delay));
    auto now = read_stats(c, "");
    auto t1 = std::chrono::steady_clock::now();
    double dt = std::chrono::duration<double>(t1 - t0).count();
    std::map<std::string, const DevStats*> before;
    for (auto& s : prev) before[s.address] = &s;
    struct Row {
      const DevStats* s;
      double reqs, errs, rd, wr, dma, dmab, irqs, mig;
    };
    std::vector<Row> rows;
    for (auto& s : now) {
      auto it = before.find(s.address);
      auto d = [&](uint64_t a, uint64_t b) { return a >= b ? double(a - b) / dt : 0.0; };
      Row r{&s, 0, 0, 0, 0, 0, 0, 0, 0};
      if (it != before.end()) {
        const DevStats& p = *it->second;
        r.reqs = d(s.total_requests, p.total_requests);
        r.errs = d(s.total_errors, p.total_errors);
        r.rd = d(s.num.at("region_bytes_read"), p.num.at("region_bytes_read"));
        r.wr = d(s.num.at("region_bytes_written"), p.num.at("region_bytes_written"));
        r.dma = d(s.num.at("dma_ops"), p.num.at("dma_ops"));
        r.dmab = d(s.num.at("dma_bytes"), p.num.at("dma_bytes"));
        r.irqs = d(s.num.at("interrupts"), p.num.at("interrupts"));
        r.mig = d(s.num.at("migration_bytes"), p.num.at("migration_bytes"));
      }
      rows.push_back(r);
    }
    std::stable_sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
      return a.reqs + a.dma + a.irqs > b.reqs + b.dma + b.irqs;
    });
    if (tty) std::printf("\033[H\033[2J");
    std::printf("uvfioctl top: %zu VFIO devices, per second over %.1f s\n", now.size(), dt);
    std::printf("%-13s %-7s %-10s %8s %7s %8s %8s %8s %8s %8s %8s\n", "ADDRESS", "VFIO", "STATE", "REQ/s", "ERR/s",
                "RD B/s", "WR B/s", "DMA/s", "DMA B/s", "IRQ/s", "MIG B/s");
    for (auto& r : rows) {
      std::printf("%-13s %-7s %-10s %8s %7s %8s %8s %8s %8s %8s %8s\n", r.s->address.c_str(), r.s->vfio.c_str(),
                  r.s->state.c_str(), human(r.reqs).c_str(), human(r.errs).c_str(), human(r.rd).c_str(),
                  human(r.wr).c_str(), human(r.dma).c_str(), human(r.dmab).c_str(), human(r.irqs).c_str(),
                  human(r.mig).c_str());
    }
    if (!tty) std::printf("\n");
    std::fflush(stdout);
    prev = std::move(now);
    t0 = t1;
  }
}

}  // namespace

// uvfioctl mount: the tree of a daemon that runs without FUSE (in a sandbox
// whose mounts never reach the host), mounted here from its control socket.
int cmd_mount(const std::string& rundir, const std::string& dir) {
  std::string sock = rundir + "/control.sock";
  // Started beside the daemon (systemd): give it 10 s to be listening.
  for (int i = 0;; ++i) {
    auto probe = sysfs::ControlClient::connect(sock);
    if (probe) break;
    if (i == 100) die("cannot reach uvfiod at " + sock, probe.error());
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);  // before FUSE's threads start: they inherit it
  signal(SIGPIPE, SIG_IGN);
  struct stat st;
  if (lstat(dir.c_str(), &st) < 0 && errno == ENOTCONN) umount2(dir.c_str(), MNT_DETACH | UMOUNT_NOFOLLOW);
  auto m = sysfs::FuseMount::mount(std::make_unique<sysfs::RemoteTree>(sock), dir, "uvfioctl");
  if (!m) die("mount " + dir, m.error());
  std::fprintf(stderr, "uvfioctl: %s mounted from %s\n", dir.c_str(), sock.c_str());
  int sig = 0;
  while (sigwait(&sigs, &sig) != 0 || sig == SIGHUP) {
  }
  m->reset();
  return 0;
}

// uvfioctl trace: the daemon's live, decoded stream of vfio-user requests
// (docs: uvfioctl(8)), one line each, until interrupted or the daemon goes.
int cmd_trace(const std::string& rundir, const std::vector<std::string>& bdfs, const std::vector<std::string>& commands,
              bool as_json) {
  std::vector<std::string> devices;
  for (auto& s : bdfs) {
    auto b = Bdf::parse(s);
    if (!b) die("trace: " + s, b.error());
    devices.push_back(b->str());
  }
  std::string sock = rundir + "/control.sock";
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (!fd || sock.size() >= sizeof(a.sun_path)) die("cannot reach uvfiod at " + sock, Error(ENAMETOOLONG));
  std::memcpy(a.sun_path, sock.c_str(), sock.size() + 1);
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) < 0) die("cannot reach uvfiod at " + sock, Error(errno));
  std::string req = json{{"op", "trace"}, {"path", ""}, {"devices", devices}, {"commands", commands}}.dump() + "\n";
  if (::send(fd.get(), req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size()))
    die("trace: send", Error(errno));
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // each line as it comes (pipes, files)
  std::string buf;
  char chunk[65536];
  bool first = true;
  for (;;) {
    ssize_t n = recv(fd.get(), chunk, sizeof(chunk), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    buf.append(chunk, static_cast<size_t>(n));
    size_t nl;
    while ((nl = buf.find('\n')) != std::string::npos) {
      std::string line = buf.substr(0, nl);
      buf.erase(0, nl + 1);
      json j = json::parse(line, nullptr, false);
      if (j.is_discarded()) continue;
      if (first) {
        first = false;
        if (!j.value("ok", false)) die("trace", Error(j.value("errno", EINVAL), "refused by uvfiod"));
        std::fprintf(stderr, "uvfioctl: tracing %s\n",
                     devices.empty() ? "every device" : fmt::format("{}", fmt::join(devices, " ")).c_str());
        continue;
      }
      if (j.value("dropped", false)) {
        std::fprintf(stderr, "uvfioctl: uvfiod dropped this tracer: it did not keep up\n");
        return 1;
      }
      if (as_json) {
        std::printf("%s\n", line.c_str());
        continue;
      }
      // HH:MM:SS.uuuuuu DEV #ID CMD field=value ... -> ok|ERRNO (N us)
      double t = j.value("t", 0.0);
      time_t secs = static_cast<time_t>(t);
      struct tm tmv;
      localtime_r(&secs, &tmv);
      std::string out = fmt::format("{:02}:{:02}:{:02}.{:06} {} #{} {}", tmv.tm_hour, tmv.tm_min, tmv.tm_sec,
                                    static_cast<int>((t - static_cast<double>(secs)) * 1e6), j.value("dev", "?"),
                                    j.value("id", 0), j.value("cmd", "?"));
      for (auto& [k, v] : j.items()) {
        if (k == "t" || k == "dev" || k == "id" || k == "cmd" || k == "errno" || k == "us") continue;
        out += " " + k + "=" + (v.is_string() ? v.get<std::string>() : v.dump());
      }
      auto e = j["errno"];
      out += fmt::format(" -> {} ({} us)", e.is_string() ? e.get<std::string>() : std::string("ok"), j.value("us", 0.0));
      std::printf("%s\n", out.c_str());
    }
  }
  if (first) die("trace: uvfiod closed the connection", Error(ECONNRESET));
  return 0;
}

int main(int argc, char** argv) {
  CLI::App app{"uvfioctl — administer uvfiod's devices through its sysfs tree"};
  app.require_subcommand(1);
  app.fallthrough();  // global options (--json, --rundir) may follow the subcommand
  std::string rundir = default_rundir();
  bool as_json = false;
  app.add_option("--rundir", rundir, "uvfiod's run directory (or $UVFIO_RUNDIR)")->capture_default_str();
  app.add_flag("--json", as_json, "JSON output where the output is a table");

  std::string path, value, bdf, driver_name;
  int num = 0;
  bool long_fmt = false;
  auto* ls = app.add_subcommand("ls", "List a directory of the tree");
  ls->add_option("path", path, "Path relative to the tree's root")->default_val("");
  ls->add_flag("-l", long_fmt, "Show kinds, modes and link targets");
  auto* cat = app.add_subcommand("cat", "Print an attribute");
  cat->add_option("path", path)->required();
  auto* rl = app.add_subcommand("readlink", "Print a link's target");
  rl->add_option("path", path)->required();
  auto* wr = app.add_subcommand("write", "Write VALUE (plus a newline, as echo) to an attribute");
  wr->add_option("path", path)->required();
  wr->add_option("value", value)->required();
  auto* tree = app.add_subcommand("tree", "Draw the PCI topology, like lspci -tv");
  auto* list = app.add_subcommand("list", "List PCI functions: address, ids, class, driver, SR-IOV");
  auto* bind = app.add_subcommand("bind", "Set driver_override to DRIVER, unbind the current driver, bind");
  bind->add_option("bdf", bdf)->required();
  bind->add_option("driver", driver_name)->required();
  auto* unbind = app.add_subcommand("unbind", "Unbind a PCI function from its driver");
  unbind->add_option("bdf", bdf)->required();
  std::string token;
  auto* info = app.add_subcommand("info", "Regions, IRQs and features of a VFIO device, as a vfio-user client sees them");
  info->add_option("bdf", bdf)->required();
  info->add_option("--vf-token", token, "VF token (UUID) for a VF whose PF is owned by vfio-pci");
  auto* config = app.add_subcommand("config", "Hex dump of the virtualized config space (lspci -xxxx format)");
  config->add_option("bdf", bdf)->required();
  config->add_option("--vf-token", token, "VF token (UUID) for a VF whose PF is owned by vfio-pci");
  auto* sriov = app.add_subcommand("sriov", "Set a PF's sriov_numvfs");
  sriov->add_option("pf", bdf)->required();
  sriov->add_option("numvfs", num)->required();
  auto* stats = app.add_subcommand("stats", "Counters of VFIO devices (vfio-dev/vfioN/stats/): requests, errors, "
                                            "region and DMA bytes, interrupts, migration");
  stats->add_option("bdf", bdf, "Only this device, with its requests and errors by name");
  std::string stats_format = "text", stats_output;
  stats->add_option("--format", stats_format, "text, json, or prometheus (the text exposition format)")
      ->check(CLI::IsMember({"text", "json", "prometheus"}))
      ->capture_default_str();
  stats->add_option("-o,--output", stats_output,
                    "With --format prometheus: write this file atomically (node_exporter's textfile collector)");
  int iterations = 0;
  double delay = 1.0;
  auto* top = app.add_subcommand("top", "Per-second rates of every VFIO device, busiest first, until interrupted");
  top->add_option("-n,--iterations", iterations, "Frames to show (0: until interrupted)")
      ->check(CLI::Range(0, 100000000))
      ->capture_default_str();
  top->add_option("-d,--delay", delay, "Seconds between frames")->check(CLI::Range(0.05, 3600.0))->capture_default_str();
  std::vector<std::string> trace_bdfs, trace_cmds;
  auto* trace = app.add_subcommand("trace", "A live, decoded stream of the vfio-user requests devices get, one line "
                                            "each (--json: one JSON object each), until interrupted");
  trace->add_option("bdf", trace_bdfs, "Only these devices (default: every one)");
  trace->add_option("-c,--command", trace_cmds, "Only these commands (REGION_READ, DMA_MAP, ...); repeatable");
  std::string mount_dir;
  auto* mount = app.add_subcommand(
      "mount", "Mount the daemon's attribute tree at DIR with FUSE, served through the control socket, until "
               "SIGTERM or SIGINT (for a daemon run with --no-fuse in a sandbox)");
  mount->add_option("dir", mount_dir, "Mount point")->required();
  CLI11_PARSE(app, argc, argv);

  if (*mount) return cmd_mount(rundir, mount_dir);
  if (*trace) return cmd_trace(rundir, trace_bdfs, trace_cmds, as_json);

  if (*info || *config) {
    auto b = Bdf::parse(bdf);
    if (!b) die(bdf, b.error());
    auto c = vfio_connect(rundir, *b, token);
    if (*info) cmd_info(*c, *b, as_json);
    else cmd_config(*c, *b);
    return 0;
  }

  std::string sock = rundir + "/control.sock";
  auto conn = sysfs::ControlClient::connect(sock);
  if (!conn) die("cannot reach uvfiod at " + sock, conn.error());
  sysfs::ControlClient& c = *conn;

  if (*ls) {
    auto entries = must(c.ls(path), "ls " + path);
    if (as_json) {
      json a = json::array();
      for (auto& [n, k] : entries) a.push_back(json{{"name", n}, {"kind", k}});
      std::cout << a.dump(2) << "\n";
    } else {
      for (auto& [n, k] : entries) {
        std::string full = path.empty() ? n : path + "/" + n;
        if (!long_fmt) {
          std::cout << n << "\n";
        } else if (k == "link") {
          std::cout << "l " << n << " -> " << c.readlink(full).value_or("?") << "\n";
        } else {
          std::cout << (k == "dir" ? "d " : "- ") << n << "\n";
        }
      }
    }
  } else if (*cat) {
    std::string data = must(c.read(path), "cat " + path);
    std::fwrite(data.data(), 1, data.size(), stdout);
  } else if (*rl) {
    std::cout << must(c.readlink(path), "readlink " + path) << "\n";
  } else if (*wr) {
    must(c.write(path, value + "\n"), "write " + path);
  } else if (*tree) {
    cmd_tree(c);
  } else if (*list) {
    cmd_list(c, as_json);
  } else if (*bind) {
    auto b = Bdf::parse(bdf);
    if (!b) die("bind: " + bdf, b.error());
    std::string dev = "bus/pci/devices/" + b->str();
    must(c.write(dev + "/driver_override", driver_name + "\n"), "bind: driver_override");
    auto cur = c.readlink(dev + "/driver");
    if (cur && base_name(*cur) != driver_name)
      must(c.write("bus/pci/drivers/" + base_name(*cur) + "/unbind", b->str() + "\n"), "bind: unbind " + base_name(*cur));
    if (!cur || base_name(*cur) != driver_name)
      must(c.write("bus/pci/drivers/" + driver_name + "/bind", b->str() + "\n"), "bind: " + driver_name);
  } else if (*unbind) {
    auto b = Bdf::parse(bdf);
    if (!b) die("unbind: " + bdf, b.error());
    std::string dev = "bus/pci/devices/" + b->str();
    auto cur = c.readlink(dev + "/driver");
    if (!cur) die("unbind " + b->str(), cur.error().code == ENOENT ? Error(ENODEV) : cur.error());
    must(c.write("bus/pci/drivers/" + base_name(*cur) + "/unbind", b->str() + "\n"), "unbind " + b->str());
  } else if (*stats) {
    if (!stats_output.empty() && stats_format != "prometheus")
      die("stats --output", Error(EINVAL, "--output goes with --format prometheus"));
    cmd_stats(c, bdf, as_json, stats_format, stats_output);
  } else if (*top) {
    cmd_top(c, iterations, delay);
  } else if (*sriov) {
    auto b = Bdf::parse(bdf);
    if (!b) die("sriov: " + bdf, b.error());
    must(c.write("bus/pci/devices/" + b->str() + "/sriov_numvfs", std::to_string(num) + "\n"), "sriov " + b->str());
  }
  return 0;
}
