// SPDX-License-Identifier: BSD-3-Clause
#include "driver/attr_tree.h"

#include <gtest/gtest.h>

namespace uvfio::driver {
namespace {

struct RelCase {
  const char* from;
  const char* to;
  const char* expect;
};

class RelativePath : public ::testing::TestWithParam<RelCase> {};

TEST_P(RelativePath, AsSysfsWritesThem) {
  EXPECT_EQ(Tree::relative_path(GetParam().from, GetParam().to), GetParam().expect);
}

INSTANTIATE_TEST_SUITE_P(
    Linux, RelativePath,
    ::testing::Values(
        RelCase{"bus/auxiliary/devices", "devices/pci0000:00/0000:00:02.0/0000:07:00.0/mlx5_core.vfio_pci.2048",
                "../../../devices/pci0000:00/0000:00:02.0/0000:07:00.0/mlx5_core.vfio_pci.2048"},
        RelCase{"devices/pci0000:00/0000:00:02.0/0000:05:00.0/0000:06:00.0/0000:07:00.0",
                "devices/pci0000:00/0000:00:02.0/0000:05:00.0/0000:06:00.0/0000:08:00.0", "../0000:08:00.0"},
        RelCase{"devices/pci0000:00/0000:00:02.0", "bus/pci/drivers/pcieport", "../../../bus/pci/drivers/pcieport"},
        RelCase{"a/b", "a/b/c", "c"}, RelCase{"", "devices/x", "devices/x"}),
    [](const auto& i) { return std::to_string(i.index); });

struct TreeFixture : ::testing::Test {
  CoreMutex mu;
  Tree t{mu};
  std::string stored;
  void SetUp() override {
    Dir* a = *t.mkdir(t.root(), "a");
    Dir* b = *t.mkdir(a, "b");
    ASSERT_TRUE(t.add_file(b, Attribute{"ro", 0444, [] { return Result<std::string>("x\n"); }, nullptr}));
    ASSERT_TRUE(t.add_file(b, Attribute{"wo", 0200, nullptr, [this](std::string_view v) {
                                          stored = std::string(v);
                                          return ok();
                                        }}));
    ASSERT_TRUE(t.add_file(b, Attribute{"fails", 0644, [] { return Result<std::string>(Error(EIO)); },
                                        [](std::string_view) { return Result<void>(Error(ENODEV)); }}));
    ASSERT_TRUE(t.add_link(t.root(), "la", "a"));
    ASSERT_TRUE(t.add_link(b, "up", "a"));
    ASSERT_TRUE(t.add_link(t.root(), "loop1", "loop2"));
    ASSERT_TRUE(t.add_link(t.root(), "loop2", "loop1"));
    ASSERT_TRUE(t.add_link(t.root(), "dangling", "nowhere/x"));
  }
};

TEST_F(TreeFixture, ReadsThroughLinks) {
  EXPECT_EQ(*t.read("a/b/ro"), "x\n");
  EXPECT_EQ(*t.read("la/b/ro"), "x\n");
  EXPECT_EQ(*t.read("/la/b/up/b/ro"), "x\n");
  EXPECT_EQ(*t.read("a/b/../b/./ro"), "x\n");
  EXPECT_EQ(*t.readlink("a/b/up"), "..");
  EXPECT_EQ(t.stat("la")->kind, NodeKind::kLink);
  EXPECT_EQ(t.stat("la")->size, 0u);  // as sysfs (kernfs) links
  EXPECT_EQ(t.stat("la/b")->kind, NodeKind::kDir);
  EXPECT_EQ(t.list("la")->size(), 1u);
}

TEST_F(TreeFixture, Errors) {
  EXPECT_EQ(t.read("a/b/nope").error().code, ENOENT);
  EXPECT_EQ(t.read("a/b").error().code, EISDIR);
  EXPECT_EQ(t.read("a/b/wo").error().code, EACCES);
  EXPECT_EQ(t.write("a/b/ro", "1").error().code, EACCES);
  EXPECT_EQ(t.read("a/b/fails").error().code, EIO);
  EXPECT_EQ(t.write("a/b/fails", "1").error().code, ENODEV);
  EXPECT_EQ(t.read("a/b/ro/x").error().code, ENOTDIR);
  EXPECT_EQ(t.read("loop1").error().code, ELOOP);
  EXPECT_EQ(t.read("dangling").error().code, ENOENT);
  EXPECT_EQ(t.readlink("a").error().code, EINVAL);
  EXPECT_EQ(t.list("a/b/ro").error().code, ENOTDIR);
  EXPECT_EQ(t.mkdir(t.root(), "a").error().code, EEXIST);
  EXPECT_EQ(t.mkdir(t.root(), "x/y").error().code, EINVAL);
  EXPECT_TRUE(t.write("a/b/wo", "hello\n"));
  EXPECT_EQ(stored, "hello\n");
}

TEST_F(TreeFixture, RemoveIsRecursive) {
  t.remove(t.root(), "a");
  EXPECT_EQ(t.stat("a/b/ro").error().code, ENOENT);
  EXPECT_EQ(t.read("la/b/ro").error().code, ENOENT);  // the link dangles, nothing crashes
}

}  // namespace
}  // namespace uvfio::driver
