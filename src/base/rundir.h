// SPDX-License-Identifier: BSD-3-Clause
// Where uvfiod keeps its sockets and mount: --rundir, else $UVFIO_RUNDIR,
// else /run/uvfio for root and $XDG_RUNTIME_DIR/uvfio (or /tmp/uvfio-UID)
// for others. Shared by uvfiod and uvfioctl so both agree by default.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <string>

namespace uvfio {

inline std::string default_rundir() {
  if (const char* e = std::getenv("UVFIO_RUNDIR"); e && *e) return e;
  if (geteuid() == 0) return "/run/uvfio";
  if (const char* x = std::getenv("XDG_RUNTIME_DIR"); x && *x) return std::string(x) + "/uvfio";
  return "/tmp/uvfio-" + std::to_string(geteuid());
}

}  // namespace uvfio
