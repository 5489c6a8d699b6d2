// SPDX-License-Identifier: BSD-3-Clause
// FUSE callbacks never let an exception reach libfuse (C code): the guard
// turns it into an errno for that one call.
#include <gtest/gtest.h>

#include <stdexcept>

#include "sysfs/fuse_fs.h"

namespace uvfio::sysfs {
namespace {

int throws_bad_alloc(const char*, int) { throw std::bad_alloc(); }
int throws_other(const char*, int) { throw std::runtime_error("boom"); }
int answers(const char*, int x) { return x; }

TEST(FuseGuard, ExceptionsBecomeErrnos) {
  EXPECT_EQ(fuse_guarded<throws_bad_alloc>("p", 1), -ENOMEM);
  EXPECT_EQ(fuse_guarded<throws_other>("p", 1), -EIO);
  EXPECT_EQ(fuse_guarded<answers>("p", 7), 7);
  static_assert(noexcept(fuse_guarded<answers>("p", 0)));
}

}  // namespace
}  // namespace uvfio::sysfs
