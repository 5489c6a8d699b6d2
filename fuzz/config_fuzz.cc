// libFuzzer target: config-space reads and writes to every device model —
// the bridge, the generic endpoint, the mlx5 PF (SR-IOV, MSI-X, FLR) and its
// VFs — both as config cycles on the fabric (what the host's bus sees) and
// through vfio-pci-core's virtualized config region (what a VM sees), with
// every width and offset. Writes may enable or disable VFs, reset functions
// and make devices vanish; nothing may crash, hang or trip a sanitizer.
#include <fuzzer/FuzzedDataProvider.h>
#include <linux/vfio.h>

#include <cstdint>

#include "common.h"
#include "hw/fabric.h"
#include "vfio/device.h"

using namespace uvfio;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static std::unique_ptr<daemon::System> sys;
  static size_t functions = 0;
  static unsigned runs = 0;
  if (!sys || ++runs % 500 == 0 || sys->fabric().functions().size() != functions) {
    sys.reset();
    sys = fuzz::make_system(fuzz::kAllModels);
    functions = sys->fabric().functions().size();
  }
  FuzzedDataProvider in(data, size);
  for (int op = 0; op < 64 && in.remaining_bytes() > 0; ++op) {
    auto fns = sys->fabric().functions();
    if (fns.empty()) break;
    Bdf bdf = fns[in.ConsumeIntegralInRange<size_t>(0, fns.size() - 1)]->bdf();
    uint8_t kind = in.ConsumeIntegral<uint8_t>();
    uint16_t off = in.ConsumeIntegralInRange<uint16_t>(0, 4100);
    static const unsigned kWidths[] = {1, 2, 4, 3, 8};
    unsigned width = kWidths[in.ConsumeIntegralInRange<unsigned>(0, 4)];
    uint32_t value = in.ConsumeIntegral<uint32_t>();
    if (kind & 1) {
      // Through vfio-pci-core, opened for the access only: a device that
      // vanishes must not be held open (its unbind would wait for us).
      vfio::Device* dev = sys->vfio_device(bdf);
      if (!dev || !dev->open()) continue;
      uint8_t buf[8] = {};
      for (unsigned i = 0; i < width && i < 4; ++i) buf[i] = static_cast<uint8_t>(value >> (8 * i));
      if (kind & 2) {
        (void)dev->region_write(VFIO_PCI_CONFIG_REGION_INDEX, off, std::span<const uint8_t>(buf, width));
      } else {
        (void)dev->region_read(VFIO_PCI_CONFIG_REGION_INDEX, off, std::span<uint8_t>(buf, width));
      }
      dev->close();
    } else if (kind & 2) {
      sys->fabric().config_write(bdf, off, width, value);
    } else {
      (void)sys->fabric().config_read(bdf, off, width);
    }
  }
  return 0;
}
