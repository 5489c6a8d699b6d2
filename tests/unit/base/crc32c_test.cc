// SPDX-License-Identifier: BSD-3-Clause
// CRC32C against a bit-at-a-time reference written from the definition
// (reflected Castagnoli polynomial 0x82f63b78, inverted in and out), over
// the sizes where the implementation changes strategy: below a block, whole
// blocks of three interleaved lanes, blocks plus a tail, chained calls and
// unaligned starts; and RFC 3720's test vectors.
#include "base/crc32c.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

namespace uvfio {
namespace {

uint32_t reference(uint32_t crc, const uint8_t* p, size_t n) {
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) {
    crc ^= p[i];
    for (int k = 0; k < 8; ++k) crc = (crc & 1) ? (crc >> 1) ^ 0x82f63b78u : crc >> 1;
  }
  return ~crc;
}

TEST(Crc32c, Rfc3720Vectors) {
  std::vector<uint8_t> b(32, 0);
  EXPECT_EQ(crc32c(0, b.data(), 32), 0x8a9136aau);
  std::fill(b.begin(), b.end(), 0xff);
  EXPECT_EQ(crc32c(0, b.data(), 32), 0x62a8ab43u);
  for (int i = 0; i < 32; ++i) b[i] = static_cast<uint8_t>(i);
  EXPECT_EQ(crc32c(0, b.data(), 32), 0x46dd794eu);
  for (int i = 0; i < 32; ++i) b[i] = static_cast<uint8_t>(31 - i);
  EXPECT_EQ(crc32c(0, b.data(), 32), 0x113fdb5cu);
  EXPECT_EQ(crc32c(0, reinterpret_cast<const uint8_t*>("123456789"), 9), 0xe3069283u);
}

TEST(Crc32c, MatchesTheDefinitionAtEverySizeThatMatters) {
  std::mt19937_64 rng(7);
  std::vector<uint8_t> buf(3 * 4080 * 3 + 64);
  for (auto& x : buf) x = static_cast<uint8_t>(rng());
  std::vector<size_t> sizes;
  for (size_t n = 0; n < 64; ++n) sizes.push_back(n);
  for (size_t base : {4080u, 8160u, 12240u, 4096u, 4100u, 8192u})
    for (int d = -9; d <= 9; ++d) sizes.push_back(base + d);
  sizes.push_back(buf.size() - 64);
  for (size_t off : {0u, 1u, 3u, 7u})
    for (size_t n : sizes) {
      uint32_t seed = static_cast<uint32_t>(rng());
      ASSERT_EQ(crc32c(seed, buf.data() + off, n), reference(seed, buf.data() + off, n)) << "size " << n << " at +" << off;
    }
}

TEST(Crc32c, ChainsAcrossCalls) {
  std::mt19937_64 rng(11);
  std::vector<uint8_t> buf(1 << 20);
  for (auto& x : buf) x = static_cast<uint8_t>(rng());
  uint32_t whole = crc32c(0, buf.data(), buf.size());
  EXPECT_EQ(whole, reference(0, buf.data(), buf.size()));
  for (size_t cut : {1u, 4079u, 4080u, 4100u, 65536u, 1000003u}) {
    uint32_t c = crc32c(0, buf.data(), cut);
    EXPECT_EQ(crc32c(c, buf.data() + cut, buf.size() - cut), whole) << "cut at " << cut;
  }
}

}  // namespace
}  // namespace uvfio
