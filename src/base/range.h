// SPDX-License-Identifier: BSD-3-Clause
// Byte ranges.
#pragma once

#include <cstdint>

namespace uvfio {

// Do [a, a+wa) and [b, b+wb) overlap?
constexpr bool overlaps(uint32_t a, uint32_t wa, uint32_t b, uint32_t wb) { return a < b + wb && b < a + wa; }

}  // namespace uvfio
