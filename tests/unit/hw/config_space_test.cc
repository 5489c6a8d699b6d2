// SPDX-License-Identifier: BSD-3-Clause
#include "hw/config_space.h"

#include <gtest/gtest.h>

namespace uvfio::hw {
namespace {

struct WriteCase {
  const char* name;
  uint32_t initial, rw, rw1c, written, expect;
};

class ConfigWriteSemantics : public ::testing::TestWithParam<WriteCase> {};

TEST_P(ConfigWriteSemantics, PerBit) {
  const WriteCase& c = GetParam();
  ConfigSpace cs;
  cs.raw_write(0x40, 4, c.initial);
  cs.set_rw(0x40, 4, c.rw);
  cs.set_rw1c(0x40, 4, c.rw1c);
  cs.write(0x40, 4, c.written);
  EXPECT_EQ(cs.read(0x40, 4), c.expect) << c.name;
}

INSTANTIATE_TEST_SUITE_P(
    All, ConfigWriteSemantics,
    ::testing::Values(WriteCase{"read-only ignores writes", 0x12345678, 0, 0, 0xffffffff, 0x12345678},
                      WriteCase{"rw takes the value", 0x00000000, 0xffffffff, 0, 0xdeadbeef, 0xdeadbeef},
                      WriteCase{"mixed ro/rw", 0xaaaa5555, 0x0000ffff, 0, 0x12341234, 0xaaaa1234},
                      WriteCase{"rw1c clears written ones", 0x0000ff00, 0, 0x0000ff00, 0x00000f00, 0x0000f000},
                      WriteCase{"rw1c ignores zeros", 0x0000ff00, 0, 0x0000ff00, 0x00000000, 0x0000ff00},
                      WriteCase{"rw1c and rw side by side", 0x8000000f, 0x0000000f, 0x80000000, 0x80000003,
                                0x00000003}),
    [](const auto& info) { return std::to_string(info.index); });

TEST(ConfigSpaceTest, NarrowAccessesTouchOnlyTheirBytes) {
  ConfigSpace cs;
  cs.set_rw(0x10, 4, 0xffffffff);
  cs.write(0x10, 4, 0x11223344);
  cs.write(0x11, 1, 0xaa);
  EXPECT_EQ(cs.read(0x10, 4), 0x1122aa44u);
  cs.write(0x12, 2, 0xbbcc);
  EXPECT_EQ(cs.read(0x10, 4), 0xbbccaa44u);
  EXPECT_EQ(cs.read(0x13, 1), 0xbbu);
}

TEST(ConfigSpaceTest, OutOfRangeReadsAllOnesAndDropsWrites) {
  ConfigSpace legacy(kConfigSizeLegacy);
  EXPECT_EQ(legacy.read(0x100, 4), 0xffffffffu);
  EXPECT_EQ(legacy.read(0xff, 2), 0xffffu);  // straddles the end
  legacy.write(0xfe, 4, 0);
  EXPECT_EQ(legacy.read(0xfe, 2), 0u);
  ConfigSpace cs;
  EXPECT_EQ(cs.read(0xffe, 4), 0xffffffffu);
  EXPECT_EQ(cs.read(0, 3), 0xffffffu);  // bad width
}

TEST(ConfigSpaceTest, TypedRegisters) {
  ConfigSpace cs;
  cs.set(kVendorId, uint16_t{0x15b3});
  cs.set(kDeviceId, uint16_t{0x101d});
  static_assert(std::is_same_v<decltype(cs.get(kCommand)), uint16_t>);
  static_assert(std::is_same_v<decltype(cs.get(kHeaderType)), uint8_t>);
  EXPECT_EQ(cs.read(0, 4), 0x101d15b3u);
}

}  // namespace
}  // namespace uvfio::hw
