// SPDX-License-Identifier: BSD-3-Clause
// Text for errno codes, including the driver core's internal ones.
#include "base/result.h"

#include <cstring>

namespace uvfio {

std::string errno_name(int code) {
  if (code == kEProbeDefer) return "Probe deferred";
  return std::strerror(code);
}

std::string to_string(const Error& e) {
  std::string s = errno_name(e.code);
  if (e.context && *e.context) {
    s = std::string(e.context) + ": " + s;
  }
  return s;
}

}  // namespace uvfio
