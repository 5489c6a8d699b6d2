// SPDX-License-Identifier: BSD-3-Clause
// The vfio-user wire format as the tests' peers speak it, written from the
// specification (QEMU's docs/interop/vfio-user.rst, cross-checked with
// QEMU's hw/vfio-user/protocol.h) and the kernel's <linux/vfio.h>, not from
// src/: a test that plays a client or answers the server's DMA requests
// builds and parses its bytes here, so a layout or framing mistake in the
// server cannot be mirrored by the test that should catch it.
#pragma once

#include <linux/vfio.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <vector>

#include "base/result.h"
#include "base/unique_fd.h"

namespace uvfio::spec {

// Commands (the spec's "Commands" table).
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
};

// Header flags: bits 0-3 the type (0 command, 1 reply), bit 4 No_reply,
// bit 5 Error (then the header's error field is an errno).
inline constexpr uint32_t kFlagsTypeMask = 0xf;
inline constexpr uint32_t kTypeCommand = 0;
inline constexpr uint32_t kTypeReply = 1;
inline constexpr uint32_t kFlagNoReply = 1u << 4;
inline constexpr uint32_t kFlagError = 1u << 5;

// The 16-byte header: message ID, command, message size (header
// included), flags, error.
struct __attribute__((packed)) Header {
  uint16_t msg_id;
  uint16_t command;
  uint32_t msg_size;
  uint32_t flags;
  uint32_t error_no;
};
static_assert(sizeof(Header) == 16);

// VFIO_USER_DMA_MAP: argsz, flags (bit 0 readable, bit 1 writeable),
// offset into the fd, the DMA address, size.
struct __attribute__((packed)) DmaMapMsg {
  uint32_t argsz;
  uint32_t flags;
  uint64_t offset;
  uint64_t address;
  uint64_t size;
};
static_assert(sizeof(DmaMapMsg) == 32);
inline constexpr uint32_t kDmaFlagRead = 1, kDmaFlagWrite = 2;

// VFIO_USER_DMA_UNMAP: argsz, flags (bit 1: unmap all), address, size.
struct __attribute__((packed)) DmaUnmapMsg {
  uint32_t argsz;
  uint32_t flags;
  uint64_t address;
  uint64_t size;
};
static_assert(sizeof(DmaUnmapMsg) == 24);
inline constexpr uint32_t kDmaUnmapAll = 2;

// VFIO_USER_DEVICE_GET_INFO: struct vfio_device_info without the kernel's
// later capability fields (16 bytes in the spec and in QEMU).
struct __attribute__((packed)) DeviceInfoMsg {
  uint32_t argsz;
  uint32_t flags;
  uint32_t num_regions;
  uint32_t num_irqs;
};
static_assert(sizeof(DeviceInfoMsg) == 16);

// VFIO_USER_DEVICE_GET_REGION_INFO: the kernel's struct vfio_region_info.
using RegionInfoMsg = vfio_region_info;
static_assert(sizeof(RegionInfoMsg) == 32);

// VFIO_USER_DEVICE_GET_REGION_IO_FDS: argsz, flags, index, count; the
// reply appends count sub-region descriptors (40 bytes each).
struct __attribute__((packed)) RegionIoFdsMsg {
  uint32_t argsz;
  uint32_t flags;
  uint32_t index;
  uint32_t count;
};
static_assert(sizeof(RegionIoFdsMsg) == 16);

// VFIO_USER_DEVICE_GET_IRQ_INFO and SET_IRQS: the kernel's structs.
using IrqInfoMsg = vfio_irq_info;
static_assert(sizeof(IrqInfoMsg) == 16);
using IrqSetMsg = vfio_irq_set;
static_assert(sizeof(IrqSetMsg) == 20);

// VFIO_USER_REGION_READ/WRITE: offset, region, count, then the data.
struct __attribute__((packed)) RegionAccessMsg {
  uint64_t offset;
  uint32_t region;
  uint32_t count;
};
static_assert(sizeof(RegionAccessMsg) == 16);

// VFIO_USER_REGION_WRITE_MULTI: u64 wr_cnt, then wr_cnt entries of
// offset, region, count, 8 bytes of data.
struct __attribute__((packed)) RegionWriteMultiEntry {
  uint64_t offset;
  uint32_t region;
  uint32_t count;
  uint8_t data[8];
};
static_assert(sizeof(RegionWriteMultiEntry) == 24);

// VFIO_USER_DMA_READ/WRITE as the spec lays them out: address, count
// (u64 both), then the data.
struct __attribute__((packed)) DmaRwMsg {
  uint64_t address;
  uint64_t count;
};
static_assert(sizeof(DmaRwMsg) == 16);

// The spec's DMA_WRITE reply: address, count (u32).
struct __attribute__((packed)) DmaWriteReplyMsg {
  uint64_t address;
  uint32_t count;
};
static_assert(sizeof(DmaWriteReplyMsg) == 12);

// QEMU 10.x's VFIOUserDMARW (hw/vfio-user/protocol.h): offset (u64), count
// (u32), data at payload offset 12; its DMA_READ reply is count + 32 bytes
// with the header (4 trailing bytes), its DMA_WRITE reply the header alone.
struct __attribute__((packed)) QemuDmaRwMsg {
  uint64_t offset;
  uint32_t count;
};
static_assert(sizeof(QemuDmaRwMsg) == 12);

// VFIO_USER_DEVICE_FEATURE: struct vfio_device_feature (argsz, flags), data.
struct __attribute__((packed)) DeviceFeatureMsg {
  uint32_t argsz;
  uint32_t flags;
};
static_assert(sizeof(DeviceFeatureMsg) == 8);

// VFIO_USER_MIG_DATA_READ/WRITE: argsz, size, then the data.
struct __attribute__((packed)) MigDataMsg {
  uint32_t argsz;
  uint32_t size;
};
static_assert(sizeof(MigDataMsg) == 8);

struct Message {
  Header hdr{};
  std::vector<uint8_t> payload;
  std::vector<UniqueFd> fds;
};

// One message: the header (msg_size = 16 + the payload, plus `size_delta`
// for a test that lies about it), the payload, the fds as SCM_RIGHTS on
// the first byte. Whole or false.
inline bool send_message(int fd, Header h, const std::vector<uint8_t>& payload, const std::vector<int>& fds = {},
                         int32_t size_delta = 0) {
  h.msg_size = static_cast<uint32_t>(sizeof(Header) + payload.size() + static_cast<int64_t>(size_delta));
  std::vector<uint8_t> bytes(sizeof(Header) + payload.size());
  std::memcpy(bytes.data(), &h, sizeof(Header));
  if (!payload.empty()) std::memcpy(bytes.data() + sizeof(Header), payload.data(), payload.size());
  size_t sent = 0;
  while (sent < bytes.size()) {
    iovec iov{bytes.data() + sent, bytes.size() - sent};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    std::vector<char> ctl;
    if (sent == 0 && !fds.empty()) {
      ctl.assign(CMSG_SPACE(sizeof(int) * fds.size()), 0);
      mh.msg_control = ctl.data();
      mh.msg_controllen = ctl.size();
      cmsghdr* c = CMSG_FIRSTHDR(&mh);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

// One message: the header, then msg_size - 16 bytes of payload; fds that
// came with any part of it are kept. An error: the errno (EPIPE at EOF,
// EPROTO for a size below the header's).
inline Result<Message> recv_message(int fd) {
  Message m;
  auto read_all = [&](uint8_t* p, size_t n) -> int {
    size_t got = 0;
    while (got < n) {
      iovec iov{p + got, n - got};
      char ctl[CMSG_SPACE(sizeof(int) * 16)];
      msghdr mh{};
      mh.msg_iov = &iov;
      mh.msg_iovlen = 1;
      mh.msg_control = ctl;
      mh.msg_controllen = sizeof(ctl);
      ssize_t r = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return errno;
      if (r == 0) return EPIPE;
      for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k; ++i) {
          int x;
          std::memcpy(&x, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
          m.fds.emplace_back(x);
        }
      }
      got += static_cast<size_t>(r);
    }
    return 0;
  };
  if (int e = read_all(reinterpret_cast<uint8_t*>(&m.hdr), sizeof(Header))) return Error(e, "header");
  if (m.hdr.msg_size < sizeof(Header)) return Error(EPROTO, "message size below the header's");
  if (m.hdr.msg_size > (64u << 20)) return Error(EMSGSIZE, "message size beyond what a test expects");
  m.payload.resize(m.hdr.msg_size - sizeof(Header));
  if (!m.payload.empty())
    if (int e = read_all(m.payload.data(), m.payload.size())) return Error(e, "payload");
  return m;
}

}  // namespace uvfio::spec
