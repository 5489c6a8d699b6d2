// SPDX-License-Identifier: BSD-3-Clause
// Registers at every legal width, for every register of every model, driven
// by each model's own register table: a 64-bit register reads and writes as
// one 64-bit access, as two 32-bit halves and as bytes, and agrees with
// itself each way; an 8-byte access over two 32-bit registers is the two
// of them; RO registers ignore writes, WO registers read 0. And the block's
// decoding rule itself, on a fake.
#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <sstream>

#include "hw/bar.h"
#include "hw/endpoint.h"
#include "hw/fabric.h"
#include "hw/mlx5/pf.h"
#include "hw/mlx5/vf.h"
#include "hw/regs.h"

namespace uvfio::hw {
namespace {

// ---- The rule, on a fake handler ------------------------------------------------

struct FakeRegs : RegisterHandler {
  std::map<uint32_t, uint64_t> v;
  std::vector<std::pair<uint64_t, uint64_t>> writes;  // value, mask
  uint64_t reg_read(const RegDef& r) override { return v[r.offset]; }
  void reg_write(const RegDef& r, uint64_t value, uint64_t mask) override {
    writes.emplace_back(value, mask);
    v[r.offset] = merge(v[r.offset], value, mask);
  }
};

TEST(RegisterBlock, DecodesEveryWidthAndFallsBackToMemory) {
  RegisterBlock b({{0x8, 8, RegAccess::kRW, "Q"}, {0x10, 4, RegAccess::kRW, "A"}, {0x14, 4, RegAccess::kRO, "B"},
                   {0x18, 4, RegAccess::kWO, "W"}});
  auto mem = BarMemory::create(64, "t");
  ASSERT_TRUE(mem);
  FakeRegs h;
  h.v[0x8] = 0x1122334455667788ull;
  h.v[0x14] = 0xcafef00d;
  EXPECT_EQ(*b.read(0x8, 8, h, mem->get()), 0x1122334455667788ull);
  EXPECT_EQ(*b.read(0xc, 4, h, mem->get()), 0x11223344u);  // the high half
  EXPECT_EQ(*b.read(0xe, 2, h, mem->get()), 0x1122u);
  EXPECT_EQ(*b.read(0xf, 1, h, mem->get()), 0x11u);
  // The high half written alone: one masked write of the upper 4 bytes.
  ASSERT_TRUE(b.write(0xc, 4, 0xaabbccdd, h, mem->get()));
  ASSERT_EQ(h.writes.size(), 1u);
  EXPECT_EQ(h.writes[0].first, 0xaabbccdd00000000ull);
  EXPECT_EQ(h.writes[0].second, 0xffffffff00000000ull);
  EXPECT_EQ(h.v[0x8], 0xaabbccdd55667788ull);
  // One 8-byte access over A (RW) and B (RO): A written, B not.
  h.writes.clear();
  ASSERT_TRUE(b.write(0x10, 8, 0x0102030405060708ull, h, mem->get()));
  EXPECT_EQ(h.writes.size(), 1u);
  EXPECT_EQ(*b.read(0x10, 8, h, mem->get()), 0xcafef00d05060708ull);
  // WO reads 0; bytes outside registers are plain memory.
  h.v[0x18] = 0x99;
  EXPECT_EQ(*b.read(0x18, 4, h, mem->get()), 0u);
  ASSERT_TRUE(b.write(0x0, 8, 0xdeadbeef12345678ull, h, mem->get()));
  EXPECT_EQ(*b.read(0x4, 4, h, mem->get()), 0xdeadbeefu);
  // An access half in memory, half in a register.
  ASSERT_TRUE(b.write(0x1c, 8, 0xffffffff00000000ull, h, mem->get()));  // 0x1c..0x1f memory, 0x20.. memory
  EXPECT_FALSE(b.covers(0x1c, 4));
  EXPECT_TRUE(b.covers(0x16, 4));
  EXPECT_EQ(b.read(0x8, 3, h, mem->get()).error().code, EINVAL);
  EXPECT_EQ(b.find(0x13)->name, std::string("A"));
  EXPECT_EQ(b.find(0x1c), nullptr);
  // The edges of the lookups: the byte before a register, its first and
  // last, a gap, and past the last register.
  EXPECT_EQ(b.find(0x7), nullptr);
  EXPECT_EQ(b.find(0x8)->name, std::string("Q"));
  EXPECT_EQ(b.find(0xf)->name, std::string("Q"));
  EXPECT_EQ(b.find(0x1b)->name, std::string("W"));
  EXPECT_FALSE(b.covers(0x4, 4));
  EXPECT_TRUE(b.covers(0x4, 5));
  EXPECT_TRUE(b.covers(0xf, 1));
  EXPECT_EQ(b.plain_run(0x0, 100), 8u);
  EXPECT_EQ(b.plain_run(0x2, 3), 3u);
  EXPECT_EQ(b.plain_run(0x8, 100), 0u);
  EXPECT_EQ(b.plain_run(0x17, 100), 0u);
  EXPECT_EQ(b.plain_run(0x1c, 100), 100u);
  // Unaligned accesses over two registers, and over a register and memory.
  EXPECT_EQ(*b.read(0xe, 4, h, mem->get()), 0x0708aabbu);
  EXPECT_EQ(*b.read(0x16, 4, h, mem->get()), 0x0000cafeu);  // B's high half, then W (reads 0)
  ASSERT_TRUE(b.write(0x1c, 4, 0x44332211, h, mem->get()));
  EXPECT_EQ(*b.read(0x1a, 4, h, mem->get()), 0x22110000u);  // W, then memory
}

// ---- Every register of every model -------------------------------------------------

struct Model {
  std::string name;
  std::function<Function*(Fabric&)> make;
  const char* doc = "";  // docs/devices/<doc>.md, whose BAR0 register table is the model's contract
};
void PrintTo(const Model& m, std::ostream* os) { *os << m.name; }

Function* make_vf(Fabric& f) {
  auto p = mlx5::Pf::create(mlx5::PfParams{2, 0x100, 1, 1 << 20, 0});
  auto* pf = static_cast<mlx5::Pf*>(*f.attach(std::move(*p), Bdf(0, 7, 0, 0)));
  uint16_t pos = pf->find_ext_capability(PCI_EXT_CAP_ID_SRIOV);
  pf->config_write(pos + PCI_SRIOV_NUM_VF, 2, 1);
  pf->config_write(pos + PCI_SRIOV_CTRL, 2, PCI_SRIOV_CTRL_VFE | PCI_SRIOV_CTRL_MSE);
  return f.find(Bdf(0, 8, 0, 0));
}
Function* make_pf(Fabric& f) {
  auto p = mlx5::Pf::create(mlx5::PfParams{});
  return *f.attach(std::move(*p), Bdf(0, 7, 0, 0));
}
Function* make_endpoint(Fabric& f) {
  auto e = GenericEndpoint::create();
  return *f.attach(std::move(*e), Bdf(0, 3, 0, 0));
}

class RegisterWidths : public ::testing::TestWithParam<Model> {
 protected:
  void SetUp() override {
    fn = GetParam().make(fabric);
    ASSERT_NE(fn, nullptr);
    block = fn->registers(0);
    ASSERT_NE(block, nullptr) << "every model declares its BAR0 registers";
    ASSERT_FALSE(block->regs().empty());
  }
  uint64_t rd(uint64_t off, unsigned w) {
    auto r = fn->mmio_read(0, off, w);
    EXPECT_TRUE(r) << "read " << off << "/" << w;
    return r.value_or(~0ull);
  }
  void wr(uint64_t off, unsigned w, uint64_t v) { EXPECT_TRUE(fn->mmio_write(0, off, w, v)) << "write " << off; }
  // The register read piece by piece at width `w`.
  uint64_t rd_pieces(const RegDef& r, unsigned w) {
    uint64_t v = 0;
    for (unsigned at = 0; at < r.size; at += w) v |= rd(r.offset + at, w) << (8 * at);
    return v;
  }
  void wr_pieces(const RegDef& r, unsigned w, uint64_t v, bool high_first) {
    for (unsigned i = 0; i < r.size / w; ++i) {
      unsigned at = high_first ? r.size - w * (i + 1) : w * i;
      uint64_t part = (v >> (8 * at)) & (w == 8 ? ~0ull : ((1ull << (8 * w)) - 1));
      wr(r.offset + at, w, part);
    }
  }
  Fabric fabric;
  Function* fn = nullptr;
  const RegisterBlock* block = nullptr;
};

TEST_P(RegisterWidths, EveryReadWidthAgrees) {
  for (const RegDef& r : block->regs()) {
    SCOPED_TRACE(r.name);
    uint64_t full = rd(r.offset, r.size);
    if (r.access == RegAccess::kWO) {
      EXPECT_EQ(full, 0u);
    }
    for (unsigned w : {4u, 2u, 1u}) {
      if (w <= r.size) {
        EXPECT_EQ(rd_pieces(r, w), full) << "width " << w;
      }
    }
    if (r.size == 4 && r.offset % 8 == 0) {
      // One 8-byte access over this register and the next 4 bytes.
      uint64_t wide = rd(r.offset, 8);
      EXPECT_EQ(wide & 0xffffffffu, full);
      EXPECT_EQ(wide >> 32, rd(r.offset + 4, 4));
    }
  }
}

TEST_P(RegisterWidths, WritesAtEveryWidthReadBackAtEveryWidth) {
  const uint64_t pattern = 0xa5c3f00f5aa5c33cull;
  for (const RegDef& r : block->regs()) {
    if (r.access == RegAccess::kWO) continue;  // side effects only; reads are 0 (above)
    SCOPED_TRACE(r.name);
    uint64_t size_mask = r.size == 8 ? ~0ull : 0xffffffffull;
    uint64_t before = rd(r.offset, r.size);
    uint64_t want_mask = r.access == RegAccess::kRW ? (r.rw_mask & size_mask) : 0;
    struct Way {
      unsigned width;
      bool high_first;
    };
    for (Way way : {Way{r.size, false}, Way{4, false}, Way{4, true}, Way{2, false}, Way{1, true}}) {
      if (way.width > r.size) continue;  // NOLINT
      uint64_t p = (pattern >> way.width) & size_mask;  // a different value each way
      wr_pieces(r, way.width, p, way.high_first);
      uint64_t want = merge(before, p, want_mask);
      EXPECT_EQ(rd(r.offset, r.size), want) << "written " << way.width << " bytes at a time";
      if (r.size == 8) {
        EXPECT_EQ(rd(r.offset, 4), want & 0xffffffffu) << "low half";
        EXPECT_EQ(rd(r.offset + 4, 4), want >> 32) << "high half";
      }
      wr(r.offset, r.size, before);  // put it back
      EXPECT_EQ(rd(r.offset, r.size), before);
    }
  }
}

// The device document's register table and the model's register block are
// one contract: every row of the table (offset, name, RO/RW/WO, 64-bit or
// not) is a register of the model, and every register of the model is a
// row. A table that drifts from the code fails here, whichever moved.
TEST_P(RegisterWidths, TheDeviceDocumentsTableIsTheModelsRegisterBlock) {
  std::ifstream in(std::string(UVFIO_DOCS_DIR) + "/devices/" + GetParam().doc + ".md");
  ASSERT_TRUE(in) << GetParam().doc;
  std::regex row(R"(^\| (0x[0-9a-fA-F]+) \| ([A-Z0-9_]+) \| (RO|RW|WO)([^|]*)\|)");
  std::map<uint32_t, std::string> doc, model;
  std::string line;
  bool in_bar0 = false;
  while (std::getline(in, line)) {
    if (line.rfind("## ", 0) == 0) in_bar0 = line.find("Registers") != std::string::npos;
    std::smatch m;
    if (!in_bar0 || !std::regex_search(line, m, row)) continue;
    bool wide = m[4].str().find("64-bit") != std::string::npos;
    doc[static_cast<uint32_t>(std::stoul(m[1].str(), nullptr, 16))] =
        m[2].str() + " " + m[3].str() + (wide ? " 64-bit" : "");
  }
  ASSERT_FALSE(doc.empty()) << "no register table found in " << GetParam().doc << ".md";
  static const char* kAccess[] = {"RO", "RW", "WO"};
  for (const RegDef& r : block->regs()) {
    std::string a = r.access == RegAccess::kRO ? kAccess[0] : r.access == RegAccess::kRW ? kAccess[1] : kAccess[2];
    model[r.offset] = std::string(r.name) + " " + a + (r.size == 8 ? " 64-bit" : "");
  }
  EXPECT_EQ(doc, model);
}

INSTANTIATE_TEST_SUITE_P(AllModels, RegisterWidths,
                         ::testing::Values(Model{"mlx5_vf", make_vf, "mlx5-vf"}, Model{"mlx5_pf", make_pf, "mlx5-pf"},
                                           Model{"endpoint", make_endpoint, "endpoint"}),
                         [](const auto& i) { return i.param.name; });

}  // namespace
}  // namespace uvfio::hw
