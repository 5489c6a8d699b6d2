// One vfio-user connection to one VFIO device: decodes and validates every
// request (header, sizes, argsz, counts, indices, fds) before the device
// sees it, calls the vfio::Device contract, and encodes the reply. The errno
// of a failed call goes onto the wire unchanged; received fds are closed on
// every error path (they are UniqueFds from the moment they arrive).
#pragma once

#include <memory>
#include <vector>

#include "base/result.h"
#include "vfio/device.h"
#include "vfio_user/message.h"

namespace uvfio::vfio_user {

struct Reply {
  std::vector<uint8_t> payload;
  std::vector<int> fds;  // not owned: the device's or the session's
  bool close_after = false;  // the spec asks to close (bad VERSION)
};

class Session {
 public:
  // `dev` is open and outlives the session.
  explicit Session(vfio::Device& dev) : dev_(dev) {}

  // Handles one request, building the reply in `r` (reused across requests:
  // no allocation per request once warm). An Error is sent as a header-only
  // error reply.
  Result<void> handle(Message& m, Reply& r);

  bool negotiated() const { return negotiated_; }

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
  bool negotiated_ = false;
  bool write_multiple_ = false;
  uint32_t client_max_fds_ = 1;
  std::shared_ptr<vfio::MigrationFile> mig_;  // the open migration session's stream
  std::vector<uint8_t> io_;                     // reused buffer: no allocation per access
};

}  // namespace uvfio::vfio_user
