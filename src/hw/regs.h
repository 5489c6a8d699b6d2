// SPDX-License-Identifier: BSD-3-Clause
// Register blocks: how a device model's MMIO registers decode accesses of
// every width. A model declares its registers as a table (offset, size,
// access); the block turns any access of 1, 2, 4 or 8 bytes into whole-
// register reads and byte-masked writes, so a 64-bit register reads and
// writes as one 64-bit access or as two 32-bit halves (or bytes), and one
// 64-bit access may cover two 32-bit registers, as on a real PCIe device.
// Bytes no register covers are plain BAR memory.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "base/result.h"

namespace uvfio::hw {

class BarMemory;

enum class RegAccess : uint8_t {
  kRO,  // writes are ignored
  kRW,  // reads return what the model holds (rw_mask: the bits a write changes)
  kWO,  // reads return 0 (doorbells, triggers)
};

struct RegDef {
  uint32_t offset;  // naturally aligned to size
  uint8_t size;     // 4 or 8
  RegAccess access;
  const char* name;
  uint64_t rw_mask = ~uint64_t{0};  // kRW: bits that read back as written (when writes are accepted)
};

// What a model implements for its registers. Called with no lock of the
// block's held; the model serializes as it needs.
class RegisterHandler {
 public:
  virtual ~RegisterHandler() = default;
  // The register's whole value (kRO/kRW; never called for kWO).
  virtual uint64_t reg_read(const RegDef& r) = 0;
  // A write of the bytes in `mask` (bits, relative to the register) of
  // `value`; a partial write carries only the bytes it covers. Never called
  // for kRO.
  virtual void reg_write(const RegDef& r, uint64_t value, uint64_t mask) = 0;
};

// new = old with the masked bits replaced: the usual storage register.
constexpr uint64_t merge(uint64_t old, uint64_t value, uint64_t mask) { return (old & ~mask) | (value & mask); }

class RegisterBlock {
 public:
  // `regs` must be non-overlapping, each naturally aligned with size 4 or 8
  // (checked: a model's table is a build-time constant).
  explicit RegisterBlock(std::vector<RegDef> regs);

  const std::vector<RegDef>& regs() const { return regs_; }
  // The register holding byte `off`, or nullptr.
  const RegDef* find(uint64_t off) const;
  // Does [off, off + width) touch any register?
  bool covers(uint64_t off, unsigned width) const;
  // How many bytes from `off` (at most `len`) hold no register: 0 if `off`
  // is inside one.
  uint64_t plain_run(uint64_t off, uint64_t len) const;

  // An access of `width` (1, 2, 4 or 8) bytes at `off`. Bytes outside the
  // registers go to `plain` (reads 0 and writes dropped if null). EINVAL
  // for another width or an access past `plain`'s end.
  Result<uint64_t> read(uint64_t off, unsigned width, RegisterHandler& h, const BarMemory* plain) const;
  Result<void> write(uint64_t off, unsigned width, uint64_t value, RegisterHandler& h, BarMemory* plain) const;

 private:
  std::vector<RegDef>::const_iterator first_ending_after(uint64_t off) const;

  std::vector<RegDef> regs_;     // sorted by offset
  std::vector<uint32_t> next_;   // per dword: the index of the first register ending after it
};

}  // namespace uvfio::hw
