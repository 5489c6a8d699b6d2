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

#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "base/bdf.h"
#include "base/result.h"
#include "bus/auxiliary/auxiliary.h"
#include "bus/pci/pci.h"
#include "hw/iommu.h"
#include "hw/mlx5/mlx5.h"

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
  // hold the driver core lock or their own link lock). ENOTCONN if the PF no
  // longer has this VF enabled. Each is one firmware command through the
  // PF's command interface (docs/devices/mlx5-pf.md).
  Result<uint16_t> query_vf_function_id() const;
  Result<uint64_t> query_state_size(bool incremental);
  Result<void> suspend(uint16_t op_mod);
  Result<void> resume(uint16_t op_mod);
  Result<std::vector<uint8_t>> save_state(bool incremental);
  Result<void> load_state(std::span<const uint8_t> image);
  Result<void> tracker_create(uint64_t page_size, const std::vector<std::pair<uint64_t, uint64_t>>& ranges);
  // Every dirty page address in [iova, iova+length), reported and cleared.
  Result<std::vector<uint64_t>> tracker_report(uint64_t iova, uint64_t length);
  Result<void> tracker_destroy();

  Result<void> add_attributes(driver::Tree& t, driver::Dir* dir) override;

 private:
  CoreDev* core_;  // owns this device
  Bdf pf_bdf_;
  Bdf vf_bdf_;
  uint16_t vf_index_;
};

// Per-PF state of mlx5_core (its drvdata). Destroying it is remove().
class CoreDev : public driver::Binding {
 public:
  CoreDev(bus::pci::PciDevice& pf, bus::auxiliary::AuxiliaryBus& aux);
  ~CoreDev() override;

  // One firmware command: mailbox in the driver's DMA memory, doorbell,
  // status. The firmware's errno comes back as the Error. `data` (if any) is
  // placed in the DMA buffer first; the buffer's contents after the command
  // are returned in `out_data` up to out0 bytes when asked.
  Result<hw::mlx5::FwMailbox> exec(hw::mlx5::FwMailbox in, std::span<const uint8_t> data = {},
                                   std::vector<uint8_t>* out_data = nullptr, uint64_t buf_len = 0);

  bus::pci::PciDevice& pf() const { return pf_; }
  // sriov_configure(): 0 disables (aux devices first), N enables N VFs and
  // adds their aux devices. Returns the number of VFs enabled.
  Result<int> sriov_configure(int num_vfs);
  const std::vector<std::unique_ptr<VfioAuxDevice>>& aux_devices() const { return aux_devs_; }
  bool vf_enabled(uint16_t index) const { return index < pf_.sriov_num_vfs(); }

 private:
  void delete_aux_devices();
  Result<void> ensure_buffer(uint64_t size);

  bus::pci::PciDevice& pf_;
  bus::auxiliary::AuxiliaryBus& aux_;
  std::vector<std::unique_ptr<VfioAuxDevice>> aux_devs_;
  // The driver's DMA memory as the PF sees it (the DMA API's job on a host).
  std::mutex cmd_mu_;  // one firmware command at a time
  hw::IommuDomain dma_;
  std::vector<uint8_t> mailbox_ = std::vector<uint8_t>(4096);
  std::vector<uint8_t> buffer_;  // guarded by cmd_mu_
  static constexpr uint64_t kMailboxIova = 0x1000, kBufferIova = 0x100000;
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
