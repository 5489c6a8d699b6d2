// SPDX-License-Identifier: BSD-3-Clause
#include "base/result.h"

#include <gtest/gtest.h>

#include <memory>

namespace uvfio {
namespace {

Result<int> half(int v) {
  if (v % 2) return Error(EINVAL, "odd");
  return v / 2;
}

Result<int> quarter(int v) {
  int h = TRY(half(v));
  return TRY(half(h));
}

Result<void> check_even(int v) {
  TRY(half(v));
  return ok();
}

TEST(ResultTest, ValueAndError) {
  auto r = half(4);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, 2);
  auto e = half(3);
  ASSERT_FALSE(e);
  EXPECT_EQ(e.error().code, EINVAL);
  EXPECT_STREQ(e.error().context, "odd");
  EXPECT_EQ(to_string(e.error()), "odd: Invalid argument");
}

TEST(ResultTest, TryPropagatesTheFirstError) {
  EXPECT_EQ(*quarter(8), 2);
  EXPECT_EQ(quarter(6).error().code, EINVAL);  // 6/2 = 3 is odd
  EXPECT_TRUE(check_even(2));
  EXPECT_FALSE(check_even(1));
}

TEST(ResultTest, MoveOnlyValues) {
  Result<std::unique_ptr<int>> r = std::make_unique<int>(7);
  std::unique_ptr<int> p = std::move(r).value();
  EXPECT_EQ(*p, 7);
}

TEST(ResultTest, ProbeDeferHasAName) { EXPECT_EQ(errno_name(kEProbeDefer), "Probe deferred"); }

}  // namespace
}  // namespace uvfio
