#include "drivers/mlx5_core/mlx5_core.h"

#include <cstring>

#include "base/log.h"
#include "hw/mlx5/mlx5.h"

namespace uvfio::drivers::mlx5 {

using bus::pci::PciDevice;

VfioAuxDevice::VfioAuxDevice(CoreDev& core, PciDevice& pf, Bdf vf_bdf, uint16_t vf_index)
    : AuxiliaryDevice(kCoreModName, kVfioAuxName, vf_bdf.id(), pf),
      core_(&core),
      pf_bdf_(pf.bdf()),
      vf_bdf_(vf_bdf),
      vf_index_(vf_index) {}

Result<uint16_t> VfioAuxDevice::query_vf_function_id() const {
  if (!registered() || !core_->vf_enabled(vf_index_)) return Error(ENOTCONN, "VF no longer enabled on its PF");
  return static_cast<uint16_t>(vf_index_ + 1);  // firmware function id = VF index + 1
}

namespace {
using hw::mlx5::FwCmd;
using hw::mlx5::FwMailbox;
FwMailbox mailbox(FwCmd c, uint16_t fn, uint16_t op_mod = 0, uint32_t flags = 0) {
  FwMailbox m{};
  m.opcode = static_cast<uint16_t>(c);
  m.function_id = fn;
  m.op_mod = op_mod;
  m.flags = flags;
  return m;
}
}  // namespace

Result<uint64_t> VfioAuxDevice::query_state_size(bool incremental) {
  uint16_t fn = TRY(query_vf_function_id());
  FwMailbox out = TRY(core_->exec(mailbox(FwCmd::kQueryVhcaMigrationState, fn, 0, incremental ? hw::mlx5::kFwIncremental : 0)));
  return uint64_t{out.out0};
}

Result<void> VfioAuxDevice::suspend(uint16_t op_mod) {
  uint16_t fn = TRY(query_vf_function_id());
  TRY(core_->exec(mailbox(FwCmd::kSuspendVhca, fn, op_mod)));
  return ok();
}

Result<void> VfioAuxDevice::resume(uint16_t op_mod) {
  uint16_t fn = TRY(query_vf_function_id());
  TRY(core_->exec(mailbox(FwCmd::kResumeVhca, fn, op_mod)));
  return ok();
}

Result<std::vector<uint8_t>> VfioAuxDevice::save_state(bool incremental) {
  uint16_t fn = TRY(query_vf_function_id());
  uint32_t flags = incremental ? hw::mlx5::kFwIncremental : 0;
  uint64_t need = TRY(query_state_size(incremental));
  for (int attempt = 0; attempt < 4; ++attempt) {
    std::vector<uint8_t> img;
    // Room for the device changing a little between QUERY and SAVE.
    auto r = core_->exec(mailbox(FwCmd::kSaveVhcaState, fn, 0, flags), {}, &img, need + need / 8 + 65536);
    if (r) return img;
    if (r.error().code != ENOSPC) return r.error();
    need = TRY(query_state_size(incremental));
  }
  return Error(ENOSPC, "VF state keeps growing");
}

Result<void> VfioAuxDevice::load_state(std::span<const uint8_t> image) {
  uint16_t fn = TRY(query_vf_function_id());
  TRY(core_->exec(mailbox(FwCmd::kLoadVhcaState, fn), image));
  return ok();
}

Result<void> VfioAuxDevice::tracker_create(uint64_t page_size, const std::vector<std::pair<uint64_t, uint64_t>>& ranges) {
  uint16_t fn = TRY(query_vf_function_id());
  std::vector<uint8_t> raw(ranges.size() * 16);
  for (size_t i = 0; i < ranges.size(); ++i) {
    std::memcpy(raw.data() + 16 * i, &ranges[i].first, 8);
    std::memcpy(raw.data() + 16 * i + 8, &ranges[i].second, 8);
  }
  FwMailbox m = mailbox(FwCmd::kCreatePageTracker, fn);
  m.arg0 = page_size;
  m.arg1 = ranges.size();
  TRY(core_->exec(m, raw));
  return ok();
}

Result<std::vector<uint64_t>> VfioAuxDevice::tracker_report(uint64_t iova, uint64_t length) {
  uint16_t fn = TRY(query_vf_function_id());
  std::vector<uint64_t> all;
  for (;;) {
    FwMailbox m = mailbox(FwCmd::kReportPageTracker, fn);
    m.arg0 = iova;
    m.arg1 = length;
    std::vector<uint8_t> raw;
    FwMailbox out = TRY(core_->exec(m, {}, &raw, 64 << 10));
    for (uint64_t i = 0; i < out.out0 && (i + 1) * 8 <= raw.size(); ++i) {
      uint64_t a;
      std::memcpy(&a, raw.data() + 8 * i, 8);
      all.push_back(a);
    }
    if (!out.out1) return all;
  }
}

Result<void> VfioAuxDevice::tracker_destroy() {
  uint16_t fn = TRY(query_vf_function_id());
  TRY(core_->exec(mailbox(FwCmd::kDestroyPageTracker, fn)));
  return ok();
}

Result<void> VfioAuxDevice::add_attributes(driver::Tree& t, driver::Dir* dir) {
  Bdf b = vf_bdf_;
  return t.add_file(dir, driver::Attribute{"vf_bdf", 0444,
                                           [b]() -> Result<std::string> { return b.str() + "\n"; }, nullptr});
}

CoreDev::CoreDev(PciDevice& pf, bus::auxiliary::AuxiliaryBus& aux) : pf_(pf), aux_(aux) {
  (void)dma_.map_host(kMailboxIova, mailbox_.size(), mailbox_.data(), hw::kDmaRead | hw::kDmaWrite);
  pf_.hw().set_iommu(&dma_);
}

Result<void> CoreDev::ensure_buffer(uint64_t size) {
  size = (size + 4095) & ~uint64_t{4095};
  if (buffer_.size() >= size) return ok();
  if (!buffer_.empty()) (void)dma_.unmap(kBufferIova, buffer_.size());
  buffer_.assign(size, 0);
  return dma_.map_host(kBufferIova, buffer_.size(), buffer_.data(), hw::kDmaRead | hw::kDmaWrite);
}

Result<FwMailbox> CoreDev::exec(FwMailbox in, std::span<const uint8_t> data, std::vector<uint8_t>* out_data,
                                uint64_t buf_len) {
  std::lock_guard lk(cmd_mu_);
  uint64_t len = std::max<uint64_t>(data.size(), buf_len);
  if (len) {
    TRY(ensure_buffer(len));
    if (!data.empty()) std::memcpy(buffer_.data(), data.data(), data.size());
    in.buf_iova = kBufferIova;
    in.buf_len = data.empty() ? buf_len : data.size();
  }
  std::memcpy(mailbox_.data(), &in, sizeof(in));
  TRY(pf_.hw().mmio_write(0, hw::mlx5::pfreg::kCmdMailbox, 8, kMailboxIova));
  TRY(pf_.hw().mmio_write(0, hw::mlx5::pfreg::kCmdDoorbell, 4, 1));
  uint32_t status = static_cast<uint32_t>(TRY(pf_.hw().mmio_read(0, hw::mlx5::pfreg::kCmdStatus, 4)));
  if (!(status & hw::mlx5::pfreg::kStatusDone)) return Error(EIO, "firmware did not complete the command");
  if (status >> 8) return Error(static_cast<int>(status >> 8), "firmware command failed");
  FwMailbox out;
  std::memcpy(&out, mailbox_.data(), sizeof(out));
  if (out_data) out_data->assign(buffer_.begin(), buffer_.begin() + static_cast<long>(std::min<uint64_t>(out.out0 * (in.opcode == static_cast<uint16_t>(FwCmd::kReportPageTracker) ? 8 : 1), buffer_.size())));
  return out;
}

CoreDev::~CoreDev() {
  // remove(): auxiliary devices go before SR-IOV, so no VF driver can reach
  // a PF that is tearing down.
  delete_aux_devices();
  if (pf_.sriov_num_vfs()) pf_.pci_bus().disable_sriov(pf_);
  pf_.disable_device();
  pf_.hw().set_iommu(nullptr);
  log::info(pf_.name(), "mlx5_core: removed");
}

void CoreDev::delete_aux_devices() {
  while (!aux_devs_.empty()) {
    aux_.device_delete(*aux_devs_.back());
    aux_devs_.pop_back();
  }
}

Result<int> CoreDev::sriov_configure(int num_vfs) {
  if (num_vfs == 0) {
    delete_aux_devices();
    pf_.pci_bus().disable_sriov(pf_);
    return 0;
  }
  TRY(pf_.pci_bus().enable_sriov(pf_, static_cast<uint16_t>(num_vfs)));
  for (uint16_t i = 0; i < pf_.sriov_num_vfs(); ++i) {
    PciDevice* vf = pf_.virtfn(i);
    auto aux = std::make_unique<VfioAuxDevice>(*this, pf_, vf->bdf(), i);
    if (auto r = aux_.device_add(*aux); !r) {
      log::error(pf_.name(), "mlx5_core: cannot add auxiliary device for VF {}: {}", i, to_string(r.error()));
      delete_aux_devices();
      pf_.pci_bus().disable_sriov(pf_);
      return r.error();
    }
    aux_devs_.push_back(std::move(aux));
  }
  log::info(pf_.name(), "mlx5_core: {} VFs enabled", num_vfs);
  return num_vfs;
}

Mlx5CoreDriver::Mlx5CoreDriver(bus::auxiliary::AuxiliaryBus& aux)
    : PciDriver("mlx5_core", {bus::pci::PciDeviceId{hw::mlx5::kVendorMellanox, hw::mlx5::kDevicePf}}), aux_(aux) {}

Result<std::unique_ptr<driver::Binding>> Mlx5CoreDriver::probe(PciDevice& dev, const bus::pci::PciDeviceId&) {
  if (dev.is_virtfn() || !dev.sriov_cap()) return Error(ENODEV, "mlx5_core drives PFs only");
  // A PF that already has VFs was left that way by another driver: refuse,
  // as the VFs' owners would not be ours.
  if (dev.sriov_num_vfs()) return Error(EBUSY, "VFs already enabled");
  dev.enable_device();
  log::info(dev.name(), "mlx5_core: probed, {} VFs supported", dev.sriov_total_vfs());
  return std::unique_ptr<driver::Binding>(std::make_unique<CoreDev>(dev, aux_));
}

Result<int> Mlx5CoreDriver::sriov_configure(PciDevice& pf, int num_vfs) {
  auto* core = pf.binding_as<CoreDev>();
  if (!core) return Error(ENODEV, "PF not bound to mlx5_core");
  return core->sriov_configure(num_vfs);
}

}  // namespace uvfio::drivers::mlx5
