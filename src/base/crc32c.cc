// SPDX-License-Identifier: BSD-3-Clause
#include "base/crc32c.h"

#include <array>
#include <cstring>

namespace uvfio {

namespace {

uint32_t crc32c_table(uint32_t crc, const uint8_t* p, size_t n) {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
// SSE4.2's CRC32 instruction computes exactly CRC32C. One stream of it is
// bound by the instruction's latency (3 cycles per 8 bytes, one issued per
// cycle): buffers of a block or more run three independent streams over the
// block's thirds and join them (kLane bytes each; 3 x kLane = 4080 fits a
// 4 KiB page and its record header).
constexpr size_t kLane = 1360;
constexpr size_t kBlock = 3 * kLane;

__attribute__((target("sse4.2"))) uint32_t crc32c_hw1(uint32_t crc, const uint8_t* p, size_t n) {
  uint64_t c = crc;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = __builtin_ia32_crc32di(c, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
  return c32;
}

// The (unreflected-state) CRC is linear: the state after a lane of data from
// state s is shift(s) ^ (the state after it from 0), shift being "kLane zero
// bytes more". shift is a 32x32 matrix over GF(2), applied a byte at a time
// from four tables built by running the instruction over zeros.
struct Shift {
  std::array<std::array<uint32_t, 256>, 4> t{};
  __attribute__((target("sse4.2"))) Shift() {
    static const uint8_t zeros[kLane] = {};
    uint32_t basis[32];
    for (int i = 0; i < 32; ++i) basis[i] = crc32c_hw1(1u << i, zeros, kLane);
    for (int b = 0; b < 4; ++b)
      for (uint32_t v = 0; v < 256; ++v) {
        uint32_t r = 0;
        for (int i = 0; i < 8; ++i)
          if (v & (1u << i)) r ^= basis[8 * b + i];
        t[b][v] = r;
      }
  }
  uint32_t operator()(uint32_t c) const {
    return t[0][c & 0xff] ^ t[1][(c >> 8) & 0xff] ^ t[2][(c >> 16) & 0xff] ^ t[3][c >> 24];
  }
};

__attribute__((target("sse4.2"))) uint32_t crc32c_hw(uint32_t crc, const uint8_t* p, size_t n) {
  if (n >= kBlock) {
    static const Shift shift;
    uint64_t c0 = crc;
    do {
      uint64_t c1 = 0, c2 = 0;
      for (size_t i = 0; i < kLane; i += 8) {
        uint64_t a, b, c;
        std::memcpy(&a, p + i, 8);
        std::memcpy(&b, p + kLane + i, 8);
        std::memcpy(&c, p + 2 * kLane + i, 8);
        c0 = __builtin_ia32_crc32di(c0, a);
        c1 = __builtin_ia32_crc32di(c1, b);
        c2 = __builtin_ia32_crc32di(c2, c);
      }
      uint32_t j = shift(static_cast<uint32_t>(c0)) ^ static_cast<uint32_t>(c1);
      c0 = shift(j) ^ static_cast<uint32_t>(c2);
      p += kBlock;
      n -= kBlock;
    } while (n >= kBlock);
    crc = static_cast<uint32_t>(c0);
  }
  return crc32c_hw1(crc, p, n);
}
#endif

}  // namespace

uint32_t crc32c(uint32_t crc, const uint8_t* p, size_t n) {
  crc = ~crc;
#if defined(__x86_64__)
  static const bool hw = __builtin_cpu_supports("sse4.2");
  crc = hw ? crc32c_hw(crc, p, n) : crc32c_table(crc, p, n);
#else
  crc = crc32c_table(crc, p, n);
#endif
  return ~crc;
}

}  // namespace uvfio
