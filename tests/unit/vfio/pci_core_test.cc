// SPDX-License-Identifier: BSD-3-Clause
// vfio-pci-core against the kernel, where the generic endpoint can be built
// with the capability layouts a test needs (an MSI capability without
// per-vector masking, an AER capability) and the hardware's writable bits
// set by the test: each case names the kernel function it mirrors.
#include <gtest/gtest.h>
#include <linux/vfio.h>

#include "bus/pci/pci.h"
#include "drivers/vfio_pci/vfio_pci.h"
#include "hw/endpoint.h"
#include "hw/fabric.h"
#include "vfio/registry.h"

namespace uvfio::vfio {
namespace {

class PciCore : public ::testing::Test {
 protected:
  void build(const hw::EndpointParams& p) {
    ASSERT_TRUE(fabric.attach(std::move(*hw::GenericEndpoint::create(p)), kBdf));
    bus = std::make_unique<bus::pci::PciBus>(core, fabric);
    registry = std::make_unique<Registry>(core);
    drv = std::make_unique<drivers::vfio_pci::VfioPciDriver>(*registry);
    ASSERT_TRUE(bus->scan());
    ASSERT_TRUE(core.register_driver(*bus, *drv));
    pdev = bus->find(kBdf);
    ASSERT_NE(pdev, nullptr);
    ASSERT_TRUE(core.set_driver_override(*pdev, "vfio-pci"));
    ASSERT_TRUE(core.drivers_probe(*pdev));
    dev = registry->devices().empty() ? nullptr : registry->devices()[0];
    ASSERT_NE(dev, nullptr);
    ASSERT_TRUE(dev->open());
  }
  void TearDown() override {
    if (dev) dev->close();
    if (bus) bus->remove_all();
    if (drv) core.unregister_driver(*drv);
  }
  hw::Function& hwf() { return *fabric.find(kBdf); }
  uint32_t user_read(uint16_t off, unsigned width) {
    uint32_t v = 0;
    EXPECT_TRUE(dev->region_read(VFIO_PCI_CONFIG_REGION_INDEX, off, std::span<uint8_t>(reinterpret_cast<uint8_t*>(&v), width)));
    return v;
  }
  void user_write(uint16_t off, unsigned width, uint32_t v) {
    EXPECT_TRUE(dev->region_write(VFIO_PCI_CONFIG_REGION_INDEX, off,
                                  std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&v), width)));
  }

  static constexpr Bdf kBdf{0, 0, 3, 0};
  hw::Fabric fabric;
  driver::DriverCore core;
  std::unique_ptr<bus::pci::PciBus> bus;
  std::unique_ptr<Registry> registry;
  std::unique_ptr<drivers::vfio_pci::VfioPciDriver> drv;
  bus::pci::PciDevice* pdev = nullptr;
  Device* dev = nullptr;
};

// vfio_config_do_rw() + vfio_pci_cap_remaining_dword(): a dword that holds
// the end of one capability and bytes no capability owns is done in two
// parts, each with its own permissions. A 32-bit MSI capability without
// masking is 10 bytes: its last dword is 2 bytes of virtualized Message
// Data and 2 unassigned bytes, which are raw (writes reach the hardware).
TEST_F(PciCore, AccessesAreSplitWhereACapabilityEnds) {
  hw::EndpointParams p;
  p.msi_64bit = false;
  p.msi_per_vector_mask = false;
  build(p);
  uint16_t msi = pdev->find_capability(PCI_CAP_ID_MSI);
  ASSERT_NE(msi, 0);
  ASSERT_EQ(msi % 4, 0);
  uint16_t dword = msi + PCI_MSI_DATA_32;  // data at +8, unassigned at +10
  hwf().config().set_rw(dword + 2, 2, 0xffff);
  user_write(dword, 4, 0xbeef0001);
  EXPECT_EQ(hwf().config().raw_read(dword + 2, 2), 0xbeefu) << "the unassigned half did not reach the hardware";
  EXPECT_EQ(user_read(dword, 2), 1u);                         // Message Data: virtual
  EXPECT_EQ(hwf().config().raw_read(dword, 2), 0u);           // ... never written to the device
  EXPECT_EQ(user_read(dword, 4), 0xbeef0001u);
}

// init_pci_cap_pm_perm(): PMCSR's permission is a dword, so PMCSR_BSE and
// the Data register pass through.
TEST_F(PciCore, PmControlPermissionCoversTheWholeDword) {
  build({});
  uint16_t pm = pdev->find_capability(PCI_CAP_ID_PM);
  ASSERT_NE(pm, 0);
  hwf().config().set_rw(pm + PCI_PM_CTRL + 3, 1, 0xff);  // Data made writable in the model
  user_write(pm + PCI_PM_CTRL, 4, 0x5a000000);
  EXPECT_EQ(hwf().config().raw_read(pm + PCI_PM_CTRL + 3, 1), 0x5au);
}

// init_pci_cap_msi_perm(): Mask and Pending Bits are not virtualized and
// every bit is writable through to the device.
TEST_F(PciCore, MsiPendingBitsPassThrough) {
  build({});
  uint16_t msi = pdev->find_capability(PCI_CAP_ID_MSI);
  ASSERT_NE(msi, 0);
  hwf().config().set_rw(msi + PCI_MSI_PENDING_64, 4, ~0u);
  user_write(msi + PCI_MSI_PENDING_64, 4, 0x5);
  EXPECT_EQ(hwf().config().raw_read(msi + PCI_MSI_PENDING_64, 4), 0x5u);
  EXPECT_EQ(user_read(msi + PCI_MSI_PENDING_64, 4), 0x5u);
}

// init_pci_ext_cap_err_perm(): the uncorrectable status, mask and severity
// bits a user may write are exactly the defined errors (0x03fff031).
TEST_F(PciCore, AerUncorrectableWritableBitsAreTheKernels) {
  hw::EndpointParams p;
  p.aer = true;
  build(p);
  uint16_t aer = pdev->find_ext_capability(PCI_EXT_CAP_ID_ERR);
  ASSERT_NE(aer, 0);
  for (uint16_t reg : {PCI_ERR_UNCOR_STATUS, PCI_ERR_UNCOR_MASK, PCI_ERR_UNCOR_SEVER}) {
    hwf().config().set_rw(aer + reg, 4, ~0u);  // the device takes anything; vfio filters
    user_write(aer + reg, 4, ~0u);
    EXPECT_EQ(hwf().config().raw_read(aer + reg, 4), 0x03fff031u) << "register " << reg;
  }
}

// vfio_pci_core_enable(): a PCI 2.3 device (INTx Disable toggles) is handed
// to the user with INTx Disable clear in hardware.
TEST_F(PciCore, OpenClearsIntxDisableOnPci23Devices) {
  build({});
  dev->close();
  pdev->config_write(PCI_COMMAND, 2, pdev->config_read(PCI_COMMAND, 2) | PCI_COMMAND_INTX_DISABLE);
  ASSERT_TRUE(dev->open());
  EXPECT_FALSE(pdev->config_read(PCI_COMMAND, 2) & PCI_COMMAND_INTX_DISABLE);
  EXPECT_FALSE(user_read(PCI_COMMAND, 2) & PCI_COMMAND_INTX_DISABLE);
}

}  // namespace
}  // namespace uvfio::vfio
