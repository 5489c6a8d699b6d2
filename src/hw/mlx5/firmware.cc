// SPDX-License-Identifier: BSD-3-Clause
// The PF's firmware: the command queue's slot threads and what each
// command does to its target VF (docs/devices/mlx5-pf.md). Part of the Pf
// model (src/hw/mlx5/pf.h); the PF's registers and SR-IOV are in pf.cc.
#include "hw/mlx5/pf.h"

#include <cstring>

#include "base/log.h"
#include "hw/capabilities.h"
#include "hw/iommu.h"
#include "hw/mlx5/vf.h"

namespace uvfio::hw::mlx5 {

// The largest chunk a SAVE or LOAD moves in one command.
inline constexpr uint64_t kFwMaxChunk = 16 << 20;

void Pf::stop_firmware() {
  std::array<std::thread, kCmdSlots> threads;
  {
    std::lock_guard lk(fw_mu_);
    stopping_ = true;
    fw_cv_.notify_all();
    threads.swap(slots_);
  }
  for (auto& t : threads)
    if (t.joinable()) t.join();
  std::lock_guard lk(fw_mu_);
  stopping_ = false;
  pending_ = running_ = 0;
}

std::mutex& Pf::function_lock(uint16_t function_id) {
  std::lock_guard lk(fw_mu_);
  auto& m = fn_mu_[function_id];
  if (!m) m = std::make_unique<std::mutex>();
  return *m;
}

void Pf::slot_thread(unsigned slot) {
  const uint32_t bit = 1u << slot;
  for (;;) {
    uint64_t base;
    {
      std::unique_lock lk(fw_mu_);
      fw_cv_.wait(lk, [&] { return stopping_ || (pending_ & bit); });
      if (stopping_) return;
      pending_ &= ~bit;
      running_ |= bit;
      base = cmdq_base_;
    }
    IommuDomain* dom = iommu();
    CmdEntry e{};
    uint64_t at = base + uint64_t{slot} * kCmdEntrySize;
    bool fetched = dom && dom->read(at, std::span<uint8_t>(reinterpret_cast<uint8_t*>(&e), sizeof(e)));
    if (!fetched) {
      log::warn("mlx5-pf", "firmware: command slot {} unreachable at {:#x}", slot, at);
    } else if (e.owner == kOwnerFirmware) {
      execute(e.mb);
      e.owner = kOwnerDriver;
      (void)dom->write(at, std::span<const uint8_t>(reinterpret_cast<uint8_t*>(&e), sizeof(e)));
    }
    {
      std::lock_guard lk(fw_mu_);
      running_ &= ~bit;
    }
    if (fetched) raise_irq(slot);  // this slot's completion vector
  }
}

Vf* Pf::target(uint16_t function_id) {
  if (function_id == 0 || function_id > sriov_->num_enabled()) return nullptr;
  return static_cast<Vf*>(sriov_->vf(static_cast<uint16_t>(function_id - 1)));
}

void Pf::execute(FwMailbox& mb) {
  {
    std::lock_guard lk(log_mu_);
    if (cmd_log_) cmd_log_(mb);
  }
  mb.status = 0;
  mb.out0 = mb.out1 = 0;
  std::shared_lock vl(vfs_mu_);  // the VF stays while its command runs
  Vf* vf = target(mb.function_id);
  if (!vf) {
    mb.status = ENODEV;  // no such VF (or SR-IOV off)
    return;
  }
  std::lock_guard fl(function_lock(mb.function_id));  // one command per VF at a time, in order
  mb.status = static_cast<uint32_t>(run(mb, *vf));
}

int Pf::run(FwMailbox& mb, Vf& vf) {
  IommuDomain* pf_dom = iommu();
  if (!pf_dom) return EFAULT;
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
      // The next chunk of the VF's image, written where the driver said.
      if (mb.buf_len < kFwMinChunk || mb.buf_len > kFwMaxChunk) return EINVAL;
      if (mb.flags & kFwStart) {
        auto r = vf.save_begin(mode, (mb.flags & kFwTrack) != 0);
        if (!r) return r.error().code;
      }
      uint64_t remaining = 0;
      uint32_t crc = 0;
      auto n = pf_dom->produce(mb.buf_iova, mb.buf_len, [&](std::span<uint8_t> out) -> Result<size_t> {
        Vf::Chunk c = TRY(vf.save_next(out));
        remaining = c.remaining;
        crc = c.crc;
        return c.bytes;
      });
      if (!n) return n.error().code;
      mb.out0 = *n;
      mb.out1 = remaining;
      mb.out_crc = crc;
      return 0;
    }
    case FwCmd::kLoadVhcaState: {
      if (mb.buf_len == 0 || mb.buf_len > kFwMaxChunk) return EINVAL;
      bool done = false;
      auto r = pf_dom->consume(mb.buf_iova, mb.buf_len, [&](std::span<const uint8_t> in) -> Result<void> {
        done = TRY(vf.load_chunk(in, mb.flags & kFwStart));
        return ok();
      });
      if (!r) return r.error().code;
      mb.out0 = done ? 1 : 0;
      return 0;
    }
    case FwCmd::kCreatePageTracker: {
      uint64_t page = mb.arg0, n = mb.arg1;
      if (page < 4096 || (page & (page - 1)) || n == 0 || n > 256 || mb.buf_len < n * 16) return EINVAL;
      std::lock_guard lk(trackers_mu_);
      if (trackers_.count(mb.function_id)) return EBUSY;
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
      std::shared_ptr<Tracker> tp;
      {
        std::lock_guard lk(trackers_mu_);
        auto it = trackers_.find(mb.function_id);
        if (it == trackers_.end()) return EINVAL;
        tp = it->second;
      }
      Tracker& t = *tp;
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
    case FwCmd::kDestroyPageTracker: {
      std::lock_guard lk(trackers_mu_);
      if (!trackers_.erase(mb.function_id)) return EINVAL;
      if (vf.iommu()) vf.iommu()->set_write_observer(nullptr);
      return 0;
    }
  }
  return EOPNOTSUPP;
}

}  // namespace uvfio::hw::mlx5
