// SPDX-License-Identifier: BSD-3-Clause
// The driver core against a fake bus: binding rules, errno semantics of the
// sysfs writes, deferred probe, lifetimes.
#include "driver/core.h"

#include <gtest/gtest.h>

#include <map>

namespace uvfio::driver {
namespace {

std::vector<std::string> g_events;  // what happened, in order

class FakeDriver;

class FakeBinding : public Binding {
 public:
  FakeBinding(std::string tag) : tag_(std::move(tag)) { g_events.push_back("probe " + tag_); }
  ~FakeBinding() override { g_events.push_back("remove " + tag_); }

 private:
  std::string tag_;
};

class FakeDriver : public Driver {
 public:
  FakeDriver(std::string name, std::vector<std::string> ids) : Driver(std::move(name)), ids(std::move(ids)) {}
  std::vector<std::string> ids;           // device names matched
  std::map<std::string, int> probe_error;  // device name -> errno to fail with
  std::function<Result<void>(Device&)> on_probe;
};

class FakeBus : public Bus {
 public:
  FakeBus() : Bus("fake") {}
  std::optional<int> match(Device& d, Driver& drv) override {
    if (!d.driver_override().empty()) {
      if (d.driver_override() == drv.name()) return 0;
      return std::nullopt;
    }
    auto& f = static_cast<FakeDriver&>(drv);
    for (size_t i = 0; i < f.ids.size(); ++i)
      if (f.ids[i] == d.name() || f.ids[i] == "*") return f.ids[i] == "*" ? 0 : 1;
    return std::nullopt;
  }
  Result<std::unique_ptr<Binding>> probe(Device& d, Driver& drv) override {
    auto& f = static_cast<FakeDriver&>(drv);
    auto it = f.probe_error.find(d.name());
    if (it != f.probe_error.end()) return Error(it->second, "fake probe failure");
    if (f.on_probe) TRY(f.on_probe(d));
    return std::unique_ptr<Binding>(std::make_unique<FakeBinding>(drv.name() + ":" + d.name()));
  }
};

struct CoreFixture : ::testing::Test {
  DriverCore core;
  FakeBus bus;
  std::vector<std::unique_ptr<Device>> devs;
  void SetUp() override {
    g_events.clear();
    ASSERT_TRUE(core.register_bus(bus));
  }
  void TearDown() override {
    for (auto it = devs.rbegin(); it != devs.rend(); ++it) core.device_del(**it);
    core.unregister_bus(bus);
  }
  Device& add(const std::string& name, Device* parent = nullptr) {
    devs.push_back(std::make_unique<Device>(name, parent));
    EXPECT_TRUE(core.device_add(*devs.back(), &bus));
    return *devs.back();
  }
  Result<void> w(const std::string& path, const std::string& v) { return core.tree().write(path, v); }
};

TEST_F(CoreFixture, AutoprobeOnDeviceAddAndOnDriverRegister) {
  FakeDriver a("a", {"d1"});
  ASSERT_TRUE(core.register_driver(bus, a));
  Device& d1 = add("d1");
  EXPECT_EQ(d1.driver(), &a);
  Device& d2 = add("d2");
  EXPECT_EQ(d2.driver(), nullptr);
  FakeDriver b("b", {"d2"});
  ASSERT_TRUE(core.register_driver(bus, b));
  EXPECT_EQ(d2.driver(), &b);
  EXPECT_EQ(*core.tree().readlink("devices/d2/driver"), "../../bus/fake/drivers/b");
  EXPECT_EQ(*core.tree().readlink("bus/fake/drivers/b/d2"), "../../../../devices/d2");
  EXPECT_EQ(*core.tree().readlink("bus/fake/devices/d2"), "../../../devices/d2");
  EXPECT_EQ(*core.tree().read("devices/d2/uevent"), "DRIVER=b\n");
  core.unregister_driver(b);
  core.unregister_driver(a);
  EXPECT_EQ(d2.driver(), nullptr);
  EXPECT_EQ(core.tree().readlink("devices/d2/driver").error().code, ENOENT);
}

TEST_F(CoreFixture, MostSpecificDriverWinsAutoprobe) {
  FakeDriver any("any", {"*"});
  FakeDriver exact("exact", {"d1"});
  ASSERT_TRUE(core.register_driver(bus, any));
  ASSERT_TRUE(core.register_driver(bus, exact));
  core.device_del(add("tmp"));  // exercise add/del with autoprobe
  Device& d = add("d1");
  EXPECT_EQ(d.driver(), &exact);
  core.unregister_driver(exact);
  core.unregister_driver(any);
}

TEST_F(CoreFixture, SysfsErrnoRules) {
  FakeDriver a("a", {"d1"}), b("b", {"d1"});
  ASSERT_TRUE(core.register_driver(bus, a));
  ASSERT_TRUE(core.register_driver(bus, b));
  Device& d1 = add("d1");
  add("d2");
  ASSERT_EQ(d1.driver(), &a);
  EXPECT_EQ(w("bus/fake/drivers/b/bind", "d1\n").error().code, EBUSY);  // has a driver
  EXPECT_EQ(w("bus/fake/drivers/b/bind", "nope").error().code, ENODEV);  // no such device
  EXPECT_EQ(w("bus/fake/drivers/b/bind", "d2").error().code, ENODEV);    // does not match
  EXPECT_EQ(w("bus/fake/drivers/b/unbind", "d1").error().code, ENODEV);  // bound elsewhere
  EXPECT_EQ(w("bus/fake/drivers/b/unbind", "nope").error().code, ENODEV);
  EXPECT_TRUE(w("bus/fake/drivers/a/unbind", "d1\n"));
  EXPECT_EQ(d1.driver(), nullptr);
  EXPECT_TRUE(w("bus/fake/drivers/b/bind", "d1"));
  EXPECT_EQ(d1.driver(), &b);
  EXPECT_EQ(w("bus/fake/drivers_probe", "nope").error().code, ENODEV);
  EXPECT_TRUE(w("bus/fake/drivers_probe", "d2"));  // no driver for it: still fine
  EXPECT_EQ(core.tree().read("bus/fake/drivers/a/bind").error().code, EACCES);
  core.unregister_driver(b);
  core.unregister_driver(a);
}

TEST_F(CoreFixture, ProbeErrorsComeBackFromBind) {
  FakeDriver a("a", {"d1"});
  a.probe_error["d1"] = EIO;
  ASSERT_TRUE(core.register_driver(bus, a));
  Device& d1 = add("d1");
  EXPECT_EQ(d1.driver(), nullptr);
  EXPECT_EQ(w("bus/fake/drivers/a/bind", "d1").error().code, EIO);
  a.probe_error["d1"] = kEProbeDefer;
  EXPECT_EQ(w("bus/fake/drivers/a/bind", "d1").error().code, EAGAIN);  // EPROBE_DEFER never leaks
  core.unregister_driver(a);
}

TEST_F(CoreFixture, DriverOverride) {
  FakeDriver a("a", {"d1"}), b("b", {});
  ASSERT_TRUE(core.register_driver(bus, a));
  ASSERT_TRUE(core.register_driver(bus, b));
  Device& d1 = add("d1");
  ASSERT_EQ(d1.driver(), &a);
  ASSERT_TRUE(core.set_driver_override(d1, "b\nignored"));
  EXPECT_EQ(d1.driver_override(), "b");
  EXPECT_EQ(d1.driver(), &a);  // setting it rebinds nothing
  EXPECT_TRUE(core.unbind(a, d1));
  EXPECT_EQ(w("bus/fake/drivers/a/bind", "d1").error().code, ENODEV);  // override excludes a
  EXPECT_TRUE(w("bus/fake/drivers_probe", "d1"));
  EXPECT_EQ(d1.driver(), &b);
  EXPECT_EQ(core.set_driver_override(d1, std::string(4095, 'x')).error().code, EINVAL);
  EXPECT_TRUE(core.set_driver_override(d1, std::string(4094, 'x')));
  EXPECT_TRUE(core.set_driver_override(d1, "\n"));
  EXPECT_EQ(d1.driver_override(), "");
  core.unregister_driver(b);
  core.unregister_driver(a);
}

TEST_F(CoreFixture, AutoprobeOff) {
  FakeDriver a("a", {"d1"});
  ASSERT_TRUE(core.register_driver(bus, a));
  ASSERT_TRUE(w("bus/fake/drivers_autoprobe", "0\n"));
  EXPECT_EQ(*core.tree().read("bus/fake/drivers_autoprobe"), "0\n");
  Device& d1 = add("d1");
  EXPECT_EQ(d1.driver(), nullptr);
  ASSERT_TRUE(w("bus/fake/drivers_probe", "d1"));
  EXPECT_EQ(d1.driver(), &a);
  ASSERT_TRUE(w("bus/fake/drivers_autoprobe", "1"));
  core.unregister_driver(a);
}

TEST_F(CoreFixture, DeferredProbeRetriesWhenAnotherDriverBinds) {
  FakeDriver consumer("consumer", {"c"}), supplier("supplier", {"s"});
  bool supplier_ready = false;
  consumer.on_probe = [&](Device&) -> Result<void> {
    if (!supplier_ready) return Error(kEProbeDefer);
    return ok();
  };
  supplier.on_probe = [&](Device&) -> Result<void> {
    supplier_ready = true;
    return ok();
  };
  ASSERT_TRUE(core.register_driver(bus, consumer));
  Device& c = add("c");
  EXPECT_EQ(c.driver(), nullptr);
  ASSERT_EQ(core.deferred_devices().size(), 1u);
  ASSERT_TRUE(core.register_driver(bus, supplier));
  add("s");  // binds supplier → triggers the retry
  EXPECT_EQ(c.driver(), &consumer);
  EXPECT_TRUE(core.deferred_devices().empty());
  core.unregister_driver(supplier);
  core.unregister_driver(consumer);
}

TEST_F(CoreFixture, DeferredDeviceRemovedCleanly) {
  FakeDriver a("a", {"d"});
  a.probe_error["d"] = kEProbeDefer;
  ASSERT_TRUE(core.register_driver(bus, a));
  add("d");
  EXPECT_EQ(core.deferred_devices().size(), 1u);
  core.device_del(*devs.back());
  devs.pop_back();
  EXPECT_TRUE(core.deferred_devices().empty());
  core.unregister_driver(a);
}

TEST_F(CoreFixture, RemovingADeviceUnbindsItFirst) {
  FakeDriver a("a", {"*"});
  ASSERT_TRUE(core.register_driver(bus, a));
  int notified = 0;
  core.add_notifier(bus, [&](BusEvent ev, Device& d) {
    if (ev == BusEvent::kDelDevice) {
      g_events.push_back("del " + d.name());
      ++notified;
    }
  });
  add("p");
  add("c", devs.back().get());
  EXPECT_EQ(core.tree().stat("devices/p/c")->kind, NodeKind::kDir);
  g_events.clear();
  core.device_del(*devs[1]);
  core.device_del(*devs[0]);
  devs.clear();
  std::vector<std::string> expect{"del c", "remove a:c", "del p", "remove a:p"};
  EXPECT_EQ(g_events, expect);
  EXPECT_EQ(notified, 2);
  EXPECT_EQ(core.tree().stat("devices/p").error().code, ENOENT);
  EXPECT_EQ(core.tree().stat("bus/fake/devices/p").error().code, ENOENT);
  core.unregister_driver(a);
}

TEST_F(CoreFixture, ParentMustBeRegisteredAndNamesUnique) {
  Device orphan_parent("x", nullptr);
  Device child("y", &orphan_parent);
  EXPECT_EQ(core.device_add(child, &bus).error().code, EINVAL);
  add("d");
  Device dup("d", nullptr);
  EXPECT_EQ(core.device_add(dup, &bus).error().code, EEXIST);
}

TEST_F(CoreFixture, ProbeMayRegisterChildren) {
  // A driver's probe() registering a device of its own (as mlx5_core adds
  // auxiliary devices) runs under the same lock without deadlock.
  std::unique_ptr<Device> child;
  FakeDriver a("a", {"p"}), b("b", {"p.child"});
  a.on_probe = [&](Device& p) -> Result<void> {
    child = std::make_unique<Device>("p.child", &p);
    return core.device_add(*child, &bus);
  };
  ASSERT_TRUE(core.register_driver(bus, b));
  ASSERT_TRUE(core.register_driver(bus, a));
  add("p");
  ASSERT_TRUE(child);
  EXPECT_EQ(child->driver(), &b);
  core.device_del(*child);
  core.unregister_driver(a);
  core.unregister_driver(b);
}

}  // namespace
}  // namespace uvfio::driver
