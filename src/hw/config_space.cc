// SPDX-License-Identifier: BSD-3-Clause
#include "hw/config_space.h"

namespace uvfio::hw {

uint32_t ConfigSpace::take(const std::array<uint8_t, kConfigSizeExtended>& a, uint16_t off,
                           unsigned width) {
  uint32_t v = 0;
  for (unsigned i = 0; i < width && off + i < kConfigSizeExtended; ++i)
    v |= static_cast<uint32_t>(a[off + i]) << (8 * i);
  return v;
}

void ConfigSpace::put(std::array<uint8_t, kConfigSizeExtended>& a, uint16_t off, unsigned width,
                      uint32_t v) {
  for (unsigned i = 0; i < width && off + i < kConfigSizeExtended; ++i)
    a[off + i] = static_cast<uint8_t>(v >> (8 * i));
}

uint32_t ConfigSpace::raw_read(uint16_t off, unsigned width) const {
  if (!in_range(off, width)) return width >= 4 ? 0xffffffffu : (1u << (8 * width)) - 1;
  MutexLock lk(mu_);
  return take(data_, off, width);
}

void ConfigSpace::raw_write(uint16_t off, unsigned width, uint32_t value) {
  if (!in_range(off, width)) return;
  MutexLock lk(mu_);
  put(data_, off, width, value);
}

uint32_t ConfigSpace::update(uint16_t off, unsigned width, uint32_t clear, uint32_t set) {
  if (!in_range(off, width)) return 0;
  MutexLock lk(mu_);
  uint32_t old = take(data_, off, width);
  put(data_, off, width, (old & ~clear) | set);
  return old;
}

void ConfigSpace::assign(const ConfigSpace& other) {
  if (&other == this) return;
  std::array<uint8_t, kConfigSizeExtended> d, rw, rw1c;
  {
    MutexLock lk(other.mu_);
    d = other.data_;
    rw = other.rw_;
    rw1c = other.rw1c_;
  }
  MutexLock lk(mu_);
  data_ = d;
  rw_ = rw;
  rw1c_ = rw1c;
}

uint32_t ConfigSpace::read(uint16_t off, unsigned width) const { return raw_read(off, width); }

void ConfigSpace::write(uint16_t off, unsigned width, uint32_t value) {
  if (!in_range(off, width)) return;
  MutexLock lk(mu_);
  uint32_t old = take(data_, off, width);
  uint32_t rw = take(rw_, off, width);
  uint32_t rw1c = take(rw1c_, off, width);
  uint32_t v = (old & ~rw) | (value & rw);
  v &= ~(value & rw1c);
  put(data_, off, width, v);
}

}  // namespace uvfio::hw
