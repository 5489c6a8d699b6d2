// SPDX-License-Identifier: BSD-3-Clause
// One client connection, as the event-driven server uses it: a non-blocking
// socket, the reader of the client's messages (driven by the connection's
// reactor thread), and an output queue any thread may add to without ever
// blocking (what the socket does not take now is flushed when it is
// writable). Device DMA to maps without an fd goes to the client as
// DMA_READ/DMA_WRITE requests; the thread doing the DMA waits for the reply,
// which the reactor picks out of the stream by id and hands over.
//
// Two wire layouts for DMA_READ/DMA_WRITE exist in the field (docs/
// vfio-user.md, "QEMU's DMA layout"): the spec's (u64 address, u64 count,
// data at 16) and QEMU 10.x's (u64 offset, u32 count, data at 12, 4 bytes of
// padding after the data). The connection uses the one configured, or in
// auto mode finds out at its first message-based DMA with a read-only probe
// and logs what it chose and why.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include "hw/iommu.h"
#include "vfio_user/message.h"
#include "base/mutex.h"

namespace uvfio::vfio_user {

enum class DmaLayout { kSpec, kQemu };
enum class DmaLayoutMode { kAuto, kSpec, kQemu };
const char* to_string(DmaLayoutMode m);
// "auto", "spec", "qemu"; EINVAL otherwise.
Result<DmaLayoutMode> parse_dma_layout(std::string_view s);

class Connection : public hw::IommuDomain::RemoteDma {
 public:
  // Owns `sock` (made non-blocking). `name` prefixes its log lines (the
  // device). `kick` asks the reactor to look at the connection again (output
  // waiting for the socket); called from any thread, never with a lock held.
  Connection(UniqueFd sock, DmaLayoutMode layout, std::string name, std::function<void()> kick);

  int fd() const { return sock_.get(); }
  const std::string& name() const { return name_; }
  // From the client's VERSION: the largest count it takes in one DMA message.
  void set_client_max_xfer(uint32_t n) { max_xfer_ = n; }

  // ---- Reactor side ------------------------------------------------------
  // The next complete message the socket has now (non-blocking); false if
  // none. A reply to a DMA in flight is handed to its waiter and not
  // returned. ECONNRESET at EOF, EPROTO for a stream that cannot be trusted.
  Result<bool> next_request(Message& m, bool may_read = true);
  // The last read emptied the socket (see MessageReader::drained()).
  bool drained() const { return reader_.drained(); }
  // Part of a message is buffered (the client is mid-message).
  bool mid_message() const { return reader_.buffered() > 0; }
  // Bytes received so far (progress).
  uint64_t received() const { return reader_.received(); }

  // ---- Any thread ----------------------------------------------------------
  // Queues a message to the client and sends what the socket takes now;
  // never blocks. EPIPE/ECONNRESET once the client is gone; ENOBUFS if the
  // client has left kMaxOutput bytes unread.
  Result<void> send(const Header& h, std::span<const uint8_t> payload, std::span<const int> fds = {});
  Result<void> send_error(const Header& request, int err);
  // Sends what is queued, as far as the socket takes it (reactor, on
  // EPOLLOUT).
  Result<void> flush();
  size_t output_bytes() const;
  // When the output last made progress (or was empty).
  std::chrono::steady_clock::time_point output_progress() const;
  // The client is gone: every DMA waiting on it, and every later one, fails
  // with ECONNRESET.
  void close();

  // hw::IommuDomain::RemoteDma: split at the client's max_data_xfer_size;
  // a wrong-sized or error reply fails this DMA only (EIO / the client's errno).
  Result<void> read(uint64_t iova, std::span<uint8_t> out) override;
  Result<void> write(uint64_t iova, std::span<const uint8_t> in) override;
  // Pipelined: up to kPipeline requests (kPipelineBytes of data) in flight
  // before the first answer is waited for.
  void read_many(std::span<Seg> segs) override;
  void write_many(std::span<Seg> segs) override;
  static constexpr size_t kPipeline = 64;
  static constexpr uint64_t kPipelineBytes = 4 << 20;
  // Every DMA waiting on the client fails with ECANCELED; their replies,
  // if they come, are dropped.
  void cancel() override;

  // The layout in use (nullopt until auto mode has decided).
  std::optional<DmaLayout> layout() const;

  static constexpr auto kReplyTimeout = std::chrono::seconds(5);
  static constexpr size_t kMaxOutput = 8 << 20;

  // Marks the calling thread as a reactor: DMA from it would wait on the
  // very thread that must read the answer, so it fails with EDEADLK.
  static void set_reactor_thread(bool on);

 private:
  // Sends a request, waits for its reply (an error reply becomes an Error).
  // `probe`: the request may be refused; its error reply is returned as a
  // Message instead.
  Result<Message> transact(uint16_t cmd, std::span<const uint8_t> payload, bool probe = false);
  // transact() in two halves: the request sent (its id), and its reply
  // waited for until `deadline`.
  Result<uint16_t> begin(uint16_t cmd, std::span<const uint8_t> payload);
  Result<Message> finish(uint16_t id, std::chrono::steady_clock::time_point deadline, bool probe = false);
  template <bool kWrite>
  void many(std::span<Seg> segs);
  // Hands a reply to the DMA waiting for it; false if nobody is.
  bool deliver_reply(Message& m);
  // The layout, probing the client first in auto mode (a read of `iova`).
  Result<DmaLayout> decide_layout(uint64_t iova, uint64_t len);
  Result<void> flush_locked() REQUIRES(send_mu_);

  UniqueFd sock_;
  std::string name_;
  DmaLayoutMode mode_;
  std::function<void()> kick_;
  std::atomic<uint32_t> max_xfer_{kMaxDataXfer};
  MessageReader reader_;  // the reactor's

  struct Out {
    std::vector<uint8_t> bytes;  // header and payload
    std::vector<UniqueFd> fds;   // duplicates, sent with the first byte
    size_t off = 0;
  };
  mutable Mutex send_mu_;  // the output queue; never held while waiting
  std::deque<Out> out_ GUARDED_BY(send_mu_);
  // Changed under send_mu_; read without it (the reactor asks after every
  // request whether output is waiting).
  std::atomic<size_t> out_bytes_{0};
  std::chrono::steady_clock::time_point out_progress_ GUARDED_BY(send_mu_){};
  uint16_t next_id_ GUARDED_BY(send_mu_) = 0;
  Mutex mu_;
  std::condition_variable cv_;
  std::set<uint16_t> waiting_ GUARDED_BY(mu_);
  std::map<uint16_t, Message> replies_ GUARDED_BY(mu_);
  std::set<uint16_t> cancelled_ GUARDED_BY(mu_);  // ids whose late replies are dropped
  // The replies a waiter sleeps until: only these wake it.
  std::multiset<uint16_t> wake_on_ GUARDED_BY(mu_);
  bool closed_ GUARDED_BY(mu_) = false;
  mutable Mutex layout_mu_;
  std::condition_variable layout_cv_;
  std::optional<DmaLayout> layout_ GUARDED_BY(layout_mu_);
  bool probing_ GUARDED_BY(layout_mu_) = false;  // a probe is in flight
};

}  // namespace uvfio::vfio_user
