// SPDX-License-Identifier: BSD-3-Clause
// The mlx5 VF's work queue COPY throughput when guest memory is reached
// through DMA_READ/DMA_WRITE messages (QEMU's default RAM: maps without an
// fd, QEMU's layout) against the same work with guest memory in a shared
// memfd (the device maps it), in the same run, rounds interleaved.
//
// A minimal client (raw messages, not the client library) plays the VMM:
// rings and buffers live in its memory; in message mode it answers the
// device's DMA_READ/DMA_WRITE from that memory as QEMU 10.2 does (u64
// offset, u32 count, data at 12). One round: COPY descriptors of `size`
// bytes until `total` bytes moved; throughput from the doorbell to the last
// completion landing in the client's completion ring.
//
// Buffers are laid out one after another (the device merges the DMA of
// adjacent buffers into one message), or with `scattered` a gap of one
// buffer between any two (one message per buffer each way).
//
// Usage: dma_message_bench [size=65536] [total=64M] [rounds=5] [contiguous|scattered]
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "base/log.h"
#include "daemon/system.h"
#include "vfio_user/connection.h"
#include "vfio_user/message.h"
#include "vfio_user/server.h"

using namespace uvfio;
using namespace uvfio::vfio_user;
using Clock = std::chrono::steady_clock;

namespace {

const char* kTopology = R"(
[[device]]
address = "0000:00:04.0"
model = "mlx5-pf"
total_vfs = 1
first_vf_offset = 0x60
num_vfs = 1
vf_driver_override = "mlx5_vfio_pci"
)";

// docs/devices/mlx5-vf.md
enum : uint32_t { kSqBase = 0x10, kSqSize = 0x18, kSqTail = 0x1c, kCqBase = 0x28, kCqSize = 0x30, kCtrl = 0x3c };
constexpr uint64_t kIova = 0x100000;
constexpr uint32_t kRing = 256;

struct __attribute__((packed)) Desc {
  uint8_t op, flags;
  uint16_t rsvd;
  uint32_t len;
  uint64_t src, dst, cookie;
};
struct __attribute__((packed)) Compl {
  uint64_t cookie;
  uint32_t status, result;
};

class Vmm {
 public:
  Vmm(const std::string& sock, uint64_t mem_size, bool memfd) : size_(mem_size), memfd_(memfd) {
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof(a.sun_path), "%s", sock.c_str());
    if (connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) std::abort();
    mfd_ = memfd_create("guest", MFD_CLOEXEC);
    if (ftruncate(mfd_, static_cast<off_t>(size_)) != 0) std::abort();
    mem_ = static_cast<uint8_t*>(mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, mfd_, 0));
    std::memset(mem_, 0, size_);
    std::string js =
        R"({"capabilities": {"pgsizes": 4096, "max_msg_fds": 16, "max_dma_maps": 65535, "max_data_xfer_size": 1048576}})";
    std::vector<uint8_t> v{0, 0, 0, 0};
    v.insert(v.end(), js.begin(), js.end());
    v.push_back(0);
    call(kVersion, v);
    DmaMapMsg m{32, kDmaFlagRead | kDmaFlagWrite, 0, kIova, size_};
    call(kDmaMap, bytes(m), memfd_ ? mfd_ : -1);
    std::vector<uint8_t> cmd{0x06, 0x00};
    region_write(VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, cmd);
  }
  ~Vmm() {
    munmap(mem_, size_);
    close(mfd_);
    close(fd_);
  }
  uint8_t* mem() { return mem_; }
  void reg(uint32_t off, uint64_t v, unsigned w) {
    std::vector<uint8_t> d(w);
    std::memcpy(d.data(), &v, w);
    region_write(0, off, d);
  }
  // Rings the doorbell and serves the device's DMA until the completion
  // ring shows `tail` completions. Returns seconds.
  double run(uint32_t tail) {
    std::vector<uint8_t> d(4);
    std::memcpy(d.data(), &tail, 4);
    auto t0 = Clock::now();
    send(kRegionWrite, region(0, kSqTail, d));
    bool replied = false;
    auto* cq = reinterpret_cast<volatile Compl*>(mem_ + 0x4000);
    uint32_t want = tail;
    for (;;) {
      if (replied && cq[(want - 1) % kRing].cookie == want) break;
      if (memfd_ && replied) continue;  // the device writes our memory directly
      auto m = recv_message(fd_, 2 << 20);
      if (!m) std::abort();
      if ((m->hdr.flags & kFlagsTypeMask) == kTypeReply) {
        replied = true;
        continue;
      }
      serve_dma(*m);
    }
    return std::chrono::duration<double>(Clock::now() - t0).count();
  }

 private:
  template <class T>
  static std::vector<uint8_t> bytes(const T& v) {
    std::vector<uint8_t> b(sizeof(T));
    std::memcpy(b.data(), &v, sizeof(T));
    return b;
  }
  static std::vector<uint8_t> region(uint32_t r, uint64_t off, const std::vector<uint8_t>& d) {
    RegionAccessMsg a{off, r, static_cast<uint32_t>(d.size())};
    auto p = bytes(a);
    p.insert(p.end(), d.begin(), d.end());
    return p;
  }
  void send(uint16_t cmd, const std::vector<uint8_t>& p, int fd = -1) {
    Header h{id_++, cmd, 0, kTypeCommand, 0};
    int fds[1] = {fd};
    if (!send_message(fd_, h, p, fd >= 0 ? std::span<const int>(fds, 1) : std::span<const int>())) std::abort();
  }
  void call(uint16_t cmd, const std::vector<uint8_t>& p, int fd = -1) {
    send(cmd, p, fd);
    for (;;) {
      auto m = recv_message(fd_, 2 << 20);
      if (!m) std::abort();
      if ((m->hdr.flags & kFlagsTypeMask) != kTypeReply) {
        serve_dma(*m);
        continue;
      }
      if (m->hdr.flags & kFlagError) {
        std::fprintf(stderr, "command %u failed: %u\n", cmd, m->hdr.error_no);
        std::abort();
      }
      return;
    }
  }
  void region_write(uint32_t r, uint64_t off, const std::vector<uint8_t>& d) { call(kRegionWrite, region(r, off, d)); }
  // As QEMU 10.2's vfio_user_dma_read/write: u64 offset, u32 count, data at 12.
  void serve_dma(const Message& m) {
    QemuDmaRwMsg q;
    std::memcpy(&q, m.payload.data(), sizeof(q));
    uint8_t* p = mem_ + (q.offset - kIova);
    Header h{m.hdr.msg_id, m.hdr.command, 0, kTypeReply, 0};
    if (m.hdr.command == kDmaRead) {
      out_.assign(16 + q.count, 0);
      std::memcpy(out_.data(), &q, sizeof(q));
      std::memcpy(out_.data() + 12, p, q.count);
      if (!send_message(fd_, h, out_)) std::abort();
    } else {
      std::memcpy(p, m.payload.data() + 12, q.count);
      if (!send_message(fd_, h, {})) std::abort();
    }
  }
  int fd_ = -1, mfd_ = -1;
  uint64_t size_;
  bool memfd_;
  uint8_t* mem_ = nullptr;
  uint16_t id_ = 1;
  std::vector<uint8_t> out_;
};

double round_gbps(const std::string& sock, bool memfd, uint32_t size, uint64_t total, bool scattered) {
  uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(total / size, kRing - 1));
  uint64_t stride = scattered ? 2 * uint64_t{size} : size;
  uint64_t mem = 0x10000 + 2 * stride * n;
  mem = (mem + 0xfffff) & ~uint64_t{0xfffff};
  Vmm vmm(sock, mem, memfd);
  uint64_t moved = 0;
  double secs = 0;
  uint32_t tail = 0;
  vmm.reg(kCtrl, 0, 4);
  vmm.reg(kSqBase, kIova, 8);
  vmm.reg(kCqBase, kIova + 0x4000, 8);
  vmm.reg(kSqSize, kRing, 4);
  vmm.reg(kCqSize, kRing, 4);
  vmm.reg(kCtrl, 1, 4);
  while (moved < total) {
    for (uint32_t i = 0; i < n; ++i) {
      Desc d{1, 0, 0, size, kIova + 0x10000 + i * stride, kIova + 0x10000 + (n + i) * stride, tail + i + 1};
      std::memcpy(vmm.mem() + ((tail + i) % kRing) * sizeof(Desc), &d, sizeof(d));
    }
    tail += n;
    secs += vmm.run(tail);
    // Completions are consumed: move CQ_HEAD along.
    vmm.reg(0x38, tail, 4);
    moved += uint64_t{n} * size;
  }
  return static_cast<double>(moved) / secs / 1e9;
}

uint64_t parse_size(const char* s) {
  char* end;
  uint64_t v = std::strtoull(s, &end, 0);
  if (*end == 'K') v <<= 10;
  if (*end == 'M') v <<= 20;
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  uint32_t size = argc > 1 ? static_cast<uint32_t>(parse_size(argv[1])) : 65536;
  uint64_t total = argc > 2 ? parse_size(argv[2]) : (64 << 20);
  int rounds = argc > 3 ? std::atoi(argv[3]) : 5;
  bool scattered = argc > 4 && std::string(argv[4]) == "scattered";
  log::set_level(log::Level::kWarn);
  auto spec = daemon::parse_topology(kTopology, "bench");
  auto sys = daemon::System::create(*spec);
  if (!sys) return 1;
  char dir[] = "/tmp/uvfio-dmabench-XXXXXX";
  if (!mkdtemp(dir)) return 1;
  ServerOptions so;
  so.dma_layout = DmaLayoutMode::kQemu;
  so.poll_window = std::chrono::microseconds(20);  // uvfiod's default --poll-us
  auto server = Server::start((*sys)->vfio_registry(), std::string(dir) + "/vfio-user", so);
  if (!server) return 1;
  std::string sock = std::string(dir) + "/vfio-user/0000:00:10.0.sock";
  std::printf("# mlx5 VF COPY of %u-byte descriptors (%s buffers), %llu MiB per round, %d rounds interleaved\n",
              size, scattered ? "scattered" : "contiguous", static_cast<unsigned long long>(total >> 20), rounds);
  std::vector<double> fd_gbps, msg_gbps;
  for (int r = 0; r < rounds; ++r) {
    fd_gbps.push_back(round_gbps(sock, true, size, total, scattered));
    msg_gbps.push_back(round_gbps(sock, false, size, total, scattered));
  }
  std::sort(fd_gbps.begin(), fd_gbps.end());
  std::sort(msg_gbps.begin(), msg_gbps.end());
  double f = fd_gbps[fd_gbps.size() / 2], m = msg_gbps[msg_gbps.size() / 2];
  std::printf("%-34s %10s %10s %10s\n", "path", "min GB/s", "median", "max");
  std::printf("%-34s %10.3f %10.3f %10.3f\n", "memfd (device maps guest RAM)", fd_gbps.front(), f, fd_gbps.back());
  std::printf("%-34s %10.3f %10.3f %10.3f\n", "messages (QEMU layout)", msg_gbps.front(), m, msg_gbps.back());
  std::printf("ratio messages/memfd (median): %.3f\n", m / f);
  server->reset();
  rmdir((std::string(dir) + "/vfio-user").c_str());
  rmdir(dir);
  return 0;
}
