// SPDX-License-Identifier: BSD-3-Clause
// Micro-benchmarks of the vfio-pci-core access paths, in process. Each
// virtualized path has its raw-hardware baseline in the same run, so the
// report is a ratio (docs/PERFORMANCE.md): what the virtualization costs on
// top of the emulated hardware access it wraps.
#include <benchmark/benchmark.h>

#include "base/log.h"
#include "daemon/system.h"

namespace uvfio {
namespace {

const char* kTopology = R"(
[[device]]
address = "0000:00:03.0"
model = "endpoint"
driver_override = "vfio-pci"
)";

struct Env {
  std::unique_ptr<daemon::System> sys;
  bus::pci::PciDevice* pdev = nullptr;
  vfio::Device* dev = nullptr;
  Env() {
    auto spec = daemon::parse_topology(kTopology, "bench");
    log::set_level(log::Level::kWarn);
    sys = std::move(*daemon::System::create(*spec));
    pdev = sys->pci().find(Bdf(0, 0, 3, 0));
    dev = sys->vfio_device(Bdf(0, 0, 3, 0));
    (void)dev->open();
  }
  ~Env() { dev->close(); }
};

Env& env() {
  static Env e;
  return e;
}

// Raw: a config dword through the fabric, as the host's config cycle.
void BM_ConfigRead_Hardware(benchmark::State& s) {
  Env& e = env();
  uint16_t off = static_cast<uint16_t>(s.range(0));
  for (auto _ : s) benchmark::DoNotOptimize(e.pdev->config_read(off, 4));
}

// Virtualized: the same dword through the vfio config region.
void BM_ConfigRead_Vfio(benchmark::State& s) {
  Env& e = env();
  uint16_t off = static_cast<uint16_t>(s.range(0));
  uint32_t v;
  std::span<uint8_t> buf(reinterpret_cast<uint8_t*>(&v), 4);
  for (auto _ : s) {
    (void)e.dev->region_read(VFIO_PCI_CONFIG_REGION_INDEX, off, buf);
    benchmark::DoNotOptimize(v);
  }
}

// 0x00 ids (fully virtual), 0x04 command (mixed), 0x10 BAR0 (emulated),
// 0x40 PM (capability, partly virtual).
BENCHMARK(BM_ConfigRead_Hardware)->Arg(0x00)->Arg(0x04)->Arg(0x10)->Arg(0x40);
BENCHMARK(BM_ConfigRead_Vfio)->Arg(0x00)->Arg(0x04)->Arg(0x10)->Arg(0x40);

void BM_BarRead_Hardware(benchmark::State& s) {
  Env& e = env();
  for (auto _ : s) benchmark::DoNotOptimize(e.pdev->bar_read(0, 8, 4));
}

void BM_BarRead_Vfio(benchmark::State& s) {
  Env& e = env();
  uint32_t v;
  std::span<uint8_t> buf(reinterpret_cast<uint8_t*>(&v), 4);
  for (auto _ : s) {
    (void)e.dev->region_read(0, 8, buf);
    benchmark::DoNotOptimize(v);
  }
}

BENCHMARK(BM_BarRead_Hardware);
BENCHMARK(BM_BarRead_Vfio);

}  // namespace
}  // namespace uvfio

BENCHMARK_MAIN();
