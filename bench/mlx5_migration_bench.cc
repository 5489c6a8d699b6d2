// SPDX-License-Identifier: BSD-3-Clause
// mlx5 migration and DMA-engine numbers, each against memcpy in the same run:
//  - STOP_COPY throughput: bytes of device state streamed per second through
//    the whole path (firmware SAVE by DMA into the PF driver's buffer, the
//    stream records, reading the saving file), vs memcpy bandwidth;
//  - PRE_COPY convergence: with 256 MiB of device memory and ~1% of it
//    rewritten between pre-copy rounds, the bytes left for STOP_COPY as a
//    fraction of the total;
//  - the VF's DMA engine copying guest memory (1 MiB descriptors through the
//    IOMMU domain), vs memcpy.
// Usage: mlx5_migration_bench [device memory, e.g. 256M]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>

#include "base/log.h"
#include "daemon/system.h"
#include "hw/mlx5/pf.h"
#include "hw/mlx5/vf.h"

using namespace uvfio;
using namespace hw::mlx5;
using Clock = std::chrono::steady_clock;
using S = vfio::MigState;

namespace {

double secs(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double memcpy_gbps(size_t bytes) {
  std::vector<uint8_t> a(bytes, 1), b(bytes);
  auto t0 = Clock::now();
  std::memcpy(b.data(), a.data(), bytes);
  double s = secs(t0);
  volatile uint8_t sink = b[bytes / 2];
  (void)sink;
  return bytes / s / 1e9;
}

Result<vfio::FeatureReply> set_state(vfio::Device* d, S s) {
  vfio_device_feature_mig_state st{static_cast<uint32_t>(s), -1};
  return d->device_feature(VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
                           std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&st), sizeof(st)));
}

uint64_t drain(vfio::MigrationFile& f) {
  std::vector<uint8_t> buf(1 << 20);
  uint64_t total = 0;
  for (;;) {
    auto n = f.read(buf);
    if (!n || *n == 0) return total;
    total += *n;
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string mem = argc > 1 ? argv[1] : "256M";
  log::set_level(log::Level::kError);
  auto topo = daemon::seed_topology();
  for (auto& d : topo.devices)
    if (d.model == daemon::Model::kMlx5Pf) d.device_memory = *daemon::parse_size(mem);
  auto sys = std::move(*daemon::System::create(topo));
  Bdf vfb(0, 8, 0, 0);
  vfio::Device* dev = sys->vfio_device(vfb);
  if (!dev || !dev->open()) return 1;
  Vf& vf = static_cast<Vf&>(*sys->fabric().find(vfb));
  hw::BarMemory* dm = vf.bar_memory(2);
  std::mt19937_64 rng(42);
  for (uint64_t i = 0; i < dm->size(); i += 8) {
    uint64_t v = rng();
    std::memcpy(dm->data() + i, &v, 8);
  }
  std::printf("# device memory %s (%llu bytes)\n", mem.c_str(), static_cast<unsigned long long>(dm->size()));

  // 1. STOP_COPY throughput vs memcpy, five rounds, each a new migration
  // session interleaved with its memcpy baseline: the first migration of
  // the process (buffers first touched) and the later ones.
  std::vector<double> ratios;
  for (int round = 0; round < 5; ++round) {
    double mc = memcpy_gbps(dm->size());
    (void)set_state(dev, S::kStop);
    auto t0 = Clock::now();
    auto sc = set_state(dev, S::kStopCopy);
    if (!sc || !sc->file) return 1;
    uint64_t bytes = drain(*sc->file);
    double stop_copy = bytes / secs(t0) / 1e9;
    (void)set_state(dev, S::kStop);
    (void)set_state(dev, S::kRunning);
    ratios.push_back(stop_copy / mc);
    std::printf("%-44s %10.2f GB/s  memcpy %6.2f GB/s  ratio %.2f\n",
                round == 0 ? "STOP_COPY stream, first migration" : "STOP_COPY stream, later migration", stop_copy,
                mc, stop_copy / mc);
  }
  std::vector<double> later(ratios.begin() + 1, ratios.end());
  std::sort(later.begin(), later.end());
  std::printf("%-44s %10.2f\n", "STOP_COPY ratio, median of later", later[later.size() / 2]);

  // 2. PRE_COPY with ~1% rewritten between rounds.
  auto pre = set_state(dev, S::kPreCopy);
  if (!pre || !pre->file) return 1;
  uint64_t total = drain(*pre->file);  // the initial image
  uint64_t pages = dm->size() / 4096;
  for (int round = 0; round < 3; ++round) {
    for (uint64_t k = 0; k < pages / 100; ++k) dm->data()[(rng() % pages) * 4096 + rng() % 4096] ^= 0xff;
    total += drain(*pre->file);
  }
  for (uint64_t k = 0; k < pages / 100; ++k) dm->data()[(rng() % pages) * 4096 + rng() % 4096] ^= 0xff;
  auto stop = set_state(dev, S::kStopCopy);
  if (!stop) return 1;
  uint64_t final_bytes = drain(*pre->file);
  total += final_bytes;
  std::printf("%-44s %10llu of %llu bytes = %.2f%% (goal <= 3%%)\n", "left for STOP_COPY after PRE_COPY (1%/round)",
              static_cast<unsigned long long>(final_bytes), static_cast<unsigned long long>(dm->size()),
              100.0 * final_bytes / dm->size());
  std::printf("%-44s %10llu bytes\n", "the whole stream (PRE_COPY + STOP_COPY)", static_cast<unsigned long long>(total));
  (void)set_state(dev, S::kStop);
  (void)set_state(dev, S::kRunning);

  // 3. The DMA engine: COPY of 1 MiB descriptors through the IOMMU.
  const uint64_t kGuest = 64 << 20, kRing = 0x1000, kCq = 0x10000, kSrc = 1 << 20, kDst = 32 << 20;
  std::vector<uint8_t> guest(kGuest, 3);
  if (!dev->iommu().map_host(0, kGuest, guest.data(), hw::kDmaRead | hw::kDmaWrite)) return 1;
  auto w = [&](uint32_t reg, uint64_t v, unsigned width = 4) {
    (void)dev->region_write(0, reg, std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&v), width));
  };
  uint16_t cmd = PCI_COMMAND_MASTER | PCI_COMMAND_MEMORY;
  (void)dev->region_write(VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND,
                          std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&cmd), 2));
  w(vfreg::kSqBase, kRing, 8);
  w(vfreg::kSqSize, 256);
  w(vfreg::kCqBase, kCq, 8);
  w(vfreg::kCqSize, 256);
  w(vfreg::kCtrl, vfreg::kCtrlEnable);
  const uint32_t n = 24;
  for (uint32_t i = 0; i < n; ++i) {
    VfDescriptor d{static_cast<uint8_t>(VfOp::kCopy), 0, 0, 1 << 20, kSrc + (i % 24) * (1ull << 20),
                   kDst + (i % 24) * (1ull << 20), i};
    std::memcpy(guest.data() + kRing + i * sizeof(d), &d, sizeof(d));
  }
  std::vector<double> eratios;
  for (int round = 0; round < 5; ++round) {
    double mc2 = memcpy_gbps(uint64_t{n} << 20);
    w(vfreg::kCtrl, 0);  // reset the rings: the same 24 descriptors again
    w(vfreg::kCtrl, vfreg::kCtrlEnable);
    auto t0 = Clock::now();
    w(vfreg::kSqTail, n);
    vf.wait_idle(std::chrono::seconds(30));
    double engine = (uint64_t{n} << 20) / secs(t0) / 1e9;
    eratios.push_back(engine / mc2);
    std::printf("%-44s %10.2f GB/s  memcpy %6.2f GB/s  ratio %.2f\n", "DMA engine COPY, 1 MiB descriptors", engine,
                mc2, engine / mc2);
  }
  std::sort(eratios.begin(), eratios.end());
  std::printf("%-44s %10.2f\n", "DMA engine ratio, median", eratios[eratios.size() / 2]);
  dev->close();
  return 0;
}
