// SPDX-License-Identifier: BSD-3-Clause
// The mlx5 VF model: identity, registers, the work queue engine.
// State images are in vf_state.cc.
#include "hw/mlx5/vf.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "base/crc32c.h"
#include "hw/capabilities.h"
#include "hw/iommu.h"
#include "hw/mlx5/pf.h"
#include "hw/sriov.h"

namespace uvfio::hw::mlx5 {

Vf::Vf(Pf& pf, uint16_t index) : Function("mlx5-vf"), index_(index) { set_physfn(&pf); }

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

Vf::~Vf() { stop_engine(); }

void Vf::start_engine() {
  std::lock_guard lk(mu_);
  if (thread_.joinable()) return;
  stop_ = false;
  thread_ = std::thread([this] { engine(); });
}

void Vf::stop_engine() {
  std::thread t;
  {
    std::lock_guard lk(mu_);
    stop_ = true;
    cv_.notify_all();
    t = std::move(thread_);
  }
  if (t.joinable()) t.join();
}

bool Vf::runnable_locked() const {
  return (ctrl_ & vfreg::kCtrlEnable) && !(status_ & vfreg::kStatusError) && !quiesce_ && sq_head_ != sq_tail_ &&
         cq_tail_ - cq_head_ < cq_size_;
}

void Vf::on_reset() {
  stop_engine();
  {
    std::lock_guard lk(mu_);
    sq_base_ = cq_base_ = 0;
    sq_size_ = sq_tail_ = sq_head_ = cq_size_ = cq_tail_ = cq_head_ = 0;
    ctrl_ = irq_vector_ = irq_ctrl_ = 0;
    status_ = vfreg::kStatusReady;
    done_ = errors_ = bytes_ = 0;
    quiesce_ = busy_ = false;
    BarMemory* regs = bar_memory(0);
    std::memset(regs->data(), 0, regs->size());
    // Device memory too: whoever has the function next (another tenant,
    // after the last close) finds nothing of the one before.
    if (BarMemory* dm = bar_memory(2)) dm->zero();
  }
  // An image being saved or loaded ends with the function.
  std::lock_guard ik(img_mu_);
  if (save_.active) page_hash_.clear();
  save_ = Save{};
  load_ = Load{};
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

// ---- Registers ------------------------------------------------------------------

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

// ---- The work queue -------------------------------------------------------------------

// Test-only fault injection (docs/devices/mlx5-vf.md): with
// UVFIO_TEST_FAULT_VF_COPY=N in the daemon's environment, every Nth COPY a
// VF runs completes with EIO and moves nothing, so a test can prove that an
// outside test suite notices a broken device. Read once; unset or 0: off.
unsigned vf_copy_fault_every() {
  static const unsigned n = [] {
    const char* e = std::getenv("UVFIO_TEST_FAULT_VF_COPY");
    return e ? static_cast<unsigned>(std::strtoul(e, nullptr, 10)) : 0u;
  }();
  return n;
}

// Why `d` cannot run, as its completion's errno (0: it can): bus
// mastering off, too long, a device-memory range outside BAR2, an unknown
// operation. Both ways of running a descriptor ask this first.
uint32_t Vf::refusal(const VfDescriptor& d) {
  if (!(config().get(kCommand) & PCI_COMMAND_MASTER)) return EPERM;
  if (d.length > vfreg::kMaxLength) return EINVAL;
  BarMemory* dm = bar_memory(2);
  auto dev_range_ok = [&](uint64_t off) { return dm && off <= dm->size() && dm->size() - off >= d.length; };
  switch (static_cast<VfOp>(d.opcode)) {
    case VfOp::kCopy:
    case VfOp::kFill:
    case VfOp::kCrc32c: return 0;
    case VfOp::kToDevice: return dev_range_ok(d.dst) ? 0 : EINVAL;
    case VfOp::kFromDevice: return dev_range_ok(d.src) ? 0 : EINVAL;
  }
  return EOPNOTSUPP;
}

// The fault injection's verdict for the COPY about to run.
bool Vf::copy_fault() {
  unsigned n = vf_copy_fault_every();
  return n && ++copies_ % n == 0;
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
  if (uint32_t e = refusal(d)) return fail(static_cast<int>(e));
  // The engine's own buffer, kept across descriptors (engine thread only).
  if (scratch_.size() < d.length) scratch_.resize(d.length);
  std::span<uint8_t> buf(scratch_.data(), d.length);
  switch (static_cast<VfOp>(d.opcode)) {
    case VfOp::kCopy:  // guest to guest: one copy where both sides are mapped memory
      if (copy_fault()) return fail(EIO);
      if (auto r = dom->copy(d.src, d.dst, d.length, scratch_); !r) return fail(r.error().code);
      break;
    case VfOp::kToDevice:  // straight into device memory
      if (auto r = dom->read(d.src, std::span<uint8_t>(dm->data() + d.dst, d.length)); !r) return fail(r.error().code);
      break;
    case VfOp::kFromDevice:
      if (auto r = dom->write(d.dst, std::span<const uint8_t>(dm->data() + d.src, d.length)); !r)
        return fail(r.error().code);
      break;
    case VfOp::kFill:
      std::memset(buf.data(), static_cast<int>(d.src & 0xff), d.length);
      if (auto r = dom->write(d.dst, buf); !r) return fail(r.error().code);
      break;
    case VfOp::kCrc32c:
      if (auto r = dom->read(d.src, buf); !r) return fail(r.error().code);
      c.result = crc32c(0, buf.data(), buf.size());
      break;
  }
  return c;
}

// A batch where the client's memory is reached by messages: descriptors run
// in waves whose guest reads all go to the client at once, then are
// executed in order (device memory touched in order), then whose guest
// writes all go at once. A wave ends before a descriptor that reads guest
// memory an earlier one in it writes (it must see that write), at
// kWaveBytes, or when `go()` says stop; results are as one by one.
void Vf::run_pipelined(IommuDomain& dom, std::span<const VfDescriptor> descs, std::vector<VfCompletion>& comps,
                       const std::function<bool()>& go) {
  BarMemory* dm = bar_memory(2);
  struct Item {
    VfCompletion c;
    uint32_t len = 0;
    uint64_t rd = 0, wr = 0;  // guest ranges [rd, rd + len) read and [wr, wr + len) written, if any
    bool reads = false, writes = false;
    bool copy = false;          // a COPY writes what it read: from the read buffer, no second one
    size_t rbuf = 0, wbuf = 0;  // offsets in the wave's buffers
  };
  std::vector<Item> wave;
  std::vector<IommuDomain::DmaOp> ops;
  std::vector<size_t> owner;  // the wave item of each write op
  size_t i = 0;
  while (i < descs.size()) {
    if (i > 0 && !go()) return;
    wave.clear();
    size_t rbytes = 0, wbytes = 0;
    size_t first = i;
    for (; i < descs.size(); ++i) {
      const VfDescriptor& d = descs[i];
      Item it;
      it.c = VfCompletion{d.cookie, 0, 0};
      it.len = d.length;
      auto op = static_cast<VfOp>(d.opcode);
      it.c.status = refusal(d);
      if (!it.c.status) {
        it.reads = op == VfOp::kCopy || op == VfOp::kToDevice || op == VfOp::kCrc32c;
        it.writes = op == VfOp::kCopy || op == VfOp::kFromDevice || op == VfOp::kFill;
        it.copy = op == VfOp::kCopy;
        it.rd = d.src;
        it.wr = d.dst;
      }
      bool own_wbuf = it.writes && !it.copy;
      if (!wave.empty()) {
        if (rbytes + wbytes + (it.reads + own_wbuf) * uint64_t{d.length} > kWaveBytes) break;
        bool hazard = false;
        if (it.reads)
          for (const Item& w : wave)
            if (w.writes && it.rd < w.wr + w.len && w.wr < it.rd + it.len)
              hazard = true;
        if (hazard) break;
      }
      if (it.reads) it.rbuf = rbytes, rbytes += d.length;
      if (own_wbuf) it.wbuf = wbytes, wbytes += d.length;
      wave.push_back(it);
    }
    wave_rbuf_.resize(std::max(wave_rbuf_.size(), rbytes));
    wave_wbuf_.resize(std::max(wave_wbuf_.size(), wbytes));
    // Every guest read of the wave at once.
    ops.clear();
    for (const Item& it : wave)
      if (it.reads) ops.push_back({it.rd, std::span<uint8_t>(wave_rbuf_.data() + it.rbuf, it.len), 0});
    dom.read_many(ops);
    // In order: each descriptor's work, device memory included.
    size_t k = 0;
    for (size_t j = 0; j < wave.size(); ++j) {
      Item& it = wave[j];
      const VfDescriptor& d = descs[first + j];
      if (it.reads && ops[k++].err && !it.c.status) it.c.status = static_cast<uint32_t>(ops[k - 1].err);
      if (it.c.status) {
        it.writes = false;
        continue;
      }
      uint8_t* rb = wave_rbuf_.data() + it.rbuf;
      uint8_t* wb = wave_wbuf_.data() + it.wbuf;
      switch (static_cast<VfOp>(d.opcode)) {
        case VfOp::kCopy:  // the data read is written back out as it is
          if (copy_fault()) {
            it.c.status = EIO;
            it.writes = false;
          }
          break;
        case VfOp::kToDevice: std::memcpy(dm->data() + d.dst, rb, d.length); break;
        case VfOp::kFromDevice: std::memcpy(wb, dm->data() + d.src, d.length); break;
        case VfOp::kFill: std::memset(wb, static_cast<int>(d.src & 0xff), d.length); break;
        case VfOp::kCrc32c: it.c.result = crc32c(0, rb, d.length); break;
        default: break;
      }
    }
    // Every guest write of the wave at once, in order.
    ops.clear();
    owner.clear();
    for (size_t j = 0; j < wave.size(); ++j)
      if (wave[j].writes) {
        ops.push_back({wave[j].wr,
                       std::span<uint8_t>(wave[j].copy ? wave_rbuf_.data() + wave[j].rbuf
                                                       : wave_wbuf_.data() + wave[j].wbuf,
                                          wave[j].len),
                       0});
        owner.push_back(j);
      }
    dom.write_many(ops);
    for (size_t q = 0; q < ops.size(); ++q)
      if (ops[q].err) wave[owner[q]].c.status = static_cast<uint32_t>(ops[q].err);
    for (const Item& it : wave) comps.push_back(it.c);
  }
}

// The engine thread: fetch, execute, complete, interrupt. Descriptors are
// fetched in batches (those posted, up to the ring's end and the room in
// the completion ring, at most kBatch) with one read, run one at a time in
// order, and their completions written together before the head and tail
// move: through DMA messages (a client's memory without an fd) that is one
// round trip per batch instead of two per descriptor. A quiesce, a stop or
// the queue's disable between two descriptors ends the batch there.
void Vf::engine() {
  std::unique_lock lk(mu_);
  std::vector<VfDescriptor> descs;  // engine thread only
  std::vector<VfCompletion> comps;
  for (;;) {
    cv_.wait(lk, [&] { return stop_ || runnable_locked(); });
    if (stop_) return;
    bool raised = false;
    while (runnable_locked() && !stop_) {
      uint32_t sq_idx = sq_head_ % sq_size_;
      uint32_t n = std::min({sq_tail_ - sq_head_, sq_size_ - sq_idx, cq_size_ - (cq_tail_ - cq_head_), kBatch});
      uint64_t sq = sq_base_ + uint64_t{sq_idx} * sizeof(VfDescriptor);
      uint64_t cq_base = cq_base_;
      uint32_t cq_size = cq_size_, cq_first = cq_tail_;
      busy_ = true;
      lk.unlock();
      descs.resize(n);
      comps.clear();
      IommuDomain* dom = iommu();
      bool fetched = dom && (config().get(kCommand) & PCI_COMMAND_MASTER) &&
                     dom->read(sq, std::span<uint8_t>(reinterpret_cast<uint8_t*>(descs.data()), n * sizeof(VfDescriptor)));
      auto go = [&] {
        std::lock_guard g(mu_);
        return !stop_ && !quiesce_ && (ctrl_ & vfreg::kCtrlEnable);
      };
      if (fetched && dom->has_remote_maps()) {
        run_pipelined(*dom, descs, comps, go);
      } else if (fetched) {
        for (uint32_t i = 0; i < n; ++i) {
          if (i > 0 && !go()) break;
          comps.push_back(execute(descs[i]));
        }
      }
      // The completions, in at most two writes (the ring may wrap).
      bool posted = fetched;
      for (size_t done = 0; posted && done < comps.size();) {
        uint32_t at = (cq_first + static_cast<uint32_t>(done)) % cq_size;
        size_t k = std::min<size_t>(comps.size() - done, cq_size - at);
        posted = static_cast<bool>(dom->write(
            cq_base + uint64_t{at} * sizeof(VfCompletion),
            std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(comps.data() + done), k * sizeof(VfCompletion))));
        done += k;
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
      for (size_t i = 0; i < comps.size(); ++i) {
        if (comps[i].status) {
          ++errors_;
        } else {
          ++done_;
          bytes_ += descs[i].length;
        }
      }
      sq_head_ += static_cast<uint32_t>(comps.size());
      cq_tail_ += static_cast<uint32_t>(comps.size());
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
