// SPDX-License-Identifier: BSD-3-Clause
// libFuzzer target: lines on the control socket (the JSON requests uvfioctl
// sends) against a live system's attribute tree — reads, writes (bind,
// unbind, driver_override, sriov_numvfs, config, reset...), links and
// listings. No request may crash the daemon, hang or leak; the system is
// rebuilt every so often so state changes do not narrow what is reached.
#include <cstdint>
#include <string_view>

#include "common.h"
#include "sysfs/control.h"

using namespace uvfio;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static std::unique_ptr<daemon::System> sys;
  static unsigned runs = 0;
  if (!sys || ++runs % 2000 == 0) {
    sys.reset();
    sys = fuzz::make_system(fuzz::kAllModels);
  }
  if (size > 64 * 1024) return 0;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  // One request per line, as the server splits them.
  while (!in.empty()) {
    size_t nl = in.find('\n');
    std::string_view line = in.substr(0, nl);
    (void)sysfs::handle_request(sys->core().tree(), line);
    if (nl == std::string_view::npos) break;
    in.remove_prefix(nl + 1);
  }
  return 0;
}
