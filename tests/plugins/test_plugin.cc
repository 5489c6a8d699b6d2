// SPDX-License-Identifier: BSD-3-Clause
// Plugins for the loader's tests (tests/e2e/plugin_e2e_test.cc), one source
// built several times (TEST_PLUGIN_CASE): a good one with a model and a
// VFIO driver, and one for each way a plugin can be refused.
#include <cerrno>
#include <cstdio>
#include <stdexcept>

#include "bus/pci/pci.h"
#include "hw/capabilities.h"
#include "hw/function.h"
#include "sdk/plugin.h"
#include "vfio/pci_core/core.h"

namespace {

using namespace uvfio;

#define CASE_GOOD 0
#define CASE_BAD_ABI 1
#define CASE_BAD_VERSION 2
#define CASE_NO_DESCRIPTOR 3
#define CASE_MISSING_SYMBOL 4
#define CASE_MODEL_COLLIDES 5
#define CASE_DRIVER_COLLIDES 6
#define CASE_INIT_FAILS 7
#define CASE_INIT_THROWS 8
#define CASE_FACTORY_FAILS 9

// The model: an endpoint with one page of plain memory in BAR0.
class TestDev : public hw::Function {
 public:
  static Result<std::unique_ptr<hw::Function>> create(const sdk::ModelParams& p) {
    int64_t device = TRY(p.integer("device", 0, 0xffff, 0x10f0));
    std::unique_ptr<TestDev> f(new TestDev());
    f->set_ids(hw::FunctionIds{0x1af4, static_cast<uint16_t>(device), 0x00ff00, 1, 0x1af4, 0x1100});
    TRY(f->define_bar(0, hw::BarDesc{hw::BarKind::kMem32, 4096, false, false}));
    TRY(hw::add_pm_cap(*f));
    hw::PcieParams pp;
    pp.flr = true;
    TRY(hw::add_pcie_cap(*f, pp));
    f->finish_build();
    return std::unique_ptr<hw::Function>(std::move(f));
  }

 private:
  TestDev() : hw::Function("testdev") {}
};

// The driver: vfio-pci-core as it is, bound by id.
class TestVfioDriver : public bus::pci::PciDriver {
 public:
  TestVfioDriver(const char* name, vfio::Registry& r) : PciDriver(name, {{0x1af4, bus::pci::kPciAnyId}}), r_(r) {}
  Result<std::unique_ptr<driver::Binding>> probe(bus::pci::PciDevice& dev, const bus::pci::PciDeviceId&) override {
    if (dev.vendor() != 0x1af4 || dev.device_id() < 0x10f0) return Error(ENODEV, "not a test device");
    auto core = std::make_unique<vfio::pci::CoreDevice>(dev, *this, r_);
    TRY(core->register_device());
    return std::unique_ptr<driver::Binding>(std::move(core));
  }

 private:
  vfio::Registry& r_;
};

#if TEST_PLUGIN_CASE == CASE_MISSING_SYMBOL
}  // namespace
void uvfio_test_symbol_nobody_defines();
namespace {
#endif

int init(sdk::Host* host, char* err, size_t err_size) {
#if TEST_PLUGIN_CASE == CASE_MISSING_SYMBOL
  uvfio_test_symbol_nobody_defines();
#endif
#if TEST_PLUGIN_CASE == CASE_INIT_FAILS
  std::snprintf(err, err_size, "the test plugin refuses to start");
  return ENODEV;
#endif
#if TEST_PLUGIN_CASE == CASE_INIT_THROWS
  throw std::runtime_error("the test plugin threw");
#endif
#if TEST_PLUGIN_CASE == CASE_MODEL_COLLIDES
  if (auto r = host->add_model("endpoint", TestDev::create); !r) return r.error().code;
#endif
#if TEST_PLUGIN_CASE == CASE_DRIVER_COLLIDES
  if (auto r = host->add_pci_driver(std::make_unique<TestVfioDriver>("vfio-pci", host->vfio_registry())); !r)
    return r.error().code;
#endif
#if TEST_PLUGIN_CASE == CASE_FACTORY_FAILS
  auto broken = [](const sdk::ModelParams& p) -> Result<std::unique_ptr<hw::Function>> {
    TRY(p.integer("lanes", 1, 16, 1));
    return Error(ENOMEM, "the test model cannot be built");
  };
  if (auto r = host->add_model("brokendev", broken); !r) return r.error().code;
#endif
  (void)err;
  (void)err_size;
  if (auto r = host->add_model("testdev", TestDev::create); !r) return r.error().code;
  if (auto r = host->add_pci_driver(std::make_unique<TestVfioDriver>("testdev_vfio", host->vfio_registry())); !r)
    return r.error().code;
  return 0;
}

}  // namespace

#if TEST_PLUGIN_CASE == CASE_BAD_ABI
extern "C" __attribute__((visibility("default"))) const uvfio_plugin_descriptor uvfio_plugin_v1 = {
    UVFIO_PLUGIN_ABI + 1000, UVFIO_VERSION_STRING, "bad_abi", init};
#elif TEST_PLUGIN_CASE == CASE_BAD_VERSION
extern "C" __attribute__((visibility("default"))) const uvfio_plugin_descriptor uvfio_plugin_v1 = {
    UVFIO_PLUGIN_ABI, "0.0.0-other", "bad_version", init};
#elif TEST_PLUGIN_CASE == CASE_NO_DESCRIPTOR
// An init under another name: a shared object, not a plugin.
extern "C" __attribute__((visibility("default"))) int uvfio_not_a_plugin(sdk::Host* h, char* e, size_t n) {
  return init(h, e, n);
}
#else
UVFIO_PLUGIN("test_plugin", init);
#endif
