// One client connection as the server uses it: the serving thread reads the
// client's requests from it; device DMA to maps without an fd goes back to
// the client as DMA_READ/DMA_WRITE requests on the same socket (no twin
// socket). Replies to those are picked out of the stream by id; a client
// request that arrives while the serving thread itself waits for a DMA reply
// is queued, so requests are still handled in order.
//
// Two wire layouts for DMA_READ/DMA_WRITE exist in the field (docs/
// vfio-user.md, "QEMU's DMA layout"): the spec's (u64 address, u64 count,
// data at 16) and QEMU 10.x's (u64 offset, u32 count, data at 12, 4 bytes of
// padding after the data). The connection uses the one configured, or in
// auto mode finds out at its first message-based DMA with a read-only probe
// and logs what it chose and why.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "hw/iommu.h"
#include "vfio_user/message.h"

namespace uvfio::vfio_user {

enum class DmaLayout { kSpec, kQemu };
enum class DmaLayoutMode { kAuto, kSpec, kQemu };
const char* to_string(DmaLayoutMode m);
// "auto", "spec", "qemu"; EINVAL otherwise.
Result<DmaLayoutMode> parse_dma_layout(std::string_view s);

class Connection : public hw::IommuDomain::RemoteDma {
 public:
  // Owns `sock`; the constructing thread is the serving thread. `name`
  // prefixes its log lines (the device).
  Connection(UniqueFd sock, bool busy_poll, DmaLayoutMode layout, std::string name);

  int fd() const { return sock_.get(); }
  // From the client's VERSION: the largest count it takes in one DMA message.
  void set_client_max_xfer(uint32_t n) { max_xfer_ = n; }

  // The next client request (serving thread only).
  Result<void> next_request(Message& m);
  // Any message to the client (replies, DMA requests), one at a time.
  Result<void> send(const Header& h, std::span<const uint8_t> payload, std::span<const int> fds = {});
  Result<void> send_error(const Header& request, int err);
  // The client is gone: every DMA waiting on it, and every later one, fails
  // with ECONNRESET.
  void close();

  // hw::IommuDomain::RemoteDma: split at the client's max_data_xfer_size;
  // a wrong-sized or error reply fails this DMA only (EIO / the client's errno).
  Result<void> read(uint64_t iova, std::span<uint8_t> out) override;
  Result<void> write(uint64_t iova, std::span<const uint8_t> in) override;
  // Every DMA waiting on the client fails with ECANCELED; their replies,
  // if they come, are dropped.
  void cancel() override;

  // The layout in use (nullopt until auto mode has decided).
  std::optional<DmaLayout> layout() const;

  static constexpr auto kReplyTimeout = std::chrono::seconds(5);

 private:
  // Sends a request, waits for its reply (an error reply becomes an Error).
  // `probe`: the request may be refused; its error reply is returned as a
  // Message instead.
  Result<Message> transact(uint16_t cmd, std::span<const uint8_t> payload, bool probe = false);
  // Hands a reply to the DMA waiting for it; false if nobody is.
  bool deliver_reply(Message& m);
  // Serving thread only: reads one message, delivering replies and queueing
  // requests for next_request().
  Result<void> pump_once();
  // The layout, probing the client first in auto mode (a read of `iova`).
  Result<DmaLayout> decide_layout(uint64_t iova, uint64_t len);

  UniqueFd sock_;
  bool spin_;
  std::string name_;
  DmaLayoutMode mode_;
  std::atomic<uint32_t> max_xfer_{kMaxDataXfer};
  MessageReader reader_;  // the serving thread's
  std::thread::id serving_thread_;
  std::mutex send_mu_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::set<uint16_t> waiting_;          // guarded by mu_
  std::map<uint16_t, Message> replies_;  // guarded by mu_
  std::set<uint16_t> cancelled_;         // guarded by mu_: ids whose late replies are dropped
  std::deque<Message> queued_;           // serving thread only
  bool closed_ = false;                  // guarded by mu_
  uint16_t next_id_ = 0;                 // guarded by send_mu_
  mutable std::mutex layout_mu_;
  std::condition_variable layout_cv_;
  std::optional<DmaLayout> layout_;      // guarded by layout_mu_
  bool probing_ = false;                 // guarded by layout_mu_: a probe is in flight
};

}  // namespace uvfio::vfio_user
