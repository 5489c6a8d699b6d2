// SPDX-License-Identifier: BSD-3-Clause
// A live trace of vfio-user conversations (uvfioctl trace): each request a
// client sends, decoded (the fields that matter: region/offset/count, DMA
// addresses, IRQ index/start/count/flags, features and migration states),
// with the reply's errno and the time it took, one JSON line per request.
//
// Tracers subscribe to devices (and optionally commands); the server
// publishes into each matching tracer's bounded queue and never waits: a
// tracer that does not keep up (its queue above kMaxQueued bytes) is
// dropped, not the device slowed. With nobody tracing a request costs one
// relaxed atomic load.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

namespace uvfio::vfio_user {

struct Message;

class TraceHub {
 public:
  static constexpr size_t kMaxQueued = 1 << 20;

  struct Tracer {
    std::set<std::string> devices;   // empty: every device
    std::set<uint16_t> commands;     // empty: every command
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::string> lines;  // guarded by mu
    size_t bytes = 0;               // guarded by mu
    bool dropped = false;           // guarded by mu: fell behind, no more lines
  };

  static TraceHub& instance();

  bool active() const { return n_.load(std::memory_order_relaxed) > 0; }
  std::shared_ptr<Tracer> subscribe(std::set<std::string> devices, std::set<uint16_t> commands);
  void unsubscribe(const std::shared_ptr<Tracer>& t);
  // Whether anyone traces this device and command (then build the line).
  bool wants(const std::string& device, uint16_t command);
  // Queues `line` (one JSON object, no newline) for every matching tracer.
  void publish(const std::string& device, uint16_t command, const std::string& line);

 private:
  std::atomic<int> n_{0};
  std::mutex mu_;
  std::vector<std::shared_ptr<Tracer>> tracers_;  // guarded by mu_
};

// The JSON line of one request: `dev`, `id`, `cmd`, `size` (msg_size), the
// decoded request fields, `errno` (0 or the error's name) and `us` (how
// long it took).
std::string trace_line(const std::string& device, const Message& m, int err, double micros);

}  // namespace uvfio::vfio_user

namespace uvfio::vfio_user {

// Serves one tracer on `fd` (a control-socket connection): a first line
// {"tracing": [devices]}, then one line per traced request, until the
// client hangs up, `stop_fd` becomes readable, or the tracer falls behind
// (then a last {"dropped": true} line if the socket takes it). `commands`
// are command names (REGION_READ, ...); an unknown one is refused (EINVAL
// line) before anything is traced.
void serve_tracer(int fd, const std::vector<std::string>& devices, const std::vector<std::string>& commands,
                  int stop_fd);

}  // namespace uvfio::vfio_user
