// SPDX-License-Identifier: BSD-3-Clause
// A raw vfio-user connection for tests: messages built by hand from the
// spec's layouts (protocol/spec.h, no code of src/), replies read as they
// come, so tests can send what a well-behaved client never would and
// pipeline as QEMU does.
#pragma once

#include <sys/socket.h>
#include <sys/un.h>

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "base/unique_fd.h"
#include "protocol/spec.h"

namespace uvfio::e2e {

// The peer's bytes come from the spec (protocol/spec.h), never from src/.
using namespace spec;

class Raw {
 public:
  explicit Raw(const std::string& path) {
    fd_ = UniqueFd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof(a.sun_path), "%s", path.c_str());
    connected_ = ::connect(fd_.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
    timeval tv{5, 0};
    setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  }
  bool connected() const { return connected_; }
  int fd() const { return fd_.get(); }
  void send(uint16_t cmd, std::vector<uint8_t> payload, uint32_t flags = 0, std::vector<int> fds = {},
            int32_t size_delta = 0) {
    Header h{id_++, cmd, 0, flags, 0};
    ASSERT_TRUE(send_message(fd_.get(), h, payload, fds, size_delta));
  }
  void send_bytes(const void* p, size_t n) { ASSERT_EQ(::send(fd_.get(), p, n, MSG_NOSIGNAL), static_cast<ssize_t>(n)); }
  // The reply's errno (0 for success).
  int reply_errno(Message* out = nullptr) {
    auto m = recv_message(fd_.get());
    if (!m) return -1000 - m.error().code;
    if ((m->hdr.flags & kFlagsTypeMask) != kTypeReply) return -2000;
    int e = (m->hdr.flags & kFlagError) ? static_cast<int>(m->hdr.error_no) : 0;
    if (out) *out = std::move(*m);
    return e;
  }
  int call(uint16_t cmd, std::vector<uint8_t> payload, std::vector<int> fds = {}, Message* out = nullptr) {
    send(cmd, std::move(payload), 0, std::move(fds));
    return reply_errno(out);
  }
  bool closed_by_peer() {
    char c;
    ssize_t n = recv(fd_.get(), &c, 1, 0);
    return n == 0 || (n < 0 && errno == ECONNRESET);
  }
  void version() {
    std::string js = R"({"capabilities":{"max_msg_fds":16,"write_multiple":true}})";
    std::vector<uint8_t> p{0, 0, 0, 0};
    p.insert(p.end(), js.begin(), js.end());
    p.push_back(0);
    ASSERT_EQ(call(kVersion, p), 0);
  }
  bool alive() {
    DeviceInfoMsg i{sizeof(DeviceInfoMsg), 0, 0, 0};  // the spec's (and QEMU's) 16 bytes
    std::vector<uint8_t> p(sizeof(i));
    std::memcpy(p.data(), &i, sizeof(i));
    return call(kDeviceGetInfo, p) == 0;
  }

 private:
  UniqueFd fd_;
  bool connected_ = false;
  uint16_t id_ = 1;
};

// The protocol suites' topology: the generic endpoint under vfio-pci at
// 00:03.0, and an mlx5 PF at 00:04.0 whose VF 00:10.0 is under mlx5_vfio_pci.
inline const char* kEndpointAndVfTopology = R"(
[[device]]
address = "0000:00:03.0"
model = "endpoint"
driver_override = "vfio-pci"

[[device]]
address = "0000:00:04.0"
model = "mlx5-pf"
total_vfs = 2
first_vf_offset = 0x60
num_vfs = 1
vf_driver_override = "mlx5_vfio_pci"
)";

template <class T>
std::vector<uint8_t> b(const T& v) {
  std::vector<uint8_t> p(sizeof(T));
  std::memcpy(p.data(), &v, sizeof(T));
  return p;
}

// DMA_MAP as the spec lays it out: u32 argsz (32), u32 flags (READ 1,
// WRITE 2), u64 offset (into the fd), u64 address, u64 size.
inline std::vector<uint8_t> dma_map_msg(uint64_t address, uint64_t size, uint64_t offset, uint32_t flags = 3) {
  std::vector<uint8_t> p(32);
  uint32_t argsz = 32;
  std::memcpy(p.data(), &argsz, 4);
  std::memcpy(p.data() + 4, &flags, 4);
  std::memcpy(p.data() + 8, &offset, 8);
  std::memcpy(p.data() + 16, &address, 8);
  std::memcpy(p.data() + 24, &size, 8);
  return p;
}

// DMA_UNMAP as the spec lays it out: u32 argsz (24), u32 flags, u64
// address, u64 size.
inline std::vector<uint8_t> dma_unmap_msg(uint64_t address, uint64_t size, uint32_t flags = 0) {
  std::vector<uint8_t> p(24);
  uint32_t argsz = 24;
  std::memcpy(p.data(), &argsz, 4);
  std::memcpy(p.data() + 4, &flags, 4);
  std::memcpy(p.data() + 8, &address, 8);
  std::memcpy(p.data() + 16, &size, 8);
  return p;
}

// DEVICE_SET_IRQS as the spec lays it out (struct vfio_irq_set: u32 argsz
// (20), flags, index, start, count); eventfds travel as SCM_RIGHTS fds.
inline std::vector<uint8_t> irq_set_msg(uint32_t flags, uint32_t index, uint32_t start, uint32_t count) {
  uint32_t w[5] = {20, flags, index, start, count};
  std::vector<uint8_t> p(sizeof(w));
  std::memcpy(p.data(), w, sizeof(w));
  return p;
}

inline std::vector<uint8_t> region_access(uint32_t region, uint64_t off, uint32_t count, std::vector<uint8_t> data = {}) {
  RegionAccessMsg a{off, region, count};
  // Sized once and filled: GCC 12 at -O3 misreads insert() after a
  // reallocation as an out-of-bounds memcpy (-Warray-bounds).
  std::vector<uint8_t> p(sizeof(a) + data.size());
  std::memcpy(p.data(), &a, sizeof(a));
  if (!data.empty()) std::memcpy(p.data() + sizeof(a), data.data(), data.size());
  return p;
}

}  // namespace uvfio::e2e
