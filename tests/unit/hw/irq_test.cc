// SPDX-License-Identifier: BSD-3-Clause
// Interrupt delivery of emulated functions: MSI-X (table, PBA, masks), MSI
// (multiple message, per-vector mask) and INTx (level, INTx Disable).
#include <gtest/gtest.h>

#include "hw/endpoint.h"

namespace uvfio::hw {
namespace {

struct Sink : IrqSink {
  std::vector<std::pair<uint64_t, uint32_t>> msgs;
  std::vector<bool> levels;
  void msi(uint64_t a, uint32_t d) override { msgs.emplace_back(a, d); }
  void intx(bool l) override { levels.push_back(l); }
};

struct IrqFixture : ::testing::Test {
  std::unique_ptr<GenericEndpoint> e = std::move(*GenericEndpoint::create());
  Sink sink;
  uint16_t msix = e->find_capability(PCI_CAP_ID_MSIX);
  uint16_t msi = e->find_capability(PCI_CAP_ID_MSI);
  void SetUp() override { e->set_irq_sink(&sink); }
  void program_msix(unsigned v, uint64_t addr, uint32_t data, bool masked) {
    uint64_t o = v * 16;
    ASSERT_TRUE(e->mmio_write(4, o, 4, static_cast<uint32_t>(addr)));
    ASSERT_TRUE(e->mmio_write(4, o + 4, 4, addr >> 32));
    ASSERT_TRUE(e->mmio_write(4, o + 8, 4, data));
    ASSERT_TRUE(e->mmio_write(4, o + 12, 4, masked ? 1 : 0));
  }
};

TEST_F(IrqFixture, MsixDeliversTheProgrammedMessage) {
  program_msix(3, 0xfee01000, 0x42, false);
  e->raise_irq(3);
  EXPECT_TRUE(sink.msgs.empty());  // MSI-X not enabled: INTx? the pin is asserted instead
  e->config_write(msix + PCI_MSIX_FLAGS, 2, PCI_MSIX_FLAGS_ENABLE);
  EXPECT_EQ(e->irq_mode(), IrqMode::kMsix);
  e->raise_irq(3);
  ASSERT_EQ(sink.msgs.size(), 1u);
  EXPECT_EQ(sink.msgs[0], std::make_pair(uint64_t{0xfee01000}, 0x42u));
  e->raise_irq(99);  // beyond the table: nothing
  EXPECT_EQ(sink.msgs.size(), 1u);
}

TEST_F(IrqFixture, MaskedVectorPendsAndFiresOnUnmask) {
  e->config_write(msix + PCI_MSIX_FLAGS, 2, PCI_MSIX_FLAGS_ENABLE);
  program_msix(1, 0xfee00000, 7, true);
  e->raise_irq(1);
  EXPECT_TRUE(sink.msgs.empty());
  EXPECT_TRUE(e->msix_pending(1));
  EXPECT_EQ(*e->mmio_read(4, 0x800, 8), 2u);  // PBA bit 1
  ASSERT_TRUE(e->mmio_write(4, 0x800, 8, 0));  // PBA is read-only
  EXPECT_TRUE(e->msix_pending(1));
  ASSERT_TRUE(e->mmio_write(4, 16 + 12, 4, 0));  // unmask
  ASSERT_EQ(sink.msgs.size(), 1u);
  EXPECT_FALSE(e->msix_pending(1));
}

TEST_F(IrqFixture, FunctionMaskHoldsEverything) {
  e->config_write(msix + PCI_MSIX_FLAGS, 2, PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL);
  program_msix(0, 0xfee00000, 1, false);
  e->raise_irq(0);
  EXPECT_TRUE(sink.msgs.empty());
  e->config_write(msix + PCI_MSIX_FLAGS, 2, PCI_MSIX_FLAGS_ENABLE);
  EXPECT_EQ(sink.msgs.size(), 1u);
}

TEST_F(IrqFixture, TableIsNotInTheBarsMemory) {
  program_msix(0, 0xfee00000, 1, false);
  // A client writing the BAR through its mmap (the memfd) cannot reprogram it.
  ASSERT_TRUE(e->bar_memory(4)->store(8, 4, 0xdead));
  EXPECT_EQ(*e->mmio_read(4, 8, 4), 1u);
}

TEST_F(IrqFixture, MsiMultipleMessageAndMask) {
  e->config_write(msi + PCI_MSI_ADDRESS_LO, 4, 0xfee00000);
  e->config_write(msi + PCI_MSI_DATA_64, 2, 0x40);
  e->config_write(msi + PCI_MSI_FLAGS, 2, PCI_MSI_FLAGS_ENABLE | (2 << 4));  // 4 vectors
  EXPECT_EQ(e->irq_mode(), IrqMode::kMsi);
  e->raise_irq(2);
  ASSERT_EQ(sink.msgs.size(), 1u);
  EXPECT_EQ(sink.msgs[0].second, 0x42u);
  e->config_write(msi + PCI_MSI_MASK_64, 4, 1u << 3);
  e->raise_irq(3);
  EXPECT_EQ(sink.msgs.size(), 1u);
  EXPECT_EQ(e->config_read(msi + PCI_MSI_MASK_64 + 4, 4), 1u << 3);  // pending
  e->raise_irq(4);  // beyond the enabled count
  EXPECT_EQ(sink.msgs.size(), 1u);
}

TEST_F(IrqFixture, IntxLevelAndDisable) {
  EXPECT_EQ(e->irq_mode(), IrqMode::kIntx);
  e->raise_irq(0);
  ASSERT_EQ(sink.levels, std::vector<bool>{true});
  EXPECT_TRUE(e->config_read(PCI_STATUS, 2) & PCI_STATUS_INTERRUPT);
  e->config_write(PCI_COMMAND, 2, PCI_COMMAND_INTX_DISABLE);  // gates the pin
  EXPECT_EQ(sink.levels, (std::vector<bool>{true, false}));
  EXPECT_TRUE(e->config_read(PCI_STATUS, 2) & PCI_STATUS_INTERRUPT);  // status still shows it
  e->config_write(PCI_COMMAND, 2, 0);
  EXPECT_EQ(sink.levels, (std::vector<bool>{true, false, true}));
  e->set_intx(false);
  EXPECT_EQ(sink.levels.back(), false);
  e->set_irq_sink(nullptr);
  e->raise_irq(0);  // no sink: nothing to call
  EXPECT_EQ(sink.levels.size(), 4u);
}

TEST_F(IrqFixture, FlrMasksAndClearsPending) {
  e->config_write(msix + PCI_MSIX_FLAGS, 2, PCI_MSIX_FLAGS_ENABLE);
  program_msix(0, 0xfee00000, 1, true);
  e->raise_irq(0);
  e->function_level_reset();
  EXPECT_FALSE(e->msix_pending(0));
  EXPECT_EQ(*e->mmio_read(4, 12, 4), 1u);
  EXPECT_EQ(e->irq_mode(), IrqMode::kIntx);
}

}  // namespace
}  // namespace uvfio::hw
