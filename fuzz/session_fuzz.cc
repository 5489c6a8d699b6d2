// SPDX-License-Identifier: BSD-3-Clause
// libFuzzer target: arbitrary bytes as a vfio-user stream into a session on
// a real VFIO device (the generic endpoint under vfio_pci): the decoder,
// every command's validation and the device contract behind it. No input
// may crash, hang, leak or trip a sanitizer.
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>

#include "base/log.h"
#include "daemon/system.h"
#include "vfio_user/message.h"
#include "vfio_user/session.h"

using namespace uvfio;

namespace {

struct Env {
  std::unique_ptr<daemon::System> sys;
  vfio::Device* dev = nullptr;
  Env() {
    log::set_level(log::Level::kError);
    auto spec = daemon::parse_topology(
        "[[device]]\naddress = \"0000:00:03.0\"\nmodel = \"endpoint\"\ndriver_override = \"vfio-pci\"\n", "fuzz");
    sys = std::move(*daemon::System::create(*spec));
    dev = sys->vfio_device(Bdf(0, 0, 3, 0));
    if (!dev || !dev->open()) std::abort();
  }
  // Close before the system goes: unbinding waits for the user to let go.
  ~Env() { dev->close(); }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Env env;
  if (size > (1 << 20)) return 0;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 0;
  // The whole input is what a client sent, then it hung up.
  size_t off = 0;
  while (off < size) {
    ssize_t n = ::write(sv[0], data + off, size - off);
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
  ::close(sv[0]);
  {
    vfio_user::Session session(*env.dev);
    vfio_user::MessageReader reader(sv[1]);
    vfio_user::Message m;
    vfio_user::Reply r;
    for (int i = 0; i < 256; ++i) {
      if (!reader.next_into(m)) break;
      (void)session.handle(m, r);
    }
  }
  ::close(sv[1]);
  env.dev->release_user_resources();
  return 0;
}
