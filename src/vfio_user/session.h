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

  // Handles one request. An Error is sent as a header-only error reply.
  Result<Reply> handle(Message& m);

  bool negotiated() const { return negotiated_; }

 private:
  Result<Reply> version(Message& m);
  Result<Reply> dma_map(Message& m);
  Result<Reply> dma_unmap(Message& m);
  Result<Reply> get_info(Message& m);
  Result<Reply> get_region_info(Message& m);
  Result<Reply> get_region_io_fds(Message& m);
  Result<Reply> get_irq_info(Message& m);
  Result<Reply> set_irqs(Message& m);
  Result<Reply> region_read(Message& m);
  Result<Reply> region_write(Message& m);
  Result<Reply> region_write_multi(Message& m);
  Result<Reply> reset(Message& m);
  Result<Reply> device_feature(Message& m);
  Result<Reply> mig_data_read(Message& m);
  Result<Reply> mig_data_write(Message& m);

  vfio::Device& dev_;
  bool negotiated_ = false;
  bool write_multiple_ = false;
  uint32_t client_max_fds_ = 1;
  std::shared_ptr<vfio::MigrationFile> mig_;  // the open migration session's stream
  std::vector<uint8_t> io_;                     // reused buffer: no allocation per access
};

}  // namespace uvfio::vfio_user
