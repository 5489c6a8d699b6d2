// SPDX-License-Identifier: BSD-3-Clause
// BARs of emulated functions: what a BAR decodes (kind, size, prefetchable)
// and the memory behind it. The memory is a memfd so a frontend can later hand
// the same pages to a client for mmap.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "base/result.h"
#include "base/unique_fd.h"

namespace uvfio::hw {

inline constexpr unsigned kNumBars = 6;

enum class BarKind : uint8_t { kNone, kMem32, kMem64, kIo };

struct BarDesc {
  BarKind kind = BarKind::kNone;
  uint64_t size = 0;
  bool prefetchable = false;
  // Plain memory a client may map directly (no register side effects are
  // lost): the device-memory windows, not register BARs.
  bool mmappable = false;

  bool implemented() const { return kind != BarKind::kNone && size != 0; }
  bool is_io() const { return kind == BarKind::kIo; }
  bool is_64() const { return kind == BarKind::kMem64; }
  // The low, read-only bits of the BAR register (PCI 3.0 §6.2.5.1).
  uint32_t type_bits() const;
  // EINVAL unless the size is a power of two within what the kind can decode.
  Result<void> validate() const;
};

class BarMemory {
 public:
  // Creates a zeroed, shared mapping of `size` bytes backed by a memfd.
  static Result<std::unique_ptr<BarMemory>> create(uint64_t size, const char* name);
  ~BarMemory();
  BarMemory(const BarMemory&) = delete;
  BarMemory& operator=(const BarMemory&) = delete;

  int fd() const { return fd_.get(); }
  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

  // Little-endian loads/stores of 1, 2, 4 or 8 bytes. EINVAL when out of range.
  Result<uint64_t> load(uint64_t off, unsigned width) const;
  Result<void> store(uint64_t off, unsigned width, uint64_t value);
  // Bulk copies (device memory as the host sees it: no atomicity beyond
  // what memcpy gives, as on a PCIe memory BAR). EINVAL when out of range.
  Result<void> copy_out(uint64_t off, std::span<uint8_t> out) const;
  Result<void> copy_in(uint64_t off, std::span<const uint8_t> in);
  // Back to all zeros, the pages given back (a hole punched in the memfd:
  // every mapping, the clients' included, reads zeros; untouched memory
  // stays unallocated).
  void zero();

 private:
  BarMemory(UniqueFd fd, uint8_t* data, uint64_t size) : fd_(std::move(fd)), data_(data), size_(size) {}
  UniqueFd fd_;
  uint8_t* data_;
  uint64_t size_;
};

}  // namespace uvfio::hw
