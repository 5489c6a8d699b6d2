#include "vfio_user/server.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>

#include "base/log.h"
#include "vfio_user/connection.h"
#include "vfio_user/message.h"
#include "vfio_user/session.h"

namespace uvfio::vfio_user {

struct Server::Endpoint {
  vfio::Device* dev;  // valid until the serving thread closes it (after removal)
  std::string name;
  std::string path;
  UniqueFd listen;
  UniqueFd wake;  // eventfd: wakes the acceptor on removal or shutdown
  std::atomic<bool> removing{false};
  std::atomic<bool> stopping{false};
  std::mutex mu;
  std::condition_variable cv;
  UniqueFd pending;  // a client handed from the acceptor to the server; guarded by mu
  int current = -1;  // the client being served; guarded by mu
  std::thread acceptor;
  std::thread server;
};

Server::Server(vfio::Registry& r, std::string dir) : registry_(r), dir_(std::move(dir)) {}

Result<std::unique_ptr<Server>> Server::start(vfio::Registry& registry, const std::string& dir,
                                             const ServerOptions& opts) {
  if (::mkdir(dir.c_str(), 0700) < 0 && errno != EEXIST) return Error(errno, "mkdir vfio-user dir");
  std::unique_ptr<Server> s(new Server(registry, dir));
  s->opts_ = opts;
  registry.subscribe(s.get());
  return s;
}

Server::~Server() {
  registry_.remove_listener(this);
  std::vector<std::unique_ptr<Endpoint>> all;
  {
    std::lock_guard lk(mu_);
    for (auto& [d, ep] : live_) all.push_back(std::move(ep));
    live_.clear();
    for (auto& ep : retired_) all.push_back(std::move(ep));
    retired_.clear();
  }
  for (auto& ep : all) {
    ep->stopping = true;
    ::unlink(ep->path.c_str());  // no socket file outlives the daemon
    uint64_t one = 1;
    (void)!::write(ep->wake.get(), &one, sizeof(one));
    std::lock_guard lk(ep->mu);
    if (ep->current >= 0) shutdown(ep->current, SHUT_RDWR);  // unblocks its read
    ep->cv.notify_all();
  }
  for (auto& ep : all) {
    if (ep->acceptor.joinable()) ep->acceptor.join();
    if (ep->server.joinable()) ep->server.join();
  }
}

void Server::device_added(vfio::Device& dev, driver::Device&) {
  auto ep = std::make_unique<Endpoint>();
  ep->dev = &dev;
  ep->name = dev.name();
  ep->path = socket_path(dev.name());
  ep->wake = UniqueFd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (ep->path.size() >= sizeof(a.sun_path)) {
    log::error(ep->name, "vfio-user: socket path too long: {}", ep->path);
    return;
  }
  std::memcpy(a.sun_path, ep->path.data(), ep->path.size());
  ep->listen = UniqueFd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ::unlink(ep->path.c_str());
  mode_t old = umask(0077);
  int rc = bind(ep->listen.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a));
  umask(old);
  if (rc < 0 || listen(ep->listen.get(), 4) < 0) {
    log::error(ep->name, "vfio-user: cannot listen on {}: {}", ep->path, std::strerror(errno));
    return;
  }
  std::string path = ep->path;
  (void)registry_.add_attribute(dev, driver::Attribute{"vfio_user_socket", 0444,
                                                       [path]() -> Result<std::string> { return path + "\n"; },
                                                       nullptr});
  log::info(ep->name, "vfio-user: serving on {}", ep->path);
  Endpoint* raw = ep.get();
  {
    std::lock_guard lk(mu_);
    live_[&dev] = std::move(ep);
  }
  raw->server = std::thread([this, raw] { serve_loop(*raw); });
  raw->acceptor = std::thread([this, raw] { accept_loop(*raw); });
}

void Server::device_removing(vfio::Device& dev) {
  std::lock_guard lk(mu_);
  auto it = live_.find(&dev);
  if (it == live_.end()) return;
  Endpoint& ep = *it->second;
  ep.removing = true;
  // The socket goes now; the thread closes the device when no client holds it.
  ::unlink(ep.path.c_str());
  uint64_t one = 1;
  (void)!::write(ep.wake.get(), &one, sizeof(one));
  {
    std::lock_guard el(ep.mu);
    ep.cv.notify_all();
  }
  retired_.push_back(std::move(it->second));
  live_.erase(it);  // its thread is joined at server shutdown
}

// The acceptor: hands a new client to the serving thread, or refuses it
// while another is being served (EBUSY, as the reply to its first message if
// it sends one at once).
void Server::accept_loop(Endpoint& ep) {
  for (;;) {
    pollfd p[2] = {{ep.listen.get(), POLLIN, 0}, {ep.wake.get(), POLLIN, 0}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (ep.stopping || ep.removing) return;
    if (p[1].revents) {
      uint64_t v;
      (void)!::read(ep.wake.get(), &v, sizeof(v));
      continue;
    }
    UniqueFd c(accept4(ep.listen.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!c) continue;
    std::unique_lock lk(ep.mu);
    // A client handed over a moment ago is picked up by the serving thread
    // at once: let it, so two quick connections are not mistaken for two
    // clients at a time.
    ep.cv.wait_for(lk, std::chrono::seconds(1), [&] { return !ep.pending || ep.stopping || ep.removing; });
    if (ep.current >= 0 && !ep.pending) {
      // A client that has just hung up may not be noticed yet: give the
      // serving thread a moment if its socket shows EOF.
      char b;
      ssize_t n = recv(ep.current, &b, 1, MSG_PEEK | MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
        ep.cv.wait_for(lk, std::chrono::seconds(1), [&] { return ep.current < 0; });
    }
    if (ep.current < 0 && !ep.pending) {
      ep.pending = std::move(c);
      ep.cv.notify_all();
      continue;
    }
    lk.unlock();
    timeval tv{0, 200 * 1000};
    setsockopt(c.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    Header h{0, kVersion, sizeof(Header), 0, 0};
    if (auto first = recv_message(c.get(), 4096)) h = first->hdr;
    (void)send_error(c.get(), h, EBUSY);
    log::warn(ep.name, "vfio-user: second client refused (device busy)");
  }
}

void Server::serve_loop(Endpoint& ep) {
  bool opened = false;
  for (;;) {
    UniqueFd c;
    {
      std::unique_lock lk(ep.mu);
      ep.cv.wait(lk, [&] { return ep.stopping || ep.removing || ep.pending; });
      if (ep.stopping || (ep.removing && !ep.pending)) break;
      c = std::move(ep.pending);
      ep.current = c.get();
      ep.cv.notify_all();  // the acceptor may wait for the hand-over
    }
    if (serve_client(ep, std::move(c), opened)) {
      ep.dev->release_user_resources();
      // A client gone mid-migration leaves no half-saved or half-loaded
      // device behind: as the kernel does when the fd holding a migration
      // is closed, the device is reset and back in RUNNING.
      if (vfio::MigState s = ep.dev->mig_state(); s != vfio::MigState::kRunning) {
        auto r = ep.dev->reset();
        log::warn(ep.name, "vfio-user: client left in migration state {}: device reset{}", vfio::to_string(s),
                  r ? "" : " failed: " + to_string(r.error()));
      }
      log::info(ep.name, "vfio-user: client disconnected");
    }
    std::lock_guard lk(ep.mu);
    ep.cv.notify_all();  // ep.current was cleared by serve_client
  }
  if (opened) ep.dev->close();  // after this the device may be destroyed
}

// Serves one client; true if it got as far as using the device (VERSION
// accepted), so what it set up must be released.
bool Server::serve_client(Endpoint& ep, UniqueFd client, bool& opened) {
  log::info(ep.name, "vfio-user: client connected");
  bool admitted = false;
  // The device is opened by its first client's VERSION (where a VF token is
  // presented) and stays open across clients; each later client is checked
  // as the kernel checks every open of a device fd (the match op).
  // The connection owns the socket; a device DMA in flight may hold it a
  // moment longer (it fails at once: the connection is closed).
  auto conn = std::make_shared<Connection>(std::move(client), opts_.busy_poll, opts_.dma_layout, ep.name);
  Session session(*ep.dev, [&](const Negotiated& n) -> Result<void> {
    if (!opened) {
      if (auto r = ep.dev->open(n.open); !r) {
        log::warn(ep.name, "vfio-user: cannot open the device: {}", to_string(r.error()));
        return r.error();
      }
      opened = true;
    } else if (auto r = ep.dev->match(n.open); !r) {
      log::warn(ep.name, "vfio-user: client refused: {}", to_string(r.error()));
      return r.error();
    }
    conn->set_client_max_xfer(n.client_max_xfer);
    admitted = true;
    return ok();
  });
  // Device DMA to maps without an fd goes to this client.
  ep.dev->iommu().set_remote(conn);
  serve_requests(ep, session, *conn);
  // The client is gone: DMA waiting on it fails, then nothing can reach it.
  conn->close();
  ep.dev->iommu().set_remote(nullptr);
  {
    // Forget the fd before the connection (which may close it) goes.
    std::lock_guard lk(ep.mu);
    ep.current = -1;
  }
  return admitted;
}

void Server::serve_requests(Endpoint& ep, Session& session, Connection& conn) {
  Message m;    // reused: no allocation per request once warm
  Reply reply;  // likewise
  for (;;) {
    auto got = conn.next_request(m);
    if (!got) {
      if (got.error().code != ECONNRESET && !ep.stopping)
        log::warn(ep.name, "vfio-user: dropping client: {}", to_string(got.error()));
      return;
    }
    bool no_reply = m.hdr.flags & kFlagNoReply;
    auto r = session.handle(m, reply);
    if (!r) {
      if (!no_reply || (m.hdr.flags & kFlagsTypeMask) != kTypeCommand) {
        if (!conn.send_error(m.hdr, r.error().code)) return;
      }
      if (reply.close_after) return;
      continue;
    }
    if (no_reply) continue;
    Header h{m.hdr.msg_id, m.hdr.command, 0, kTypeReply, 0};
    if (!conn.send(h, reply.payload, reply.fds)) return;
    if (reply.close_after) return;
  }
}

}  // namespace uvfio::vfio_user
