// SPDX-License-Identifier: BSD-3-Clause
#include "vfio_user/server.h"
#include "vfio_user/trace.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/timerfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <functional>
#include <deque>
#include <future>
#include <unordered_map>

#include "base/accept.h"
#include "base/log.h"
#include "base/stats.h"
#include "vfio_user/connection.h"
#include "vfio_user/message.h"
#include "vfio_user/session.h"

namespace uvfio::vfio_user {

namespace {

constexpr size_t kMaxQueued = 64;             // requests read ahead per connection
constexpr size_t kMaxQueuedBytes = 4 << 20;   // and their bytes
constexpr unsigned kBudget = 16;              // requests per connection per round
constexpr size_t kOutputHigh = 1 << 20;       // no new requests while this much output waits
constexpr auto kScanEvery = std::chrono::milliseconds(100);

using Clock = std::chrono::steady_clock;

// Requests that may wait for the device (its reset joins engines, migration
// arcs wait for firmware, an FLR through config space) run on the pool;
// the rest are quick and run on the reactor.
bool may_block(const Message& m) {
  switch (m.hdr.command) {
    case kVersion:  // opens the device
    case kDeviceReset:
    case kDeviceFeature:
    case kMigDataRead:
    case kMigDataWrite:
    case kRegionWriteMulti:
      return true;
    case kRegionWrite: {
      RegionAccessMsg a{};
      if (m.payload.size() < sizeof(a)) return false;
      std::memcpy(&a, m.payload.data(), sizeof(a));
      return a.region == VFIO_PCI_CONFIG_REGION_INDEX;
    }
    default:
      return false;
  }
}

}  // namespace

// One client connection's state. Owned by its reactor (and endpoint),
// shared with the pool task running its request or its cleanup.
struct Server::Client {
  Endpoint* ep = nullptr;  // outlives its clients
  uint64_t id = 0;                 // epoll tag
  UniqueFd accepted;               // the socket until the connection takes it
  std::shared_ptr<Connection> conn;
  std::unique_ptr<Session> session;
  std::deque<Message> queue;  // requests read, not yet run
  size_t queued_bytes = 0;
  bool read_paused = false;        // stopped reading at the queue's limits
  bool stall_clock = false;        // last_input is counting a stall of this client's
  std::vector<Message> spare;      // handled requests, their buffers reused
  Message take_spare() {
    if (spare.empty()) return Message{};
    Message m = std::move(spare.back());
    spare.pop_back();
    return m;
  }
  void give_back(Message&& m) {
    if (spare.size() < 4) spare.push_back(std::move(m));
  }
  bool busy = false;     // a request runs on the pool
  bool dead = false;     // dropped: its cleanup follows its running request
  bool in_runq = false;
  std::atomic<bool> admitted{false};  // VERSION accepted (the device is open for it)
  uint32_t events = 0;                // epoll interest now
  uint64_t received = 0;              // bytes, as of last_input
  Clock::time_point accepted_at, last_input;
};

// What the endpoint's clients asked and were told, for the attribute tree
// (vfio-dev/vfioN/stats/{requests,errors,clients}). Shared with the
// attributes, which may be read after the endpoint is gone.
struct EndpointStats {
  std::array<Counter, kMaxCommand + 1> requests;  // [0]: commands we do not know
  static constexpr int kMaxErrno = 133;           // EHWPOISON; above it counts here
  std::array<Counter, kMaxErrno + 2> errors;
  Counter clients, refused, dropped;
  void request(uint16_t cmd, int err) {
    requests[cmd <= kMaxCommand ? cmd : 0].add();
    if (err) errors[err > 0 && err <= kMaxErrno ? err : kMaxErrno + 1].add();
  }
};

struct Server::Endpoint {
  vfio::Device* dev;  // valid while registered, or while open (the registry waits for close)
  std::shared_ptr<EndpointStats> stats = std::make_shared<EndpointStats>();
  std::string name, path;
  UniqueFd listen;
  uint64_t listen_id = 0;
  std::shared_ptr<Client> client;  // the one being served
  std::shared_ptr<Client> next;    // accepted while the last one was being cleaned up
  // Shared with pool tasks (VERSION opening the device) and device_removing.
  Mutex mu;
  bool removing GUARDED_BY(mu) = false;  // no new open
  bool opened GUARDED_BY(mu) = false;
  bool closing = false;   // the device's close is on its way (reactor only)
  bool listen_paused = false;  // out of fds: the listener is out of epoll until the next scan (reactor only)
};

class Server::Reactor {
 public:
  Reactor(Server& s, unsigned index) : s_(s), index_(index) {
    epfd_ = UniqueFd(epoll_create1(EPOLL_CLOEXEC));
    wake_ = UniqueFd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = 0;  // the wake fd
    epoll_ctl(epfd_.get(), EPOLL_CTL_ADD, wake_.get(), &ev);
    // The timeout scan ticks on a timerfd: epoll_wait itself waits without a
    // timeout (arming a timer on every wait costs ~0.6 µs a request).
    scan_timer_ = UniqueFd(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
    itimerspec its{};
    its.it_interval.tv_nsec = its.it_value.tv_nsec = std::chrono::nanoseconds(kScanEvery).count();
    timerfd_settime(scan_timer_.get(), 0, &its, nullptr);
    ev.data.u64 = kScanTag;
    epoll_ctl(epfd_.get(), EPOLL_CTL_ADD, scan_timer_.get(), &ev);
    thread_ = std::thread([this] { run(); });
  }
  ~Reactor() { stop(); }
  // Drops every client, closes every device, and returns once the thread
  // has ended (pool tasks it started may still be finishing).
  void stop() {
    if (!thread_.joinable()) return;
    post([this] { shutdown(); });
    thread_.join();
  }
  // The reactor whose thread calls this, or null.
  static Reactor* current() { return current_; }
  // Runs `fn` on the reactor thread.
  void post(std::function<void()> fn) {
    {
      MutexLock lk(post_mu_);
      posted_.push_back(std::move(fn));
    }
    uint64_t one = 1;
    (void)!::write(wake_.get(), &one, sizeof(one));
  }
  void add(std::shared_ptr<Endpoint> ep) {
    Endpoint* e = ep.get();
    e->listen_id = next_id_++;
    listeners_[e->listen_id] = e;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = e->listen_id;
    epoll_ctl(epfd_.get(), EPOLL_CTL_ADD, e->listen.get(), &ev);
    // A device at the address of one whose endpoint is still winding down
    // (its last client's cleanup closed it, the registry destroyed it, and
    // a bind made a new one in its memory): the old endpoint stays alive,
    // apart, until its own work is done (forget()).
    if (auto old = eps_.find(e->dev); old != eps_.end()) retired_.push_back(std::move(old->second));
    eps_[e->dev] = std::move(ep);
    if (stopping_) retire(*e);  // added while the server stops
  }
  void remove(vfio::Device* dev) {
    auto it = eps_.find(dev);
    if (it == eps_.end()) return;
    retire(*it->second);
  }

 private:
  void run();
  void shutdown();
  void retire(Endpoint& ep);
  void on_accept(Endpoint& ep);
  void pause_listener(Endpoint& ep);
  void resume_listeners();
  void activate(Endpoint& ep, std::shared_ptr<Client> c);
  void read_client(Client& c);
  void service(const std::shared_ptr<Client>& c);
  void schedule(const std::shared_ptr<Client>& c);
  void interest(Client& c);
  void run_request(const std::shared_ptr<Client>& c, Message m);
  bool handle(Client& c, Message& m);  // true: close the connection
  void drop(const std::shared_ptr<Client>& c, const char* why);
  void start_cleanup(const std::shared_ptr<Client>& c);
  void cleaned(Endpoint& ep, const std::shared_ptr<Client>& c);
  void close_device(Endpoint& ep);
  void scan_timeouts();

  Server& s_;
  unsigned index_;
  UniqueFd epfd_, wake_, scan_timer_;
  static constexpr uint64_t kScanTag = ~uint64_t{0};
  std::thread thread_;
  Mutex post_mu_;
  std::vector<std::function<void()>> posted_ GUARDED_BY(post_mu_);
  // Reactor thread only:
  std::map<vfio::Device*, std::shared_ptr<Endpoint>> eps_;
  std::vector<std::shared_ptr<Endpoint>> retired_;  // replaced in eps_ while winding down
  // Drops an endpoint whose work is done, wherever it is kept.
  void forget(Endpoint& ep) {
    if (auto it = eps_.find(ep.dev); it != eps_.end() && it->second.get() == &ep) {
      eps_.erase(it);
      return;
    }
    std::erase_if(retired_, [&](const std::shared_ptr<Endpoint>& e) { return e.get() == &ep; });
  }
  std::unordered_map<uint64_t, Endpoint*> listeners_;
  std::unordered_map<uint64_t, std::shared_ptr<Client>> clients_;
  std::deque<std::shared_ptr<Client>> runq_;
  uint64_t next_id_ = 1;
  bool stopping_ = false;
  static thread_local Reactor* current_;
  std::shared_ptr<Client> hot_;  // busy-poll: the connection spun on first
  Clock::time_point poll_until_{};  // the poll window's end (zero: none open)
  unsigned poll_skip_ = 0;          // rounds to serve without a window (the CPU is shared)
  long yield_switches_ = 0;  // the thread's involuntary switches when the window opened or last yielded
  static constexpr unsigned kPollSkip = 256;
  // Requests in a row that the spin on the hot connection found, served
  // without a look at epoll in between (at most kHotStreak: then epoll is
  // asked, so other connections, timers and posted work wait that long).
  unsigned hot_streak_ = 0;
  static constexpr unsigned kHotStreak = 16;
  void close_poll_window() {
    poll_until_ = {};
    hot_.reset();
  }
  // The calling thread's involuntary context switches so far (0 if unknown).
  static long involuntary_switches() {
    rusage ru{};
    return getrusage(RUSAGE_THREAD, &ru) == 0 ? ru.ru_nivcsw : 0;
  }
  static constexpr int kHotSpins = 64;
  Clock::time_point last_scan_{};
  Acceptor acceptor_;                  // EMFILE without spinning
  std::vector<vfio::Device*> paused_;  // endpoints whose listener waits for the next scan
};

// ---- The reactor loop -----------------------------------------------------------

thread_local Server::Reactor* Server::Reactor::current_ = nullptr;

void Server::Reactor::run() {
  Connection::set_reactor_thread(true);
  current_ = this;
  epoll_event events[64];
  for (;;) {
    if (stopping_ && eps_.empty() && retired_.empty()) return;
    // Busy-poll, or the poll window after the last request served.
    bool polling = s_.opts_.busy_poll;
    if (!polling && poll_until_ != Clock::time_point{}) {
      polling = Clock::now() < poll_until_;
      if (!polling) close_poll_window();
    }
    bool hot_ready = false;
    if (polling && runq_.empty() && hot_ && !hot_->dead && !hot_->busy) {
      // Busy-poll: spin on the connection that was last active, as a
      // dedicated server would on its socket, and look at epoll (every
      // other connection, timers, posted work) between rounds of spins.
      std::shared_ptr<Client> h = hot_;  // a drop while reading resets hot_
      for (int k = 0; k < kHotSpins && h->queue.empty() && !h->dead; ++k) read_client(*h);
      if (!h->dead && !h->queue.empty()) {
        schedule(h);
        hot_ready = true;
      }
    }
    // The window yields between polls, so a client on this very CPU runs.
    // A yield that gave the CPU away says the client (or someone) needs
    // this CPU: the window closes, and stays shut for the next requests
    // (then it is tried again).
    if (polling && !s_.opts_.busy_poll && runq_.empty()) {
      sched_yield();
      long switches = involuntary_switches();
      bool gave_away = switches != yield_switches_;
      yield_switches_ = switches;
      if (gave_away) {
        polling = false;
        close_poll_window();
        poll_skip_ = kPollSkip;
      }
    }
    // A request the spin found is served at once, a few in a row, before
    // epoll is asked again (a system call per request otherwise).
    int n = 0;
    if (hot_ready && hot_streak_ < kHotStreak) {
      ++hot_streak_;
    } else {
      hot_streak_ = 0;
      int timeout = (!runq_.empty() || polling) ? 0 : -1;
      n = epoll_wait(epfd_.get(), events, 64, timeout);
    }
    if (n < 0 && errno != EINTR) {
      log::error("uvfiod", "vfio-user reactor {}: epoll_wait: {}", index_, std::strerror(errno));
      return;
    }
    for (int i = 0; i < n; ++i) {
      uint64_t id = events[i].data.u64;
      uint32_t ev = events[i].events;
      if (id == 0) {
        uint64_t v;
        (void)!::read(wake_.get(), &v, sizeof(v));
        std::vector<std::function<void()>> work;
        {
          MutexLock lk(post_mu_);
          work.swap(posted_);
        }
        for (auto& w : work) w();
        continue;
      }
      if (id == kScanTag) {
        uint64_t ticks;
        (void)!::read(scan_timer_.get(), &ticks, sizeof(ticks));
        scan_timeouts();
        resume_listeners();
        continue;
      }
      if (auto l = listeners_.find(id); l != listeners_.end()) {
        on_accept(*l->second);
        continue;
      }
      auto c = clients_.find(id);
      if (c == clients_.end()) continue;  // dropped earlier in this batch
      std::shared_ptr<Client> cl = c->second;
      if (ev & EPOLLOUT) {
        if (auto r = cl->conn->flush(); !r) {
          drop(cl, "cannot write to the client");
          continue;
        }
      }
      if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)) read_client(*cl);
      if (!cl->dead) schedule(cl);
    }
    // Fair rounds: each connection with requests gets a budget, then the next.
    size_t round = runq_.size();
    for (size_t i = 0; i < round && !runq_.empty(); ++i) {
      auto c = std::move(runq_.front());
      runq_.pop_front();
      c->in_runq = false;
      service(c);
      if ((s_.opts_.busy_poll || s_.opts_.poll_window.count()) && !c->dead && hot_ != c) hot_ = c;
    }
    if (round && !s_.opts_.busy_poll && s_.opts_.poll_window.count()) {  // busy-poll always polls
      if (poll_skip_) {
        --poll_skip_;
      } else {
        poll_until_ = Clock::now() + s_.opts_.poll_window;
        yield_switches_ = involuntary_switches();
      }
    }
  }
}

void Server::Reactor::shutdown() {
  stopping_ = true;
  std::vector<Endpoint*> all;
  for (auto& [d, ep] : eps_) all.push_back(ep.get());
  for (auto& ep : retired_) all.push_back(ep.get());
  for (Endpoint* ep : all) retire(*ep);
}

// The socket goes now; the device is closed once no client holds it.
void Server::Reactor::retire(Endpoint& ep) {
  if (ep.listen) {
    if (!ep.listen_paused) epoll_ctl(epfd_.get(), EPOLL_CTL_DEL, ep.listen.get(), nullptr);
    listeners_.erase(ep.listen_id);
    ::unlink(ep.path.c_str());
    ep.listen.reset();
  }
  {
    MutexLock lk(ep.mu);
    ep.removing = true;
  }
  ep.next.reset();  // never served: its socket closes with it
  if (stopping_ && ep.client && !ep.client->dead) drop(ep.client, "the server is stopping");
  if (!ep.client) close_device(ep);
}

void Server::Reactor::close_device(Endpoint& ep) {
  if (ep.closing) return;
  bool opened;
  {
    MutexLock lk(ep.mu);
    opened = ep.opened;
  }
  if (!opened) {
    forget(ep);  // never opened (or closed already): nothing to wait for
    return;
  }
  ep.closing = true;
  vfio::Device* dev = ep.dev;
  Endpoint* epp = &ep;
  s_.pool_.submit([this, dev, epp] {
    dev->close();  // after this the registry may destroy the device
    post([this, epp] { forget(*epp); });
  });
}

// ---- Clients -----------------------------------------------------------------------

void Server::Reactor::on_accept(Endpoint& ep) {
  for (;;) {
    bool pause = false;
    auto got = acceptor_.accept(ep.listen.get(), SOCK_CLOEXEC | SOCK_NONBLOCK, [&](int fd) {
      // Out of fds: this client is told why (EMFILE) and closed, best effort.
      Header h{0, kVersion, sizeof(Header), kTypeReply | kFlagError, EMFILE};
      (void)!::send(fd, &h, sizeof(h), MSG_DONTWAIT | MSG_NOSIGNAL);
      ep.stats->refused.add();
    }, &pause);
    if (!got) {
      int e = got.error().code;
      if (e == EMFILE || e == ENFILE) {
        if (acceptor_.warn_due())
          log::warn(ep.name, "vfio-user: out of file descriptors ({}): new clients refused", std::strerror(e));
        if (pause) pause_listener(ep);
      }
      return;  // EAGAIN: nothing more now
    }
    UniqueFd fd = std::move(*got);
    if (ep.client && !ep.client->dead) {
      // A client that has just hung up may not be noticed yet.
      char b;
      ssize_t n = recv(ep.client->conn->fd(), &b, 1, MSG_PEEK | MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) drop(ep.client, nullptr);
    }
    auto c = std::make_shared<Client>();
    c->ep = &ep;
    c->accepted = std::move(fd);
    if (!ep.client) {
      activate(ep, c);
    } else if (ep.client->dead && !ep.next) {
      ep.next = c;  // served once the last one's cleanup is done
    } else {
      // One client at a time: an EBUSY error (best effort, never waiting).
      Header h{0, kVersion, sizeof(Header), kTypeReply | kFlagError, EBUSY};
      (void)!::send(c->accepted.get(), &h, sizeof(h), MSG_DONTWAIT | MSG_NOSIGNAL);
      log::warn(ep.name, "vfio-user: second client refused (device busy)");
      ep.stats->refused.add();
    }
  }
}

// The listener leaves epoll until the next scan tick (no fd to take its
// connections with: polling it would only spin).
void Server::Reactor::pause_listener(Endpoint& ep) {
  if (!ep.listen || ep.listen_paused) return;
  epoll_ctl(epfd_.get(), EPOLL_CTL_DEL, ep.listen.get(), nullptr);
  ep.listen_paused = true;
  paused_.push_back(ep.dev);
}

void Server::Reactor::resume_listeners() {
  for (vfio::Device* dev : paused_) {
    auto it = eps_.find(dev);
    if (it == eps_.end()) continue;
    Endpoint& ep = *it->second;
    if (!ep.listen_paused) continue;
    ep.listen_paused = false;
    if (!ep.listen) continue;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = ep.listen_id;
    epoll_ctl(epfd_.get(), EPOLL_CTL_ADD, ep.listen.get(), &ev);
  }
  paused_.clear();
}

void Server::Reactor::activate(Endpoint& ep, std::shared_ptr<Client> c) {
  c->id = next_id_++;
  ep.stats->clients.add();
  c->accepted_at = c->last_input = Clock::now();
  Client* raw = c.get();
  // Output other threads leave queued (device DMA requests) makes the
  // reactor watch for the socket taking it.
  std::weak_ptr<Client> weak = c;
  c->conn = std::make_shared<Connection>(std::move(c->accepted), s_.opts_.dma_layout, ep.name, [this, weak] {
    post([this, weak] {
      if (auto cl = weak.lock(); cl && !cl->dead) interest(*cl);
    });
  });
  vfio::Device* dev = ep.dev;
  Endpoint* epp = &ep;
  c->session = std::make_unique<Session>(*dev, [epp, raw, dev](const Negotiated& n) -> Result<void> {
    // Runs on the pool. The device is opened by its first client's VERSION
    // (where a VF token is presented) and stays open across clients; each
    // later client is checked as the kernel checks every open of a device
    // fd (the match op).
    MutexLock lk(epp->mu);
    if (epp->removing) return Error(ENODEV, "device going away");
    if (!epp->opened) {
      if (auto r = dev->open(n.open); !r) {
        log::warn(epp->name, "vfio-user: cannot open the device: {}", to_string(r.error()));
        return r.error();
      }
      epp->opened = true;
    } else if (auto r = dev->match(n.open); !r) {
      log::warn(epp->name, "vfio-user: client refused: {}", to_string(r.error()));
      return r.error();
    }
    raw->conn->set_client_max_xfer(n.client_max_xfer);
    raw->admitted = true;
    // Device DMA to maps without an fd goes to this client.
    dev->iommu().set_remote(raw->conn);
    return ok();
  });
  ep.client = c;
  clients_[c->id] = c;
  c->events = EPOLLIN | EPOLLRDHUP;
  epoll_event ev{};
  ev.events = c->events;
  ev.data.u64 = c->id;
  epoll_ctl(epfd_.get(), EPOLL_CTL_ADD, c->conn->fd(), &ev);
  log::info(ep.name, "vfio-user: client connected");
  read_client(*c);
  if (!c->dead) schedule(c);
}

void Server::Reactor::read_client(Client& c) {
  // One recvmsg, then only what it brought, unless it filled its buffer
  // (more may be waiting): epoll is level-triggered, so bytes still in the
  // socket bring us back. No read that can only answer EAGAIN.
  bool may_read = true;
  c.read_paused = false;
  while (!c.dead) {
    if (c.queue.size() >= kMaxQueued || c.queued_bytes >= kMaxQueuedBytes) {
      c.read_paused = true;
      break;
    }
    Message m = c.take_spare();
    auto r = c.conn->next_request(m, may_read);
    if (!r) {
      auto it = clients_.find(c.id);
      if (it != clients_.end()) {
        auto keep = it->second;
        drop(keep, r.error().code == ECONNRESET ? nullptr : "unreadable stream");
      }
      return;
    }
    if (!*r) {
      c.give_back(std::move(m));
      break;
    }
    may_read = !c.conn->drained();
    c.queued_bytes += m.payload.size();
    c.queue.push_back(std::move(m));
  }
  // Progress mid-message is what the stall timeout measures: the clock is
  // read only when a read leaves part of a message behind.
  if (c.conn->received() != c.received) {
    c.received = c.conn->received();
    if (c.conn->mid_message()) c.last_input = Clock::now();
  }
}

void Server::Reactor::schedule(const std::shared_ptr<Client>& c) {
  if (c->dead || c->in_runq || c->busy || c->queue.empty()) {
    if (!c->dead) interest(*c);
    return;
  }
  c->in_runq = true;
  runq_.push_back(c);
}

void Server::Reactor::interest(Client& c) {
  uint32_t want = 0;
  if (c.queue.size() < kMaxQueued && c.queued_bytes < kMaxQueuedBytes) want |= EPOLLIN | EPOLLRDHUP;
  if (c.conn->output_bytes()) want |= EPOLLOUT;
  if (want == c.events) return;
  c.events = want;
  epoll_event ev{};
  ev.events = want;
  ev.data.u64 = c.id;
  epoll_ctl(epfd_.get(), EPOLL_CTL_MOD, c.conn->fd(), &ev);
}

void Server::Reactor::service(const std::shared_ptr<Client>& c) {
  unsigned n = 0;
  while (!c->dead && !c->busy && !c->queue.empty() && n < kBudget && c->conn->output_bytes() < kOutputHigh) {
    Message m = std::move(c->queue.front());
    c->queue.pop_front();
    c->queued_bytes -= m.payload.size();
    if (may_block(m)) {
      run_request(c, std::move(m));
      break;
    }
    ++n;
    bool close = handle(*c, m);
    c->give_back(std::move(m));
    if (close) {
      drop(c, nullptr);
      return;
    }
  }
  if (c->dead) return;
  // Reading stopped at the queue's limits: there is room again.
  if (c->read_paused) read_client(*c);
  if (c->dead) return;
  if (!c->busy && !c->queue.empty() && c->conn->output_bytes() < kOutputHigh) {
    c->in_runq = true;
    runq_.push_back(c);
  }
  interest(*c);
}

// A request that may wait: on the pool, the connection's next requests held
// back until it is done.
void Server::Reactor::run_request(const std::shared_ptr<Client>& c, Message m) {
  c->busy = true;
  auto req = std::make_shared<Message>(std::move(m));  // std::function copies its callable
  s_.pool_.submit([this, c, req] {
    bool close = handle(*c, *req);
    post([this, c, close] {
      c->busy = false;
      if (c->dead) return start_cleanup(c);  // dropped meanwhile: now its cleanup
      if (close) return drop(c, nullptr);
      schedule(c);
    });
  });
}

// One request through the session; the reply (or error) queued to the
// client. True if the connection should close (the session said so, or the
// client does not take our output).
bool Server::Reactor::handle(Client& c, Message& m) {
  thread_local Reply reply;  // reused: no allocation per request once warm
  bool no_reply = m.hdr.flags & kFlagNoReply;
  // uvfioctl trace: a relaxed load when nobody traces.
  TraceHub& trace = TraceHub::instance();
  bool traced = trace.active() && trace.wants(c.ep->name, m.hdr.command);
  auto t0 = traced ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
  auto r = c.session->handle(m, reply);
  c.ep->stats->request(m.hdr.command, r ? 0 : r.error().code);
  if (traced) {
    double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    trace.publish(c.ep->name, m.hdr.command, trace_line(c.ep->name, m, r ? 0 : r.error().code, us));
  }
  if (!r) {
    if (!no_reply || (m.hdr.flags & kFlagsTypeMask) != kTypeCommand) {
      if (!c.conn->send_error(m.hdr, r.error().code)) return true;
    }
    return reply.close_after;
  }
  if (no_reply) return false;
  Header h{m.hdr.msg_id, m.hdr.command, 0, kTypeReply, 0};
  if (!c.conn->send(h, reply.payload, reply.fds)) return true;
  return reply.close_after;
}

void Server::Reactor::drop(const std::shared_ptr<Client>& c, const char* why) {
  if (c->dead) return;
  c->dead = true;
  if (hot_ == c) hot_.reset();
  if (why) {
    log::warn(c->ep->name, "vfio-user: dropping client: {}", why);
    c->ep->stats->dropped.add();
  }
  epoll_ctl(epfd_.get(), EPOLL_CTL_DEL, c->conn->fd(), nullptr);
  clients_.erase(c->id);
  c->queue.clear();
  c->queued_bytes = 0;
  // The client is gone: DMA waiting on it fails, then nothing can reach it.
  c->conn->close();
  ::shutdown(c->conn->fd(), SHUT_RDWR);
  if (!c->busy) start_cleanup(c);  // else after its running request
}

// Releases what the client set up, on the pool (a reset may wait), then
// tells the endpoint.
void Server::Reactor::start_cleanup(const std::shared_ptr<Client>& c) {
  vfio::Device* dev = c->ep->dev;
  s_.pool_.submit([this, c, dev] {
    if (c->admitted) dev->iommu().set_remote(nullptr);
    if (c->admitted && !s_.opts_.keep_state) {
      // The last close: the next client opens the device anew. opened is
      // cleared first (no VERSION runs meanwhile: the next client is
      // activated only once this cleanup is done); after close() the
      // registry may destroy a device being removed, so nothing touches
      // `dev` after it.
      {
        MutexLock lk(c->ep->mu);
        c->ep->opened = false;
      }
      dev->close();
    } else if (c->admitted) {
      dev->release_user_resources();
      // A client gone mid-migration leaves no half-saved or half-loaded
      // device behind: as the kernel does when the fd holding a migration
      // is closed, the device is reset and back in RUNNING.
      if (vfio::MigState st = dev->mig_state(); st != vfio::MigState::kRunning) {
        auto r = dev->reset();
        log::warn(c->ep->name, "vfio-user: client left in migration state {}: device reset{}", vfio::to_string(st),
                  r ? "" : " failed: " + to_string(r.error()));
      }
    }
    log::info(c->ep->name, "vfio-user: client disconnected");
    post([this, c] { cleaned(*c->ep, c); });
  });
}

void Server::Reactor::cleaned(Endpoint& ep, const std::shared_ptr<Client>& c) {
  if (ep.client == c) ep.client.reset();
  bool removing;
  {
    MutexLock lk(ep.mu);
    removing = ep.removing;
  }
  if (ep.next && !removing) {
    auto n = std::move(ep.next);
    ep.next.reset();
    activate(ep, n);
    return;
  }
  if (removing && !ep.client) close_device(ep);
}

void Server::Reactor::scan_timeouts() {
  auto now = last_scan_ = Clock::now();
  auto limit = s_.opts_.client_timeout;
  std::vector<std::pair<std::shared_ptr<Client>, const char*>> late;
  for (auto& [id, c] : clients_) {
    if (c->dead) continue;
    if (!c->admitted && !c->busy && now - c->accepted_at > limit) {
      late.emplace_back(c, "no VERSION in time");
      continue;
    }
    // Mid-message counts only while the rest is the client's to send: not
    // while we hold its requests (a request running, a queue to serve, or
    // reading paused at the queue's limits, when its bytes wait in the
    // socket because of us). The clock starts when that becomes so, and
    // every byte that arrives restarts it (read_client).
    bool waiting = c->conn->mid_message() && !c->busy && c->queue.empty() && !c->read_paused;
    if (!waiting) {
      c->stall_clock = false;
    } else if (!c->stall_clock) {
      c->stall_clock = true;
      c->last_input = now;
    } else if (now - c->last_input > limit) {
      late.emplace_back(c, "stalled mid-message");
      continue;
    }
    if (c->conn->output_bytes() && now - c->conn->output_progress() > limit)
      late.emplace_back(c, "does not read its replies");
  }
  for (auto& [c, why] : late) drop(c, why);
}

// ---- Server ------------------------------------------------------------------------

namespace {
// The directory is ours (the daemon holds the run directory's lock): a
// socket in it now was left by a daemon that died, and a device that is no
// longer configured would leave clients ECONNREFUSED instead of ENOENT.
// Sockets of devices we serve are made again as they are registered.
void remove_stale_sockets(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (!d) return;
  std::vector<std::string> stale;
  while (dirent* e = readdir(d)) {
    std::string_view name(e->d_name);
    if (name.size() < 6 || name.substr(name.size() - 5) != ".sock") continue;
    struct stat st;
    if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISSOCK(st.st_mode)) stale.emplace_back(name);
  }
  for (const auto& n : stale) {
    if (unlinkat(dirfd(d), n.c_str(), 0) == 0) log::info("uvfiod", "vfio-user: removed stale socket {}/{}", dir, n);
  }
  closedir(d);
}
}  // namespace

Server::Server(vfio::Registry& r, std::string dir, const ServerOptions& opts)
    : registry_(r), dir_(std::move(dir)), opts_(opts) {}

Result<std::unique_ptr<Server>> Server::start(vfio::Registry& registry, const std::string& dir,
                                             const ServerOptions& opts) {
  if (::mkdir(dir.c_str(), 0700) < 0 && errno != EEXIST) return Error(errno, "mkdir vfio-user dir");
  remove_stale_sockets(dir);
  std::unique_ptr<Server> s(new Server(registry, dir, opts));
  unsigned n = opts.reactors ? opts.reactors : std::max(1u, std::thread::hardware_concurrency());
  for (unsigned i = 0; i < n; ++i) s->reactors_.push_back(std::make_unique<Reactor>(*s, i));
  registry.subscribe(s.get());
  return s;
}

Server::~Server() {
  registry_.remove_listener(this);
  // Each reactor drops its clients, closes its devices and stops; then the
  // pool finishes its last tasks (pool_ is destroyed before reactors_,
  // which those tasks may still post to).
  for (auto& r : reactors_) r->stop();
}

Result<void> Server::device_added(vfio::Device& dev, driver::Device&) {
  auto ep = std::make_unique<Endpoint>();
  ep->dev = &dev;
  ep->name = dev.name();
  ep->path = socket_path(dev.name());
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (ep->path.size() >= sizeof(a.sun_path)) {
    log::error(ep->name, "vfio-user: socket path too long: {}", ep->path);
    return Error(ENAMETOOLONG, "vfio-user socket path too long");
  }
  std::memcpy(a.sun_path, ep->path.data(), ep->path.size());
  ep->listen = UniqueFd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!ep->listen) {
    int e = errno;
    log::error(ep->name, "vfio-user: cannot create a socket: {}", std::strerror(e));
    return Error(e, "vfio-user socket");
  }
  ::unlink(ep->path.c_str());
  mode_t old = umask(0077);
  int rc = bind(ep->listen.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a));
  umask(old);
  if (rc < 0 || listen(ep->listen.get(), 16) < 0) {
    int e = errno;
    log::error(ep->name, "vfio-user: cannot listen on {}: {}", ep->path, std::strerror(e));
    ::unlink(ep->path.c_str());
    return Error(e, "vfio-user listen");
  }
  std::string path = ep->path;
  (void)registry_.add_attribute(dev, driver::Attribute{"vfio_user_socket", 0444,
                                                       [path]() -> Result<std::string> { return path + "\n"; },
                                                       nullptr});
  add_stats(dev, ep->stats);
  log::info(ep->name, "vfio-user: serving on {}", ep->path);
  Reactor* r;
  {
    MutexLock lk(mu_);
    r = reactors_[next_++ % reactors_.size()].get();
    owner_[&dev] = r;
  }
  std::shared_ptr<Endpoint> hold(std::move(ep));
  r->post([r, hold] { r->add(hold); });
  return ok();
}

// The frontend's counters beside the device's own: every command on a line
// (count, then name, as uniq -c and /proc files put them) and errors by errno
// name, only those that happened.
void Server::add_stats(vfio::Device& dev, std::shared_ptr<EndpointStats> st) {
  auto add = [&](const char* name, std::function<std::string()> fn) {
    (void)registry_.add_attribute(
        dev, driver::Attribute{name, 0444, [fn = std::move(fn)]() -> Result<std::string> { return fn(); }, nullptr},
        "stats");
  };
  add("requests", [st] {
    std::string out;
    for (uint16_t c = 1; c <= kMaxCommand; ++c) {
      if (std::string_view n = command_name(c); n != "UNKNOWN")
        out += fmt::format("{:>12} {}\n", st->requests[c].get(), n);
    }
    return out + fmt::format("{:>12} UNKNOWN\n", st->requests[0].get());
  });
  add("errors", [st] {
    std::string out;
    for (int e = 1; e <= EndpointStats::kMaxErrno + 1; ++e) {
      uint64_t n = st->errors[static_cast<size_t>(e)].get();
      if (!n) continue;
      const char* name = e <= EndpointStats::kMaxErrno ? strerrorname_np(e) : nullptr;
      out += fmt::format("{:>12} {}\n", n, name ? name : fmt::format("errno{}", e));
    }
    return out;
  });
  add("clients", [st] {
    return fmt::format("{} accepted {} refused {} dropped\n", st->clients.get(), st->refused.get(), st->dropped.get());
  });
}

void Server::device_removing(vfio::Device& dev) {
  Reactor* r;
  {
    MutexLock lk(mu_);
    auto it = owner_.find(&dev);
    if (it == owner_.end()) return;
    r = it->second;
    owner_.erase(it);
  }
  // Returns once no new open can start (a VERSION in flight either opened
  // the device already — the registry then waits for its close — or is
  // refused), so the device may go as soon as it is not open.
  if (Reactor::current() == r) return r->remove(&dev);
  std::promise<void> marked;
  auto done = marked.get_future();
  r->post([r, &dev, &marked] {
    r->remove(&dev);
    marked.set_value();
  });
  done.wait();
}

}  // namespace uvfio::vfio_user
