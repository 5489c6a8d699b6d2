// SPDX-License-Identifier: BSD-3-Clause
// libFuzzer target: the vfio-user server over a real socket, as a hostile
// client drives it — raw bytes and well-formed messages with fds attached
// (memfds it later shrinks, eventfds, files that are neither), DMA maps with
// and without fds, and answers to the server's own DMA_READ/DMA_WRITE
// requests (right, wrong-sized, errors, never). The real event-driven
// server, session validation, VFIO devices (the generic endpoint under
// vfio-pci, an mlx5 VF under mlx5_vfio_pci) and the DMA path back to the
// client. Each input is one client connection; the next one is served
// after the server has cleaned up after it.
#include <fuzzer/FuzzedDataProvider.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <vector>

#include "base/unique_fd.h"
#include "common.h"
#include "vfio_user/connection.h"
#include "vfio_user/message.h"
#include "vfio_user/server.h"

using namespace uvfio;
using namespace uvfio::vfio_user;

namespace {

struct Env {
  std::string dir;
  std::unique_ptr<daemon::System> sys;
  std::unique_ptr<Server> server;
  Env() {
    char t[] = "/tmp/uvfio-fuzz-XXXXXX";
    if (!mkdtemp(t)) std::abort();
    dir = t;
    sys = fuzz::make_system(fuzz::kAllModels);
    ServerOptions o;
    o.reactors = 1;
    o.client_timeout = std::chrono::milliseconds(250);  // stalled streams go quickly
    auto s = Server::start(sys->vfio_registry(), dir + "/vfio-user", o);
    if (!s) std::abort();
    server = std::move(*s);
  }
  ~Env() {
    server.reset();
    sys.reset();
    std::string cmd = "rm -rf " + dir;
    (void)!std::system(cmd.c_str());
  }
};

UniqueFd connect_to(const std::string& path) {
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof(a.sun_path), "%s", path.c_str());
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) return UniqueFd();
  return fd;
}

// Reads what the server has sent (waiting up to `ms` for the first
// message); answers its DMA requests as `in` says. True once the reply to
// `want` (if any) arrived; false on EOF.
struct Client {
  int fd;
  FuzzedDataProvider& in;
  bool eof = false;

  void answer(const Message& m) {
    Header h{m.hdr.msg_id, m.hdr.command, 0, kTypeReply, 0};
    uint8_t how = in.remaining_bytes() ? in.ConsumeIntegralInRange<uint8_t>(0, 3) : 0;
    std::vector<uint8_t> p;
    if (how == 3) return;  // never answered
    if (how == 2) {
      h.flags |= kFlagError;
      h.error_no = EFAULT;
    } else if (m.payload.size() >= 16) {
      // Right-sized for either layout's read (the header echoed, data after),
      // or something else.
      uint64_t count = 0;
      std::memcpy(&count, m.payload.data() + 8, 8);
      if (m.hdr.command == kDmaRead) p.assign(m.payload.begin(), m.payload.begin() + 16), p.resize(16 + (count & 0xfffff));
      else p.assign(m.payload.begin(), m.payload.begin() + 16);
      if (how == 1) p.resize(in.ConsumeIntegralInRange<size_t>(0, 64));
    }
    (void)send_message(fd, h, p);
  }
  bool pump(int ms, int want = -1) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    for (;;) {
      int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                      deadline - std::chrono::steady_clock::now())
                                      .count());
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, std::max(0, left)) <= 0) return false;
      auto m = recv_message(fd);
      if (!m) {
        eof = true;
        return false;
      }
      if ((m->hdr.flags & kFlagsTypeMask) == kTypeCommand && (m->hdr.command == kDmaRead || m->hdr.command == kDmaWrite)) {
        answer(*m);
        continue;
      }
      if (want >= 0 && m->hdr.msg_id == want) return true;
      if (left <= 0) return false;
    }
  }
};

std::vector<uint8_t> version_payload() {
  std::string js = R"({"capabilities":{"max_msg_fds":8,"max_data_xfer_size":65536,"write_multiple":true}})";
  std::vector<uint8_t> p{0, 0, 0, 0};
  p.insert(p.end(), js.begin(), js.end());
  p.push_back(0);
  return p;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Env env;
  if (size > 64 * 1024) return 0;
  FuzzedDataProvider in(data, size);
  const char* dev = in.ConsumeBool() ? "0000:01:00.1" : "0000:00:03.0";
  UniqueFd sock = connect_to(env.server->socket_path(dev));
  if (!sock) return 0;
  Client c{sock.get(), in};
  // Usually a proper VERSION first: the rest of the protocol is behind it.
  uint16_t id = 1;
  if (in.ConsumeBool()) {
    Header h{id++, kVersion, 0, kTypeCommand, 0};
    (void)send_message(sock.get(), h, version_payload());
  }
  UniqueFd mem(memfd_create("fuzz-guest", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  (void)!ftruncate(mem.get(), 1 << 20);
  UniqueFd efd(eventfd(0, EFD_CLOEXEC));
  UniqueFd null_fd(open("/dev/null", O_RDWR | O_CLOEXEC));
  bool framed = true;  // no raw bytes sent: the server reads whole messages
  for (int op = 0; op < 48 && in.remaining_bytes() > 0 && !c.eof; ++op) {
    switch (in.ConsumeIntegralInRange<int>(0, 5)) {
      case 0: {  // raw bytes
        auto b = in.ConsumeBytes<uint8_t>(in.ConsumeIntegralInRange<size_t>(0, 256));
        (void)::send(sock.get(), b.data(), b.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
        framed = framed && b.empty();
        break;
      }
      case 1: {  // a message with a valid header, any command and payload, fds maybe
        uint16_t cmd = in.ConsumeIntegralInRange<uint16_t>(0, 20);
        uint32_t flags = in.ConsumeBool() ? kFlagNoReply : 0;
        auto payload = in.ConsumeBytes<uint8_t>(in.ConsumeIntegralInRange<size_t>(0, 300));
        std::vector<int> fds;
        for (int k = in.ConsumeIntegralInRange<int>(0, 3); k > 0; --k) {
          int pick = in.ConsumeIntegralInRange<int>(0, 2);
          fds.push_back(pick == 0 ? mem.get() : pick == 1 ? efd.get() : null_fd.get());
        }
        Header h{id++, cmd, 0, kTypeCommand | flags, 0};
        (void)send_message(sock.get(), h, payload, fds);
        break;
      }
      case 2: {  // DMA_MAP of the memfd (or without an fd), any window
        DmaMapMsg d{32, in.ConsumeIntegralInRange<uint32_t>(0, 3), in.ConsumeIntegralInRange<uint64_t>(0, 2 << 20),
                    in.ConsumeIntegralInRange<uint64_t>(0, 1 << 24) & ~uint64_t{0xfff},
                    in.ConsumeIntegralInRange<uint64_t>(0, 4 << 20)};
        std::vector<uint8_t> p(sizeof(d));
        std::memcpy(p.data(), &d, sizeof(d));
        Header h{id++, kDmaMap, 0, kTypeCommand, 0};
        int fds[1] = {mem.get()};
        (void)send_message(sock.get(), h, p, in.ConsumeBool() ? std::span<const int>(fds, 1) : std::span<const int>());
        break;
      }
      case 3:  // the client shrinks or grows its memory under the server
        (void)!ftruncate(mem.get(), static_cast<off_t>(in.ConsumeIntegralInRange<int>(0, 300)) * 4096);
        break;
      case 4:  // read what came back, answering DMA requests
        (void)c.pump(in.ConsumeIntegralInRange<int>(0, 1));
        break;
      case 5: {  // a region access with sane framing
        RegionAccessMsg a{in.ConsumeIntegralInRange<uint64_t>(0, 1 << 16), in.ConsumeIntegralInRange<uint32_t>(0, 12),
                          in.ConsumeIntegralInRange<uint32_t>(0, 64)};
        bool write = in.ConsumeBool();
        std::vector<uint8_t> p(sizeof(a));
        std::memcpy(p.data(), &a, sizeof(a));
        if (write) {
          auto d = in.ConsumeBytes<uint8_t>(a.count);
          p.insert(p.end(), d.begin(), d.end());
        }
        Header h{id++, static_cast<uint16_t>(write ? kRegionWrite : kRegionRead), 0, kTypeCommand, 0};
        (void)send_message(sock.get(), h, p);
        break;
      }
    }
  }
  // A final request the server must answer (unless it closed on us, or raw
  // bytes left it inside a message), with its DMA requests answered
  // meanwhile; then the client hangs up.
  if (!c.eof) {
    DeviceInfoMsg i{sizeof(DeviceInfoMsg), 0, 0, 0};
    std::vector<uint8_t> p(sizeof(i));
    std::memcpy(p.data(), &i, sizeof(i));
    Header h{0xfffe, kDeviceGetInfo, 0, kTypeCommand, 0};
    (void)send_message(sock.get(), h, p);
    (void)c.pump(framed ? 20 : 2, 0xfffe);
  }
  return 0;
}
