// BAR access (drivers/vfio/pci/vfio_pci_rdwr.c): gated on memory decode,
// split into naturally aligned accesses of 8/4/2/1 bytes, the MSI-X table
// reading as all-ones and dropping writes.
#include <cstring>

#include "vfio/pci_core/core.h"

namespace uvfio::vfio::pci {

bool CoreDevice::memory_enabled() const {
  if (vconfig_.empty() || power_state_ >= 3) return false;
  return no_command_memory_ || (vget(PCI_COMMAND, 2) & PCI_COMMAND_MEMORY);
}

Result<size_t> CoreDevice::bar_rw(uint32_t bar, uint64_t off, std::span<uint8_t> buf, bool write) {
  const bus::pci::Resource& res = pdev_.resource(bar);
  uint64_t size = res.size();
  bool io = res.flags & bus::pci::kResIo;
  if (!size) return Error(EINVAL, "BAR not implemented");
  // vfio_pci_bar_rw(): an access starting past the end is refused, one
  // running over it is cut at the end (the short count is the answer).
  if (off >= size) return Error(EINVAL, "BAR access out of range");
  if (buf.size() > size - off) buf = buf.first(static_cast<size_t>(size - off));
  if (!io && !memory_enabled()) return Error(EIO, "memory decode disabled");
  if (io && !(vget(PCI_COMMAND, 2) & PCI_COMMAND_IO)) return Error(EIO, "I/O decode disabled");
  bool msix = bar == msix_bar_;
  size_t done = 0;
  while (done < buf.size()) {
    uint64_t at = off + done;
    size_t left = buf.size() - done;
    unsigned n = (left >= 8 && !(at % 8)) ? 8 : (left >= 4 && !(at % 4)) ? 4 : (left >= 2 && !(at % 2)) ? 2 : 1;
    if (msix && at < msix_table_off_ + msix_table_len_ && at + n > msix_table_off_) {
      // The MSI-X table belongs to the host: reads fill 0xff, writes drop.
      uint64_t stop = std::min<uint64_t>(off + buf.size(), msix_table_off_ + msix_table_len_);
      size_t span = static_cast<size_t>(stop - at);
      if (!write) std::memset(buf.data() + done, 0xff, span);
      done += span;
      continue;
    }
    if (write) {
      uint64_t v = 0;
      std::memcpy(&v, buf.data() + done, n);
      TRY(pdev_.bar_write(bar, at, n, v));
    } else {
      uint64_t v = TRY(pdev_.bar_read(bar, at, n));
      std::memcpy(buf.data() + done, &v, n);
    }
    done += n;
  }
  return buf.size();
}

}  // namespace uvfio::vfio::pci
