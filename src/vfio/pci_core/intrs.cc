// SPDX-License-Identifier: BSD-3-Clause
// Interrupts (drivers/vfio/pci/vfio_pci_intrs.c, reference §1.4-1.5): INTx
// (level, auto-masked after each trigger), MSI and MSI-X (host vectors
// programmed into the function; each vector's eventfd signalled when the
// function sends its message), ERR and REQ (one eventfd each).
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>

#include "base/eventfd.h"
#include "base/log.h"
#include "vfio/pci_core/core.h"

namespace uvfio::vfio::pci {
namespace {

// The host side of MSI: one address, the vector number as data.
constexpr uint64_t kHostMsiAddress = 0xfee00000;

// eventfd_ctx_fdget(): EBADF for no fd, EINVAL for an fd that is not an
// eventfd.
Result<void> check_eventfd(const UniqueFd& fd) {
  if (!fd) return Error(EBADF, "no eventfd");
  char path[64], target[64] = {};
  snprintf(path, sizeof(path), "/proc/self/fd/%d", fd.get());
  ssize_t n = readlink(path, target, sizeof(target) - 1);
  if (n < 0) return Error(EBADF, "bad fd");
  if (std::strcmp(target, "anon_inode:[eventfd]") != 0) return Error(EINVAL, "fd is not an eventfd");
  return ok();
}

}  // namespace

// eventfd_signal(): the eventfd is the client's and it may keep its counter
// full; the write never waits (base/eventfd.h), a signal that does not fit is
// dropped and counted, as the kernel's saturating eventfd_signal loses it.
void CoreDevice::signal(int efd) {
  if (efd < 0) return;
  if (eventfd_signal(efd) == EventfdSignal::kDelivered) stats().interrupts.add();
  else stats().interrupts_dropped.add();
}

void CoreDevice::signal_err() {
  std::lock_guard lk(irq_mu_);
  signal(err_trigger_.get());
}

Result<vfio_irq_info> CoreDevice::irq_info(uint32_t index) {
  vfio_irq_info info{};
  info.argsz = sizeof(info);
  info.index = index;
  info.flags = VFIO_IRQ_INFO_EVENTFD;
  bool pcie = pdev_.find_capability(PCI_CAP_ID_EXP) != 0;
  switch (index) {
    case VFIO_PCI_INTX_IRQ_INDEX:
      info.count = (!pdev_.is_virtfn() && pdev_.config_read(PCI_INTERRUPT_PIN, 1)) ? 1 : 0;
      info.flags |= VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED;
      break;
    case VFIO_PCI_MSI_IRQ_INDEX: {
      uint16_t cap = pdev_.find_capability(PCI_CAP_ID_MSI);
      info.count = cap ? 1u << ((pdev_.config_read(cap + PCI_MSI_FLAGS, 2) & PCI_MSI_FLAGS_QMASK) >> 1) : 0;
      info.flags |= VFIO_IRQ_INFO_NORESIZE;
      break;
    }
    case VFIO_PCI_MSIX_IRQ_INDEX:
      info.count = pdev_.msix_vec_count();
      info.flags |= VFIO_IRQ_INFO_NORESIZE;  // no dynamic MSI-X allocation
      break;
    case VFIO_PCI_ERR_IRQ_INDEX:
      if (!pcie) return Error(EINVAL, "ERR irq needs PCIe");
      info.count = 1;
      info.flags |= VFIO_IRQ_INFO_NORESIZE;
      break;
    case VFIO_PCI_REQ_IRQ_INDEX:
      info.count = 1;
      info.flags |= VFIO_IRQ_INFO_NORESIZE;
      break;
    default:
      return Error(EINVAL, "IRQ index out of range");
  }
  return info;
}

Result<void> CoreDevice::irqs(IrqSet& req) {
  uint32_t action = req.flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
  switch (req.index) {
    case VFIO_PCI_INTX_IRQ_INDEX:
      return set_intx(req);
    case VFIO_PCI_MSI_IRQ_INDEX:
    case VFIO_PCI_MSIX_IRQ_INDEX:
      if (action != VFIO_IRQ_SET_ACTION_TRIGGER) return Error(ENOTTY, "MSI masking is not supported");
      return set_msi(req, req.index == VFIO_PCI_MSIX_IRQ_INDEX);
    case VFIO_PCI_ERR_IRQ_INDEX:
      if (action != VFIO_IRQ_SET_ACTION_TRIGGER || !pdev_.find_capability(PCI_CAP_ID_EXP))
        return Error(ENOTTY, "unsupported ERR action");
      return set_ctx_trigger(req, err_trigger_);
    case VFIO_PCI_REQ_IRQ_INDEX:
      if (action != VFIO_IRQ_SET_ACTION_TRIGGER) return Error(ENOTTY, "unsupported REQ action");
      return set_ctx_trigger(req, req_trigger_);
  }
  return Error(ENOTTY);
}

// vfio_pci_set_ctx_trigger_single(): ERR and REQ.
Result<void> CoreDevice::set_ctx_trigger(IrqSet& req, UniqueFd& slot) {
  if (req.start != 0 || req.count > 1) return Error(EINVAL, "single-vector index");
  std::lock_guard lk(irq_mu_);
  if (req.flags & VFIO_IRQ_SET_DATA_NONE) {
    // Nothing to signal or release: EINVAL, as the kernel falls through.
    if (!slot) return Error(EINVAL, "no eventfd on this index");
    if (req.count) signal(slot.get());
    else slot.reset();
    return ok();
  }
  if (req.flags & VFIO_IRQ_SET_DATA_BOOL) {
    if (!req.count) return Error(EINVAL, "BOOL without data");
    if (req.bools[0] && slot) signal(slot.get());
    return ok();
  }
  if (!req.count) return Error(EINVAL, "EVENTFD without data");
  if (!req.fds[0]) {
    slot.reset();  // -1: release
    return ok();
  }
  TRY(check_eventfd(req.fds[0]));
  slot = std::move(req.fds[0]);
  return ok();
}

// ---- INTx ----------------------------------------------------------------------

void CoreDevice::intx_mask() {
  std::lock_guard lk(irq_mu_);
  if (irq_type_ == VFIO_PCI_INTX_IRQ_INDEX) intx_masked_ = true;
}

void CoreDevice::intx_unmask() {
  std::lock_guard lk(irq_mu_);
  if (irq_type_ != VFIO_PCI_INTX_IRQ_INDEX || virq_disabled_ || !intx_masked_) return;
  intx_masked_ = false;
  // A line still asserted fires again at once (re-sent to the user).
  if (pdev_.config_read(PCI_STATUS, 2) & PCI_STATUS_INTERRUPT) {
    intx_masked_ = true;
    signal(intx_trigger_.get());
  }
}

// The function's INTx pin (hw::IrqSink). Auto-masked: one trigger, then
// nothing until the user unmasks.
void CoreDevice::intx(bool asserted) {
  std::lock_guard lk(irq_mu_);
  if (!asserted || irq_type_ != VFIO_PCI_INTX_IRQ_INDEX || intx_masked_) return;
  intx_masked_ = true;
  if (!virq_disabled_) signal(intx_trigger_.get());
}

Result<void> CoreDevice::set_intx(IrqSet& req) {
  uint32_t action = req.flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
  bool is_intx = irq_type_ == VFIO_PCI_INTX_IRQ_INDEX;
  if (action == VFIO_IRQ_SET_ACTION_MASK || action == VFIO_IRQ_SET_ACTION_UNMASK) {
    if (!is_intx || req.start != 0 || req.count != 1) return Error(EINVAL, "INTx not enabled");
    if (req.flags & VFIO_IRQ_SET_DATA_EVENTFD) {
      // vfio_pci_set_intx_mask(): MASK by eventfd is not implemented.
      if (action == VFIO_IRQ_SET_ACTION_MASK) return Error(ENOTTY, "INTx mask by eventfd is not supported");
      // vfio_pci_set_intx_unmask(): an unmask eventfd (irqfd resampling);
      // -1 removes it.
      if (!req.fds[0]) {
        virqfd_disable();
        return ok();
      }
      TRY(check_eventfd(req.fds[0]));
      return virqfd_enable(std::move(req.fds[0]));
    }
    bool doit = (req.flags & VFIO_IRQ_SET_DATA_NONE) || req.bools[0];
    if (doit) {
      if (action == VFIO_IRQ_SET_ACTION_MASK) intx_mask();
      else intx_unmask();
    }
    return ok();
  }
  // TRIGGER
  if (is_intx && req.count == 0 && (req.flags & VFIO_IRQ_SET_DATA_NONE)) {
    virqfd_disable();  // vfio_intx_disable()
    std::lock_guard lk(irq_mu_);
    intx_trigger_.reset();
    irq_type_ = -1;
    return ok();
  }
  if (!(is_intx || irq_type_ < 0) || req.start != 0 || req.count != 1) return Error(EINVAL, "INTx trigger");
  if (req.flags & VFIO_IRQ_SET_DATA_EVENTFD) {
    if (req.fds[0]) TRY(check_eventfd(req.fds[0]));
    std::lock_guard lk(irq_mu_);
    if (!is_intx) {
      if (!pdev_.irq()) return Error(ENODEV, "device has no INTx line");
      irq_type_ = VFIO_PCI_INTX_IRQ_INDEX;
      intx_masked_ = virq_disabled_;
    }
    intx_trigger_ = std::move(req.fds[0]);  // -1 detaches, INTx stays enabled
    // A line already asserted is delivered now.
    if (!intx_masked_ && (pdev_.config_read(PCI_STATUS, 2) & PCI_STATUS_INTERRUPT)) {
      intx_masked_ = true;
      signal(intx_trigger_.get());
    }
    return ok();
  }
  if (!is_intx) return Error(EINVAL, "INTx not enabled");
  bool fire = (req.flags & VFIO_IRQ_SET_DATA_NONE) || req.bools[0];
  std::lock_guard lk(irq_mu_);
  if (fire && !virq_disabled_) signal(intx_trigger_.get());
  return ok();
}

// ---- MSI / MSI-X -------------------------------------------------------------------

void CoreDevice::msi(uint64_t address, uint32_t data) {
  std::lock_guard lk(irq_mu_);
  if (address != kHostMsiAddress || data >= msi_triggers_.size()) return;
  signal(msi_triggers_[data].get());
}

Result<void> CoreDevice::msi_enable(unsigned nvec, bool msix) {
  if (msix) {
    uint16_t cap = pdev_.find_capability(PCI_CAP_ID_MSIX);
    if (!cap || nvec > pdev_.msix_vec_count()) return Error(EINVAL, "MSI-X vectors");
    // Program host messages, every vector masked until it gets a trigger.
    for (unsigned v = 0; v < pdev_.msix_vec_count(); ++v) {
      uint64_t e = uint64_t{v} * PCI_MSIX_ENTRY_SIZE + (pdev_.config_read(cap + PCI_MSIX_TABLE, 4) & PCI_MSIX_TABLE_OFFSET);
      unsigned bar = pdev_.config_read(cap + PCI_MSIX_TABLE, 4) & PCI_MSIX_TABLE_BIR;
      (void)pdev_.bar_write(bar, e + PCI_MSIX_ENTRY_VECTOR_CTRL, 4, PCI_MSIX_ENTRY_CTRL_MASKBIT);
      (void)pdev_.bar_write(bar, e + PCI_MSIX_ENTRY_LOWER_ADDR, 4, static_cast<uint32_t>(kHostMsiAddress));
      (void)pdev_.bar_write(bar, e + PCI_MSIX_ENTRY_UPPER_ADDR, 4, 0);
      (void)pdev_.bar_write(bar, e + PCI_MSIX_ENTRY_DATA, 4, v);
    }
    uint16_t ctrl = static_cast<uint16_t>(pdev_.config_read(cap + PCI_MSIX_FLAGS, 2));
    pdev_.config_write(cap + PCI_MSIX_FLAGS, 2, (ctrl | PCI_MSIX_FLAGS_ENABLE) & ~PCI_MSIX_FLAGS_MASKALL);
  } else {
    uint16_t cap = pdev_.find_capability(PCI_CAP_ID_MSI);
    if (!cap) return Error(EINVAL, "no MSI");
    uint16_t ctrl = static_cast<uint16_t>(pdev_.config_read(cap + PCI_MSI_FLAGS, 2));
    unsigned mmc = (ctrl & PCI_MSI_FLAGS_QMASK) >> 1;
    unsigned mme = 0;
    while ((1u << mme) < nvec) ++mme;
    if (mme > mmc) return Error(EINVAL, "MSI vectors");
    bool is64 = ctrl & PCI_MSI_FLAGS_64BIT;
    pdev_.config_write(cap + PCI_MSI_ADDRESS_LO, 4, static_cast<uint32_t>(kHostMsiAddress));
    if (is64) pdev_.config_write(cap + PCI_MSI_ADDRESS_HI, 4, 0);
    pdev_.config_write(cap + (is64 ? PCI_MSI_DATA_64 : PCI_MSI_DATA_32), 2, 0);
    if (ctrl & PCI_MSI_FLAGS_MASKBIT) pdev_.config_write(cap + (is64 ? PCI_MSI_MASK_64 : PCI_MSI_MASK_32), 4, 0);
    pdev_.config_write(cap + PCI_MSI_FLAGS, 2, (ctrl & ~PCI_MSI_FLAGS_QSIZE) | (mme << 4) | PCI_MSI_FLAGS_ENABLE);
    // The user's view of Multiple Message Capable follows what was enabled.
    unsigned q = 0;
    while ((1u << q) < nvec) ++q;
    msi_qmax_ = static_cast<uint8_t>(q);
  }
  std::lock_guard lk(irq_mu_);
  msi_triggers_.clear();
  msi_triggers_.resize(nvec);
  msi_allocated_.assign(nvec, true);
  irq_type_ = msix ? VFIO_PCI_MSIX_IRQ_INDEX : VFIO_PCI_MSI_IRQ_INDEX;
  return ok();
}

void CoreDevice::msi_disable() {
  bool msix = irq_type_ == VFIO_PCI_MSIX_IRQ_INDEX;
  if (msix) {
    uint16_t cap = pdev_.find_capability(PCI_CAP_ID_MSIX);
    uint32_t t = pdev_.config_read(cap + PCI_MSIX_TABLE, 4);
    for (unsigned v = 0; v < pdev_.msix_vec_count(); ++v)
      (void)pdev_.bar_write(t & PCI_MSIX_TABLE_BIR,
                         (t & PCI_MSIX_TABLE_OFFSET) + uint64_t{v} * PCI_MSIX_ENTRY_SIZE + PCI_MSIX_ENTRY_VECTOR_CTRL, 4,
                         PCI_MSIX_ENTRY_CTRL_MASKBIT);
    uint16_t ctrl = static_cast<uint16_t>(pdev_.config_read(cap + PCI_MSIX_FLAGS, 2));
    pdev_.config_write(cap + PCI_MSIX_FLAGS, 2, ctrl & ~PCI_MSIX_FLAGS_ENABLE);
  } else if (uint16_t cap = pdev_.find_capability(PCI_CAP_ID_MSI)) {
    uint16_t ctrl = static_cast<uint16_t>(pdev_.config_read(cap + PCI_MSI_FLAGS, 2));
    pdev_.config_write(cap + PCI_MSI_FLAGS, 2, ctrl & ~PCI_MSI_FLAGS_ENABLE);
  }
  std::lock_guard lk(irq_mu_);
  msi_triggers_.clear();
  msi_allocated_.clear();
  irq_type_ = -1;
}

Result<void> CoreDevice::set_msi(IrqSet& req, bool msix) {
  int index = msix ? VFIO_PCI_MSIX_IRQ_INDEX : VFIO_PCI_MSI_IRQ_INDEX;
  if (irq_type_ == index && req.count == 0 && (req.flags & VFIO_IRQ_SET_DATA_NONE)) {
    msi_disable();
    return ok();
  }
  if (!(irq_type_ == index || irq_type_ < 0)) return Error(EINVAL, "another interrupt type is active");
  if (req.flags & VFIO_IRQ_SET_DATA_EVENTFD) {
    bool enabled_here = false;
    if (irq_type_ != index) {
      // vfio_msi_enable(start + count): pci_alloc_irq_vectors(1, 0) is
      // ERANGE — no vectors is not an enable.
      if (req.start + req.count == 0) return Error(ERANGE, "no vectors to enable");
      TRY(msi_enable(req.start + req.count, msix));
      enabled_here = true;
    }
    // vfio_msi_set_block(): attach or detach each vector's trigger in turn;
    // on a failure every vector this call touched is left without one, and
    // an index this call enabled is disabled again.
    uint16_t cap = msix ? pdev_.find_capability(PCI_CAP_ID_MSIX) : 0;
    uint32_t t = cap ? pdev_.config_read(cap + PCI_MSIX_TABLE, 4) : 0;
    auto set_vector = [&](uint32_t v, UniqueFd fd) {
      bool attach = static_cast<bool>(fd);
      {
        std::lock_guard lk(irq_mu_);
        msi_triggers_[v] = std::move(fd);
      }
      if (msix)
        (void)pdev_.bar_write(t & PCI_MSIX_TABLE_BIR,
                              (t & PCI_MSIX_TABLE_OFFSET) + uint64_t{v} * PCI_MSIX_ENTRY_SIZE + PCI_MSIX_ENTRY_VECTOR_CTRL,
                              4, attach ? 0 : PCI_MSIX_ENTRY_CTRL_MASKBIT);
    };
    Result<void> failed = ok();
    uint32_t i = 0;
    for (; i < req.count; ++i) {
      uint32_t v = req.start + i;
      if (v >= msi_triggers_.size()) {
        failed = Error(EINVAL, "vector beyond those enabled");
        break;
      }
      if (req.fds[i]) {
        if (auto r = check_eventfd(req.fds[i]); !r) {
          failed = r.error();
          break;
        }
      }
      set_vector(v, std::move(req.fds[i]));
    }
    if (!failed) {
      for (uint32_t k = 0; k <= i && k < req.count; ++k)
        if (req.start + k < msi_triggers_.size()) set_vector(req.start + k, UniqueFd());
      if (enabled_here) msi_disable();
      return failed;
    }
    return ok();
  }
  if (irq_type_ != index) return Error(EINVAL, "interrupt type not enabled");
  std::lock_guard lk(irq_mu_);
  for (uint32_t i = 0; i < req.count; ++i) {
    uint32_t v = req.start + i;
    if (v >= msi_triggers_.size()) continue;
    if ((req.flags & VFIO_IRQ_SET_DATA_NONE) || req.bools[i]) signal(msi_triggers_[v].get());
  }
  return ok();
}

Result<void> CoreDevice::virqfd_enable(UniqueFd fd) {
  virqfd_disable();
  auto v = std::make_unique<Virqfd>();
  v->fd = std::move(fd);
  v->stop = UniqueFd(eventfd(0, EFD_CLOEXEC));
  if (!v->stop) return Error(errno, "eventfd");
  int efd = v->fd.get(), stop = v->stop.get();
  v->thread = std::thread([this, efd, stop] {
    for (;;) {
      pollfd p[2] = {{efd, POLLIN, 0}, {stop, POLLIN, 0}};
      if (poll(p, 2, -1) < 0) {
        if (errno == EINTR) continue;
        return;
      }
      if (p[1].revents) return;
      if (p[0].revents & POLLIN) {
        uint64_t n;
        if (::read(efd, &n, sizeof(n)) == sizeof(n)) intx_unmask();
      } else if (p[0].revents) {
        return;  // the fd is no longer usable
      }
    }
  });
  unmask_virqfd_ = std::move(v);
  return ok();
}

void CoreDevice::virqfd_disable() {
  if (!unmask_virqfd_) return;
  uint64_t one = 1;
  (void)!::write(unmask_virqfd_->stop.get(), &one, sizeof(one));
  unmask_virqfd_->thread.join();
  unmask_virqfd_.reset();
}

void CoreDevice::irqs_disable_all() {
  virqfd_disable();
  if (irq_type_ == VFIO_PCI_MSI_IRQ_INDEX || irq_type_ == VFIO_PCI_MSIX_IRQ_INDEX) msi_disable();
  std::lock_guard lk(irq_mu_);
  intx_trigger_.reset();
  err_trigger_.reset();
  req_trigger_.reset();
  irq_type_ = -1;
  intx_masked_ = false;
}

void CoreDevice::request(unsigned count) {
  std::lock_guard lk(irq_mu_);
  if (req_trigger_) {
    if (count % 10 == 0) log::info(pdev_.name(), "vfio: requesting the user to release the device ({})", count);
    signal(req_trigger_.get());
  } else if (count == 0) {
    log::warn(pdev_.name(), "vfio: no device request channel registered, blocked until released by user");
  }
}

}  // namespace uvfio::vfio::pci
