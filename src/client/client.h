// SPDX-License-Identifier: BSD-3-Clause
// A C++ vfio-user client: connect and negotiate, DMA maps of memfd-backed
// memory, region info/read/write/mmap, IRQ eventfds, reset, device
// features, migration state and data. Tests, benchmarks and tools use it.
//
// One request at a time per Client (calls are serialized); replies are
// matched by message id.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/result.h"
#include "base/unique_fd.h"
#include "vfio/device.h"
#include "vfio/uapi.h"
#include "vfio_user/message.h"

namespace uvfio::client {

struct RegionInfo {
  vfio_region_info info{};
  std::vector<uint8_t> caps;  // the chain as sent (offsets from the struct start)
  UniqueFd mmap_fd;           // when the region is mmappable
};

struct ConnectOptions {
  // Presented in VERSION as "vf_token" (uvfio's extension, docs/vfio-user.md)
  // for a VF whose PF is owned by a vfio driver.
  std::optional<vfio::Uuid> vf_token;
};

class Client {
 public:
  // Connects to a device's socket and runs VERSION. EBUSY when the device
  // already has a client; EACCES/EINVAL when the device refuses the VF token.
  static Result<std::unique_ptr<Client>> connect(const std::string& path, const ConnectOptions& opts = {});

  // The server's answer to VERSION (its JSON).
  const std::string& server_capabilities() const { return caps_; }

  // fd < 0: a map without an fd (reached through DMA_READ/WRITE).
  Result<void> dma_map(uint64_t iova, uint64_t size, int fd, uint64_t offset, bool writable = true);
  // A map without an fd: the server reaches `mem` only through DMA_READ and
  // DMA_WRITE messages, which this client answers from it while it waits
  // for its replies. `mem` stays valid until unmapped.
  Result<void> dma_map_local(uint64_t iova, uint64_t size, void* mem, bool writable = true);
  Result<void> dma_unmap(uint64_t iova, uint64_t size);
  Result<void> dma_unmap_all();

  Result<vfio_device_info> get_info();
  // Retries with the argsz the server asks for when capabilities do not fit.
  Result<RegionInfo> get_region_info(uint32_t index);
  Result<size_t> region_read(uint32_t index, uint64_t offset, std::span<uint8_t> out);
  Result<void> region_write(uint32_t index, uint64_t offset, std::span<const uint8_t> in);
  // A posted write (NO_REPLY).
  Result<void> region_write_posted(uint32_t index, uint64_t offset, std::span<const uint8_t> in);
  Result<vfio_irq_info> get_irq_info(uint32_t index);
  // fds.size() == count for EVENTFD (an fd < 0 is sent as "no fd": the
  // whole call then carries none, which de-assigns).
  Result<void> set_irqs(uint32_t flags, uint32_t index, uint32_t start, uint32_t count,
                        std::span<const int> fds = {}, std::span<const uint8_t> bools = {});
  Result<void> reset();
  // GET returns the data after the 8-byte {argsz, flags}; `reply_room` is
  // how much data a GET may return (argsz = 8 + max(data, reply_room)).
  Result<std::vector<uint8_t>> device_feature(uint32_t flags, std::span<const uint8_t> data = {},
                                              size_t reply_room = 4096);
  Result<void> set_mig_state(vfio::MigState s);
  Result<vfio::MigState> get_mig_state();
  Result<size_t> mig_data_read(std::span<uint8_t> out);
  Result<void> mig_data_write(std::span<const uint8_t> in);

  // One request/reply exchange; the reply's error becomes an Error.
  Result<vfio_user::Message> call(uint16_t cmd, std::span<const uint8_t> payload, std::span<const int> fds = {},
                                  bool no_reply = false);
  // The same, into `out` (no allocation per call once warm).
  Result<void> call_into(uint16_t cmd, std::span<const uint8_t> payload, vfio_user::Message& out,
                         std::span<const int> fds = {});
  int fd() const { return sock_.get(); }
  // Spin on the socket for replies instead of sleeping (benchmarks).
  void set_busy_poll(bool on) { busy_poll_ = on; }

 private:
  explicit Client(UniqueFd s) : sock_(std::move(s)), reader_(sock_.get()) {}
  UniqueFd sock_;
  vfio_user::MessageReader reader_;
  std::mutex mu_;
  uint16_t next_id_ = 1;
  bool busy_poll_ = false;
  vfio_user::Message reply_;        // reused by the region fast paths
  struct LocalMap {
    uint64_t size;
    uint8_t* mem;
    bool writable;
  };
  std::map<uint64_t, LocalMap> local_;  // by iova; guarded by mu_
  Result<void> serve_dma(const vfio_user::Message& m);
  std::vector<uint8_t> request_;    // likewise
  std::string caps_;
};

}  // namespace uvfio::client
