// SPDX-License-Identifier: BSD-3-Clause
// IommuDomain: the I/O address space a function's DMA goes through. A VMM's
// DMA_MAPs build it (IOVA ranges backed by a memory fd, or by memory the
// caller owns); the device model's DMA engine reads and writes through it.
// DMA to an IOVA that is not mapped fails with EFAULT, a write to a
// read-only mapping with EPERM: the device sees an error, nothing else is
// touched.
//
// Maps of one file share its fd and its mappings: a VMM behind a guest IOMMU
// maps guest RAM a 4 KiB page at a time (tens of thousands of maps of one
// memfd), and each map holds no fd and no mmap of its own. The file is
// mapped in windows (1 GiB-aligned pieces, larger when one map needs it),
// each mapped once and released with its last map.
//
// Limits a client cannot exceed (resources of the daemon all devices share):
// max_maps (65,535 as type1's dma_entry_limit), max_files distinct files
// (fds held), and max_mapped_bytes of address space in windows; past them,
// ENOSPC.
//
// Thread-safe: maps and DMA may come from different threads. unmap() returns
// only when no DMA into local memory of that range is in flight; DMA to
// remote maps (messages to the client) is carried without the domain's
// lock held, so a client that is slow to answer never blocks maps, unmaps or
// other DMA (the client owns that memory and answers for it).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <shared_mutex>
#include <span>
#include <vector>

#include "base/result.h"
#include "base/stats.h"
#include "base/unique_fd.h"

namespace uvfio::hw {

enum DmaProt : uint32_t { kDmaRead = 1, kDmaWrite = 2 };

inline constexpr uint64_t kIommuPageSize = 4096;

class IommuDomain {
 public:
  IommuDomain() = default;
  ~IommuDomain();
  IommuDomain(const IommuDomain&) = delete;
  IommuDomain& operator=(const IommuDomain&) = delete;

  // Maps [iova, iova+size) to `fd` at `offset` (the fd is duplicated by the
  // caller's UniqueFd being moved in; the memory is mapped shared). EINVAL for
  // unaligned or empty ranges, EOVERFLOW when iova+size wraps, EEXIST when
  // it overlaps an existing map, ENOSPC beyond max_maps.
  Result<void> map_fd(uint64_t iova, uint64_t size, UniqueFd fd, uint64_t offset, uint32_t prot);
  // Maps memory the caller owns and keeps alive until unmap (tests, in-process
  // users).
  Result<void> map_host(uint64_t iova, uint64_t size, void* host, uint32_t prot);
  // Reserves [iova, iova+size) for memory the domain cannot touch directly
  // (a vfio-user map without an fd): DMA there goes to the RemoteDma set
  // with set_remote(), or fails with EFAULT without one.
  Result<void> map_remote(uint64_t iova, uint64_t size, uint32_t prot);
  // As type1's VFIO_IOMMU_UNMAP_DMA (vfio_dma_do_unmap, v2 semantics):
  // removes every map lying wholly inside [iova, iova+size) and returns the
  // bytes removed (0 when the range covers no map: not an error). EINVAL for
  // an unaligned or empty range, or one that would split a map (a map
  // straddles either end).
  Result<uint64_t> unmap(uint64_t iova, uint64_t size);
  void unmap_all();
  size_t num_maps() const;
  // Distinct files mapped (fds held) and the address space mapped for them.
  size_t num_files() const;
  uint64_t mapped_bytes() const;
  // The bytes the user's maps cover now, and the most they ever covered at
  // once (for the attribute tree: what a VM mapped for the device).
  uint64_t map_bytes() const;
  uint64_t map_bytes_peak() const;
  void set_max_maps(size_t n) { max_maps_ = n; }
  void set_max_files(size_t n) { max_files_ = n; }
  void set_max_mapped_bytes(uint64_t n) { max_mapped_bytes_ = n; }

  // DMA on behalf of the device.
  Result<void> read(uint64_t iova, std::span<uint8_t> out) const;
  Result<void> write(uint64_t iova, std::span<const uint8_t> in);

  // Several DMAs at once, each with its own outcome (0 or an errno in
  // `err`): memory the domain maps is copied at once, and what lies in
  // remote maps goes to the peer together (RemoteDma::read_many /
  // write_many: a vfio-user client gets all the requests before the first
  // answer is waited for), remote parts that continue each other in one
  // request (a part refused is then carried again op by op, so each op's
  // outcome is its own). Writes land in order. A write to remote memory
  // that fails may have written its locally mapped parts, as write() may.
  struct DmaOp {
    uint64_t iova = 0;
    std::span<uint8_t> buf;  // read into, or the data to write
    int err = 0;
  };
  void read_many(std::span<DmaOp> ops) const;
  void write_many(std::span<DmaOp> ops);
  // Some DMA may go to the peer (a remote map exists).
  bool has_remote_maps() const;
  // Device DMA done through this domain (reads, writes, copies): for the
  // attribute tree.
  uint64_t dma_ops() const { return dma_ops_.get(); }
  uint64_t dma_bytes() const { return dma_bytes_.get(); }
  // Device-to-device-visible copy of `len` bytes from `src` to `dst` (a
  // DMA engine's memcpy): one copy when both ranges are local memory; through
  // `bounce` (resized as needed) when either is the client's, by messages.
  // Fails as read() or write() would, with no partial effect from a refused
  // range.
  Result<void> copy(uint64_t src, uint64_t dst, uint64_t len, std::vector<uint8_t>& bounce);
  // DMA without a staging copy, for a device producing or consuming data in
  // bulk (firmware writing an image chunk): when [iova, iova+len) is one map
  // of host memory the domain's owner lent (map_host), `fn` works on it in
  // place; otherwise on a bounce buffer that is DMA-written (produce) or
  // DMA-read (consume) as any other DMA. produce's `fn` returns how many
  // bytes it wrote from the start; EINVAL above 64 MiB.
  using ProduceFn = std::function<Result<size_t>(std::span<uint8_t>)>;
  using ConsumeFn = std::function<Result<void>(std::span<const uint8_t>)>;
  Result<size_t> produce(uint64_t iova, uint64_t len, const ProduceFn& fn);
  Result<void> consume(uint64_t iova, uint64_t len, const ConsumeFn& fn);

  // Carries DMA to remote maps (the vfio-user session: DMA_READ/DMA_WRITE).
  class RemoteDma {
   public:
    virtual ~RemoteDma() = default;
    virtual Result<void> read(uint64_t iova, std::span<uint8_t> out) = 0;
    virtual Result<void> write(uint64_t iova, std::span<const uint8_t> in) = 0;
    // Several at once, each with its own outcome; by default one by one.
    struct Seg {
      uint64_t iova = 0;
      std::span<uint8_t> buf;
      int err = 0;
    };
    virtual void read_many(std::span<Seg> segs) {
      for (Seg& s : segs)
        if (auto r = read(s.iova, s.buf); !r) s.err = r.error().code;
    }
    virtual void write_many(std::span<Seg> segs) {
      for (Seg& s : segs)
        if (auto r = write(s.iova, s.buf); !r) s.err = r.error().code;
    }
    // Fails every DMA waiting on the peer now with ECANCELED (their late
    // answers are dropped).
    virtual void cancel() = 0;
  };
  // Shared: a DMA in flight keeps the remote it started with alive after
  // set_remote(nullptr) (which then fails fast: the client is gone).
  void set_remote(std::shared_ptr<RemoteDma> r);

  // While held (a function reset in progress: PCIe FLR discards the
  // function's outstanding requests), remote DMA fails at once with
  // ECANCELED and what was waiting on the peer is cancelled.
  void block_remote(bool on);

  // Called with (iova, len) after every successful DMA write: dirty tracking.
  using WriteObserver = std::function<void(uint64_t, uint64_t)>;
  void set_write_observer(WriteObserver o);

 private:
  struct Backing;
  struct Window;
  template <bool kWrite>
  void many(std::span<DmaOp> ops) const;
  struct Map {
    uint64_t size;
    uint8_t* host;  // nullptr: a remote map
    uint32_t prot;
    std::shared_ptr<Window> win;  // the file window `host` points into (null: memory lent, or remote)
  };
  Result<void> insert_locked(uint64_t iova, Map m);
  Result<std::shared_ptr<Window>> window_locked(UniqueFd fd, uint64_t offset, uint64_t size, bool writable);
  template <class Fn>
  Result<void> walk(uint64_t iova, uint64_t len, uint32_t need, Fn&& fn) const;

  mutable std::shared_mutex mu_;
  mutable Counter dma_ops_, dma_bytes_;
  void count(uint64_t bytes) const {
    dma_ops_.add();
    dma_bytes_.add(bytes);
  }
  std::map<uint64_t, Map> maps_;  // by iova; guarded by mu_
  // Files with a live window, by (st_dev, st_ino); guarded by mu_.
  std::map<std::pair<uint64_t, uint64_t>, std::weak_ptr<Backing>> files_;
  uint64_t mapped_bytes_ = 0;  // windows' lengths; guarded by mu_
  uint64_t map_bytes_ = 0, map_bytes_peak_ = 0;  // sizes of the maps; guarded by mu_
  size_t max_maps_ = 65535;
  size_t max_files_ = 256;
  uint64_t max_mapped_bytes_ = uint64_t{1} << 40;
  WriteObserver observer_;  // guarded by mu_
  std::shared_ptr<RemoteDma> remote_;  // guarded by mu_
  size_t remote_maps_ = 0;              // maps without host memory; guarded by mu_
  int remote_blocked_ = 0;              // guarded by mu_
};

}  // namespace uvfio::hw
