// SPDX-License-Identifier: BSD-3-Clause
// mlx5_core: the PF driver of the emulated mlx5 NIC.
//
// It binds the PFs (15b3:101d), enables VFs through sriov_configure (the
// sriov_numvfs path), and registers one auxiliary device per VF,
// "mlx5_core.vfio_pci.<VF routing id in decimal>", child of the PF, through
// which the VF's variant driver (mlx5_vfio_pci) reaches the PF's services.
// It deletes those devices before it disables SR-IOV or unbinds.
//
// VfioAuxDevice is the "shared header" of the seed: the one type both
// mlx5_core and mlx5_vfio_pci know.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "base/bdf.h"
#include "base/result.h"
#include "bus/auxiliary/auxiliary.h"
#include "bus/pci/pci.h"
#include "hw/irq.h"
#include "hw/iommu.h"
#include "hw/mlx5/mlx5_ifc.h"

namespace uvfio::drivers::mlx5 {

class CoreDev;

inline constexpr const char* kCoreModName = "mlx5_core";
inline constexpr const char* kVfioAuxName = "vfio_pci";

class VfioAuxDevice : public bus::auxiliary::AuxiliaryDevice {
 public:
  // `core` owns this device and deletes it before it goes away.
  VfioAuxDevice(CoreDev& core, bus::pci::PciDevice& pf, Bdf vf_bdf, uint16_t vf_index);

  Bdf vf_bdf() const { return vf_bdf_; }
  Bdf pf_bdf() const { return pf_bdf_; }
  uint16_t vf_index() const { return vf_index_; }

  // PF services for the VF (valid while this device is registered; callers
  // hold their own link lock). ENOTCONN if the PF no longer has this VF
  // enabled. Each is one firmware command in a command-queue slot of the PF
  // (docs/devices/mlx5-pf.md); commands for different VFs run in parallel.
  Result<uint16_t> query_vf_function_id() const;
  Result<uint64_t> query_state_size(bool incremental);
  Result<void> suspend(uint16_t op_mod);
  Result<void> resume(uint16_t op_mod);
  // The next chunk of the VF's state image into `out` (at most
  // kStateChunk bytes); `start` begins a new image (full or incremental).
  struct SaveChunk {
    size_t bytes = 0;
    uint64_t remaining = 0;  // of the image; 0: it is complete
    uint32_t crc = 0;        // CRC32C of the chunk, from the firmware
  };
  // `track`: the session will ask for incremental images later (pre-copy).
  Result<SaveChunk> save_chunk(bool start, bool incremental, bool track, std::span<uint8_t> out);
  // One chunk of an image as save_chunk() cut it; true when the image is
  // complete and applied.
  Result<bool> load_chunk(std::span<const uint8_t> chunk, bool first);
  Result<void> tracker_create(uint64_t page_size, const std::vector<std::pair<uint64_t, uint64_t>>& ranges);
  // Every dirty page address in [iova, iova+length), reported and cleared.
  Result<std::vector<uint64_t>> tracker_report(uint64_t iova, uint64_t length);
  Result<void> tracker_destroy();

  // The largest state chunk one command moves (a command slot's buffer).
  static constexpr size_t kStateChunk = 1 << 20;

  Result<void> add_attributes(driver::Tree& t, driver::Dir* dir) override;

 private:
  CoreDev* core_;  // owns this device
  Bdf pf_bdf_;
  Bdf vf_bdf_;
  uint16_t vf_index_;
};

// Per-PF state of mlx5_core (its drvdata). Destroying it is remove().
//
// The PF's command queue: kCmdSlots entries and a 1 MiB data buffer per slot
// in the driver's DMA memory (allocated and touched once, at probe); each
// slot completes on its own MSI-X vector, which wakes the thread waiting
// for it. A command takes a free slot, so commands for different VFs run
// side by side; no lock is held while one waits for the firmware.
class CoreDev : public driver::Binding, private hw::IrqSink {
 public:
  // Sets up the command queue and its interrupts.
  static Result<std::unique_ptr<CoreDev>> create(bus::pci::PciDevice& pf, bus::auxiliary::AuxiliaryBus& aux);
  ~CoreDev() override;

  // One firmware command: `data` (if any) is placed in the slot's buffer
  // first; afterwards `out` receives the buffer's first out.size() bytes.
  // The firmware's errno comes back as the Error; EIO if it never answers.
  Result<hw::mlx5::FwMailbox> exec(hw::mlx5::FwMailbox in, std::span<const uint8_t> data = {},
                                   std::span<uint8_t> out = {});
  // A command whose output the firmware writes by DMA straight into `out`
  // (the caller's memory, mapped for the command's duration, as a driver
  // dma_map()s a buffer), not through the slot's buffer: one copy fewer
  // for device state. The mapping is gone when this returns, whatever the
  // outcome (a late DMA fails instead of touching `out`).
  Result<hw::mlx5::FwMailbox> exec_into(hw::mlx5::FwMailbox in, std::span<uint8_t> out);

  bus::pci::PciDevice& pf() const { return pf_; }
  // sriov_configure(): 0 disables (aux devices first), N enables N VFs and
  // adds their aux devices. Returns the number of VFs enabled.
  Result<int> sriov_configure(int num_vfs);
  const std::vector<std::unique_ptr<VfioAuxDevice>>& aux_devices() const { return aux_devs_; }
  bool vf_enabled(uint16_t index) const { return index < pf_.sriov_num_vfs(); }

  static constexpr size_t kSlotBuffer = VfioAuxDevice::kStateChunk;
  static constexpr auto kCommandTimeout = std::chrono::seconds(60);

 private:
  CoreDev(bus::pci::PciDevice& pf, bus::auxiliary::AuxiliaryBus& aux);
  Result<void> init();
  void delete_aux_devices();
  unsigned acquire_slot();
  void release_slot(unsigned slot);
  // hw::IrqSink: the PF's MSI-X messages (data = the slot).
  void msi(uint64_t address, uint32_t data) override;
  void intx(bool) override {}

  bus::pci::PciDevice& pf_;
  bus::auxiliary::AuxiliaryBus& aux_;
  std::vector<std::unique_ptr<VfioAuxDevice>> aux_devs_;
  // The driver's DMA memory as the PF sees it (the DMA API's job on a host):
  // the queue's page, then the slots' buffers.
  hw::IommuDomain dma_;
  std::vector<uint8_t> queue_mem_ = std::vector<uint8_t>(4096);
  std::vector<uint8_t> slot_mem_;
  static constexpr uint64_t kQueueIova = 0x1000, kSlotIova = 0x100000;
  // Per-slot windows for exec_into()'s mappings, above the slot buffers.
  static constexpr uint64_t kDirectIova = 0x1'0000'0000;
  Result<hw::mlx5::FwMailbox> run(unsigned slot, hw::mlx5::FwMailbox in);
  std::mutex slot_mu_;
  std::condition_variable slot_cv_;
  uint32_t busy_ = 0;  // slots in use; guarded by slot_mu_
  std::mutex done_mu_;
  std::condition_variable done_cv_;
  uint32_t done_ = 0;  // slots the firmware has answered; guarded by done_mu_
  bool irq_ready_ = false;
};

class Mlx5CoreDriver : public bus::pci::PciDriver {
 public:
  explicit Mlx5CoreDriver(bus::auxiliary::AuxiliaryBus& aux);

  Result<std::unique_ptr<driver::Binding>> probe(bus::pci::PciDevice& dev, const bus::pci::PciDeviceId& id) override;
  bool has_sriov_configure() const override { return true; }
  Result<int> sriov_configure(bus::pci::PciDevice& pf, int num_vfs) override;

 private:
  bus::auxiliary::AuxiliaryBus& aux_;
};

}  // namespace uvfio::drivers::mlx5
