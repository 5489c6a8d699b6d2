// SPDX-License-Identifier: BSD-3-Clause
// Plugins loaded by uvfiod (sdk/plugin.h): a good plugin's model placed by
// the topology, bound to the plugin's VFIO driver and served like a
// built-in device; and every way a plugin is refused, each a clear message
// naming the plugin with uvfiod not starting at all.
#include <gtest/gtest.h>

#include <fstream>

#include "e2e/harness.h"
#include "protocol/raw.h"

namespace uvfio::e2e {
namespace {

std::string plugin(const std::string& c) { return std::string(TEST_PLUGIN_DIR) + "/test_plugin_" + c + ".so"; }

// A topology with the given plugins and devices, in a file of its own.
struct Topology {
  std::string dir, path;
  Topology(const std::vector<std::string>& plugins, const std::string& devices) {
    dir = make_tmpdir("plugin");
    path = dir + "/topology.toml";
    std::ofstream f(path);
    for (auto& p : plugins) f << "[[plugin]]\npath = \"" << p << "\"\n\n";
    f << devices;
  }
  ~Topology() { sh("rm -rf " + dir); }
};

const char* kTwoTestDevs = R"(
[[device]]
address = "0000:00:03.0"
model = "testdev"

[[device]]
address = "0000:00:04.0"
model = "testdev"
device = 0x10f1

[[device]]
address = "0000:00:05.0"
model = "endpoint"
driver_override = "vfio-pci"
)";

TEST(Plugin, AModelAndItsVfioDriverServeLikeBuiltIns) {
  Topology t({plugin("good")}, kTwoTestDevs);
  Daemon d({"--config", t.path, "--no-fuse"}, "plugin");
  ASSERT_TRUE(d.wait_ready()) << d.log();
  EXPECT_NE(d.log().find("loaded plugin test_plugin (" + plugin("good") + ")"), std::string::npos) << d.log();
  auto r = sh(d.ctl("list"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("0000:00:03.0  1af4:10f0  00ff00  testdev_vfio"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("0000:00:04.0  1af4:10f1  00ff00  testdev_vfio"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("0000:00:05.0  1b36:0005  00ff00  vfio-pci"), std::string::npos) << r.out;
  EXPECT_EQ(sh(d.ctl("cat bus/pci/drivers/testdev_vfio/0000:00:04.0/device")).out, "0x10f1\n");
  // A vfio-user client sees the plugin's function through vfio-pci-core:
  // its IDs in config space, its BAR.
  Raw c(d.rundir() + "/vfio-user/0000:00:04.0.sock");
  ASSERT_TRUE(c.connected());
  c.version();
  Message m;
  ASSERT_EQ(c.call(kRegionRead, region_access(7, 0, 4), {}, &m), 0);
  ASSERT_EQ(m.payload.size(), sizeof(RegionAccessMsg) + 4);
  uint32_t id;
  std::memcpy(&id, m.payload.data() + sizeof(RegionAccessMsg), 4);
  EXPECT_EQ(id, 0x10f11af4u);
  uint32_t v = 0x5a5aa5a5;
  std::vector<uint8_t> data(4);
  std::memcpy(data.data(), &v, 4);
  ASSERT_EQ(c.call(kRegionWrite, region_access(0, 0x40, 4, data)), 0);
  ASSERT_EQ(c.call(kRegionRead, region_access(0, 0x40, 4), {}, &m), 0);
  std::memcpy(&id, m.payload.data() + sizeof(RegionAccessMsg), 4);
  EXPECT_EQ(id, v);
  // Counted like any device.
  r = sh(d.ctl("stats 0000:00:04.0"));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("REGION_READ"), std::string::npos) << r.out;
  EXPECT_EQ(d.stop(), 0) << d.log();
}

struct Refusal {
  std::string plugins;  // comma-separated cases
  std::string devices;
  std::string expect;   // in uvfiod's error output
};

class PluginRefused : public ::testing::TestWithParam<Refusal> {};

TEST_P(PluginRefused, UvfiodDoesNotStartAndSaysWhy) {
  const Refusal& p = GetParam();
  std::vector<std::string> plugins;
  for (size_t at = 0; at < p.plugins.size();) {
    size_t comma = p.plugins.find(',', at);
    if (comma == std::string::npos) comma = p.plugins.size();
    std::string c = p.plugins.substr(at, comma - at);
    plugins.push_back(c[0] == '/' ? c : plugin(c));
    at = comma + 1;
  }
  Topology t(plugins, p.devices.empty() ? kTwoTestDevs : p.devices);
  Daemon d({"--config", t.path, "--no-fuse"}, "refused");
  EXPECT_FALSE(d.wait_ready(10000));
  EXPECT_NE(d.wait_exit(), 0);
  std::string log = d.log();
  EXPECT_NE(log.find(p.expect), std::string::npos) << log;
  // Nothing half-configured: no socket of any device was left listening.
  EXPECT_NE(sh("ls " + d.rundir() + "/vfio-user/*.sock").status, 0);
}

const char* kBroken = R"(
[[device]]
address = "0000:00:03.0"
model = "brokendev"
lanes = 4
)";
const char* kBadKey = R"(
[[device]]
address = "0000:00:03.0"
model = "testdev"
colour = "blue"
)";
const char* kBadValue = R"(
[[device]]
address = "0000:00:03.0"
model = "testdev"
device = "ten"
)";
const char* kUnknownModel = R"(
[[device]]
address = "0000:00:03.0"
model = "tsetdev"
)";

INSTANTIATE_TEST_SUITE_P(
    Cases, PluginRefused,
    ::testing::Values(
        Refusal{"/nonexistent/plugin.so", "", "plugin /nonexistent/plugin.so: cannot load"},
        Refusal{"bad_abi", "", "built for plugin ABI 1001, this uvfiod has ABI 1"},
        Refusal{"bad_version", "", "built against uvfio 0.0.0-other"},
        Refusal{"no_descriptor", "", "not a uvfio plugin (no uvfio_plugin_v1 symbol"},
        Refusal{"missing_symbol", "", "undefined symbol"},
        Refusal{"model_collides", "", "plugin test_plugin (" + plugin("model_collides") +
                                          "): init failed: File exists: model 'endpoint' is one of uvfiod's own"},
        Refusal{"driver_collides", "", "init failed: File exists: driver 'vfio-pci' is one of uvfiod's own"},
        Refusal{"good,good", "", "model 'testdev' is already provided by plugin test_plugin"},
        Refusal{"init_fails", "", "init failed: No such device: the test plugin refuses to start"},
        Refusal{"init_throws", "", "init threw: the test plugin threw"},
        Refusal{"factory_fails", kBroken,
                "0000:00:03.0 (brokendev from plugin test_plugin (" + plugin("factory_fails") +
                    ")): cannot build: the test model cannot be built: Cannot allocate memory"},
        Refusal{"good", kBadKey, "unknown key 'colour' for model testdev"},
        Refusal{"good", kBadValue, "cannot build: expected an integer: Invalid argument (key device)"},
        Refusal{"good", kUnknownModel, "unknown model 'tsetdev' (built-in: root-port"}),
    [](const ::testing::TestParamInfo<Refusal>& i) { return "case" + std::to_string(i.index); });

// Without a [[plugin]], an unknown model is refused while parsing, as ever.
TEST(Plugin, AnUnknownModelWithoutPluginsIsRefusedWhileParsing) {
  Topology t({}, kUnknownModel);
  Daemon d({"--config", t.path, "--no-fuse"}, "noplugin");
  EXPECT_NE(d.wait_exit(), 0);
  EXPECT_NE(d.log().find("device[0].model: unknown model 'tsetdev'"), std::string::npos) << d.log();
}

}  // namespace
}  // namespace uvfio::e2e
