// SPDX-License-Identifier: BSD-3-Clause
#include "base/bdf.h"

#include <gtest/gtest.h>

namespace uvfio {
namespace {

TEST(BdfTest, PrintsLikePciName) {
  EXPECT_EQ(Bdf(0, 8, 0, 0).str(), "0000:08:00.0");
  EXPECT_EQ(Bdf(0x10, 0xab, 0x1f, 7).str(), "0010:ab:1f.7");
}

TEST(BdfTest, IdIsBusDevFnAsTheSeedDecodes) {
  EXPECT_EQ(Bdf(0, 8, 0, 0).id(), 2048);
  EXPECT_EQ(Bdf(0, 9, 0, 0).id(), 2304);
  EXPECT_EQ(Bdf(0, 7, 0, 1).id(), 0x0701);
  EXPECT_EQ(Bdf::from_rid(0, 0x0900), Bdf(0, 9, 0, 0));
}

TEST(BdfTest, ParsesBothForms) {
  EXPECT_EQ(*Bdf::parse("0000:07:00.1"), Bdf(0, 7, 0, 1));
  EXPECT_EQ(*Bdf::parse("07:00.1"), Bdf(0, 7, 0, 1));
  EXPECT_EQ(*Bdf::parse("0000:08:00.0\n"), Bdf(0, 8, 0, 0));  // sysfs_streq
  EXPECT_EQ(*Bdf::parse("ABCD:FF:1F.7"), Bdf(0xabcd, 0xff, 0x1f, 7));
}

TEST(BdfTest, RejectsGarbage) {
  for (const char* s : {"", "0000", "0000:07", "0000:07:00", "0000:07:00.8", "0000:07:20.0", "00000:07:00.0",
                        "0000:107:00.0", "0000:07:00.0x", "zz:00.0", "0000:07:00.", ":07:00.0", "07.00:0",
                        "0000:07:00.0\n\n"}) {
    auto r = Bdf::parse(s);
    EXPECT_FALSE(r) << "'" << s << "'";
    if (!r) {
      EXPECT_EQ(r.error().code, EINVAL);
    }
  }
}

}  // namespace
}  // namespace uvfio
