// One client connection as the server uses it: the serving thread reads the
// client's requests from it; device DMA to maps without an fd goes back to
// the client as DMA_READ/DMA_WRITE requests on the same socket (spec layout,
// no twin socket). Replies to those are picked out of the stream by id; a
// client request that arrives while the serving thread itself waits for a
// DMA reply is queued, so requests are still handled in order.
#pragma once

#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "hw/iommu.h"
#include "vfio_user/message.h"

namespace uvfio::vfio_user {

class Connection : public hw::IommuDomain::RemoteDma {
 public:
  // `sock` outlives the connection; the constructing thread is the serving
  // thread.
  Connection(int sock, bool busy_poll);

  // The next client request (serving thread only).
  Result<void> next_request(Message& m);
  // Any message to the client (replies, DMA requests), one at a time.
  Result<void> send(const Header& h, std::span<const uint8_t> payload, std::span<const int> fds = {});
  Result<void> send_error(const Header& request, int err);
  // The client is gone: every DMA waiting on it fails with ECONNRESET.
  void close();

  // hw::IommuDomain::RemoteDma
  Result<void> read(uint64_t iova, std::span<uint8_t> out) override;
  Result<void> write(uint64_t iova, std::span<const uint8_t> in) override;

  static constexpr auto kReplyTimeout = std::chrono::seconds(5);

 private:
  Result<Message> transact(uint16_t cmd, std::span<const uint8_t> payload);
  // Hands a reply to the DMA waiting for it; false if nobody is.
  bool deliver_reply(Message& m);

  int sock_;
  bool spin_;
  MessageReader reader_;  // the serving thread's
  std::thread::id serving_thread_;
  std::mutex send_mu_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::set<uint16_t> waiting_;          // guarded by mu_
  std::map<uint16_t, Message> replies_;  // guarded by mu_
  std::deque<Message> queued_;           // serving thread only
  bool closed_ = false;                  // guarded by mu_
  uint16_t next_id_ = 0;                 // guarded by send_mu_
};

}  // namespace uvfio::vfio_user
