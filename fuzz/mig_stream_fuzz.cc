// SPDX-License-Identifier: BSD-3-Clause
// libFuzzer target: the mlx5 migration stream as the RESUMING side of the
// real mlx5_vfio_pci takes it — the record parser, its size bounds, the
// chunked load into the VF through the PF's firmware — then STOP (the
// image is loaded) and RUNNING. A stream the device refuses fails the STOP
// arc and leaves it RESUMING (as the kernel's mlx5 driver does), and the
// reset a VMM would do brings RUNNING back: both checked, a device
// elsewhere is a finding. Nothing may crash, hang, allocate beyond the
// stream's bounds or trip a sanitizer.
//
// UVFIO_FUZZ_WRITE_SEED=FILE writes a valid stream (saved from the other VF
// after writing some device memory) to FILE and exits: the seed corpus.
#include <linux/vfio.h>
#include <sys/mman.h>

#include <cstdint>
#include <cstring>
#include <fstream>

#include "common.h"
#include "vfio/device.h"
#include "vfio/migration.h"

using namespace uvfio;

namespace {

Result<std::shared_ptr<vfio::MigrationFile>> set_state(vfio::Device& dev, vfio::MigState s) {
  vfio_device_feature_mig_state st{};
  st.device_state = static_cast<uint32_t>(s);
  st.data_fd = -1;
  std::vector<uint8_t> p(sizeof(st));
  std::memcpy(p.data(), &st, sizeof(st));
  auto r = TRY(dev.device_feature(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, p));
  return r.file;
}

// A real stream: device memory written, then saved through STOP_COPY.
std::vector<uint8_t> save_stream(vfio::Device& src) {
  auto bar = src.region_mmap(2);
  if (bar && bar->size) {
    void* p = mmap(nullptr, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, bar->fd, static_cast<off_t>(bar->fd_offset));
    if (p != MAP_FAILED) {
      std::memset(p, 0x5a, 8192);
      munmap(p, 8192);
    }
  }
  std::vector<uint8_t> out;
  if (!set_state(src, vfio::MigState::kStop)) return out;
  auto f = set_state(src, vfio::MigState::kStopCopy);
  if (!f || !*f) return out;
  std::vector<uint8_t> buf(1 << 16);
  for (;;) {
    auto n = (*f)->read(buf);
    if (!n || *n == 0) break;
    out.insert(out.end(), buf.begin(), buf.begin() + static_cast<long>(*n));
  }
  (void)set_state(src, vfio::MigState::kStop);
  (void)set_state(src, vfio::MigState::kRunning);
  return out;
}

struct Env {
  std::unique_ptr<daemon::System> sys;
  vfio::Device* dst = nullptr;
  Env() {
    sys = fuzz::make_system(fuzz::kAllModels);
    vfio::Device* src = sys->vfio_device(Bdf(0, 1, 0, 1));
    dst = sys->vfio_device(Bdf(0, 1, 0, 2));
    if (!src || !dst || !src->open() || !dst->open()) std::abort();
    if (const char* seed = std::getenv("UVFIO_FUZZ_WRITE_SEED")) {
      auto s = save_stream(*src);
      {
        std::ofstream out(seed, std::ios::binary);
        out.write(reinterpret_cast<const char*>(s.data()), static_cast<long>(s.size()));
      }
      std::fprintf(stderr, "wrote a %zu-byte stream to %s\n", s.size(), seed);
      std::_Exit(s.empty() ? 1 : 0);  // not a finding: no fuzzer report
    }
    src->close();
  }
  // Closed before the system goes: unbinding waits for the user to let go.
  ~Env() { dst->close(); }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Env env;
  vfio::Device& dev = *env.dst;
  auto f = set_state(dev, vfio::MigState::kResuming);
  if (!f || !*f) {
    (void)dev.reset();
    return 0;
  }
  // The stream in pieces of varying size, as a VMM's reads hand them over.
  size_t off = 0, piece = 1;
  while (off < size) {
    size_t n = std::min(size - off, piece);
    auto w = (*f)->write(std::span<const uint8_t>(data + off, n));
    if (!w || *w == 0) break;
    off += *w;
    piece = piece * 3 + 1;
  }
  // mlx5vf_pci_step_device_state_locked(): RESUMING -> STOP loads the image;
  // a refused one fails the arc and the device stays RESUMING (the kernel's
  // driver does not move to ERROR); the VMM then resets it. Either way the
  // device must end where the rules say, or it is a finding.
  bool loaded = static_cast<bool>(set_state(dev, vfio::MigState::kStop));
  if (!loaded) {
    if (dev.mig_state() != vfio::MigState::kResuming) {
      std::fprintf(stderr, "mig_stream_fuzz: a refused stream left state %d, not RESUMING\n",
                   static_cast<int>(dev.mig_state()));
      std::abort();
    }
    if (!dev.reset() || dev.mig_state() != vfio::MigState::kRunning) {
      std::fprintf(stderr, "mig_stream_fuzz: the reset after a refused stream did not bring RUNNING back\n");
      std::abort();
    }
    return 0;
  }
  if (!set_state(dev, vfio::MigState::kRunning)) {
    std::fprintf(stderr, "mig_stream_fuzz: a loaded device cannot run\n");
    std::abort();
  }
  return 0;
}
