// SPDX-License-Identifier: BSD-3-Clause
// The vfio-user server: every registered VFIO device gets a socket
// DIR/<dddd:bb:dd.f>.sock (mode 0600), and a fixed set of reactor threads
// (one per core, epoll) serves all of them, whatever their number.
//
// Each device belongs to one reactor, which accepts its client, reads its
// messages (non-blocking, a buffer per connection), runs its quick requests
// (register and config reads, region and IRQ info, DMA maps) in fair rounds
// (a few requests per connection per round), and writes replies through the
// connection's output queue. Requests that may wait — VERSION (opening the
// device), DEVICE_RESET, DEVICE_FEATURE (migration arcs), MIG_DATA_*,
// config-space writes (an FLR) — run on a TaskPool thread, one at a time per
// connection, in order; meanwhile the reactor goes on reading that client's
// socket (the device's DMA replies arrive there) and serving every other
// device. A client stuck mid-message, slow to read its replies or silent
// after connecting costs only its own device, and is dropped after
// `client_timeout`.
//
// One client per device at a time; a second connection gets an EBUSY error
// message and is closed. The device is opened at a client's VERSION and
// closed when that client goes, as the kernel's last close of a device fd:
// interrupts off, the function reset (an FLR, which also returns a VF's
// device memory to zeros) and its open-time config state restored, so the
// next tenant finds nothing of the last one. With keep_state the device
// stays open across clients instead (the vfio-user spec's "client
// disconnects": DMA maps and eventfds dropped, state kept, for a client that
// reconnects), except that a client gone mid-migration still leaves a reset
// device behind. When the
// device is unregistered the socket goes at once; a connected client is
// asked to leave through the REQ irq (the registry's cooperative unbind),
// and the device is closed when it does. No thread is held per device.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/result.h"
#include "base/task_pool.h"
#include "base/unique_fd.h"
#include "vfio/registry.h"
#include "base/mutex.h"

namespace uvfio::vfio_user {

struct EndpointStats;

enum class DmaLayoutMode;

struct ServerOptions {
  // Reactors spin on epoll instead of sleeping: lower latency, each reactor
  // keeps a core busy.
  bool busy_poll = false;
  // After serving a request, a reactor keeps polling its connections for
  // this long before it sleeps in epoll_wait (0: sleeps at once). A client
  // whose next request follows its reply finds the reactor awake: across
  // vCPUs, waking a halted one costs more than the spin.
  std::chrono::microseconds poll_window{0};
  // DMA_READ/DMA_WRITE wire layout for every connection (auto: probed per
  // connection; docs/vfio-user.md).
  DmaLayoutMode dma_layout{};
  // Reactor threads; 0: one per core.
  unsigned reactors = 0;
  // Keep the device open, and its state, from one client to the next
  // (uvfiod --keep-state-on-disconnect). Off: each client gets the device
  // as a new open would.
  bool keep_state = false;
  // A client that has not sent VERSION, or stopped mid-message, or left its
  // replies unread for this long is dropped.
  std::chrono::milliseconds client_timeout{10000};
};

class Server : public vfio::RegistryListener {
 public:
  // Serves every device of `registry` under `dir` (created if missing).
  static Result<std::unique_ptr<Server>> start(vfio::Registry& registry, const std::string& dir,
                                               const ServerOptions& opts = {});
  // Drops every client, closes every device, joins the reactors.
  ~Server() override;

  std::string socket_path(const std::string& device_name) const { return dir_ + "/" + device_name + ".sock"; }
  unsigned reactors() const { return static_cast<unsigned>(reactors_.size()); }

  // vfio::RegistryListener. device_added fails with the errno of a socket
  // that cannot be created (EMFILE, ENAMETOOLONG, ...).
  Result<void> device_added(vfio::Device& dev, driver::Device& parent) override;
  void device_removing(vfio::Device& dev) override;

 private:
  class Reactor;
  struct Endpoint;
  struct Client;
  void add_stats(vfio::Device& dev, std::shared_ptr<EndpointStats> st);
  Server(vfio::Registry& r, std::string dir, const ServerOptions& opts);

  vfio::Registry& registry_;
  std::string dir_;
  ServerOptions opts_;
  std::vector<std::unique_ptr<Reactor>> reactors_;
  TaskPool pool_;  // after reactors_: destroyed (drained) first
  Mutex mu_;
  std::map<vfio::Device*, Reactor*> owner_ GUARDED_BY(mu_);
  unsigned next_ GUARDED_BY(mu_) = 0;
};

}  // namespace uvfio::vfio_user
