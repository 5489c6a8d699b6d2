// SPDX-License-Identifier: BSD-3-Clause
#include "hw/regs.h"

#include <algorithm>
#include <cassert>

#include "hw/bar.h"

namespace uvfio::hw {

RegisterBlock::RegisterBlock(std::vector<RegDef> regs) : regs_(std::move(regs)) {
  std::sort(regs_.begin(), regs_.end(), [](const RegDef& a, const RegDef& b) { return a.offset < b.offset; });
  for (size_t i = 0; i < regs_.size(); ++i) {
    // A model's own table: a mistake here is ours, not a client's.
    assert((regs_[i].size == 4 || regs_[i].size == 8) && regs_[i].offset % regs_[i].size == 0);
    assert(i == 0 || regs_[i - 1].offset + regs_[i - 1].size <= regs_[i].offset);
  }
}

const RegDef* RegisterBlock::find(uint64_t off) const {
  auto it = std::upper_bound(regs_.begin(), regs_.end(), off,
                             [](uint64_t o, const RegDef& r) { return o < r.offset; });
  if (it == regs_.begin()) return nullptr;
  --it;
  return off < uint64_t{it->offset} + it->size ? &*it : nullptr;
}

bool RegisterBlock::covers(uint64_t off, unsigned width) const {
  for (unsigned i = 0; i < width; ++i)
    if (find(off + i)) return true;
  return false;
}

uint64_t RegisterBlock::plain_run(uint64_t off, uint64_t len) const {
  for (const RegDef& r : regs_) {  // sorted by offset
    if (r.offset + r.size <= off) continue;
    if (r.offset <= off) return 0;
    return std::min<uint64_t>(len, r.offset - off);
  }
  return len;
}

namespace {
bool legal_width(unsigned w) { return w == 1 || w == 2 || w == 4 || w == 8; }
}  // namespace

Result<uint64_t> RegisterBlock::read(uint64_t off, unsigned width, RegisterHandler& h, const BarMemory* plain) const {
  if (!legal_width(width)) return Error(EINVAL, "register access width");
  uint64_t out = 0;
  const RegDef* cached = nullptr;  // each register is read once per access
  uint64_t cached_value = 0;
  for (unsigned i = 0; i < width; ++i) {
    uint64_t at = off + i;
    uint64_t byte = 0;
    if (const RegDef* r = find(at)) {
      if (r != cached) {
        cached = r;
        cached_value = r->access == RegAccess::kWO ? 0 : h.reg_read(*r);
      }
      byte = (cached_value >> (8 * (at - r->offset))) & 0xff;
    } else if (plain) {
      byte = TRY(plain->load(at, 1));
    }
    out |= byte << (8 * i);
  }
  return out;
}

Result<void> RegisterBlock::write(uint64_t off, unsigned width, uint64_t value, RegisterHandler& h,
                                  BarMemory* plain) const {
  if (!legal_width(width)) return Error(EINVAL, "register access width");
  unsigned i = 0;
  while (i < width) {
    uint64_t at = off + i;
    const RegDef* r = find(at);
    if (!r) {
      if (plain) TRY(plain->store(at, 1, (value >> (8 * i)) & 0xff));
      ++i;
      continue;
    }
    // Every byte of this access that falls in `r`, as one masked write.
    uint64_t v = 0, mask = 0;
    for (; i < width && off + i < uint64_t{r->offset} + r->size; ++i) {
      unsigned sh = static_cast<unsigned>(8 * (off + i - r->offset));
      v |= ((value >> (8 * i)) & 0xff) << sh;
      mask |= uint64_t{0xff} << sh;
    }
    if (r->access != RegAccess::kRO) h.reg_write(*r, v, mask);
  }
  return ok();
}

}  // namespace uvfio::hw
