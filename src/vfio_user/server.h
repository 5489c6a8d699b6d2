// The vfio-user server: every registered VFIO device gets a socket
// DIR/<dddd:bb:dd.f>.sock (mode 0600) served by its own thread, so a slow or
// hostile client of one device never stalls another. One client per device
// at a time; a second connection gets an EBUSY error message and is closed.
//
// The device is opened at its first client and stays open across clients:
// on disconnect its DMA maps and eventfds are dropped and its state kept
// (vfio-user "client disconnects"). When the device is unregistered the
// socket goes away at once; a connected client is asked to leave through the
// REQ irq (the registry's cooperative unbind) and the device is closed when
// it does.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "base/result.h"
#include "base/unique_fd.h"
#include "vfio/registry.h"

namespace uvfio::vfio_user {

class Session;
class Connection;
enum class DmaLayoutMode;

struct ServerOptions {
  // Serving threads spin on their socket instead of sleeping (lower
  // latency, a core per connected device).
  bool busy_poll = false;
  // DMA_READ/DMA_WRITE wire layout for every connection (auto: probed per
  // connection; docs/vfio-user.md).
  DmaLayoutMode dma_layout{};
};

class Server : public vfio::RegistryListener {
 public:
  // Serves every device of `registry` under `dir` (created if missing).
  static Result<std::unique_ptr<Server>> start(vfio::Registry& registry, const std::string& dir,
                                               const ServerOptions& opts = {});
  ~Server() override;

  std::string socket_path(const std::string& device_name) const { return dir_ + "/" + device_name + ".sock"; }

  void device_added(vfio::Device& dev, driver::Device& parent) override;
  void device_removing(vfio::Device& dev) override;

 private:
  struct Endpoint;
  Server(vfio::Registry& r, std::string dir);
  void accept_loop(Endpoint& ep);
  void serve_loop(Endpoint& ep);
  bool serve_client(Endpoint& ep, UniqueFd client, bool& opened);
  void serve_requests(Endpoint& ep, Session& session, Connection& conn);
  ServerOptions opts_;

  vfio::Registry& registry_;
  std::string dir_;
  std::mutex mu_;
  std::map<vfio::Device*, std::unique_ptr<Endpoint>> live_;  // guarded by mu_
  std::vector<std::unique_ptr<Endpoint>> retired_;           // guarded by mu_: threads to join
};

}  // namespace uvfio::vfio_user
