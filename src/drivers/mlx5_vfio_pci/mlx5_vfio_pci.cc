#include "drivers/mlx5_vfio_pci/mlx5_vfio_pci.h"

#include "base/log.h"
#include "hw/mlx5/mlx5.h"

namespace uvfio::drivers::mlx5_vfio_pci {

using bus::pci::PciDevice;
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

void VfDevice::pf_detached() {
  ++detaches_;
  log::warn(vf().name(), "{}: PF services gone", kDriverName);
  // An open user learns of it through the device request (REQ) irq.
  if (is_open()) request(0);
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
