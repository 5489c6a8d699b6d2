// SPDX-License-Identifier: BSD-3-Clause
#include "daemon/topology.h"

#include <gtest/gtest.h>

#include <fstream>

#include "daemon/system.h"

namespace uvfio::daemon {
namespace {

const char* kHeader = R"(
[[device]]
address = "0000:00:02.0"
model = "root-port"
secondary_bus = 1
subordinate_bus = 3
)";

TEST(TopologyTest, SeedIsTheArchitecturesTopology) {
  TopologySpec s = seed_topology();
  ASSERT_EQ(s.devices.size(), 5u);
  EXPECT_EQ(s.devices[3].address, Bdf(0, 7, 0, 0));
  EXPECT_EQ(s.devices[3].first_vf_offset, 0x100);
  EXPECT_EQ(s.devices[4].first_vf_offset, 0x1ff);
  EXPECT_EQ(s.devices[4].vf_driver_override, "mlx5_vfio_pci");
  EXPECT_EQ(s.devices[4].num_vfs, 1);
}

TEST(TopologyTest, GoodFileWithEverything) {
  std::string doc = std::string(kHeader) + R"(
[[device]]
address = "0000:01:00.0"
model = "mlx5-pf"
total_vfs = 4
first_vf_offset = 0x100
num_vfs = 2
device_memory = "256M"

[[device]]
address = "0000:00:03.0"
model = "endpoint"
vendor = 0x8086
device = 0x1234
class = 0x010802
driver_override = "none"
)";
  auto r = parse_topology(doc, "t.toml");
  ASSERT_TRUE(r) << r.error().message;
  ASSERT_EQ(r->devices.size(), 3u);
  EXPECT_EQ(r->devices[1].address, Bdf(0, 0, 3, 0));  // sorted by address
  EXPECT_EQ(r->devices[2].device_memory, 256u << 20);
  auto sys = System::create(*r);
  ASSERT_TRUE(sys) << sys.error().message;
  EXPECT_EQ(*(*sys)->core().tree().read("bus/pci/devices/0000:01:00.0/sriov_numvfs"), "2\n");
  EXPECT_EQ(*(*sys)->core().tree().read("bus/pci/devices/0000:00:03.0/driver_override"), "none\n");
  EXPECT_EQ((*sys)->pci().find(Bdf(0, 2, 0, 0))->resource(2).size(), 256u << 20);
}

struct BadCase {
  const char* name;
  const char* doc;        // appended after kHeader unless it starts with '!'
  const char* expect;     // substring of the message
};

class BadTopology : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadTopology, RefusedWithFileKeyAndReason) {
  const BadCase& c = GetParam();
  std::string doc = c.doc[0] == '!' ? std::string(c.doc + 1) : std::string(kHeader) + c.doc;
  auto r = parse_topology(doc, "bad.toml");
  ASSERT_FALSE(r) << c.name;
  EXPECT_NE(r.error().message.find("bad.toml: "), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find(c.expect), std::string::npos) << c.name << ": " << r.error().message;
}

INSTANTIATE_TEST_SUITE_P(
    All, BadTopology,
    ::testing::Values(
        BadCase{"syntax", "!this is = = not toml", "syntax error"},
        BadCase{"empty", "!", "no [[device]]"},
        BadCase{"top-level key", "!foo = 1", "foo: unknown top-level key"},
        BadCase{"device not array", "!device = 3", "expected an array of tables"},
        BadCase{"missing address", "[[device]]\nmodel = \"endpoint\"\n", "device[1].address: missing"},
        BadCase{"bad address", "[[device]]\naddress = \"07:00\"\nmodel = \"endpoint\"\n", "device[1].address: '07:00'"},
        BadCase{"address type", "[[device]]\naddress = 7\nmodel = \"endpoint\"\n", "device[1].address: expected a string"},
        BadCase{"other domain", "[[device]]\naddress = \"0001:01:00.0\"\nmodel = \"endpoint\"\n", "domain"},
        BadCase{"unknown model", "[[device]]\naddress = \"0000:01:00.0\"\nmodel = \"gpu\"\n", "device[1].model: unknown model 'gpu'"},
        BadCase{"unknown key", "[[device]]\naddress = \"0000:01:00.0\"\nmodel = \"endpoint\"\ncolour = 1\n", "device[1].colour: unknown key"},
        BadCase{"key of another model", "[[device]]\naddress = \"0000:01:00.0\"\nmodel = \"endpoint\"\nnum_vfs = 1\n", "device[1].num_vfs: unknown key"},
        BadCase{"duplicate", "[[device]]\naddress = \"0000:00:02.0\"\nmodel = \"endpoint\"\n", "used twice"},
        BadCase{"unreachable", "[[device]]\naddress = \"0000:09:00.0\"\nmodel = \"endpoint\"\n", "bus 09 is behind no bridge"},
        BadCase{"no function 0", "[[device]]\naddress = \"0000:01:00.1\"\nmodel = \"endpoint\"\n", "has no function 0"},
        BadCase{"bridge bus order", "[[device]]\naddress = \"0000:01:00.0\"\nmodel = \"switch-upstream\"\nsecondary_bus = 1\nsubordinate_bus = 2\n", "secondary_bus: 1 must be above"},
        BadCase{"bridge subordinate", "[[device]]\naddress = \"0000:00:03.0\"\nmodel = \"root-port\"\nsecondary_bus = 5\nsubordinate_bus = 4\n", "subordinate_bus: 4 is below"},
        BadCase{"bridge missing buses", "[[device]]\naddress = \"0000:00:03.0\"\nmodel = \"root-port\"\n", "secondary_bus: missing"},
        BadCase{"bridge outside parent", "[[device]]\naddress = \"0000:01:00.0\"\nmodel = \"switch-upstream\"\nsecondary_bus = 2\nsubordinate_bus = 7\n", "do not fit"},
        BadCase{"sibling overlap", "[[device]]\naddress = \"0000:00:03.0\"\nmodel = \"root-port\"\nsecondary_bus = 3\nsubordinate_bus = 4\n", "overlaps"},
        BadCase{"num_vfs > total", "[[device]]\naddress = \"0000:01:00.0\"\nmodel = \"mlx5-pf\"\ntotal_vfs = 2\nnum_vfs = 3\n", "device[1].num_vfs: 3 exceeds total_vfs (2)"},
        BadCase{"total_vfs range", "[[device]]\naddress = \"0000:01:00.0\"\nmodel = \"mlx5-pf\"\ntotal_vfs = 0\n", "total_vfs: 0 is out of range"},
        BadCase{"vf outside bridge", "[[device]]\naddress = \"0000:01:00.0\"\nmodel = \"mlx5-pf\"\nfirst_vf_offset = 0x300\n", "outside the buses 01-03"},
        BadCase{"vf collides", "[[device]]\naddress = \"0000:01:00.0\"\nmodel = \"mlx5-pf\"\ntotal_vfs = 2\n[[device]]\naddress = \"0000:01:00.1\"\nmodel = \"endpoint\"\n", "collides with a device"},
        BadCase{"device_memory not pow2", "[[device]]\naddress = \"0000:01:00.0\"\nmodel = \"mlx5-pf\"\nfirst_vf_offset = 0x100\ndevice_memory = \"3M\"\n", "device_memory: 3145728 is not a power of two"},
        BadCase{"device_memory unit", "[[device]]\naddress = \"0000:01:00.0\"\nmodel = \"mlx5-pf\"\nfirst_vf_offset = 0x100\ndevice_memory = \"16X\"\n", "device_memory: expected a size"},
        BadCase{"vfs of two PFs collide", "[[device]]\naddress = \"0000:01:00.0\"\nmodel = \"mlx5-pf\"\nfirst_vf_offset = 0x100\ntotal_vfs = 2\n[[device]]\naddress = \"0000:01:00.1\"\nmodel = \"mlx5-pf\"\nfirst_vf_offset = 0xff\ntotal_vfs = 2\n", "collides with a VF of 0000:01:00.0"},
        BadCase{"not a table", "!device = [1, 2]", "device[0]: expected a table"}),
    [](const auto& i) { return std::to_string(i.index); });

TEST(TopologyTest, MissingFile) {
  auto r = load_topology_file("/nonexistent/topo.toml");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("/nonexistent/topo.toml: cannot open"), std::string::npos);
}

TEST(TopologyTest, ParseSize) {
  EXPECT_EQ(*parse_size("16M"), 16u << 20);
  EXPECT_EQ(*parse_size("1G"), 1u << 30);
  EXPECT_EQ(*parse_size("4096"), 4096u);
  EXPECT_EQ(*parse_size("64KiB"), 64u << 10);
  EXPECT_FALSE(parse_size("M"));
  EXPECT_FALSE(parse_size("1T"));
  EXPECT_FALSE(parse_size("99999999999999999999G"));
}

// toml11 parses nesting by recursion; a hostile file of brackets must get an
// error, not overflow the daemon's stack (found by topology_fuzz).
TEST(TopologyTest, DeepNestingRefusedBeforeParsing) {
  std::string doc = "a = " + std::string(100000, '[');
  auto r = parse_topology(doc, "deep.toml");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("deep.toml: arrays or inline tables nested more than 64 deep"), std::string::npos)
      << r.error().message;
  // Brackets in strings and comments are not nesting.
  std::string ok = std::string(kHeader) + "# " + std::string(200, '[') + "\n[[device]]\naddress = \"0000:01:00.0\"\n" +
                   "model = \"endpoint\"\n# \"" + std::string(200, '{') + "\n";
  auto r2 = parse_topology(ok, "ok.toml");
  EXPECT_TRUE(r2) << (r2 ? "" : r2.error().message);
  auto r3 = parse_topology(std::string(kHeader) + "[[device]]\naddress = \"0000:01:00.0\"\nmodel = \"endpoint\"\n" +
                               "unknown = '''" + std::string(200, '[') + "'''\n",
                           "str.toml");
  ASSERT_FALSE(r3);  // refused for the key, not for the brackets in the string
  EXPECT_NE(r3.error().message.find("unknown: unknown key"), std::string::npos) << r3.error().message;
  // Nesting just within the limit is the parser's to judge.
  auto r4 = parse_topology("a = " + std::string(64, '[') + std::string(64, ']'), "edge.toml");
  ASSERT_FALSE(r4);
  EXPECT_EQ(r4.error().message.find("nested more than"), std::string::npos) << r4.error().message;
}

}  // namespace
}  // namespace uvfio::daemon
