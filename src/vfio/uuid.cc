// SPDX-License-Identifier: BSD-3-Clause
// UUIDs as VFIO spells them (the VF token).
#include "vfio/device.h"

namespace uvfio::vfio {

Result<Uuid> parse_uuid(std::string_view s) {
  if (s.size() != 36) return Error(EINVAL, "a UUID has 36 characters");
  Uuid u{};
  size_t at = 0;
  for (size_t i = 0; i < 36; ++i) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (s[i] != '-') return Error(EINVAL, "UUID dashes misplaced");
      continue;
    }
    char c = s[i];
    int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (v < 0) return Error(EINVAL, "UUID has a non-hex digit");
    u[at / 2] = static_cast<uint8_t>(u[at / 2] | (at % 2 ? v : v << 4));
    ++at;
  }
  return u;
}

std::string uuid_string(const Uuid& u) {
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < u.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
    s += hex[u[i] >> 4];
    s += hex[u[i] & 15];
  }
  return s;
}

}  // namespace uvfio::vfio
