// SPDX-License-Identifier: BSD-3-Clause
#include "drivers/mlx5_vfio_pci/mlx5_vfio_pci.h"

#include "base/log.h"
#include "vfio/uapi.h"
#include "hw/mlx5/mlx5_ifc.h"

namespace uvfio::drivers::mlx5_vfio_pci {

using bus::pci::PciDevice;
using vfio::kMigP2P;
using vfio::kMigPreCopy;
using vfio::kMigStopCopy;
using bus::pci::PciDeviceId;

// ---- PfLink -------------------------------------------------------------------

bool PfLink::connected() const {
  std::lock_guard lk(mu_);
  return aux_ != nullptr;
}

Result<Bdf> PfLink::pf_bdf() const {
  std::lock_guard lk(mu_);
  if (!aux_) return Error(ENOTCONN, "PF services not connected");
  return aux_->pf_bdf();
}

Result<uint16_t> PfLink::vf_function_id() const {
  std::lock_guard lk(mu_);
  if (!aux_) return Error(ENOTCONN, "PF services not connected");
  return aux_->query_vf_function_id();
}

// ---- The two halves -------------------------------------------------------------

class Mlx5VfioPci::PciHalf : public bus::pci::PciDriver {
 public:
  explicit PciHalf(Mlx5VfioPci& mod)
      : PciDriver(kDriverName, {PciDeviceId{hw::mlx5::kVendorMellanox, hw::mlx5::kDeviceVf, bus::pci::kPciAnyId,
                                            bus::pci::kPciAnyId, 0, 0, /*override_only=*/true}}),
        mod_(mod) {}
  Result<std::unique_ptr<driver::Binding>> probe(PciDevice& dev, const PciDeviceId&) override {
    if (!dev.is_virtfn()) return Error(ENODEV, "mlx5_vfio_pci drives VFs");
    auto vf = std::make_unique<VfDevice>(mod_, dev, *this, mod_.registry_);
    TRY(vf->register_device());
    return std::unique_ptr<driver::Binding>(std::move(vf));
  }
  // mlx5vf_err_handlers.reset_done (mlx5vf_pci_aer_reset_done): a reset
  // by the PCI core ends any migration session; the device is RUNNING.
  void reset_done(PciDevice&, driver::Binding& b) override {
    if (auto* vf = dynamic_cast<VfDevice*>(&b)) vf->pci_reset_done();
  }

 private:
  Mlx5VfioPci& mod_;
};

class Mlx5VfioPci::AuxHalf : public bus::auxiliary::AuxiliaryDriver {
 public:
  explicit AuxHalf(Mlx5VfioPci& mod)
      : AuxiliaryDriver(kDriverName, kAuxDriverName, {{std::string(mlx5::kCoreModName) + "." + mlx5::kVfioAuxName}}),
        mod_(mod) {}
  Result<std::unique_ptr<driver::Binding>> probe(bus::auxiliary::AuxiliaryDevice& dev,
                                                 const bus::auxiliary::AuxiliaryDeviceId&) override {
    auto* aux = dynamic_cast<mlx5::VfioAuxDevice*>(&dev);
    if (!aux) return Error(ENODEV, "not an mlx5 vfio auxiliary device");
    return std::unique_ptr<driver::Binding>(std::make_unique<AuxBinding>(mod_, *aux));
  }

 private:
  Mlx5VfioPci& mod_;
};

// ---- Bindings -------------------------------------------------------------------

VfDevice::VfDevice(Mlx5VfioPci& mod, PciDevice& vf, const driver::Driver& drv, vfio::Registry& registry)
    : CoreDevice(vf, drv, registry), mod_(mod) {
  mod_.vf_bound(*this);
}

VfDevice::~VfDevice() {
  // remove(): the VFIO device goes first (waiting for its user), then the
  // pairing.
  unregister_device();
  mod_.vf_unbound(*this);
}

void VfDevice::pf_attached() {
  log::info(vf().name(), "{}: paired with {}", kDriverName, vf().physfn() ? vf().physfn()->name() : "?");
}

// mlx5fv_vf_event(MLX5_PF_NOTIFY_DISABLE_VF): the migration files are
// closed and the page tracker freed (mlx5vf_cmd_close_migratable), and the
// device is marked detached. The migration state is kept and no REQ is
// sent: the next step that needs the PF's firmware fails with ENOTCONN
// (mdev_detach), leaving the state where it was. REQ comes, as for any
// VFIO device, if and when the VF itself is removed.
void VfDevice::pf_detached() {
  ++detaches_;
  log::warn(vf().name(), "{}: PF services gone: migration steps fail with ENOTCONN until they return", kDriverName);
  end_sessions();
  log_page_ = 0;  // the tracker went with the PF
}

// ---- Migration (reference §3.6: arcs as PF firmware commands) -----------------------

uint64_t VfDevice::migration_flags() const { return kMigStopCopy | kMigP2P | kMigPreCopy; }

void VfDevice::end_sessions() {
  std::lock_guard lk(sess_mu_);
  if (save_) save_->end_session();
  if (resume_) resume_->end_session();
  save_.reset();
  resume_.reset();
}

void VfDevice::reset_done() { end_sessions(); }

Result<uint64_t> VfDevice::migration_data_size() {
  return link_->call([](mlx5::VfioAuxDevice& a) { return a.query_state_size(false); });
}

Result<std::shared_ptr<vfio::MigrationFile>> VfDevice::migration_arc(vfio::MigState from, vfio::MigState to) {
  using S = vfio::MigState;
  using hw::mlx5::kOpModInitiator;
  using hw::mlx5::kOpModResponder;
  auto suspend = [&](uint16_t m) { return link_->call([m](mlx5::VfioAuxDevice& a) { return a.suspend(m); }); };
  auto resume = [&](uint16_t m) { return link_->call([m](mlx5::VfioAuxDevice& a) { return a.resume(m); }); };
  const std::shared_ptr<vfio::MigrationFile> none;
  uint16_t did = vf().device_id();
  uint64_t dmem = vf().resource(2).size();
  if ((from == S::kRunning && to == S::kRunningP2P) || (from == S::kPreCopy && to == S::kPreCopyP2P)) {
    TRY(suspend(kOpModInitiator));
    return none;
  }
  if (from == S::kRunningP2P && to == S::kStop) {
    TRY(suspend(kOpModResponder));
    return none;
  }
  if (from == S::kStop && to == S::kRunningP2P) {
    TRY(resume(kOpModResponder));
    return none;
  }
  if ((from == S::kRunningP2P && to == S::kRunning) || (from == S::kPreCopyP2P && to == S::kPreCopy)) {
    TRY(resume(kOpModInitiator));
    return none;
  }
  std::lock_guard lk(sess_mu_);
  if ((from == S::kStop && to == S::kStopCopy) || (from == S::kRunning && to == S::kPreCopy) ||
      (from == S::kRunningP2P && to == S::kPreCopyP2P)) {
    auto f = std::make_shared<SaveFile>(link_, did, dmem);
    TRY(f->start(to != S::kStopCopy));
    save_ = f;
    return std::shared_ptr<vfio::MigrationFile>(f);
  }
  if (from == S::kPreCopyP2P && to == S::kStopCopy) {
    if (!save_) return Error(EINVAL, "no saving session");
    TRY(suspend(kOpModResponder));
    TRY(save_->finish());
    return none;  // the session's stream goes on
  }
  if ((from == S::kStopCopy && to == S::kStop) || (from == S::kPreCopy && to == S::kRunning) ||
      (from == S::kPreCopyP2P && to == S::kRunningP2P)) {
    if (save_) save_->end_session();
    save_.reset();
    return none;
  }
  if (from == S::kStop && to == S::kResuming) {
    auto f = std::make_shared<ResumeFile>(link_, did, dmem);
    resume_ = f;
    return std::shared_ptr<vfio::MigrationFile>(f);
  }
  if (from == S::kResuming && to == S::kStop) {
    if (!resume_) return Error(EINVAL, "no resuming session");
    TRY(resume_->complete());  // an incomplete or corrupt stream: stays RESUMING
    resume_->end_session();
    resume_.reset();
    return none;
  }
  return Error(EINVAL, "not an arc of this driver");
}

// ---- DMA logging on the PF's page tracker ------------------------------------------------

Result<void> VfDevice::log_start(uint64_t& page_size, const std::vector<vfio::DmaRange>& ranges) {
  // mlx5vf_start_page_tracker(): a tracker already running is EINVAL.
  if (log_page_) return Error(EINVAL, "DMA logging already started");
  std::vector<std::pair<uint64_t, uint64_t>> r;
  for (auto& x : ranges) r.emplace_back(x.iova, x.length);
  if (page_size < 4096) page_size = 4096;  // the tracker's smallest granule
  uint64_t ps = page_size;
  TRY(link_->call([&](mlx5::VfioAuxDevice& a) { return a.tracker_create(ps, r); }));
  log_page_ = ps;
  return ok();
}

Result<void> VfDevice::log_stop() {
  if (!log_page_) return ok();  // not started: nothing to stop
  log_page_ = 0;
  return link_->call([](mlx5::VfioAuxDevice& a) { return a.tracker_destroy(); });
}

Result<void> VfDevice::log_read_and_clear(uint64_t iova, uint64_t length, uint64_t page_size,
                                          std::vector<uint64_t>& bitmap) {
  if (!log_page_) return Error(EINVAL, "DMA logging not started");
  auto dirty = TRY(link_->call([&](mlx5::VfioAuxDevice& a) { return a.tracker_report(iova, length); }));
  // Each dirty tracker page sets every report page it overlaps.
  for (uint64_t a : dirty) {
    uint64_t lo = std::max(a, iova), hi = std::min(a + log_page_, iova + length);
    for (uint64_t p = (lo - iova) / page_size; p * page_size + iova < hi; ++p)
      if (p / 64 < bitmap.size()) bitmap[p / 64] |= uint64_t{1} << (p % 64);
  }
  return ok();
}

AuxBinding::AuxBinding(Mlx5VfioPci& mod, mlx5::VfioAuxDevice& aux) : mod_(mod), aux_(aux) { mod_.aux_bound(*this); }
AuxBinding::~AuxBinding() { mod_.aux_unbound(*this); }

// ---- Pairing --------------------------------------------------------------------

Mlx5VfioPci::Mlx5VfioPci(bus::pci::PciBus& pci, bus::auxiliary::AuxiliaryBus& aux, vfio::Registry& registry)
    : pci_(pci), aux_(aux), registry_(registry), pci_half_(std::make_unique<PciHalf>(*this)), aux_half_(std::make_unique<AuxHalf>(*this)) {}

Mlx5VfioPci::~Mlx5VfioPci() { unregister_drivers(); }

Result<void> Mlx5VfioPci::register_drivers() {
  TRY(pci_.core().register_driver(pci_, *pci_half_));
  if (auto r = aux_.register_driver(*aux_half_); !r) {
    pci_.core().unregister_driver(*pci_half_);
    return r.error();
  }
  return ok();
}

void Mlx5VfioPci::unregister_drivers() {
  aux_.unregister_driver(*aux_half_);
  pci_.core().unregister_driver(*pci_half_);
}

bus::pci::PciDriver& Mlx5VfioPci::pci_driver() { return *pci_half_; }
bus::auxiliary::AuxiliaryDriver& Mlx5VfioPci::aux_driver() { return *aux_half_; }

VfDevice* Mlx5VfioPci::vf_binding(Bdf vf) const {
  auto it = slots_.find(vf);
  return it == slots_.end() ? nullptr : it->second.vf;
}

bool Mlx5VfioPci::paired(Bdf vf) const {
  auto it = slots_.find(vf);
  return it != slots_.end() && it->second.vf && it->second.aux && it->second.vf->pf_link()->connected();
}

void Mlx5VfioPci::connect(Slot& s) {
  if (!s.vf || !s.aux) return;
  {
    std::lock_guard lk(s.vf->pf_link()->mu_);
    s.vf->pf_link()->aux_ = &s.aux->aux();
  }
  s.vf->pf_attached();
}

void Mlx5VfioPci::vf_bound(VfDevice& b) {
  Slot& s = slots_[b.vf().bdf()];
  s.vf = &b;
  connect(s);
}

void Mlx5VfioPci::vf_unbound(VfDevice& b) {
  auto it = slots_.find(b.vf().bdf());
  if (it == slots_.end()) return;
  {
    std::lock_guard lk(b.pf_link()->mu_);
    b.pf_link()->aux_ = nullptr;
  }
  it->second.vf = nullptr;
  if (!it->second.aux) slots_.erase(it);
}

void Mlx5VfioPci::aux_bound(AuxBinding& b) {
  Slot& s = slots_[b.aux().vf_bdf()];
  s.aux = &b;
  connect(s);
}

void Mlx5VfioPci::aux_unbound(AuxBinding& b) {
  auto it = slots_.find(b.aux().vf_bdf());
  if (it == slots_.end()) return;
  it->second.aux = nullptr;
  if (VfDevice* vf = it->second.vf) {
    // Disconnect first: from here on the VF half can only get ENOTCONN,
    // never a pointer into a PF that is going away.
    {
      std::lock_guard lk(vf->pf_link()->mu_);
      vf->pf_link()->aux_ = nullptr;
    }
    vf->pf_detached();
  } else {
    slots_.erase(it);
  }
}

}  // namespace uvfio::drivers::mlx5_vfio_pci
