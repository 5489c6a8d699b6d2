// SPDX-License-Identifier: BSD-3-Clause
#include "base/bdf.h"

#include <fmt/format.h>

namespace uvfio {
namespace {

bool parse_hex(std::string_view s, unsigned max_digits, unsigned& out) {
  if (s.empty() || s.size() > max_digits) return false;
  out = 0;
  for (char c : s) {
    unsigned d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    else return false;
    out = out * 16 + d;
  }
  return true;
}

}  // namespace

Result<Bdf> Bdf::parse(std::string_view s) {
  if (!s.empty() && s.back() == '\n') s.remove_suffix(1);
  unsigned domain = 0, bus, dev, fn;
  size_t c1 = s.find(':');
  if (c1 == std::string_view::npos) return Error(EINVAL, "bad PCI address");
  size_t c2 = s.find(':', c1 + 1);
  std::string_view rest = s;
  if (c2 != std::string_view::npos) {
    if (!parse_hex(s.substr(0, c1), 4, domain)) return Error(EINVAL, "bad PCI domain");
    rest = s.substr(c1 + 1);
  }
  size_t colon = rest.find(':');
  size_t dot = rest.find('.');
  if (colon == std::string_view::npos || dot == std::string_view::npos || dot < colon)
    return Error(EINVAL, "bad PCI address");
  if (!parse_hex(rest.substr(0, colon), 2, bus) ||
      !parse_hex(rest.substr(colon + 1, dot - colon - 1), 2, dev) ||
      !parse_hex(rest.substr(dot + 1), 1, fn) || dev > 0x1f || fn > 7)
    return Error(EINVAL, "bad PCI address");
  return Bdf(static_cast<uint16_t>(domain), static_cast<uint8_t>(bus), static_cast<uint8_t>(dev),
             static_cast<uint8_t>(fn));
}

std::string Bdf::str() const {
  return fmt::format("{:04x}:{:02x}:{:02x}.{:x}", domain_, bus_, dev(), fn());
}

}  // namespace uvfio
