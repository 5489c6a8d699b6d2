// SPDX-License-Identifier: BSD-3-Clause
// Bdf: a PCI function address (domain, bus, device, function).
//
// Printed as Linux prints pci_name(): "dddd:bb:dd.f", lower-case hex. id() is
// the 16-bit routing id (bus << 8 | devfn) that the seed's auxiliary device
// names use in decimal; it does not carry the domain.
#pragma once

#include <compare>
#include <cstdint>
#include <string>
#include <string_view>

#include "base/result.h"

namespace uvfio {

class Bdf {
 public:
  constexpr Bdf() = default;
  constexpr Bdf(uint16_t domain, uint8_t bus, uint8_t dev, uint8_t fn)
      : domain_(domain), bus_(bus), devfn_(static_cast<uint8_t>(((dev & 0x1f) << 3) | (fn & 7))) {}
  static constexpr Bdf from_rid(uint16_t domain, uint16_t rid) {
    return Bdf(domain, static_cast<uint8_t>(rid >> 8), static_cast<uint8_t>((rid >> 3) & 0x1f),
               static_cast<uint8_t>(rid & 7));
  }

  // Accepts "dddd:bb:dd.f" and "bb:dd.f" (domain 0). Trailing newline allowed
  // (sysfs_streq semantics). EINVAL on anything else.
  static Result<Bdf> parse(std::string_view s);

  constexpr uint16_t domain() const { return domain_; }
  constexpr uint8_t bus() const { return bus_; }
  constexpr uint8_t dev() const { return devfn_ >> 3; }
  constexpr uint8_t fn() const { return devfn_ & 7; }
  constexpr uint8_t devfn() const { return devfn_; }
  constexpr uint16_t id() const { return static_cast<uint16_t>(bus_ << 8 | devfn_); }

  std::string str() const;

  // Ordered by domain, then bus, then devfn: one integer compare (the
  // fabric looks a function up on every config cycle).
  constexpr uint32_t key() const { return static_cast<uint32_t>(domain_) << 16 | id(); }
  constexpr std::strong_ordering operator<=>(const Bdf& o) const { return key() <=> o.key(); }
  constexpr bool operator==(const Bdf& o) const { return key() == o.key(); }

 private:
  uint16_t domain_ = 0;
  uint8_t bus_ = 0;
  uint8_t devfn_ = 0;
};

}  // namespace uvfio
