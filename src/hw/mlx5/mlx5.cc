#include "hw/mlx5/mlx5.h"

#include <cstring>
#include <vector>

#include "hw/capabilities.h"
#include "hw/iommu.h"

namespace uvfio::hw::mlx5 {

Result<std::unique_ptr<Pf>> Pf::create(const PfParams& p) {
  std::unique_ptr<Pf> pf(new Pf(p));
  ConfigSpace& c = pf->config();
  pf->set_ids(FunctionIds{kVendorMellanox, kDevicePf, kClassEthernet, 0, kVendorMellanox, 0x0001});
  c.set_rw(PCI_COMMAND, 2, PCI_COMMAND_MASTER | PCI_COMMAND_SERR | PCI_COMMAND_INTX_DISABLE);
  c.set_rw1c(PCI_STATUS, 2, PCI_STATUS_SIG_SYSTEM_ERROR | PCI_STATUS_DETECTED_PARITY |
                                PCI_STATUS_REC_MASTER_ABORT);
  c.set_rw(PCI_CACHE_LINE_SIZE, 1, 0xff);
  c.set_rw(PCI_INTERRUPT_LINE, 1, 0xff);
  c.raw_write(PCI_INTERRUPT_PIN, 1, 1);
  TRY(pf->define_bar(0, BarDesc{BarKind::kMem64, kPfBar0Size, true}));
  TRY(add_pm_cap(*pf));
  PcieParams pp;
  pp.flr = true;
  TRY(add_pcie_cap(*pf, pp));
  TRY(add_msix_cap(*pf, MsixParams{kPfMsixVectors, 0, kMsixTableOffset, 0, kMsixPbaOffset}));
  SriovParams sp;
  sp.total_vfs = p.total_vfs;
  sp.first_vf_offset = p.first_vf_offset;
  sp.vf_stride = p.vf_stride;
  sp.vf_device = kDeviceVf;
  sp.vf_bars[0] = BarDesc{BarKind::kMem64, kVfBar0Size, true};
  sp.vf_bars[2] = BarDesc{BarKind::kMem64, p.vf_device_memory, true, true};  // device memory
  Pf* raw = pf.get();
  pf->sriov_ = TRY(SriovCapability::add(*pf, sp, [raw](uint16_t i) -> Result<std::unique_ptr<Function>> {
    return std::unique_ptr<Function>(TRY(Vf::create(*raw, i)));
  }));
  TRY(add_ari_cap(*pf, 0));
  TRY(add_dsn_cap(*pf, p.serial));
  pf->finish_build();
  return pf;
}

void Pf::on_config_write(uint16_t off, unsigned width, uint32_t) { sriov_->config_written(off, width); }

Pf::~Pf() {
  // Trackers hold write observers on VF domains: drop them first.
  for (auto& [id, t] : trackers_)
    if (Vf* vf = target(id); vf && vf->iommu()) vf->iommu()->set_write_observer(nullptr);
}

// BAR0's register block (docs/devices/mlx5-pf.md).
const RegisterBlock& Pf::registers_block() {
  using enum RegAccess;
  static const RegisterBlock b({
      {pfreg::kId, 4, kRO, "ID"},
      {pfreg::kVersion, 4, kRO, "VERSION"},
      {pfreg::kCmdMailbox, 8, kRW, "CMD_MAILBOX"},
      {pfreg::kCmdDoorbell, 4, kWO, "CMD_DOORBELL"},
      {pfreg::kCmdStatus, 4, kRO, "CMD_STATUS"},
  });
  return b;
}

const RegisterBlock* Pf::registers(unsigned bar) const { return bar == 0 ? &registers_block() : nullptr; }

Result<uint64_t> Pf::bar_read(unsigned bar, uint64_t off, unsigned width) {
  if (bar != 0 || !registers_block().covers(off, width)) return Function::bar_read(bar, off, width);
  return registers_block().read(off, width, *this, bar_memory(0));
}

Result<void> Pf::bar_write(unsigned bar, uint64_t off, unsigned width, uint64_t value) {
  if (bar != 0 || !registers_block().covers(off, width)) return Function::bar_write(bar, off, width, value);
  TRY(registers_block().write(off, width, value, *this, bar_memory(0)));
  if (doorbell_rung_.exchange(false)) raise_irq(0);  // the completion interrupt (MSI-X vector 0, if enabled)
  return ok();
}

uint64_t Pf::reg_read(const RegDef& r) {
  std::lock_guard lk(fw_mu_);
  switch (r.offset) {
    case pfreg::kId: return pfreg::kIdValue;
    case pfreg::kVersion: return 1;
    case pfreg::kCmdMailbox: return mailbox_;
    case pfreg::kCmdStatus: return cmd_status_;
  }
  return 0;
}

void Pf::reg_write(const RegDef& r, uint64_t value, uint64_t mask) {
  std::lock_guard lk(fw_mu_);
  if (r.offset == pfreg::kCmdMailbox) {
    mailbox_ = merge(mailbox_, value, mask);
    return;
  }
  if (r.offset != pfreg::kCmdDoorbell) return;
  // Any write to the doorbell runs the command in the mailbox.
  cmd_status_ = pfreg::kStatusBusy;
  FwMailbox mb{};
  IommuDomain* dom = iommu();
  if (!dom || !dom->read(mailbox_, std::span<uint8_t>(reinterpret_cast<uint8_t*>(&mb), sizeof(mb)))) {
    cmd_status_ = pfreg::kStatusDone | (uint32_t{EFAULT} << 8);  // the mailbox itself is unreachable
  } else {
    execute(mb);
    (void)dom->write(mailbox_, std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&mb), sizeof(mb)));
    cmd_status_ = pfreg::kStatusDone | (mb.status << 8);
  }
  doorbell_rung_ = true;
}

Vf* Pf::target(uint16_t function_id) {
  if (function_id == 0 || function_id > sriov_->num_enabled()) return nullptr;
  return static_cast<Vf*>(sriov_->vf(static_cast<uint16_t>(function_id - 1)));
}

void Pf::execute(FwMailbox& mb) {
  if (cmd_log_) cmd_log_(mb);
  mb.status = 0;
  mb.out0 = mb.out1 = 0;
  Vf* vf = target(mb.function_id);
  if (!vf) {
    mb.status = ENODEV;  // no such VF (or SR-IOV off)
    return;
  }
  mb.status = static_cast<uint32_t>(run(mb, *vf));
}

int Pf::run(FwMailbox& mb, Vf& vf) {
  IommuDomain* pf_dom = iommu();
  auto mode = (mb.flags & kFwIncremental) ? Vf::SaveMode::kIncremental : Vf::SaveMode::kFull;
  switch (static_cast<FwCmd>(mb.opcode)) {
    case FwCmd::kQueryVhcaMigrationState:
      mb.out0 = vf.pending_state_bytes(mode);
      return 0;
    case FwCmd::kSuspendVhca:
      if (mb.op_mod != kOpModInitiator && mb.op_mod != kOpModResponder) return EINVAL;
      vf.quiesce();
      return 0;
    case FwCmd::kResumeVhca:
      if (mb.op_mod == kOpModInitiator) vf.resume();
      else if (mb.op_mod != kOpModResponder) return EINVAL;
      return 0;
    case FwCmd::kSaveVhcaState: {
      auto img = vf.save_state(mode, mb.buf_len);
      if (!img) {
        mb.out0 = vf.pending_state_bytes(mode);
        return img.error().code;
      }
      if (auto r = pf_dom->write(mb.buf_iova, *img); !r) return r.error().code;
      mb.out0 = img->size();
      return 0;
    }
    case FwCmd::kLoadVhcaState: {
      if (mb.buf_len > (uint64_t{1} << 36)) return EINVAL;
      std::vector<uint8_t> img(mb.buf_len);
      if (auto r = pf_dom->read(mb.buf_iova, img); !r) return r.error().code;
      auto r = vf.load_state(img);
      return r ? 0 : r.error().code;
    }
    case FwCmd::kCreatePageTracker: {
      uint64_t page = mb.arg0, n = mb.arg1;
      if (trackers_.count(mb.function_id)) return EBUSY;
      if (page < 4096 || (page & (page - 1)) || n == 0 || n > 256 || mb.buf_len < n * 16) return EINVAL;
      if (!vf.iommu()) return EINVAL;  // nobody has the VF open: nothing to track
      auto t = std::make_shared<Tracker>();
      t->page_size = page;
      std::vector<uint8_t> raw(n * 16);
      if (auto r = pf_dom->read(mb.buf_iova, raw); !r) return r.error().code;
      for (uint64_t i = 0; i < n; ++i) {
        uint64_t iova, len;
        std::memcpy(&iova, raw.data() + 16 * i, 8);
        std::memcpy(&len, raw.data() + 16 * i + 8, 8);
        if (!len || iova + len < iova) return EINVAL;
        t->ranges.emplace_back(iova, len);
      }
      // The VF's DMA writes, as its IOMMU sees them.
      vf.iommu()->set_write_observer([t](uint64_t iova, uint64_t len) {
        std::lock_guard lk(t->mu);
        for (auto& [base, size] : t->ranges) {
          uint64_t lo = std::max(iova, base), hi = std::min(iova + len, base + size);
          for (uint64_t p = lo & ~(t->page_size - 1); p < hi; p += t->page_size) t->dirty.insert(p);
        }
      });
      trackers_[mb.function_id] = t;
      return 0;
    }
    case FwCmd::kReportPageTracker: {
      auto it = trackers_.find(mb.function_id);
      if (it == trackers_.end()) return EINVAL;
      Tracker& t = *it->second;
      uint64_t iova = mb.arg0, len = mb.arg1, room = mb.buf_len / 8;
      std::vector<uint64_t> out;
      {
        std::lock_guard lk(t.mu);
        auto b = t.dirty.lower_bound(iova & ~(t.page_size - 1));
        while (b != t.dirty.end() && *b < iova + len && out.size() < room) {
          out.push_back(*b);
          b = t.dirty.erase(b);  // report-and-clear
        }
        mb.out1 = (b != t.dirty.end() && *b < iova + len) ? 1 : 0;
      }
      if (!out.empty())
        if (auto r = pf_dom->write(mb.buf_iova, std::span<const uint8_t>(reinterpret_cast<uint8_t*>(out.data()),
                                                                           out.size() * 8));
            !r)
          return r.error().code;
      mb.out0 = out.size();
      return 0;
    }
    case FwCmd::kDestroyPageTracker:
      if (!trackers_.erase(mb.function_id)) return EINVAL;
      if (vf.iommu()) vf.iommu()->set_write_observer(nullptr);
      return 0;
  }
  return EOPNOTSUPP;
}
void Pf::before_reset() { sriov_->teardown(); }
void Pf::on_reset() {}

Result<std::unique_ptr<Vf>> Vf::create(Pf& pf, uint16_t index) {
  std::unique_ptr<Vf> vf(new Vf(pf, index));
  ConfigSpace& c = vf->config();
  // A VF's Vendor and Device ID registers read 0xffff (SR-IOV 1.1 §3.4.1.1);
  // software takes them from the PF and its SR-IOV capability.
  vf->set_ids(FunctionIds{0xffff, 0xffff, kClassEthernet, 0, kVendorMellanox, 0x0001});
  c.set_rw(PCI_COMMAND, 2, PCI_COMMAND_MASTER | PCI_COMMAND_SERR | PCI_COMMAND_INTX_DISABLE);
  c.set_rw1c(PCI_STATUS, 2, PCI_STATUS_SIG_SYSTEM_ERROR | PCI_STATUS_REC_MASTER_ABORT);
  const SriovParams& sp = pf.sriov().params();
  for (unsigned i = 0; i < kNumBars; ++i) TRY(vf->define_bar(i, sp.vf_bars[i]));
  PcieParams pp;
  pp.flr = true;
  TRY(add_pcie_cap(*vf, pp));
  TRY(add_msix_cap(*vf, MsixParams{kVfMsixVectors, 0, kMsixTableOffset, 0, kMsixPbaOffset}));
  vf->finish_build();
  return vf;
}

// ---- The VF's work queue -------------------------------------------------------

namespace {

uint32_t crc32c_table(uint32_t crc, const uint8_t* p, size_t n) {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
// SSE4.2's CRC32 instruction computes exactly CRC32C (Castagnoli).
__attribute__((target("sse4.2"))) uint32_t crc32c_hw(uint32_t crc, const uint8_t* p, size_t n) {
  uint64_t c = crc;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = __builtin_ia32_crc32di(c, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
  return c32;
}
#endif

}  // namespace

uint32_t crc32c(uint32_t crc, const uint8_t* p, size_t n) {
  crc = ~crc;
#if defined(__x86_64__)
  static const bool hw = __builtin_cpu_supports("sse4.2");
  crc = hw ? crc32c_hw(crc, p, n) : crc32c_table(crc, p, n);
#else
  crc = crc32c_table(crc, p, n);
#endif
  return ~crc;
}

Vf::~Vf() { stop_engine(); }

void Vf::start_engine() {
  if (thread_.joinable()) return;
  stop_ = false;
  thread_ = std::thread([this] { engine(); });
}

void Vf::stop_engine() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
    cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
}

bool Vf::runnable_locked() const {
  return (ctrl_ & vfreg::kCtrlEnable) && !(status_ & vfreg::kStatusError) && !quiesce_ && sq_head_ != sq_tail_ &&
         cq_tail_ - cq_head_ < cq_size_;
}

void Vf::on_reset() {
  stop_engine();
  std::lock_guard lk(mu_);
  sq_base_ = cq_base_ = 0;
  sq_size_ = sq_tail_ = sq_head_ = cq_size_ = cq_tail_ = cq_head_ = 0;
  ctrl_ = irq_vector_ = irq_ctrl_ = 0;
  status_ = vfreg::kStatusReady;
  done_ = errors_ = bytes_ = 0;
  quiesce_ = busy_ = false;
  BarMemory* regs = bar_memory(0);
  std::memset(regs->data(), 0, regs->size());
}

void Vf::quiesce() {
  std::unique_lock lk(mu_);
  quiesce_ = true;
  cv_.wait(lk, [&] { return !busy_; });
}

void Vf::resume() {
  std::lock_guard lk(mu_);
  quiesce_ = false;
  cv_.notify_all();
}

bool Vf::quiesced() const {
  std::lock_guard lk(mu_);
  return quiesce_ && !busy_;
}

bool Vf::wait_idle(std::chrono::milliseconds timeout) {
  std::unique_lock lk(mu_);
  return cv_.wait_for(lk, timeout, [&] { return !busy_ && !runnable_locked(); });
}

// BAR0's register block (docs/devices/mlx5-vf.md). SCRATCH and the gaps
// are plain memory.
const RegisterBlock& Vf::registers_block() {
  using enum RegAccess;
  static const RegisterBlock b({
      {vfreg::kId, 4, kRO, "ID"},
      {vfreg::kVersion, 4, kRO, "VERSION"},
      {vfreg::kStatus, 4, kRO, "STATUS"},
      {vfreg::kSqBase, 8, kRW, "SQ_BASE"},
      {vfreg::kSqSize, 4, kRW, "SQ_SIZE"},
      {vfreg::kSqTail, 4, kRW, "SQ_TAIL"},
      {vfreg::kSqHead, 4, kRO, "SQ_HEAD"},
      {vfreg::kCqBase, 8, kRW, "CQ_BASE"},
      {vfreg::kCqSize, 4, kRW, "CQ_SIZE"},
      {vfreg::kCqTail, 4, kRO, "CQ_TAIL"},
      {vfreg::kCqHead, 4, kRW, "CQ_HEAD"},
      // ENABLE has a precondition (valid ring sizes), so it is not a storage
      // bit: rw_mask 0 (mlx5_vf_test covers it).
      {vfreg::kCtrl, 4, kRW, "CTRL", 0},
      {vfreg::kIrqVector, 4, kRW, "IRQ_VECTOR"},
      {vfreg::kIrqCtrl, 4, kRW, "IRQ_CTRL", 1},
      {vfreg::kCountDone, 8, kRO, "COUNT_DONE"},
      {vfreg::kCountErr, 8, kRO, "COUNT_ERR"},
      {vfreg::kBytes, 8, kRO, "BYTES"},
  });
  return b;
}

const RegisterBlock* Vf::registers(unsigned bar) const { return bar == 0 ? &registers_block() : nullptr; }

Result<uint64_t> Vf::bar_read(unsigned bar, uint64_t off, unsigned width) {
  if (bar != 0 || !registers_block().covers(off, width)) return Function::bar_read(bar, off, width);
  return registers_block().read(off, width, *this, bar_memory(0));
}

Result<void> Vf::bar_write(unsigned bar, uint64_t off, unsigned width, uint64_t value) {
  if (bar != 0 || !registers_block().covers(off, width)) return Function::bar_write(bar, off, width, value);
  TRY(registers_block().write(off, width, value, *this, bar_memory(0)));
  if (start_pending_.exchange(false)) start_engine();
  return ok();
}

uint64_t Vf::reg_read(const RegDef& r) {
  std::lock_guard lk(mu_);
  switch (r.offset) {
    case vfreg::kId: return vfreg::kIdValue;
    case vfreg::kVersion: return 1;
    case vfreg::kStatus:
      return status_ | ((ctrl_ & vfreg::kCtrlEnable) ? vfreg::kStatusQueueOn : 0) |
             ((quiesce_ && !busy_) ? vfreg::kStatusQuiesced : 0);
    case vfreg::kSqBase: return sq_base_;
    case vfreg::kSqSize: return sq_size_;
    case vfreg::kSqTail: return sq_tail_;
    case vfreg::kSqHead: return sq_head_;
    case vfreg::kCqBase: return cq_base_;
    case vfreg::kCqSize: return cq_size_;
    case vfreg::kCqTail: return cq_tail_;
    case vfreg::kCqHead: return cq_head_;
    case vfreg::kCtrl: return ctrl_;
    case vfreg::kIrqVector: return irq_vector_;
    case vfreg::kIrqCtrl: return irq_ctrl_;
    case vfreg::kCountDone: return done_;
    case vfreg::kCountErr: return errors_;
    case vfreg::kBytes: return bytes_;
  }
  return 0;
}

void Vf::reg_write(const RegDef& r, uint64_t value, uint64_t mask) {
  std::lock_guard lk(mu_);
  auto m32 = [&](uint32_t old) { return static_cast<uint32_t>(merge(old, value, mask)); };
  switch (r.offset) {
    case vfreg::kSqBase: sq_base_ = merge(sq_base_, value, mask); break;
    case vfreg::kCqBase: cq_base_ = merge(cq_base_, value, mask); break;
    case vfreg::kSqSize:
      if (!(ctrl_ & vfreg::kCtrlEnable)) sq_size_ = m32(sq_size_);
      break;
    case vfreg::kCqSize:
      if (!(ctrl_ & vfreg::kCtrlEnable)) cq_size_ = m32(cq_size_);
      break;
    case vfreg::kSqTail: sq_tail_ = m32(sq_tail_); break;  // the doorbell
    case vfreg::kCqHead: cq_head_ = m32(cq_head_); break;
    case vfreg::kIrqVector: irq_vector_ = m32(irq_vector_); break;
    case vfreg::kIrqCtrl: irq_ctrl_ = m32(irq_ctrl_) & 1; break;
    case vfreg::kCtrl: {
      bool on = m32(ctrl_) & vfreg::kCtrlEnable;
      if (on && !(ctrl_ & vfreg::kCtrlEnable)) {
        // Enabling checks the rings: sizes are powers of two within range.
        auto ok_size = [](uint32_t n) { return n && !(n & (n - 1)) && n <= vfreg::kMaxRing; };
        if (!ok_size(sq_size_) || !ok_size(cq_size_)) {
          status_ |= vfreg::kStatusError;
          break;
        }
        status_ &= ~vfreg::kStatusError;
        sq_head_ = sq_tail_ = cq_tail_ = cq_head_ = 0;
        ctrl_ |= vfreg::kCtrlEnable;
        start_pending_ = true;
      } else if (!on) {
        ctrl_ &= ~vfreg::kCtrlEnable;
      }
      break;
    }
  }
  cv_.notify_all();
}

VfCompletion Vf::execute(const VfDescriptor& d) {
  VfCompletion c{d.cookie, 0, 0};
  IommuDomain* dom = iommu();
  BarMemory* dm = bar_memory(2);
  auto fail = [&](int e) {
    c.status = static_cast<uint32_t>(e);
    return c;
  };
  if (!dom) return fail(EFAULT);
  if (!(config().get(kCommand) & PCI_COMMAND_MASTER)) return fail(EPERM);
  if (d.length > vfreg::kMaxLength) return fail(EINVAL);
  std::vector<uint8_t> buf(d.length);
  auto dev_range_ok = [&](uint64_t off) { return dm && off <= dm->size() && dm->size() - off >= d.length; };
  switch (static_cast<VfOp>(d.opcode)) {
    case VfOp::kCopy:
      if (auto r = dom->read(d.src, buf); !r) return fail(r.error().code);
      if (auto r = dom->write(d.dst, buf); !r) return fail(r.error().code);
      break;
    case VfOp::kToDevice:
      if (!dev_range_ok(d.dst)) return fail(EINVAL);
      if (auto r = dom->read(d.src, buf); !r) return fail(r.error().code);
      std::memcpy(dm->data() + d.dst, buf.data(), d.length);
      break;
    case VfOp::kFromDevice:
      if (!dev_range_ok(d.src)) return fail(EINVAL);
      std::memcpy(buf.data(), dm->data() + d.src, d.length);
      if (auto r = dom->write(d.dst, buf); !r) return fail(r.error().code);
      break;
    case VfOp::kFill:
      std::memset(buf.data(), static_cast<int>(d.src & 0xff), d.length);
      if (auto r = dom->write(d.dst, buf); !r) return fail(r.error().code);
      break;
    case VfOp::kCrc32c:
      if (auto r = dom->read(d.src, buf); !r) return fail(r.error().code);
      c.result = crc32c(0, buf.data(), buf.size());
      break;
    default:
      return fail(EOPNOTSUPP);
  }
  return c;
}

// The engine thread: fetch, execute, complete, interrupt; one descriptor at
// a time, never past a full completion ring.
void Vf::engine() {
  std::unique_lock lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return stop_ || runnable_locked(); });
    if (stop_) return;
    bool raised = false;
    while (runnable_locked() && !stop_) {
      uint64_t sq = sq_base_ + uint64_t{sq_head_ % sq_size_} * sizeof(VfDescriptor);
      uint64_t cq = cq_base_ + uint64_t{cq_tail_ % cq_size_} * sizeof(VfCompletion);
      busy_ = true;
      lk.unlock();
      VfDescriptor d{};
      IommuDomain* dom = iommu();
      bool fetched = dom && (config().get(kCommand) & PCI_COMMAND_MASTER) &&
                     dom->read(sq, std::span<uint8_t>(reinterpret_cast<uint8_t*>(&d), sizeof(d)));
      VfCompletion c{};
      bool posted = false;
      if (fetched) {
        c = execute(d);
        posted = static_cast<bool>(dom->write(cq, std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&c), sizeof(c))));
      }
      lk.lock();
      busy_ = false;
      if (!fetched || !posted) {
        // The rings themselves are unreachable: the queue stops in error.
        status_ |= vfreg::kStatusError;
        ++errors_;
        cv_.notify_all();
        break;
      }
      ++sq_head_;
      ++cq_tail_;
      if (c.status) ++errors_;
      else {
        ++done_;
        bytes_ += d.length;
      }
      raised = true;
      cv_.notify_all();  // quiesce() and wait_idle() wait on this
    }
    if (raised && (irq_ctrl_ & 1)) {
      // Still busy until the interrupt is out: wait_idle() means "done and
      // signalled".
      unsigned v = irq_vector_;
      busy_ = true;
      lk.unlock();
      raise_irq(v);
      lk.lock();
      busy_ = false;
      cv_.notify_all();
    }
  }
}

}  // namespace uvfio::hw::mlx5

namespace uvfio::hw::mlx5 {
namespace {

constexpr uint64_t kImageMagic = 0x5453465635584c4dull;  // "MLX5VFST"
constexpr uint32_t kImageVersion = 1;
constexpr uint32_t kPage = 4096;

struct __attribute__((packed)) ImageHeader {
  uint64_t magic;
  uint32_t version;
  uint32_t flags;  // bit0: incremental
  uint64_t device_memory;
  uint32_t npages;
  uint32_t rsvd;
};

struct __attribute__((packed)) ImageRegs {
  uint64_t sq_base, cq_base;
  uint32_t sq_size, sq_tail, sq_head, cq_size, cq_tail, cq_head;
  uint32_t ctrl, irq_vector, irq_ctrl, status;
  uint64_t done, errors, bytes;
  uint8_t scratch[0x100];  // plain BAR0 memory below the register block's end
};

// A page of device memory as it is now. Running pre-copy reads race with the
// VF's engine (and with clients writing through their mmap) by design, as a
// real device's firmware reading its memory does; the quiesced final image
// is what makes the copy exact. Every saved page is hashed from the
// snapshot that is sent, so a recorded hash always describes what the
// destination holds. Volatile word loads (never a torn word, never turned
// into a memcpy call), not instrumented by TSan: this race is the model.
__attribute__((no_sanitize("thread"), noinline)) void snapshot_device_page(uint8_t* dst, const uint8_t* src) {
  const volatile uint64_t* s = reinterpret_cast<const volatile uint64_t*>(src);
  uint64_t w[512];
  for (unsigned i = 0; i < 512; ++i) w[i] = s[i];
  std::memcpy(dst, w, sizeof(w));
}

uint64_t page_hash(const uint8_t* p) {
  // FNV-1a over 64-bit words in four interleaved lanes (so the multiplies
  // pipeline), folded at the end: a change detector, not a cryptographic
  // hash.
  uint64_t h[4] = {1469598103934665603ull, 1469598103934665603ull ^ 1, 1469598103934665603ull ^ 2,
                   1469598103934665603ull ^ 3};
  for (uint32_t i = 0; i < kPage; i += 32) {
    for (int l = 0; l < 4; ++l) {
      uint64_t w;
      std::memcpy(&w, p + i + 8 * l, 8);
      h[l] = (h[l] ^ w) * 1099511628211ull;
    }
  }
  uint64_t r = h[0];
  for (int l = 1; l < 4; ++l) r = (r ^ h[l]) * 1099511628211ull;
  return r;
}

}  // namespace

uint64_t Vf::pending_state_bytes(SaveMode mode) {
  BarMemory* dm = bar_memory(2);
  uint64_t pages = dm->size() / kPage;
  if (mode == SaveMode::kFull || page_hash_.size() != pages) return sizeof(ImageHeader) + sizeof(ImageRegs) + pages * (4 + kPage);
  uint64_t changed = 0;
  uint8_t snap[kPage];
  for (uint64_t i = 0; i < pages; ++i) {
    snapshot_device_page(snap, dm->data() + i * kPage);
    if (page_hash_[i] != page_hash(snap)) ++changed;
  }
  return sizeof(ImageHeader) + sizeof(ImageRegs) + changed * (4 + kPage);
}

Result<std::vector<uint8_t>> Vf::save_state(SaveMode mode, uint64_t max_size) {
  BarMemory* dm = bar_memory(2);
  uint64_t pages = dm->size() / kPage;
  bool full = mode == SaveMode::kFull || page_hash_.size() != pages;
  ImageRegs regs{};
  {
    std::lock_guard lk(mu_);
    regs = ImageRegs{sq_base_, cq_base_, sq_size_, sq_tail_, sq_head_, cq_size_, cq_tail_, cq_head_, ctrl_,
                     irq_vector_, irq_ctrl_, status_, done_, errors_, bytes_, {}};
  }
  std::memcpy(regs.scratch, bar_memory(0)->data(), sizeof(regs.scratch));
  std::vector<uint8_t> out(sizeof(ImageHeader) + sizeof(ImageRegs));
  if (full) out.reserve(out.size() + pages * (4 + kPage));
  std::vector<uint64_t> hashes(pages);
  uint32_t n = 0;
  uint8_t snap[kPage];
  for (uint64_t i = 0; i < pages; ++i) {
    snapshot_device_page(snap, dm->data() + i * kPage);
    hashes[i] = page_hash(snap);
    if (!full && page_hash_[i] == hashes[i]) continue;
    size_t at = out.size();
    if (at + 4 + kPage > max_size) return Error(ENOSPC, "VF image larger than the buffer");
    out.resize(at + 4 + kPage);
    uint32_t idx = static_cast<uint32_t>(i);
    std::memcpy(out.data() + at, &idx, 4);
    std::memcpy(out.data() + at + 4, snap, kPage);
    ++n;
  }
  if (out.size() > max_size) return Error(ENOSPC, "VF image larger than the buffer");
  ImageHeader h{kImageMagic, kImageVersion, full ? 0u : 1u, dm->size(), n, 0};
  std::memcpy(out.data(), &h, sizeof(h));
  std::memcpy(out.data() + sizeof(h), &regs, sizeof(regs));
  page_hash_ = std::move(hashes);  // committed only now: a failed save loses nothing
  return out;
}

Result<void> Vf::load_state(std::span<const uint8_t> image) {
  BarMemory* dm = bar_memory(2);
  if (image.size() < sizeof(ImageHeader) + sizeof(ImageRegs)) return Error(EINVAL, "short VF image");
  ImageHeader h;
  std::memcpy(&h, image.data(), sizeof(h));
  if (h.magic != kImageMagic || h.version != kImageVersion) return Error(EINVAL, "not a VF image");
  if (h.device_memory != dm->size()) return Error(EINVAL, "VF image for another device-memory size");
  if (image.size() != sizeof(ImageHeader) + sizeof(ImageRegs) + uint64_t{h.npages} * (4 + kPage))
    return Error(EINVAL, "VF image size does not match its page count");
  uint64_t pages = dm->size() / kPage;
  const uint8_t* rec = image.data() + sizeof(ImageHeader) + sizeof(ImageRegs);
  for (uint32_t i = 0; i < h.npages; ++i) {  // validate before applying anything
    uint32_t idx;
    std::memcpy(&idx, rec + uint64_t{i} * (4 + kPage), 4);
    if (idx >= pages) return Error(EINVAL, "VF image page out of range");
  }
  ImageRegs regs;
  std::memcpy(&regs, image.data() + sizeof(ImageHeader), sizeof(regs));
  auto ring_ok = [](uint32_t n) { return n == 0 || (!(n & (n - 1)) && n <= vfreg::kMaxRing); };
  if (!ring_ok(regs.sq_size) || !ring_ok(regs.cq_size)) return Error(EINVAL, "VF image with bad ring sizes");
  stop_engine();
  for (uint32_t i = 0; i < h.npages; ++i) {
    uint32_t idx;
    std::memcpy(&idx, rec + uint64_t{i} * (4 + kPage), 4);
    std::memcpy(dm->data() + uint64_t{idx} * kPage, rec + uint64_t{i} * (4 + kPage) + 4, kPage);
  }
  std::memcpy(bar_memory(0)->data(), regs.scratch, sizeof(regs.scratch));
  bool run;
  {
    std::lock_guard lk(mu_);
    sq_base_ = regs.sq_base;
    cq_base_ = regs.cq_base;
    sq_size_ = regs.sq_size;
    sq_tail_ = regs.sq_tail;
    sq_head_ = regs.sq_head;
    cq_size_ = regs.cq_size;
    cq_tail_ = regs.cq_tail;
    cq_head_ = regs.cq_head;
    ctrl_ = regs.ctrl;
    irq_vector_ = regs.irq_vector;
    irq_ctrl_ = regs.irq_ctrl;
    status_ = regs.status;
    done_ = regs.done;
    errors_ = regs.errors;
    bytes_ = regs.bytes;
    run = ctrl_ & vfreg::kCtrlEnable;
  }
  page_hash_.clear();
  if (run) start_engine();
  return ok();
}

}  // namespace uvfio::hw::mlx5
