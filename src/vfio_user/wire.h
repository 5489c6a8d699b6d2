// SPDX-License-Identifier: BSD-3-Clause
// vfio-user wire format (QEMU docs/interop/vfio-user.rst; reference/
// vfio-user.md §1): the 16-byte header, command numbers and the payload
// structs the protocol does not borrow from <linux/vfio.h>. Shared by the
// server and the client library. Host endianness, packed as on the wire.
#pragma once

#include <cstdint>

#include "vfio/uapi.h"

namespace uvfio::vfio_user {

enum Command : uint16_t {
  kVersion = 1,
  kDmaMap = 2,
  kDmaUnmap = 3,
  kDeviceGetInfo = 4,
  kDeviceGetRegionInfo = 5,
  kDeviceGetRegionIoFds = 6,
  kDeviceGetIrqInfo = 7,
  kDeviceSetIrqs = 8,
  kRegionRead = 9,
  kRegionWrite = 10,
  kDmaRead = 11,
  kDmaWrite = 12,
  kDeviceReset = 13,
  kRegionWriteMulti = 15,
  kDeviceFeature = 16,
  kMigDataRead = 17,
  kMigDataWrite = 18,
  kMaxCommand = 18,
};

inline constexpr uint32_t kFlagsTypeMask = 0xf;
inline constexpr uint32_t kTypeCommand = 0;
inline constexpr uint32_t kTypeReply = 1;
inline constexpr uint32_t kFlagNoReply = 1u << 4;
inline constexpr uint32_t kFlagError = 1u << 5;

struct __attribute__((packed)) Header {
  uint16_t msg_id;
  uint16_t command;
  uint32_t msg_size;  // header included
  uint32_t flags;
  uint32_t error_no;
};
static_assert(sizeof(Header) == 16);

struct __attribute__((packed)) VersionMsg {
  uint16_t major;
  uint16_t minor;
  // char json[]: NUL-terminated capabilities, optional
};

struct __attribute__((packed)) DmaMapMsg {
  uint32_t argsz;
  uint32_t flags;  // kDmaRead | kDmaWrite
  uint64_t offset;
  uint64_t address;
  uint64_t size;
};
static_assert(sizeof(DmaMapMsg) == 32);

struct __attribute__((packed)) DmaUnmapMsg {
  uint32_t argsz;
  uint32_t flags;  // VFIO_DMA_UNMAP_FLAG_ALL (2) for everything
  uint64_t address;
  uint64_t size;
};
static_assert(sizeof(DmaUnmapMsg) == 24);

inline constexpr uint32_t kDmaFlagRead = 1, kDmaFlagWrite = 2;
inline constexpr uint32_t kDmaUnmapAll = 2;

// DEVICE_GET_INFO (4): the spec's 16 bytes, request and reply. The kernel's
// struct vfio_device_info (20 bytes: cap_offset) is longer; a client may send
// it, the reply is always these 16 bytes (QEMU's receive buffer holds no more).
struct __attribute__((packed)) DeviceInfoMsg {
  uint32_t argsz;
  uint32_t flags;
  uint32_t num_regions;
  uint32_t num_irqs;
};
static_assert(sizeof(DeviceInfoMsg) == 16);

// DEVICE_GET_REGION_INFO (5): the kernel's struct vfio_region_info (32 bytes).
using RegionInfoMsg = vfio_region_info;
static_assert(sizeof(RegionInfoMsg) == 32);
// DEVICE_GET_IRQ_INFO (7): struct vfio_irq_info (16 bytes).
using IrqInfoMsg = vfio_irq_info;
static_assert(sizeof(IrqInfoMsg) == 16);
// DEVICE_SET_IRQS (8): struct vfio_irq_set without its data (20 bytes).
using IrqSetMsg = vfio_irq_set;
static_assert(sizeof(IrqSetMsg) == 20);

struct __attribute__((packed)) RegionAccessMsg {
  uint64_t offset;
  uint32_t region;
  uint32_t count;
  // uint8_t data[] (write request, read reply)
};
static_assert(sizeof(RegionAccessMsg) == 16);

struct __attribute__((packed)) RegionWriteMultiEntry {
  uint64_t offset;
  uint32_t region;
  uint32_t count;
  uint8_t data[8];
};
static_assert(sizeof(RegionWriteMultiEntry) == 24);
inline constexpr uint64_t kMaxWriteMulti = 1024;

struct __attribute__((packed)) DmaRwMsg {  // the spec's layout
  uint64_t address;
  uint64_t count;
};
static_assert(sizeof(DmaRwMsg) == 16);
// The spec's DMA_WRITE reply.
struct __attribute__((packed)) DmaWriteReplyMsg {
  uint64_t address;
  uint32_t count;
};
static_assert(sizeof(DmaWriteReplyMsg) == 12);
// QEMU 10.x's VFIOUserDMARW (hw/vfio-user/protocol.h): a u32 count, data at
// payload offset 12 (see docs/vfio-user.md, "QEMU's DMA layout").
struct __attribute__((packed)) QemuDmaRwMsg {
  uint64_t offset;
  uint32_t count;
};
static_assert(sizeof(QemuDmaRwMsg) == 12);

struct __attribute__((packed)) RegionIoFdsMsg {
  uint32_t argsz;
  uint32_t flags;
  uint32_t index;
  uint32_t count;
  // reply: sub-regions[count], 40 bytes each
};
static_assert(sizeof(RegionIoFdsMsg) == 16);

struct __attribute__((packed)) DeviceFeatureMsg {
  uint32_t argsz;
  uint32_t flags;
  // uint8_t data[]
};
static_assert(sizeof(DeviceFeatureMsg) == 8);

struct __attribute__((packed)) MigDataMsg {
  uint32_t argsz;
  uint32_t size;
  // uint8_t data[]
};
static_assert(sizeof(MigDataMsg) == 8);

// What we accept and offer.
inline constexpr uint32_t kMaxMsgFds = 16;
inline constexpr uint32_t kMaxDataXfer = 1 << 20;
inline constexpr uint32_t kMaxDmaMaps = 65535;
inline constexpr uint64_t kPgSizes = 4096;
// Largest message we read: a REGION_WRITE of max_data_xfer_size, or a
// WRITE_MULTI of kMaxWriteMulti entries, plus headers.
inline constexpr uint32_t kMaxMessage = kMaxDataXfer + 4096;

const char* command_name(uint16_t cmd);

}  // namespace uvfio::vfio_user
