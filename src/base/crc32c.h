// SPDX-License-Identifier: BSD-3-Clause
// CRC32C (Castagnoli, reflected polynomial 0x82f63b78), as iSCSI and ext4
// use it: with the SSE4.2 instruction where the CPU has it, a table
// otherwise. `crc` chains calls (0 to start).
#pragma once

#include <cstddef>
#include <cstdint>

namespace uvfio {

uint32_t crc32c(uint32_t crc, const uint8_t* p, size_t n);

}  // namespace uvfio
