// SPDX-License-Identifier: BSD-3-Clause
// The programming interface of the emulated mlx5 functions — what a
// datasheet defines, in the role of Linux's include/linux/mlx5/mlx5_ifc.h:
// ids, BAR layout, register offsets and bits, the PF's command queue and
// command layouts, the VF's work-queue descriptor and completion. Drivers
// (mlx5_core, mlx5_vfio_pci) and guests program the hardware with this and
// nothing else; the models implementing it are pf.h / vf.h.
//
// A model of a ConnectX-like NIC, not the real ConnectX interface
// (docs/devices/mlx5-pf.md, mlx5-vf.md). Little-endian.
#pragma once

#include <cstdint>

namespace uvfio::hw::mlx5 {

inline constexpr uint16_t kVendorMellanox = 0x15b3;
inline constexpr uint16_t kDevicePf = 0x101d;
inline constexpr uint16_t kDeviceVf = 0x101e;
inline constexpr uint32_t kClassEthernet = 0x020000;

inline constexpr uint64_t kPfBar0Size = 1 << 20;
inline constexpr uint64_t kVfBar0Size = 64 << 10;
inline constexpr uint32_t kMsixTableOffset = 0x2000;
inline constexpr uint32_t kMsixPbaOffset = 0x3000;
inline constexpr unsigned kPfMsixVectors = 64;
inline constexpr unsigned kVfMsixVectors = 8;
inline constexpr uint64_t kDefaultDeviceMemory = 16 << 20;

// ---- PF: the command queue (BAR0) ---------------------------------------------
//
// The driver keeps kCmdSlots command entries in its own memory, at
// CMDQ_BASE in the PF's IOMMU domain. To run a command it fills a free
// slot's entry, sets `owner` to kOwnerFirmware and writes the slot's bit to
// CMDQ_DOORBELL. The firmware runs each slot's command on its own (commands
// for different functions in parallel, for the same function in order),
// writes the entry back with the output fields and `owner` kOwnerDriver, and
// raises MSI-X vector `slot`.
namespace pfreg {
inline constexpr uint32_t kId = 0x000, kVersion = 0x004;
inline constexpr uint32_t kCmdqBase = 0x100;      // RW, 64-bit
inline constexpr uint32_t kCmdqDoorbell = 0x108;  // WO, bit per slot
inline constexpr uint32_t kCmdqSlots = 0x10c;     // RO, kCmdSlots
inline constexpr uint32_t kIdValue = 0x706c7835;  // "5xlp"
inline constexpr uint32_t kVersionValue = 2;
}  // namespace pfreg

inline constexpr unsigned kCmdSlots = 8;
inline constexpr uint32_t kCmdEntrySize = 128;

enum class FwCmd : uint16_t {
  kQueryVhcaMigrationState = 0x1,
  kSuspendVhca = 0x2,
  kResumeVhca = 0x3,
  kSaveVhcaState = 0x4,
  kLoadVhcaState = 0x5,
  kCreatePageTracker = 0x6,
  kReportPageTracker = 0x7,
  kDestroyPageTracker = 0x8,
};
// op_mod of SUSPEND/RESUME (as mlx5 maps the P2P arcs).
inline constexpr uint16_t kOpModInitiator = 0, kOpModResponder = 1;
// flags of QUERY/SAVE/LOAD.
inline constexpr uint32_t kFwIncremental = 1;  // QUERY, SAVE: only what changed since the last image
inline constexpr uint32_t kFwStart = 2;        // SAVE, LOAD: the first chunk of a new image
// SAVE (with kFwStart): track changes from this image on, for incremental
// images later in the session (mlx5's `track` bit). A session without
// pre-copy saves one final image untracked: no change detection is done.
inline constexpr uint32_t kFwTrack = 4;
// The smallest SAVE buffer: an image's header and registers and one page.
inline constexpr uint64_t kFwMinChunk = 8192;

struct __attribute__((packed)) FwMailbox {
  // in
  uint16_t opcode;
  uint16_t op_mod;
  uint16_t function_id;  // the VF: its index + 1
  uint16_t rsvd;
  uint32_t flags;
  uint32_t rsvd2;
  uint64_t buf_iova;  // SAVE/LOAD chunk, tracker ranges, report output
  uint64_t buf_len;
  uint64_t arg0, arg1;  // tracker: page size / range count; report: iova, length
  // out
  uint32_t status;  // 0 or an errno
  uint32_t out_crc;  // SAVE: CRC32C of the bytes written (checksum offload)
  uint64_t out0;  // QUERY: image size; SAVE: bytes written; REPORT: addresses written
  uint64_t out1;  // SAVE: bytes of the image still to come (0: complete); REPORT: 1 if more remain
};
static_assert(sizeof(FwMailbox) == 72);

inline constexpr uint8_t kOwnerDriver = 0, kOwnerFirmware = 1;
struct __attribute__((packed)) CmdEntry {
  FwMailbox mb;
  uint8_t owner;
  uint8_t rsvd[kCmdEntrySize - sizeof(FwMailbox) - 1];
};
static_assert(sizeof(CmdEntry) == kCmdEntrySize);

// ---- VF: registers (BAR0) and the work queue ---------------------------------------
//
// The guest writes 32-byte descriptors into a ring at SQ_BASE and rings
// SQ_TAIL; the device executes them on its own thread through the VF's
// IOMMU domain, writes a 16-byte completion per descriptor to the ring at
// CQ_BASE and raises MSI-X vector IRQ_VECTOR after each batch.
namespace vfreg {
inline constexpr uint32_t kId = 0x000, kVersion = 0x004, kStatus = 0x008, kScratch = 0x00c;
inline constexpr uint32_t kSqBase = 0x010, kSqSize = 0x018, kSqTail = 0x01c, kSqHead = 0x020;
inline constexpr uint32_t kCqBase = 0x028, kCqSize = 0x030, kCqTail = 0x034, kCqHead = 0x038;
inline constexpr uint32_t kCtrl = 0x03c, kIrqVector = 0x040, kIrqCtrl = 0x044;
inline constexpr uint32_t kCountDone = 0x048, kCountErr = 0x050, kBytes = 0x058;
inline constexpr uint32_t kIdValue = 0x6d6c7835;  // "5xlm"
inline constexpr uint32_t kStatusReady = 1, kStatusQueueOn = 2, kStatusError = 4, kStatusQuiesced = 8;
inline constexpr uint32_t kCtrlEnable = 1;
inline constexpr uint32_t kMaxRing = 4096;
inline constexpr uint32_t kMaxLength = 1 << 20;
}  // namespace vfreg

enum class VfOp : uint8_t { kCopy = 1, kToDevice = 2, kFromDevice = 3, kFill = 4, kCrc32c = 5 };

struct __attribute__((packed)) VfDescriptor {
  uint8_t opcode;
  uint8_t flags;
  uint16_t rsvd;
  uint32_t length;
  uint64_t src;   // guest IOVA, or device-memory offset for kFromDevice, or the fill byte
  uint64_t dst;   // guest IOVA, or device-memory offset for kToDevice
  uint64_t cookie;
};
static_assert(sizeof(VfDescriptor) == 32);

struct __attribute__((packed)) VfCompletion {
  uint64_t cookie;
  uint32_t status;  // 0 or an errno
  uint32_t result;  // CRC32C for kCrc32c
};
static_assert(sizeof(VfCompletion) == 16);

}  // namespace uvfio::hw::mlx5
