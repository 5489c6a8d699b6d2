// SPDX-License-Identifier: BSD-3-Clause
// The edu device's programming interface (QEMU's docs/specs/edu.rst): what
// its driver may know. BAR0 is 1 MiB of MMIO; below 0x80 only 4-byte
// accesses, from 0x80 4 or 8 bytes. The model lives in edu_model.cc, the
// driver in edu_driver.cc; neither sees the other's classes.
#pragma once

#include <cstdint>

namespace edu {

inline constexpr uint16_t kVendor = 0x1234, kDevice = 0x11e8;
inline constexpr uint64_t kBar0Size = 1 << 20;

inline constexpr uint32_t kRegId = 0x00;        // RO 0xRRrr00ed
inline constexpr uint32_t kRegLiveness = 0x04;  // RW: reads back the inverse of what was written
inline constexpr uint32_t kRegFactorial = 0x08; // RW: n in, n! out
inline constexpr uint32_t kRegStatus = 0x20;    // RW: kStatusComputing (RO), kStatusIrqFact
inline constexpr uint32_t kRegIrqStatus = 0x24; // RO
inline constexpr uint32_t kRegIrqRaise = 0x60;  // WO: ORed into IRQ status, interrupt raised
inline constexpr uint32_t kRegIrqAck = 0x64;    // WO: cleared from IRQ status
inline constexpr uint32_t kRegDmaSrc = 0x80;    // RW 64-bit
inline constexpr uint32_t kRegDmaDst = 0x88;    // RW 64-bit
inline constexpr uint32_t kRegDmaCount = 0x90;  // RW 64-bit
inline constexpr uint32_t kRegDmaCmd = 0x98;    // RW 64-bit: kDmaStart, kDmaToRam, kDmaIrq

inline constexpr uint32_t kIdValue = 0x010000ed;  // version 1.0
inline constexpr uint32_t kStatusComputing = 0x01, kStatusIrqFact = 0x80;
inline constexpr uint32_t kIrqFactorial = 0x001, kIrqDma = 0x100;
inline constexpr uint64_t kDmaStart = 1, kDmaToRam = 2, kDmaIrq = 4;
inline constexpr uint64_t kDmaBuffer = 0x40000, kDmaBufferSize = 4096;
inline constexpr uint64_t kDmaMask = (uint64_t{1} << 28) - 1;  // the spec's default dma_mask

// uvfio's extension, not in edu.rst: the device's state for live migration
// (the spec gives no way to read the DMA buffer or to set a factorial
// result). Read or written while the device is stopped, by its variant
// driver: a State at kRegState, the DMA buffer after it.
inline constexpr uint64_t kRegState = 0x80000;
struct State {
  uint32_t magic;  // kStateMagic
  uint32_t liveness, factorial, status, irq_status, pad;
  uint64_t dma_src, dma_dst, dma_count, dma_cmd;
};
inline constexpr uint32_t kStateMagic = 0x55444531;  // "1EDU"
inline constexpr uint64_t kRegStateBuffer = kRegState + 0x100;
inline constexpr uint64_t kStateSize = 0x100 + kDmaBufferSize;

}  // namespace edu
