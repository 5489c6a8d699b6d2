#include "hw/iommu.h"

#include <sys/mman.h>
#include <sys/stat.h>

#include <array>
#include <cstring>
#include <mutex>

#include "base/safe_copy.h"

namespace uvfio::hw {

IommuDomain::~IommuDomain() { unmap_all(); }

Result<void> IommuDomain::insert(uint64_t iova, Map m) {
  std::unique_lock lk(mu_);
  if (maps_.size() >= max_maps_) return Error(ENOSPC, "too many DMA maps");
  auto next = maps_.lower_bound(iova);
  if (next != maps_.end() && next->first < iova + m.size) return Error(EEXIST, "DMA map overlaps");
  if (next != maps_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second.size > iova) return Error(EEXIST, "DMA map overlaps");
  }
  maps_.emplace(iova, std::move(m));
  return ok();
}

namespace {
Result<void> check_range(uint64_t iova, uint64_t size) {
  if (size == 0 || (iova % kIommuPageSize) || (size % kIommuPageSize)) return Error(EINVAL, "unaligned DMA range");
  if (iova + size < iova) return Error(EOVERFLOW, "DMA range wraps");
  return ok();
}
}  // namespace

Result<void> IommuDomain::map_fd(uint64_t iova, uint64_t size, UniqueFd fd, uint64_t offset, uint32_t prot) {
  TRY(check_range(iova, size));
  if (!fd) return Error(EBADF, "no fd for DMA map");
  if (offset % kIommuPageSize) return Error(EINVAL, "unaligned fd offset");
  if (prot & ~(kDmaRead | kDmaWrite)) return Error(EINVAL, "bad DMA protection");
  // The whole range must be backed by the file now, as pinning the pages
  // would require on Linux: a map past the end would fault on first use.
  struct stat st;
  if (fstat(fd.get(), &st) < 0) return Error(errno, "fstat DMA fd");
  if (!S_ISREG(st.st_mode)) return Error(EINVAL, "DMA fd is not a regular file or memfd");
  if (offset > static_cast<uint64_t>(st.st_size) || size > static_cast<uint64_t>(st.st_size) - offset)
    return Error(EINVAL, "DMA map extends past the end of its file");
  int mprot = PROT_READ | ((prot & kDmaWrite) ? PROT_WRITE : 0);
  void* p = mmap(nullptr, size, mprot, MAP_SHARED, fd.get(), static_cast<off_t>(offset));
  if (p == MAP_FAILED) return Error(errno == EACCES ? EACCES : EINVAL, "cannot map DMA fd");
  Map m{size, static_cast<uint8_t*>(p), prot, true, std::move(fd)};
  auto r = insert(iova, std::move(m));
  if (!r) munmap(p, size);
  return r;
}

Result<void> IommuDomain::map_host(uint64_t iova, uint64_t size, void* host, uint32_t prot) {
  TRY(check_range(iova, size));
  if (!host) return Error(EINVAL, "no memory");
  if (prot & ~(kDmaRead | kDmaWrite)) return Error(EINVAL, "bad DMA protection");
  return insert(iova, Map{size, static_cast<uint8_t*>(host), prot, false, UniqueFd()});
}

Result<void> IommuDomain::map_remote(uint64_t iova, uint64_t size, uint32_t prot) {
  TRY(check_range(iova, size));
  if (prot & ~(kDmaRead | kDmaWrite)) return Error(EINVAL, "bad DMA protection");
  return insert(iova, Map{size, nullptr, prot, false, UniqueFd()});
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

void IommuDomain::release(Map& m) {
  if (m.owned) munmap(m.host, m.size);
}

Result<void> IommuDomain::unmap(uint64_t iova, uint64_t size) {
  std::unique_lock lk(mu_);  // waits for DMA in flight (readers hold it shared)
  auto it = maps_.find(iova);
  if (it == maps_.end() || it->second.size != size) return Error(ENOENT, "no such DMA map");
  release(it->second);
  maps_.erase(it);
  return ok();
}

void IommuDomain::unmap_all() {
  std::unique_lock lk(mu_);
  for (auto& [iova, m] : maps_) release(m);
  maps_.clear();
}

size_t IommuDomain::num_maps() const {
  std::shared_lock lk(mu_);
  return maps_.size();
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
      if (m.host && !m.owned && iova + len >= iova && iova + len <= it->first + m.size) {
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
      if (m.host && !m.owned && iova + len >= iova && iova + len <= it->first + m.size) {
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
