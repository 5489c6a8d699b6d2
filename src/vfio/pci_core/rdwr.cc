// SPDX-License-Identifier: BSD-3-Clause
// BAR access (drivers/vfio/pci/vfio_pci_rdwr.c): memory BARs gated on memory decode,
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
  // vfio_pci_core_do_io_rw(): memory BARs are gated on memory decode (and
  // D0); I/O BARs on nothing.
  if (!io && !memory_enabled()) return Error(EIO, "memory decode disabled");
  bool msix = bar == msix_bar_ && msix_table_len_;
  size_t done = 0;
  while (done < buf.size()) {
    uint64_t at = off + done;
    size_t left = buf.size() - done;
    if (msix && at >= msix_table_off_ && at < msix_table_off_ + msix_table_len_) {
      // The MSI-X table belongs to the host: reads fill 0xff, writes drop.
      size_t span = static_cast<size_t>(std::min<uint64_t>(left, msix_table_off_ + msix_table_len_ - at));
      if (!write) std::memset(buf.data() + done, 0xff, span);
      done += span;
      continue;
    }
    // Up to the table, as one burst: device memory is copied at once,
    // registers are accessed one by one (vfio_pci_core_do_io_rw, with
    // the kernel's ioread/iowrite replaced by the bus's block access).
    size_t run = left;
    if (msix && at < msix_table_off_) run = static_cast<size_t>(std::min<uint64_t>(left, msix_table_off_ - at));
    if (write) TRY(pdev_.bar_write_block(bar, at, std::span<const uint8_t>(buf.data() + done, run)));
    else TRY(pdev_.bar_read_block(bar, at, std::span<uint8_t>(buf.data() + done, run)));
    done += run;
  }
  return buf.size();
}

}  // namespace uvfio::vfio::pci
