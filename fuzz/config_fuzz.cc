// SPDX-License-Identifier: BSD-3-Clause
// libFuzzer target: config-space reads and writes to every device model —
// the bridge, the generic endpoint, the mlx5 PF (SR-IOV, MSI-X, FLR) and its
// VFs — both as config cycles on the fabric (what the host's bus sees) and
// through vfio-pci-core's virtualized config region (what a VM sees), with
// every width and offset. Writes may enable or disable VFs, reset functions
// and make devices vanish; nothing may crash, hang or trip a sanitizer.
// The VFIO devices an input touches stay open until its end (or until a
// write that could remove devices).
#include <fuzzer/FuzzedDataProvider.h>
#include <linux/vfio.h>

#include <cstdint>
#include <cstdio>
#include <map>

#include "common.h"
#include "hw/fabric.h"
#include "vfio/device.h"

using namespace uvfio;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static std::unique_ptr<daemon::System> sys;
  static size_t functions = 0;
  static unsigned runs = 0;
  static std::map<Bdf, uint32_t> bus_numbers;  // each bridge's primary/secondary/subordinate at build
  auto bridges = [] {
    std::map<Bdf, uint32_t> m;
    for (hw::Function* f : sys->fabric().functions())
      if (f->is_bridge()) m[f->bdf()] = f->config_read(PCI_PRIMARY_BUS, 4) & 0xffffff;
    return m;
  };
  auto rebuild = [&] {
    sys.reset();
    sys = fuzz::make_system(fuzz::kAllModels);
    functions = sys->fabric().functions().size();
    bus_numbers = bridges();
  };
  if (!sys || ++runs % 5000 == 0) rebuild();
  FuzzedDataProvider in(data, size);
  // VFIO devices stay open across the input's accesses, as a VM holds
  // them while the host touches their config space. Only a write to a
  // function that is neither an endpoint nor a VF (the PF's SR-IOV control
  // or FLR, a bridge's bus numbers) can remove devices, and removal waits
  // for their users: everything is closed before such a write.
  std::map<Bdf, vfio::Device*> opened;
  auto close_all = [&] {
    for (auto& [b, d] : opened) d->close();
    opened.clear();
  };
  for (int op = 0; op < 64 && in.remaining_bytes() > 0; ++op) {
    auto fns = sys->fabric().functions();
    if (fns.empty()) break;
    hw::Function* fn = fns[in.ConsumeIntegralInRange<size_t>(0, fns.size() - 1)];
    Bdf bdf = fn->bdf();
    uint8_t kind = in.ConsumeIntegral<uint8_t>();
    uint16_t off = in.ConsumeIntegralInRange<uint16_t>(0, 4100);
    static const unsigned kWidths[] = {1, 2, 4, 3, 8};
    unsigned width = kWidths[in.ConsumeIntegralInRange<unsigned>(0, 4)];
    uint32_t value = in.ConsumeIntegral<uint32_t>();
    bool removes = !fn->is_virtfn() && fn->model() != "endpoint";
    if ((kind & 2) && removes) close_all();
    if (kind & 1) {
      // Through vfio-pci-core (only endpoints and VFs have a VFIO device).
      vfio::Device*& dev = opened[bdf];
      if (!dev) {
        vfio::Device* d = sys->vfio_device(bdf);
        if (!d || !d->open()) {
          opened.erase(bdf);
          continue;
        }
        dev = d;
      }
      uint8_t buf[8] = {};
      for (unsigned i = 0; i < width && i < 4; ++i) buf[i] = static_cast<uint8_t>(value >> (8 * i));
      if (kind & 2) {
        (void)dev->region_write(VFIO_PCI_CONFIG_REGION_INDEX, off, std::span<const uint8_t>(buf, width));
      } else {
        (void)dev->region_read(VFIO_PCI_CONFIG_REGION_INDEX, off, std::span<uint8_t>(buf, width));
      }
    } else if (kind & 2) {
      sys->fabric().config_write(bdf, off, width, value);
    } else {
      (void)sys->fabric().config_read(bdf, off, width);
    }
  }
  close_all();
  // At the end of the input that removed them (so a finding is this input).
  if (sys->fabric().functions().size() != functions) {
    // VFs gone (SR-IOV disabled or the PF reset under its driver): back as
    // an admin brings them, which is much cheaper than a new system. That
    // must work unless the input moved a bridge's bus numbers (the VFs' bus
    // is then elsewhere, or nowhere): anything else is a finding (an
    // EEXIST here was a real bug once), not a reason to start over.
    constexpr const char* kNumVfs = "bus/pci/devices/0000:01:00.0/sriov_numvfs";
    (void)sys->core().tree().write(kNumVfs, "0");
    auto back = sys->core().tree().write(kNumVfs, "2");
    if (sys->fabric().functions().size() != functions) {
      if (bridges() == bus_numbers) {
        std::string why = back ? std::string("no error, but functions are missing")
                               : errno_name(back.error().code) + " (" + back.error().context + ")";
        std::fprintf(stderr, "config_fuzz: the VFs cannot be brought back with the topology intact: %s\n",
                     why.c_str());
        std::abort();
      }
      rebuild();
    }
  }
  return 0;
}
