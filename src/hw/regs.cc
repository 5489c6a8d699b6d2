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
  // Registers start and end on dwords: the first register ending after a
  // byte is the first ending after its dword, one entry per dword up to
  // the last register's end.
  uint64_t span = regs_.empty() ? 0 : uint64_t{regs_.back().offset} + regs_.back().size;
  next_.resize(span / 4);
  size_t i = 0;
  for (size_t d = 0; d < next_.size(); ++d) {
    while (uint64_t{regs_[i].offset} + regs_[i].size <= 4 * d) ++i;
    next_[d] = static_cast<uint32_t>(i);
  }
}

// The first register that ends after `off`.
std::vector<RegDef>::const_iterator RegisterBlock::first_ending_after(uint64_t off) const {
  return off / 4 < next_.size() ? regs_.begin() + next_[off / 4] : regs_.end();
}

const RegDef* RegisterBlock::find(uint64_t off) const {
  auto it = first_ending_after(off);
  return it != regs_.end() && it->offset <= off ? &*it : nullptr;
}

bool RegisterBlock::covers(uint64_t off, unsigned width) const {
  auto it = first_ending_after(off);
  return it != regs_.end() && it->offset < off + width;
}

uint64_t RegisterBlock::plain_run(uint64_t off, uint64_t len) const {
  auto it = first_ending_after(off);
  if (it == regs_.end()) return len;
  if (it->offset <= off) return 0;
  return std::min<uint64_t>(len, it->offset - off);
}

namespace {
bool legal_width(unsigned w) { return w == 1 || w == 2 || w == 4 || w == 8; }
}  // namespace

Result<uint64_t> RegisterBlock::read(uint64_t off, unsigned width, RegisterHandler& h, const BarMemory* plain) const {
  if (!legal_width(width)) return Error(EINVAL, "register access width");
  // The usual access: inside one register, which is read once.
  if (const RegDef* r = find(off); r && off + width <= uint64_t{r->offset} + r->size) {
    uint64_t v = r->access == RegAccess::kWO ? 0 : h.reg_read(*r);
    v >>= 8 * (off - r->offset);
    return width == 8 ? v : v & ((uint64_t{1} << (8 * width)) - 1);
  }
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
