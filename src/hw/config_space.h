// SPDX-License-Identifier: BSD-3-Clause
// ConfigSpace: the 256-byte or 4 KiB configuration space of one emulated PCI
// function, with hardware write semantics per bit.
//
// Every bit is read-only unless its mask says otherwise: a bit in `rw` takes
// the written value, a bit in `rw1c` is cleared by writing 1 (status and error
// bits). Device models set values and masks while they are built; after that
// the host reaches the space only through read()/write().
//
// Thread-safe: the host's accesses (a vfio-user client's thread), the
// device's own threads (DMA engines checking Bus Master, MSI-X delivery
// checking its enable) and the admin's (sysfs `config`, lspci) meet here;
// each access is atomic, and update() is a read-modify-write in one.
#pragma once

#include <linux/pci_regs.h>

#include <array>
#include <cstdint>

#include "base/mutex.h"

namespace uvfio::hw {

// A config-space register typed by its width, so a 16-bit register cannot be
// read as 32 bits by accident: cfg.get(kCommand) yields a uint16_t.
template <class T>
struct Reg {
  uint16_t off;
  constexpr Reg operator+(uint16_t d) const { return Reg{static_cast<uint16_t>(off + d)}; }
};

inline constexpr Reg<uint16_t> kVendorId{PCI_VENDOR_ID};
inline constexpr Reg<uint16_t> kDeviceId{PCI_DEVICE_ID};
inline constexpr Reg<uint16_t> kCommand{PCI_COMMAND};
inline constexpr Reg<uint16_t> kStatus{PCI_STATUS};
inline constexpr Reg<uint8_t> kRevision{PCI_REVISION_ID};
inline constexpr Reg<uint8_t> kProgIf{PCI_CLASS_PROG};
inline constexpr Reg<uint16_t> kClassDevice{PCI_CLASS_DEVICE};
inline constexpr Reg<uint8_t> kHeaderType{PCI_HEADER_TYPE};
inline constexpr Reg<uint32_t> kBar0{PCI_BASE_ADDRESS_0};
inline constexpr Reg<uint16_t> kSubsystemVendor{PCI_SUBSYSTEM_VENDOR_ID};
inline constexpr Reg<uint16_t> kSubsystemId{PCI_SUBSYSTEM_ID};
inline constexpr Reg<uint32_t> kRomAddress{PCI_ROM_ADDRESS};
inline constexpr Reg<uint8_t> kCapabilityList{PCI_CAPABILITY_LIST};
inline constexpr Reg<uint8_t> kInterruptLine{PCI_INTERRUPT_LINE};
inline constexpr Reg<uint8_t> kInterruptPin{PCI_INTERRUPT_PIN};
// Type 1 (bridge) header.
inline constexpr Reg<uint8_t> kPrimaryBus{PCI_PRIMARY_BUS};
inline constexpr Reg<uint8_t> kSecondaryBus{PCI_SECONDARY_BUS};
inline constexpr Reg<uint8_t> kSubordinateBus{PCI_SUBORDINATE_BUS};
inline constexpr Reg<uint16_t> kMemoryBase{PCI_MEMORY_BASE};
inline constexpr Reg<uint16_t> kMemoryLimit{PCI_MEMORY_LIMIT};
inline constexpr Reg<uint16_t> kPrefMemoryBase{PCI_PREF_MEMORY_BASE};
inline constexpr Reg<uint16_t> kPrefMemoryLimit{PCI_PREF_MEMORY_LIMIT};
inline constexpr Reg<uint32_t> kPrefBaseUpper{PCI_PREF_BASE_UPPER32};
inline constexpr Reg<uint32_t> kPrefLimitUpper{PCI_PREF_LIMIT_UPPER32};
inline constexpr Reg<uint8_t> kIoBase{PCI_IO_BASE};
inline constexpr Reg<uint8_t> kIoLimit{PCI_IO_LIMIT};
inline constexpr Reg<uint16_t> kBridgeControl{PCI_BRIDGE_CONTROL};

inline constexpr uint16_t kConfigSizeLegacy = 256;
inline constexpr uint16_t kConfigSizeExtended = 4096;

class ConfigSpace {
 public:
  explicit ConfigSpace(uint16_t size = kConfigSizeExtended) : size_(size) {
    MutexLock lk(mu_);
    data_.fill(0);
    rw_.fill(0);
    rw1c_.fill(0);
  }

  uint16_t size() const { return size_; }

  // Takes `other`'s contents and masks (an FLR restoring the power-on
  // state), atomically with respect to this space's accessors.
  void assign(const ConfigSpace& other);
  ConfigSpace(const ConfigSpace&) = delete;
  ConfigSpace& operator=(const ConfigSpace&) = delete;

  // Host access with hardware semantics. Widths are 1, 2 or 4 bytes; bytes
  // outside the space read as 0xff and drop writes (as a master abort does).
  uint32_t read(uint16_t off, unsigned width) const;
  void write(uint16_t off, unsigned width, uint32_t value);

  // Model-side access: no masks.
  uint32_t raw_read(uint16_t off, unsigned width) const;
  void raw_write(uint16_t off, unsigned width, uint32_t value);
  template <class T> T get(Reg<T> r) const { return static_cast<T>(raw_read(r.off, sizeof(T))); }
  template <class T> void set(Reg<T> r, T v) { raw_write(r.off, sizeof(T), v); }

  // Model-side read-modify-write: clears `clear`, then sets `set`; returns
  // the old value.
  uint32_t update(uint16_t off, unsigned width, uint32_t clear, uint32_t set);

  // Declare which bits of [off, off+width) the host may write.
  void set_rw(uint16_t off, unsigned width, uint32_t mask) {
    MutexLock lk(mu_);
    put(rw_, off, width, mask);
  }
  void set_rw1c(uint16_t off, unsigned width, uint32_t mask) {
    MutexLock lk(mu_);
    put(rw1c_, off, width, mask);
  }
  uint32_t rw_mask(uint16_t off, unsigned width) const {
    MutexLock lk(mu_);
    return take(rw_, off, width);
  }
  uint32_t rw1c_mask(uint16_t off, unsigned width) const {
    MutexLock lk(mu_);
    return take(rw1c_, off, width);
  }

 private:
  bool in_range(uint16_t off, unsigned width) const {
    return (width == 1 || width == 2 || width == 4) && static_cast<unsigned>(off) + width <= size_;
  }
  static uint32_t take(const std::array<uint8_t, kConfigSizeExtended>& a, uint16_t off, unsigned width);
  void put(std::array<uint8_t, kConfigSizeExtended>& a, uint16_t off, unsigned width, uint32_t v);

  const uint16_t size_;  // fixed at construction
  mutable Mutex mu_;
  std::array<uint8_t, kConfigSizeExtended> data_ GUARDED_BY(mu_);
  std::array<uint8_t, kConfigSizeExtended> rw_ GUARDED_BY(mu_);
  std::array<uint8_t, kConfigSizeExtended> rw1c_ GUARDED_BY(mu_);
};

}  // namespace uvfio::hw
