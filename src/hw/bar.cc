// SPDX-License-Identifier: BSD-3-Clause
#include "hw/bar.h"

#include <linux/pci_regs.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

namespace uvfio::hw {

uint32_t BarDesc::type_bits() const {
  switch (kind) {
    case BarKind::kNone: return 0;
    case BarKind::kIo: return PCI_BASE_ADDRESS_SPACE_IO;
    case BarKind::kMem32: return prefetchable ? PCI_BASE_ADDRESS_MEM_PREFETCH : 0;
    case BarKind::kMem64:
      return PCI_BASE_ADDRESS_MEM_TYPE_64 | (prefetchable ? PCI_BASE_ADDRESS_MEM_PREFETCH : 0);
  }
  return 0;
}

Result<void> BarDesc::validate() const {
  if (kind == BarKind::kNone) return ok();
  if (size == 0 || (size & (size - 1)) != 0) return Error(EINVAL, "BAR size is not a power of two");
  switch (kind) {
    case BarKind::kIo:
      if (size < 4 || size > 256) return Error(EINVAL, "I/O BAR size out of range");
      break;
    case BarKind::kMem32:
      if (size < 16 || size > (1ull << 31)) return Error(EINVAL, "32-bit BAR size out of range");
      break;
    case BarKind::kMem64:
      if (size < 16 || size > (1ull << 40)) return Error(EINVAL, "64-bit BAR size out of range");
      break;
    case BarKind::kNone: break;
  }
  return ok();
}

Result<std::unique_ptr<BarMemory>> BarMemory::create(uint64_t size, const char* name) {
  if (size == 0) return Error(EINVAL, "empty BAR");
  UniqueFd fd(memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) return Error(errno, "memfd_create");
  if (ftruncate(fd.get(), static_cast<off_t>(size)) < 0) return Error(errno, "ftruncate BAR memfd");
  // Clients get this fd to mmap the BAR: none may shrink it under the
  // device (a fault in the daemon) or grow it; the seals cannot be lifted.
  if (fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) return Error(errno, "seal BAR memfd");
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) return Error(errno, "mmap BAR memfd");
  return std::unique_ptr<BarMemory>(new BarMemory(std::move(fd), static_cast<uint8_t*>(p), size));
}

BarMemory::~BarMemory() { munmap(data_, size_); }

void BarMemory::zero() {
  if (fallocate(fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, static_cast<off_t>(size_)) == 0) return;
  std::memset(data_, 0, size_);  // a filesystem without hole punching
}

namespace {
// Naturally aligned accesses are single-copy atomic, as on a PCIe device:
// a register the device's own thread updates (a DMA status) is read whole
// by the host, never torn. Unaligned ones are copied byte by byte.
template <class T>
T load_as(const uint8_t* p) {
  return std::atomic_ref<T>(*reinterpret_cast<T*>(const_cast<uint8_t*>(p))).load(std::memory_order_acquire);
}
template <class T>
void store_as(uint8_t* p, T v) {
  std::atomic_ref<T>(*reinterpret_cast<T*>(p)).store(v, std::memory_order_release);
}
}  // namespace

Result<void> BarMemory::copy_out(uint64_t off, std::span<uint8_t> out) const {
  if (off > size_ || size_ - off < out.size()) return Error(EINVAL, "BAR access out of range");
  std::memcpy(out.data(), data_ + off, out.size());
  return ok();
}

Result<void> BarMemory::copy_in(uint64_t off, std::span<const uint8_t> in) {
  if (off > size_ || size_ - off < in.size()) return Error(EINVAL, "BAR access out of range");
  std::memcpy(data_ + off, in.data(), in.size());
  return ok();
}

Result<uint64_t> BarMemory::load(uint64_t off, unsigned width) const {
  if ((width != 1 && width != 2 && width != 4 && width != 8) || off > size_ || size_ - off < width)
    return Error(EINVAL, "BAR access out of range");
  const uint8_t* p = data_ + off;
  if (off % width == 0) {
    switch (width) {  // x86: little-endian
      case 1: return load_as<uint8_t>(p);
      case 2: return load_as<uint16_t>(p);
      case 4: return load_as<uint32_t>(p);
      default: return load_as<uint64_t>(p);
    }
  }
  uint64_t v = 0;
  for (unsigned i = 0; i < width; ++i) v |= uint64_t{load_as<uint8_t>(p + i)} << (8 * i);
  return v;
}

Result<void> BarMemory::store(uint64_t off, unsigned width, uint64_t value) {
  if ((width != 1 && width != 2 && width != 4 && width != 8) || off > size_ || size_ - off < width)
    return Error(EINVAL, "BAR access out of range");
  uint8_t* p = data_ + off;
  if (off % width == 0) {
    switch (width) {
      case 1: store_as<uint8_t>(p, static_cast<uint8_t>(value)); break;
      case 2: store_as<uint16_t>(p, static_cast<uint16_t>(value)); break;
      case 4: store_as<uint32_t>(p, static_cast<uint32_t>(value)); break;
      default: store_as<uint64_t>(p, value); break;
    }
    return ok();
  }
  for (unsigned i = 0; i < width; ++i) store_as<uint8_t>(p + i, static_cast<uint8_t>(value >> (8 * i)));
  return ok();
}

}  // namespace uvfio::hw
