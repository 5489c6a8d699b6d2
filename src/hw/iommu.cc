// SPDX-License-Identifier: BSD-3-Clause
#include "hw/iommu.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <fcntl.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "base/safe_copy.h"

namespace uvfio::hw {

// One file a client mapped: its fd (the most capable one it sent: a
// read-write fd replaces a read-only one) shared by the file's windows.
struct IommuDomain::Backing {
  UniqueFd fd;
  bool writable = false;  // fd opened read-write
  std::vector<std::weak_ptr<Window>> windows;
};

// A piece of a file mapped once, shared by the maps inside it; unmapped when
// the last of them goes (always with the domain's lock held).
struct IommuDomain::Window {
  std::shared_ptr<Backing> file;
  uint64_t off = 0, len = 0;
  uint8_t* base = nullptr;
  bool writable = false;
  uint64_t* accounted = nullptr;  // the domain's mapped_bytes_ (the domain outlives its windows)
  ~Window() {
    if (base) munmap(base, len);
    if (accounted) *accounted -= len;
  }
};

namespace {
constexpr uint64_t kWindowAlign = uint64_t{1} << 30;

Result<void> check_range(uint64_t iova, uint64_t size) {
  if (size == 0 || (iova % kIommuPageSize) || (size % kIommuPageSize)) return Error(EINVAL, "unaligned DMA range");
  if (iova + size < iova) return Error(EOVERFLOW, "DMA range wraps");
  return ok();
}
}  // namespace

IommuDomain::~IommuDomain() { unmap_all(); }

Result<void> IommuDomain::insert_locked(uint64_t iova, Map m) {
  if (maps_.size() >= max_maps_) return Error(ENOSPC, "too many DMA maps");
  auto next = maps_.lower_bound(iova);
  if (next != maps_.end() && next->first < iova + m.size) return Error(EEXIST, "DMA map overlaps");
  if (next != maps_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second.size > iova) return Error(EEXIST, "DMA map overlaps");
  }
  map_bytes_ += m.size;
  map_bytes_peak_ = std::max(map_bytes_peak_, map_bytes_);
  maps_.emplace(iova, std::move(m));
  return ok();
}

// The window of `fd`'s file that holds [offset, offset+size): one already
// mapped, or a new one of the 1 GiB-aligned pieces around the range (within
// the file).
Result<std::shared_ptr<IommuDomain::Window>> IommuDomain::window_locked(UniqueFd fd, uint64_t offset, uint64_t size,
                                                                       bool writable) {
  struct stat st;
  if (fstat(fd.get(), &st) < 0) return Error(errno, "fstat DMA fd");
  if (!S_ISREG(st.st_mode)) return Error(EINVAL, "DMA fd is not a regular file or memfd");
  // The whole range must be backed by the file now, as pinning the pages
  // would require on Linux: a map past the end would fault on first use.
  uint64_t fsize = static_cast<uint64_t>(st.st_size);
  if (offset > fsize || size > fsize - offset) return Error(EINVAL, "DMA map extends past the end of its file");
  int acc = fcntl(fd.get(), F_GETFL) & O_ACCMODE;
  if (writable && acc != O_RDWR && acc != O_WRONLY) return Error(EACCES, "DMA fd is read-only");
  auto key = std::make_pair(static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino));
  std::shared_ptr<Backing> file;
  if (auto it = files_.find(key); it != files_.end()) {
    file = it->second.lock();
    if (!file) files_.erase(it);
  }
  if (file) {
    for (auto w = file->windows.begin(); w != file->windows.end();) {
      auto win = w->lock();
      if (!win) {
        w = file->windows.erase(w);
        continue;
      }
      if (win->off <= offset && offset + size <= win->off + win->len && (win->writable || !writable)) return win;
      ++w;
    }
  } else {
    // Prune entries of files whose windows are all gone before counting.
    for (auto it = files_.begin(); it != files_.end();) it = it->second.expired() ? files_.erase(it) : std::next(it);
    if (files_.size() >= max_files_) return Error(ENOSPC, "too many distinct files mapped for DMA");
    file = std::make_shared<Backing>();
  }
  if (!file->fd || (!file->writable && acc == O_RDWR)) {
    file->fd = std::move(fd);  // the first fd of this file, or a more capable one
    file->writable = acc == O_RDWR;
  }
  uint64_t start = offset / kWindowAlign * kWindowAlign;
  uint64_t end = std::min(fsize, (offset + size + kWindowAlign - 1) / kWindowAlign * kWindowAlign);
  uint64_t len = end - start;
  if (len > max_mapped_bytes_ || mapped_bytes_ > max_mapped_bytes_ - len)
    return Error(ENOSPC, "DMA maps exceed the address space a device may map");
  int mprot = PROT_READ | (writable ? PROT_WRITE : 0);
  void* p = mmap(nullptr, len, mprot, MAP_SHARED, file->fd.get(), static_cast<off_t>(start));
  if (p == MAP_FAILED) return Error(errno == EACCES || errno == EPERM ? EACCES : EINVAL, "cannot map DMA fd");
  auto win = std::make_shared<Window>();
  win->file = file;
  win->off = start;
  win->len = len;
  win->base = static_cast<uint8_t*>(p);
  win->writable = writable;
  win->accounted = &mapped_bytes_;
  mapped_bytes_ += len;
  file->windows.push_back(win);
  files_[key] = file;
  return win;
}

Result<void> IommuDomain::map_fd(uint64_t iova, uint64_t size, UniqueFd fd, uint64_t offset, uint32_t prot) {
  TRY(check_range(iova, size));
  if (!fd) return Error(EBADF, "no fd for DMA map");
  if (offset % kIommuPageSize) return Error(EINVAL, "unaligned fd offset");
  if (prot & ~(kDmaRead | kDmaWrite)) return Error(EINVAL, "bad DMA protection");
  std::unique_lock lk(mu_);
  // Refused before any window is made for it.
  if (maps_.size() >= max_maps_) return Error(ENOSPC, "too many DMA maps");
  auto win = TRY(window_locked(std::move(fd), offset, size, prot & kDmaWrite));
  uint8_t* host = win->base + (offset - win->off);
  return insert_locked(iova, Map{size, host, prot, std::move(win)});
}

Result<void> IommuDomain::map_host(uint64_t iova, uint64_t size, void* host, uint32_t prot) {
  TRY(check_range(iova, size));
  if (!host) return Error(EINVAL, "no memory");
  if (prot & ~(kDmaRead | kDmaWrite)) return Error(EINVAL, "bad DMA protection");
  std::unique_lock lk(mu_);
  return insert_locked(iova, Map{size, static_cast<uint8_t*>(host), prot, nullptr});
}

Result<void> IommuDomain::map_remote(uint64_t iova, uint64_t size, uint32_t prot) {
  TRY(check_range(iova, size));
  if (prot & ~(kDmaRead | kDmaWrite)) return Error(EINVAL, "bad DMA protection");
  std::unique_lock lk(mu_);
  TRY(insert_locked(iova, Map{size, nullptr, prot, nullptr}));
  ++remote_maps_;
  return ok();
}

void IommuDomain::set_remote(std::shared_ptr<RemoteDma> r) {
  std::unique_lock lk(mu_);
  remote_ = std::move(r);
}

void IommuDomain::block_remote(bool on) {
  std::shared_ptr<RemoteDma> peer;
  {
    std::unique_lock lk(mu_);
    remote_blocked_ += on ? 1 : -1;
    if (on) peer = remote_;
  }
  if (peer) peer->cancel();
}

Result<uint64_t> IommuDomain::unmap(uint64_t iova, uint64_t size) {
  if (size == 0 || (iova % kIommuPageSize) || (size % kIommuPageSize)) return Error(EINVAL, "unaligned DMA range");
  if (iova + size - 1 < iova) return Error(EINVAL, "DMA range wraps");
  uint64_t last = iova + size - 1;
  std::unique_lock lk(mu_);  // waits for DMA in flight (readers hold it shared)
  // A map that begins before the range and reaches into it, or one that
  // begins inside it and ends after it, would be split: EINVAL, nothing
  // removed (type1 v2).
  auto first = maps_.lower_bound(iova);
  if (first != maps_.begin()) {
    auto prev = std::prev(first);
    if (prev->first + prev->second.size - 1 >= iova) return Error(EINVAL, "DMA unmap would split a map");
  }
  auto end = maps_.upper_bound(last);
  if (end != maps_.begin()) {
    auto tail = std::prev(end);
    if (tail->first >= iova && tail->first + tail->second.size - 1 > last)
      return Error(EINVAL, "DMA unmap would split a map");
  }
  uint64_t removed = 0;
  for (auto it = first; it != end; ++it) {
    removed += it->second.size;
    if (!it->second.host) --remote_maps_;
  }
  map_bytes_ -= removed;
  maps_.erase(first, end);  // windows whose last map this was are unmapped here
  return removed;
}

void IommuDomain::unmap_all() {
  std::unique_lock lk(mu_);
  maps_.clear();
  files_.clear();
  map_bytes_ = 0;
  remote_maps_ = 0;
}

size_t IommuDomain::num_maps() const {
  std::shared_lock lk(mu_);
  return maps_.size();
}

size_t IommuDomain::num_files() const {
  std::shared_lock lk(mu_);
  size_t n = 0;
  for (auto& [k, f] : files_) n += !f.expired();
  return n;
}

uint64_t IommuDomain::map_bytes() const {
  std::shared_lock lk(mu_);
  return map_bytes_;
}

uint64_t IommuDomain::map_bytes_peak() const {
  std::shared_lock lk(mu_);
  return map_bytes_peak_;
}

uint64_t IommuDomain::mapped_bytes() const {
  std::shared_lock lk(mu_);
  return mapped_bytes_;
}

void IommuDomain::set_write_observer(WriteObserver o) {
  std::unique_lock lk(mu_);
  observer_ = std::move(o);
}

template <class Fn>
Result<void> IommuDomain::walk(uint64_t iova, uint64_t len, uint32_t need, Fn&& fn) const {
  if (iova + len < iova) return Error(EFAULT, "DMA range wraps");
  uint64_t done = 0;
  while (done < len) {
    uint64_t a = iova + done;
    auto it = maps_.upper_bound(a);
    if (it == maps_.begin()) return Error(EFAULT, "DMA to unmapped IOVA");
    --it;
    const Map& m = it->second;
    if (a >= it->first + m.size) return Error(EFAULT, "DMA to unmapped IOVA");
    if ((m.prot & need) != need) return Error(EPERM, "DMA not permitted by the mapping");
    uint64_t n = std::min(len - done, it->first + m.size - a);
    fn(m.host ? m.host + (a - it->first) : nullptr, a, done, n);
    done += n;
  }
  return ok();
}

// Local memory is copied under the (shared) lock, so unmap waits for it;
// remote pieces are collected and carried after the lock is dropped.
struct RemoteSeg {
  uint64_t iova, at, n;
};

Result<void> IommuDomain::read(uint64_t iova, std::span<uint8_t> out) const {
  std::vector<RemoteSeg> remote;
  std::shared_ptr<RemoteDma> peer;
  {
    std::shared_lock lk(mu_);
    // Check the whole range first so a failing DMA has no partial effect.
    Result<void> err = ok();
    TRY(walk(iova, out.size(), kDmaRead, [&](uint8_t* p, uint64_t, uint64_t, uint64_t) {
      if (!p && !remote_) err = Error(EFAULT, "DMA to memory the device cannot reach");
    }));
    TRY(err);
    TRY(walk(iova, out.size(), kDmaRead, [&](uint8_t* p, uint64_t a, uint64_t at, uint64_t n) {
      // A client may shrink the file under its map: the copy fails, not us.
      if (p && err && !safe_memcpy(out.data() + at, p, n)) err = Error(EFAULT, "DMA source gone (file shrunk)");
      else if (!p) remote.push_back({a, at, n});
    }));
    TRY(err);
    if (remote.empty()) {
      count(out.size());
      return ok();
    }
    if (remote_blocked_) return Error(ECANCELED, "function reset in progress");
    peer = remote_;
  }
  for (const RemoteSeg& r : remote) TRY(peer->read(r.iova, out.subspan(r.at, r.n)));
  count(out.size());
  return ok();
}

Result<void> IommuDomain::write(uint64_t iova, std::span<const uint8_t> in) {
  std::vector<RemoteSeg> remote;
  std::shared_ptr<RemoteDma> peer;
  {
    std::shared_lock lk(mu_);
    Result<void> err = ok();
    TRY(walk(iova, in.size(), kDmaWrite, [&](uint8_t* p, uint64_t, uint64_t, uint64_t) {
      if (!p && !remote_) err = Error(EFAULT, "DMA to memory the device cannot reach");
    }));
    TRY(err);
    TRY(walk(iova, in.size(), kDmaWrite, [&](uint8_t* p, uint64_t a, uint64_t at, uint64_t n) {
      if (p && err && !safe_memcpy(p, in.data() + at, n)) err = Error(EFAULT, "DMA target gone (file shrunk)");
      else if (!p) remote.push_back({a, at, n});
    }));
    TRY(err);
    if (remote.empty()) {
      if (observer_) observer_(iova, in.size());
      count(in.size());
      return ok();
    }
    if (remote_blocked_) return Error(ECANCELED, "function reset in progress");
    peer = remote_;
  }
  for (const RemoteSeg& r : remote) TRY(peer->write(r.iova, in.subspan(r.at, r.n)));
  count(in.size());
  std::shared_lock lk(mu_);
  if (observer_) observer_(iova, in.size());
  return ok();
}

bool IommuDomain::has_remote_maps() const {
  std::shared_lock lk(mu_);
  return remote_maps_ > 0;
}

namespace {
// Merged requests stay this small: the peer's answer to one is copied while
// the next is on its way (measured: 1 MiB requests lose that overlap).
constexpr uint64_t kMergeMax = 128 << 10;

// A merged request refused for one of its parts is carried again part by
// part, so only the op that owns the refused range fails; not when the
// peer itself failed (gone, cancelled, silent), which one by one would too.
bool retry_piecewise(int err) {
  return err != ECANCELED && err != ECONNRESET && err != EPIPE && err != ETIMEDOUT && err != EDEADLK &&
         err != ENOBUFS;
}
}  // namespace

// One pass over the ops under the shared lock: each checked whole first (a
// failing op has no effect), local parts copied, remote parts collected with
// the op they belong to; then the peer carries every remote part at once.
// Remote parts that continue each other (the next IOVA, in the same map,
// the next bytes of the buffer: descriptors whose buffers are laid out one
// after another) go as one request, as a scatter-gather list of adjacent
// pages is merged.
template <bool kWrite>
void IommuDomain::many(std::span<DmaOp> ops) const {
  using Seg = RemoteDma::Seg;
  std::vector<Seg> parts;          // each op's remote parts
  std::vector<size_t> part_op;
  std::vector<Seg> runs;           // the requests: adjacent parts merged
  std::vector<size_t> run_first;   // the first part of each run (and the end)
  std::shared_ptr<RemoteDma> peer;
  constexpr uint32_t need = kWrite ? kDmaWrite : kDmaRead;
  {
    std::shared_lock lk(mu_);
    for (size_t i = 0; i < ops.size(); ++i) {
      DmaOp& op = ops[i];
      op.err = 0;
      auto checked = walk(op.iova, op.buf.size(), need, [&](uint8_t* p, uint64_t, uint64_t, uint64_t) {
        if (!p && !remote_) op.err = EFAULT;
      });
      if (!checked) op.err = checked.error().code;
      if (op.err) continue;
      size_t first_part = parts.size();
      (void)walk(op.iova, op.buf.size(), need, [&](uint8_t* p, uint64_t a, uint64_t at, uint64_t n) {
        if (!p) {
          parts.push_back(Seg{a, op.buf.subspan(at, n), 0});
          part_op.push_back(i);
          return;
        }
        bool copied = kWrite ? safe_memcpy(p, op.buf.data() + at, n) : safe_memcpy(op.buf.data() + at, p, n);
        if (!copied && !op.err) op.err = EFAULT;  // the file under the map shrank
      });
      if (op.err) {  // its remote parts are not carried
        parts.resize(first_part);
        part_op.resize(first_part);
      }
    }
    if (!parts.empty() && remote_blocked_) {
      for (size_t k = 0; k < parts.size(); ++k) ops[part_op[k]].err = ECANCELED;
      parts.clear();
    }
    for (size_t k = 0; k < parts.size(); ++k) {
      const Seg& p = parts[k];
      if (!runs.empty()) {
        Seg& r = runs.back();
        // Not at a map's start: the byte before is in the same map.
        if (r.iova + r.buf.size() == p.iova && r.buf.data() + r.buf.size() == p.buf.data() &&
            r.buf.size() + p.buf.size() <= kMergeMax && !maps_.count(p.iova)) {
          r.buf = std::span<uint8_t>(r.buf.data(), r.buf.size() + p.buf.size());
          continue;
        }
      }
      runs.push_back(p);
      run_first.push_back(k);
    }
    run_first.push_back(parts.size());
    if (!runs.empty()) peer = remote_;
  }
  if (peer) {
    if constexpr (kWrite) peer->write_many(runs);
    else peer->read_many(runs);
    for (size_t k = 0; k < runs.size(); ++k) {
      if (!runs[k].err) continue;
      std::span<Seg> own(parts.data() + run_first[k], run_first[k + 1] - run_first[k]);
      if (own.size() > 1 && retry_piecewise(runs[k].err)) {
        if constexpr (kWrite) peer->write_many(own);
        else peer->read_many(own);
      } else {
        for (Seg& p : own) p.err = runs[k].err;
      }
    }
    for (size_t k = 0; k < parts.size(); ++k)
      if (parts[k].err && !ops[part_op[k]].err) ops[part_op[k]].err = parts[k].err;
  }
  std::shared_lock lk(mu_);
  for (const DmaOp& op : ops) {
    if (op.err) continue;
    count(op.buf.size());
    if (kWrite && observer_) observer_(op.iova, op.buf.size());
  }
}

void IommuDomain::read_many(std::span<DmaOp> ops) const { many<false>(ops); }
void IommuDomain::write_many(std::span<DmaOp> ops) { many<true>(ops); }

Result<void> IommuDomain::copy(uint64_t src, uint64_t dst, uint64_t len, std::vector<uint8_t>& bounce) {
  {
    std::shared_lock lk(mu_);
    struct Seg {
      uint8_t* p;
      uint64_t n;
    };
    std::array<Seg, 16> s{}, d{};
    size_t ns = 0, nd = 0;
    bool local = true;
    TRY(walk(src, len, kDmaRead, [&](uint8_t* p, uint64_t, uint64_t, uint64_t n) {
      if (!p || ns == s.size()) local = false;
      else s[ns++] = {p, n};
    }));
    TRY(walk(dst, len, kDmaWrite, [&](uint8_t* p, uint64_t, uint64_t, uint64_t n) {
      if (!p || nd == d.size()) local = false;
      else d[nd++] = {p, n};
    }));
    if (local) {
      // Both sides are memory we map: copy run by run, no bounce.
      size_t i = 0, j = 0;
      uint64_t si = 0, dj = 0;
      while (i < ns && j < nd) {
        uint64_t n = std::min(s[i].n - si, d[j].n - dj);
        if (!safe_memcpy(d[j].p + dj, s[i].p + si, n)) return Error(EFAULT, "DMA memory gone (file shrunk)");
        si += n;
        dj += n;
        if (si == s[i].n) ++i, si = 0;
        if (dj == d[j].n) ++j, dj = 0;
      }
      if (observer_) observer_(dst, len);
      count(len);
      return ok();
    }
  }
  bounce.resize(len);
  TRY(read(src, std::span<uint8_t>(bounce.data(), len)));
  return write(dst, std::span<const uint8_t>(bounce.data(), len));
}

namespace {
constexpr uint64_t kMaxBulk = 64 << 20;
}  // namespace

Result<size_t> IommuDomain::produce(uint64_t iova, uint64_t len, const ProduceFn& fn) {
  if (len > kMaxBulk) return Error(EINVAL, "bulk DMA too large");
  {
    std::shared_lock lk(mu_);
    auto it = maps_.upper_bound(iova);
    if (it != maps_.begin()) {
      --it;
      const Map& m = it->second;
      if (m.host && !m.win && iova + len >= iova && iova + len <= it->first + m.size) {
        if (!(m.prot & kDmaWrite)) return Error(EPERM, "DMA not permitted by the mapping");
        size_t n = TRY(fn(std::span<uint8_t>(m.host + (iova - it->first), len)));
        if (n > len) return Error(EIO, "produced past the buffer");
        if (n && observer_) observer_(iova, n);
        return n;
      }
    }
  }
  std::vector<uint8_t> bounce(len);
  size_t n = TRY(fn(bounce));
  if (n > len) return Error(EIO, "produced past the buffer");
  TRY(write(iova, std::span<const uint8_t>(bounce.data(), n)));
  return n;
}

Result<void> IommuDomain::consume(uint64_t iova, uint64_t len, const ConsumeFn& fn) {
  if (len > kMaxBulk) return Error(EINVAL, "bulk DMA too large");
  {
    std::shared_lock lk(mu_);
    auto it = maps_.upper_bound(iova);
    if (it != maps_.begin()) {
      --it;
      const Map& m = it->second;
      if (m.host && !m.win && iova + len >= iova && iova + len <= it->first + m.size) {
        if (!(m.prot & kDmaRead)) return Error(EPERM, "DMA not permitted by the mapping");
        return fn(std::span<const uint8_t>(m.host + (iova - it->first), len));
      }
    }
  }
  std::vector<uint8_t> bounce(len);
  TRY(read(iova, bounce));
  return fn(bounce);
}

}  // namespace uvfio::hw
