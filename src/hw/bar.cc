#include "hw/bar.h"

#include <linux/pci_regs.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

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

Result<uint64_t> BarMemory::load(uint64_t off, unsigned width) const {
  if ((width != 1 && width != 2 && width != 4 && width != 8) || off > size_ || size_ - off < width)
    return Error(EINVAL, "BAR access out of range");
  uint64_t v = 0;
  std::memcpy(&v, data_ + off, width);  // x86: little-endian
  return v;
}

Result<void> BarMemory::store(uint64_t off, unsigned width, uint64_t value) {
  if ((width != 1 && width != 2 && width != 4 && width != 8) || off > size_ || size_ - off < width)
    return Error(EINVAL, "BAR access out of range");
  std::memcpy(data_ + off, &value, width);
  return ok();
}

}  // namespace uvfio::hw
