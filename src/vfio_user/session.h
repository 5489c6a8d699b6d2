// SPDX-License-Identifier: BSD-3-Clause
// One vfio-user connection to one VFIO device: decodes and validates every
// request (header, sizes, argsz, counts, indices, fds) before the device
// sees it, calls the vfio::Device contract, and encodes the reply. The errno
// of a failed call goes onto the wire unchanged; received fds are closed on
// every error path (they are UniqueFds from the moment they arrive).
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "base/result.h"
#include "vfio/device.h"
#include "vfio_user/message.h"

namespace uvfio::vfio_user {

// Bytes whose growth is not zero-filled: a reply's data is written by the
// device right after the resize (a 1 MiB MIG_DATA_READ or REGION_READ
// zeroed its buffer on every request before).
template <class T>
struct UninitAllocator : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = UninitAllocator<U>;
  };
  UninitAllocator() = default;
  template <class U>
  UninitAllocator(const UninitAllocator<U>&) noexcept {}
  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;  // default-initialized: left as it is
  }
  template <class U, class... A>
  void construct(U* p, A&&... a) {
    ::new (static_cast<void*>(p)) U(std::forward<A>(a)...);
  }
};
using ReplyBytes = std::vector<uint8_t, UninitAllocator<uint8_t>>;

struct Reply {
  ReplyBytes payload;
  std::vector<int> fds;  // not owned: the device's or the session's
  bool close_after = false;  // the spec asks to close (bad VERSION)
};

// What VERSION settled for this connection (reference §1, "VERSION").
struct Negotiated {
  vfio::OpenArgs open;                     // the client's "vf_token" (our extension)
  uint32_t client_max_fds = 1;             // spec default
  uint32_t client_max_xfer = kMaxDataXfer;  // spec default 1 MiB: bounds our DMA_READ/WRITE
  bool write_multiple = false;
};

class Session {
 public:
  // Called once VERSION is understood and before it is answered: the server
  // opens the device for this client (or checks the client may use the one
  // it keeps open). An error fails VERSION and ends the connection.
  using VersionHook = std::function<Result<void>(const Negotiated&)>;

  // `dev` outlives the session. Without a hook the device must be open
  // already (tests, the fuzzer).
  explicit Session(vfio::Device& dev, VersionHook on_version = nullptr)
      : dev_(dev), on_version_(std::move(on_version)) {}

  // Handles one request, building the reply in `r` (reused across requests:
  // no allocation per request once warm). An Error is sent as a header-only
  // error reply.
  Result<void> handle(Message& m, Reply& r);

  bool negotiated() const { return negotiated_; }
  const Negotiated& negotiation() const { return neg_; }

 private:
  Result<void> version(Message& m, Reply& r);
  Result<void> dma_map(Message& m, Reply& r);
  Result<void> dma_unmap(Message& m, Reply& r);
  Result<void> get_info(Message& m, Reply& r);
  Result<void> get_region_info(Message& m, Reply& r);
  Result<void> get_region_io_fds(Message& m, Reply& r);
  Result<void> get_irq_info(Message& m, Reply& r);
  Result<void> set_irqs(Message& m, Reply& r);
  Result<void> region_read(Message& m, Reply& r);
  Result<void> region_write(Message& m, Reply& r);
  Result<void> region_write_multi(Message& m, Reply& r);
  Result<void> reset(Message& m, Reply& r);
  Result<void> device_feature(Message& m, Reply& r);
  Result<void> mig_data_read(Message& m, Reply& r);
  Result<void> mig_data_write(Message& m, Reply& r);

  vfio::Device& dev_;
  VersionHook on_version_;
  bool negotiated_ = false;
  Negotiated neg_;
  std::shared_ptr<vfio::MigrationFile> mig_;  // the open migration session's stream
  std::vector<uint8_t> io_;                     // reused buffer: no allocation per access
};

}  // namespace uvfio::vfio_user
