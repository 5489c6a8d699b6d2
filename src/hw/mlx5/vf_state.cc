// SPDX-License-Identifier: BSD-3-Clause
// The mlx5 VF's state images, saved and loaded in chunks of whole records
// (docs/devices/mlx5-vf.md, "State image"):
//   header (32)  u64 magic "MLX5VFST", u32 version 2, u32 flags (bit0
//                incremental), u64 device-memory size, u64 0
//   registers (336)
//   page records u32 index, 4096 bytes — every page, or the changed ones;
//                a page of zeros is the index alone, with bit 31 set
//   terminator   u32 0xffffffff
// The header and registers open the first chunk; every chunk holds whole
// records; the terminator closes the last.
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <thread>

#include "base/crc32c.h"
#include "hw/mlx5/vf.h"

namespace uvfio::hw::mlx5 {

namespace {

constexpr uint64_t kImageMagic = 0x5453465635584c4dull;  // "MLX5VFST"
constexpr uint32_t kImageVersion = 2;
constexpr uint32_t kPage = 4096;
constexpr uint32_t kRecord = 4 + kPage;
constexpr uint32_t kTerminator = 0xffffffff;
constexpr uint32_t kZeroPage = 0x80000000;  // index flag: a page of zeros, no data follows

struct __attribute__((packed)) ImageHeader {
  uint64_t magic;
  uint32_t version;
  uint32_t flags;  // bit0: incremental
  uint64_t device_memory;
  uint64_t rsvd;
};
static_assert(sizeof(ImageHeader) == 32);

struct __attribute__((packed)) ImageRegs {
  uint64_t sq_base, cq_base;
  uint32_t sq_size, sq_tail, sq_head, cq_size, cq_tail, cq_head;
  uint32_t ctrl, irq_vector, irq_ctrl, status;
  uint64_t done, errors, bytes;
  uint8_t scratch[0x100];  // plain BAR0 memory below the register block's end
};
static_assert(sizeof(ImageRegs) == 336);

constexpr uint64_t kPrefix = sizeof(ImageHeader) + sizeof(ImageRegs);

// Change detection hashes each page with XXH3 (libxxhash): a change
// detector at memory speed, not a cryptographic hash.
uint64_t page_hash(const uint8_t* p) { return XXH3_64bits(p, kPage); }

// A page of device memory as it is now, copied to `dst`: true if it was all
// zero (sent as its index alone). Running pre-copy reads race with the VF's
// engine (and with clients writing through their mmap) by design, as a real
// device's firmware reading its memory does; the quiesced final image is
// what makes the copy exact. Not instrumented by TSan: this race is the
// model (under TSan the loads are volatile words, so the compiler cannot
// turn them into a memcpy call TSan would see).
__attribute__((no_sanitize("thread"), noinline)) bool snapshot_page(uint8_t* dst, const uint8_t* src) {
#if defined(__SANITIZE_THREAD__)
  const volatile uint64_t* s = reinterpret_cast<const volatile uint64_t*>(src);
#else
  const uint64_t* s = reinterpret_cast<const uint64_t*>(src);
#endif
  uint64_t any = 0;
  for (unsigned i = 0; i < kPage / 8; ++i) {
    uint64_t w = s[i];
    std::memcpy(dst + 8 * i, &w, 8);  // the record's data follows a 4-byte index: unaligned
    any |= w;
  }
  return any == 0;
}

// The copy, and the hash of what was copied (so a recorded hash always
// describes what the destination holds); the page is still in L1.
uint64_t snapshot_and_hash(uint8_t* dst, const uint8_t* src) {
  (void)snapshot_page(dst, src);
  return page_hash(dst);
}

// The hash of a page of device memory where it is (no copy: a scan for
// changes). The library's code is not instrumented: the race with writers
// is the model's, as above.
uint64_t device_page_hash(const uint8_t* src) { return page_hash(src); }

bool test_bit(const std::vector<uint64_t>& b, uint64_t i) { return (b[i / 64] >> (i % 64)) & 1; }

const uint64_t kZeroHash = [] {
  alignas(8) static const uint8_t zero[kPage] = {};
  return page_hash(zero);
}();
const uint64_t kNonZero = ~kZeroHash;  // untracked pages: only "zero or not" matters

// Device memory page by page, in increasing order, knowing which pages are
// holes of its memfd (never written: zeros, and reading them through the
// mapping would allocate them). A pass over 64 GiB of mostly untouched
// device memory costs a few lseeks, not 64 GiB of RAM.
class PageWalker {
 public:
  struct State {
    uint64_t from = 1, start = 0, end = 0;  // [from, start) hole, [start, end) data
  };
  PageWalker(int fd, uint64_t size, State& st) : fd_(fd), size_(size), st_(st) {}
  PageWalker(int fd, uint64_t size) : PageWalker(fd, size, own_) {}
  bool is_data(uint64_t page) {
    uint64_t off = page * kPage;
    if (off < st_.from || off >= st_.end) {
      st_.from = off;
      off_t d = lseek(fd_, static_cast<off_t>(off), SEEK_DATA);
      if (d < 0) {  // ENXIO: no data from here on; other errors: take it all as data
        st_.start = errno == ENXIO ? size_ : off;
        st_.end = size_;
      } else {
        st_.start = static_cast<uint64_t>(d);
        off_t h = lseek(fd_, d, SEEK_HOLE);
        st_.end = h < 0 ? size_ : static_cast<uint64_t>(h);
      }
      if (st_.start >= size_) st_.end = size_ + 1;  // all hole to the end
    }
    return off >= st_.start && off < st_.end && st_.start < size_;
  }

 private:
  int fd_;
  uint64_t size_;
  State own_;
  State& st_;
};

// How many pages of the file hold data, as PageWalker::is_data() would say
// page by page. The file's block count says it at once: shmem counts every
// page it holds (written, read through a shared mapping, or swapped out) in
// st_blocks, and SEEK_DATA finds exactly those. Walking the extents instead
// costs a SEEK_HOLE that visits every page of a fully written memory (10 ms
// for 1 GiB: the whole STOP -> STOP_COPY transition it sat in), so that is
// kept for files whose blocks do not count pages (not shmem).
uint64_t count_data_pages(int fd, uint64_t size) {
  uint64_t pages = size / kPage;
  struct statfs fs {};
  struct stat st {};
  if (fstatfs(fd, &fs) == 0 && fs.f_type == TMPFS_MAGIC && fstat(fd, &st) == 0)
    return std::min<uint64_t>(pages, static_cast<uint64_t>(st.st_blocks) / (kPage / 512));
  auto first_page_at_or_after = [](uint64_t off) { return (off + kPage - 1) / kPage; };
  uint64_t n = 0, at = 0;
  while (at < size) {
    off_t d = lseek(fd, static_cast<off_t>(at), SEEK_DATA);
    if (d < 0) {
      if (errno == ENXIO) break;  // no data from here on
      return n + (pages - std::min(pages, first_page_at_or_after(at)));  // as PageWalker: the rest is data
    }
    off_t h = lseek(fd, d, SEEK_HOLE);
    uint64_t end = h < 0 ? size : std::min<uint64_t>(static_cast<uint64_t>(h), size);
    uint64_t from = std::min(pages, first_page_at_or_after(static_cast<uint64_t>(d)));
    uint64_t to = std::min(pages, first_page_at_or_after(end));
    if (to > from) n += to - from;
    if (end <= static_cast<uint64_t>(d)) break;
    at = end;
  }
  return n;
}

}  // namespace

void Vf::PageHashes::reset(uint64_t pages) {
  blocks_.clear();
  blocks_.resize((pages + kBlock - 1) / kBlock);
  valid_ = true;
}

uint64_t Vf::PageHashes::get(uint64_t page) const {
  const auto& b = blocks_[page / kBlock];
  return b ? b[page % kBlock] : kZeroHash;
}

void Vf::PageHashes::set(uint64_t page, uint64_t hash) {
  auto& b = blocks_[page / kBlock];
  if (!b) {
    if (hash == kZeroHash) return;
    b = std::make_unique<uint64_t[]>(kBlock);
    for (uint64_t i = 0; i < kBlock; ++i) b[i] = kZeroHash;
  }
  b[page % kBlock] = hash;
}

uint64_t Vf::scan_changed() {
  BarMemory* dm = bar_memory(2);
  uint64_t pages = dm->size() / kPage;
  save_.changed.assign((pages + 63) / 64, 0);
  // The scan is what bounds the downtime (every page of device memory is
  // hashed: the host may have written any of them through its mapping), so
  // big memories are scanned on every core, in ranges of whole bitmap
  // words (each thread its own words; page_hash_ is only read).
  unsigned parts = 1;
  if (pages >= (uint64_t{64} << 20) / kPage) parts = std::clamp(std::thread::hardware_concurrency(), 1u, 8u);
  uint64_t words = save_.changed.size();
  struct Part {
    uint64_t n = 0, bytes = 0;
  };
  std::vector<Part> res(parts);
  auto scan = [&](unsigned k) {
    uint64_t w0 = words * k / parts, w1 = words * (k + 1) / parts;
    uint64_t first = w0 * 64, last = std::min(pages, w1 * 64);
    PageWalker walk(dm->fd(), dm->size());
    for (uint64_t i = first; i < last; ++i) {
      uint64_t h = walk.is_data(i) ? device_page_hash(dm->data() + i * kPage) : kZeroHash;
      if (page_hash_.get(i) != h) {
        save_.changed[i / 64] |= uint64_t{1} << (i % 64);
        ++res[k].n;
        res[k].bytes += h == kZeroHash ? 4 : kRecord;
      }
    }
  };
  std::vector<std::thread> helpers;
  for (unsigned k = 1; k < parts; ++k) helpers.emplace_back(scan, k);
  scan(0);
  for (auto& t : helpers) t.join();
  uint64_t n = 0, bytes = 0;
  for (const Part& r : res) {
    n += r.n;
    bytes += r.bytes;
  }
  save_.bytes_left = bytes;
  return n;
}

uint64_t Vf::pending_state_bytes(SaveMode mode) {
  std::lock_guard lk(img_mu_);
  BarMemory* dm = bar_memory(2);
  uint64_t pages = dm->size() / kPage;
  bool full = mode == SaveMode::kFull || !page_hash_.valid();
  if (full) {
    uint64_t data = count_data_pages(dm->fd(), dm->size());
    return kPrefix + data * kRecord + (pages - data) * 4 + 4;
  }
  uint64_t bytes = 0;
  PageWalker walk(dm->fd(), dm->size());
  for (uint64_t i = 0; i < pages; ++i) {
    bool data = walk.is_data(i);
    if (full) {
      bytes += data ? kRecord : 4;
      continue;
    }
    uint64_t h = kZeroHash;
    if (data) h = device_page_hash(dm->data() + i * kPage);
    if (page_hash_.get(i) != h) bytes += h == kZeroHash ? 4 : kRecord;
  }
  return kPrefix + bytes + 4;
}

Result<uint64_t> Vf::save_begin(SaveMode mode, bool track) {
  std::lock_guard lk(img_mu_);
  BarMemory* dm = bar_memory(2);
  uint64_t pages = dm->size() / kPage;
  // An image abandoned half-way leaves hashes of pages the destination may
  // never have received: start over with a full image.
  if (save_.active) page_hash_.clear();
  save_ = Save{};
  save_.full = mode == SaveMode::kFull || !page_hash_.valid();
  save_.track = track;
  ImageRegs regs{};
  {
    std::lock_guard ml(mu_);
    regs = ImageRegs{sq_base_, cq_base_, sq_size_, sq_tail_, sq_head_, cq_size_, cq_tail_, cq_head_, ctrl_,
                     irq_vector_, irq_ctrl_, status_, done_, errors_, bytes_, {}};
    std::memcpy(regs.scratch, bar_memory(0)->data(), sizeof(regs.scratch));
  }
  save_.regs.resize(sizeof(regs));
  std::memcpy(save_.regs.data(), &regs, sizeof(regs));
  if (save_.full) {
    if (track) page_hash_.reset(pages);
    else page_hash_.clear();  // nothing recorded: a later image is full
    save_.pages_left = pages;
    uint64_t data = count_data_pages(dm->fd(), dm->size());
    save_.bytes_left = data * kRecord + (pages - data) * 4;
  } else {
    save_.pages_left = scan_changed();
  }
  save_.active = true;
  return kPrefix + save_.bytes_left + 4;
}

Result<Vf::Chunk> Vf::save_next(std::span<uint8_t> out) {
  std::lock_guard lk(img_mu_);
  if (!save_.active) return Error(EINVAL, "no image in progress");
  if (out.size() < kFwMinChunk) return Error(EINVAL, "chunk buffer below the minimum");
  BarMemory* dm = bar_memory(2);
  uint64_t pages = dm->size() / kPage;
  size_t pos = 0;
  // The chunk's CRC32C, taken record by record while each is in cache.
  uint32_t crc = 0;
  size_t crc_at = 0;
  auto sum = [&] {
    crc = crc32c(crc, out.data() + crc_at, pos - crc_at);
    crc_at = pos;
  };
  if (!save_.header_done) {
    ImageHeader h{kImageMagic, kImageVersion, save_.full ? 0u : 1u, dm->size(), 0};
    std::memcpy(out.data(), &h, sizeof(h));
    std::memcpy(out.data() + sizeof(h), save_.regs.data(), save_.regs.size());
    pos = kPrefix;
    save_.header_done = true;
  }
  // One pass per page: copied straight into the caller's buffer and hashed
  // as it goes; a hole (or a page found all zero) goes as its index alone.
  PageWalker::State st{save_.hole_from, save_.data_start, save_.data_end};
  PageWalker walk(dm->fd(), dm->size(), st);
  while (save_.next_page < pages && pos + kRecord <= out.size()) {
    uint64_t i = save_.next_page++;
    if (!save_.full && !test_bit(save_.changed, i)) continue;
    uint32_t idx = static_cast<uint32_t>(i);
    uint64_t h = kZeroHash;
    if (walk.is_data(i)) {
      if (save_.track) h = snapshot_and_hash(out.data() + pos + 4, dm->data() + i * kPage);
      else h = snapshot_page(out.data() + pos + 4, dm->data() + i * kPage) ? kZeroHash : kNonZero;
    }
    if (save_.track) page_hash_.set(i, h);
    if (h == kZeroHash) {
      idx |= kZeroPage;
      std::memcpy(out.data() + pos, &idx, 4);
      pos += 4;
      save_.bytes_left -= std::min<uint64_t>(save_.bytes_left, 4);
    } else {
      std::memcpy(out.data() + pos, &idx, 4);
      pos += kRecord;
      save_.bytes_left -= std::min<uint64_t>(save_.bytes_left, kRecord);
    }
    --save_.pages_left;
    sum();
  }
  save_.hole_from = st.from;
  save_.data_start = st.start;
  save_.data_end = st.end;
  if (save_.pages_left == 0) save_.next_page = pages;  // nothing more to send: the end fits now
  if (save_.next_page == pages && pos + 4 <= out.size()) {
    std::memcpy(out.data() + pos, &kTerminator, 4);
    pos += 4;
    sum();
    save_ = Save{};  // complete: the hashes stand for what was sent
    return Chunk{pos, 0, crc};
  }
  sum();
  // Pages may have changed kind since the size was counted: never say 0
  // while the image is open.
  return Chunk{pos, std::max<uint64_t>(save_.bytes_left + 4, 4), crc};
}

Result<bool> Vf::load_chunk(std::span<const uint8_t> chunk, bool first) {
  std::lock_guard lk(img_mu_);
  BarMemory* dm = bar_memory(2);
  uint64_t pages = dm->size() / kPage;
  auto fail = [&](const char* why) -> Result<bool> {
    load_ = Load{};
    return Error(EINVAL, why);
  };
  size_t pos = 0;
  if (first) {
    load_ = Load{};
    if (chunk.size() < kPrefix) return fail("short VF image");
    ImageHeader h;
    std::memcpy(&h, chunk.data(), sizeof(h));
    if (h.magic != kImageMagic || h.version != kImageVersion) return fail("not a VF image");
    if (h.device_memory != dm->size()) return fail("VF image for another device-memory size");
    ImageRegs regs;
    std::memcpy(&regs, chunk.data() + sizeof(h), sizeof(regs));
    auto ring_ok = [](uint32_t n) { return n == 0 || (!(n & (n - 1)) && n <= vfreg::kMaxRing); };
    if (!ring_ok(regs.sq_size) || !ring_ok(regs.cq_size)) return fail("VF image with bad ring sizes");
    load_.regs.assign(chunk.begin() + sizeof(h), chunk.begin() + kPrefix);
    pos = kPrefix;
  } else if (!load_.active) {
    return Error(EINVAL, "no image being loaded");
  }
  // Validate the chunk's records before applying any of them.
  bool last = false;
  for (size_t at = pos; at < chunk.size();) {
    if (chunk.size() - at < 4) return fail("partial record");
    uint32_t idx;
    std::memcpy(&idx, chunk.data() + at, 4);
    if (idx == kTerminator) {
      if (at + 4 != chunk.size()) return fail("data after the image's end");
      last = true;
      break;
    }
    if ((idx & ~kZeroPage) >= pages) return fail("VF image page out of range");
    if (idx & kZeroPage) {
      at += 4;
      continue;
    }
    if (chunk.size() - at < kRecord) return fail("partial record");
    at += kRecord;
  }
  if (first) {
    stop_engine();  // the device is stopped while its memory is replaced
    load_.active = true;
  }
  for (size_t at = pos; at + 4 <= chunk.size();) {
    uint32_t idx;
    std::memcpy(&idx, chunk.data() + at, 4);
    if (idx == kTerminator) break;
    if (idx & kZeroPage) {
      // A page of zeros: made a hole again (no memory), or zeroed.
      uint64_t off = uint64_t{idx & ~kZeroPage} * kPage;
      if (fallocate(dm->fd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off), kPage) != 0)
        std::memset(dm->data() + off, 0, kPage);
      at += 4;
      continue;
    }
    std::memcpy(dm->data() + uint64_t{idx} * kPage, chunk.data() + at + 4, kPage);
    at += kRecord;
  }
  if (!last) return false;
  ImageRegs regs;
  std::memcpy(&regs, load_.regs.data(), sizeof(regs));
  std::memcpy(bar_memory(0)->data(), regs.scratch, sizeof(regs.scratch));
  bool run;
  {
    std::lock_guard ml(mu_);
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
  load_ = Load{};
  page_hash_.clear();  // this device's next image is a full one
  if (run) start_engine();
  return true;
}

}  // namespace uvfio::hw::mlx5
