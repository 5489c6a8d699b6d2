// SPDX-License-Identifier: BSD-3-Clause
#include "vfio_user/trace.h"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include <nlohmann/json.hpp>

#include "base/log.h"
#include "base/result.h"
#include "vfio/migration.h"
#include "vfio_user/message.h"

namespace uvfio::vfio_user {

using nlohmann::json;

TraceHub& TraceHub::instance() {
  static TraceHub hub;
  return hub;
}

std::shared_ptr<TraceHub::Tracer> TraceHub::subscribe(std::set<std::string> devices, std::set<uint16_t> commands) {
  auto t = std::make_shared<Tracer>();
  t->devices = std::move(devices);
  t->commands = std::move(commands);
  std::lock_guard lk(mu_);
  tracers_.push_back(t);
  n_.store(static_cast<int>(tracers_.size()), std::memory_order_relaxed);
  return t;
}

void TraceHub::unsubscribe(const std::shared_ptr<Tracer>& t) {
  std::lock_guard lk(mu_);
  tracers_.erase(std::remove(tracers_.begin(), tracers_.end(), t), tracers_.end());
  n_.store(static_cast<int>(tracers_.size()), std::memory_order_relaxed);
}

namespace {
bool matches(const TraceHub::Tracer& t, const std::string& device, uint16_t command) {
  return (t.devices.empty() || t.devices.count(device)) && (t.commands.empty() || t.commands.count(command));
}
}  // namespace

bool TraceHub::wants(const std::string& device, uint16_t command) {
  std::lock_guard lk(mu_);
  for (auto& t : tracers_)
    if (matches(*t, device, command)) return true;
  return false;
}

void TraceHub::publish(const std::string& device, uint16_t command, const std::string& line) {
  std::lock_guard lk(mu_);
  for (auto& t : tracers_) {
    if (!matches(*t, device, command)) continue;
    std::lock_guard tl(t->mu);
    if (t->dropped) continue;
    if (t->bytes + line.size() + 1 > kMaxQueued) {
      // Never wait for a tracer: one that falls behind is let go.
      t->dropped = true;
      t->lines.clear();
      t->bytes = 0;
      log::warn("uvfiod", "trace: dropping a tracer that does not keep up ({} KiB queued)", kMaxQueued >> 10);
    } else {
      t->lines.push_back(line);
      t->bytes += line.size() + 1;
    }
    t->cv.notify_one();
  }
}

namespace {

template <class T>
bool get(const Message& m, T& out, size_t at = 0) {
  if (m.payload.size() < at + sizeof(T)) return false;
  std::memcpy(&out, m.payload.data() + at, sizeof(T));
  return true;
}

std::string hex(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof(b), "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

// The request's fields a VMM developer asks about first.
void decode(const Message& m, json& o) {
  switch (m.hdr.command) {
    case kVersion: {
      VersionMsg v;
      if (get(m, v)) o["version"] = std::to_string(v.major) + "." + std::to_string(v.minor);
      break;
    }
    case kDmaMap: {
      DmaMapMsg d;
      if (!get(m, d)) break;
      o["address"] = hex(d.address);
      o["size"] = hex(d.size);
      o["offset"] = hex(d.offset);
      o["flags"] = std::string(d.flags & kDmaFlagRead ? "r" : "") + (d.flags & kDmaFlagWrite ? "w" : "");
      o["fd"] = !m.fds.empty();
      break;
    }
    case kDmaUnmap: {
      DmaUnmapMsg d;
      if (!get(m, d)) break;
      o["address"] = hex(d.address);
      o["size"] = hex(d.size);
      if (d.flags & kDmaUnmapAll) o["all"] = true;
      break;
    }
    case kDeviceGetRegionInfo:
    case kDeviceGetRegionIoFds:
    case kDeviceGetIrqInfo: {
      uint32_t index;
      if (get(m, index, 8)) o["index"] = index;
      break;
    }
    case kDeviceSetIrqs: {
      IrqSetMsg s;
      if (!get(m, s)) break;
      o["index"] = s.index;
      o["start"] = s.start;
      o["count"] = s.count;
      o["flags"] = hex(s.flags);
      if (!m.fds.empty()) o["fds"] = m.fds.size();
      break;
    }
    case kRegionRead:
    case kRegionWrite: {
      RegionAccessMsg a;
      if (!get(m, a)) break;
      o["region"] = uint32_t{a.region};
      o["offset"] = hex(a.offset);
      o["count"] = uint32_t{a.count};
      break;
    }
    case kRegionWriteMulti: {
      uint64_t n;
      if (get(m, n)) o["writes"] = n;
      break;
    }
    case kDeviceFeature: {
      DeviceFeatureMsg f;
      if (!get(m, f)) break;
      o["feature"] = f.flags & VFIO_DEVICE_FEATURE_MASK;
      o["op"] = f.flags & VFIO_DEVICE_FEATURE_PROBE ? "probe" : f.flags & VFIO_DEVICE_FEATURE_SET ? "set" : "get";
      uint32_t state;
      if ((f.flags & VFIO_DEVICE_FEATURE_MASK) == VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE &&
          (f.flags & VFIO_DEVICE_FEATURE_SET) && get(m, state, sizeof(f)))
        o["state"] = state <= static_cast<uint32_t>(vfio::MigState::kPreCopyP2P)
                         ? to_string(static_cast<vfio::MigState>(state))
                         : std::to_string(state);
      break;
    }
    case kMigDataRead:
    case kMigDataWrite: {
      MigDataMsg d;
      if (get(m, d)) o["bytes"] = uint32_t{d.size};
      break;
    }
    default:
      break;
  }
}

}  // namespace

std::string trace_line(const std::string& device, const Message& m, int err, double micros) {
  using namespace std::chrono;
  double t = duration<double>(system_clock::now().time_since_epoch()).count();
  json o{{"t", t}, {"dev", device}, {"id", m.hdr.msg_id}, {"cmd", command_name(m.hdr.command)},
         {"size", m.hdr.msg_size}};
  decode(m, o);
  if (!err) {
    o["errno"] = 0;
  } else {
    const char* name = strerrorname_np(err);  // EINVAL, as the stats name errnos
    o["errno"] = name ? std::string(name) : std::to_string(err);
  }
  o["us"] = static_cast<double>(static_cast<int64_t>(micros * 10)) / 10;
  return o.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace uvfio::vfio_user

namespace uvfio::vfio_user {

namespace {

// One line to a tracer's socket without ever blocking for long: false if
// the client is gone, the daemon stops, or the tracer was dropped while
// the socket was full.
bool send_line(int fd, const std::string& line, int stop_fd, TraceHub::Tracer* t) {
  std::string s = line + "\n";
  size_t done = 0;
  while (done < s.size()) {
    ssize_t n = ::send(fd, s.data() + done, s.size() - done, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return false;
    pollfd p[2] = {{fd, POLLOUT, 0}, {stop_fd, POLLIN, 0}};
    if (poll(p, 2, 100) < 0 && errno != EINTR) return false;
    if (p[1].revents || (p[0].revents & (POLLHUP | POLLERR))) return false;
    if (t) {
      std::lock_guard lk(t->mu);
      if (t->dropped) return false;
    }
  }
  return true;
}

}  // namespace

void serve_tracer(int fd, const std::vector<std::string>& devices, const std::vector<std::string>& commands,
                  int stop_fd) {
  std::set<uint16_t> cmds;
  for (const auto& name : commands) {
    uint16_t found = 0;
    for (uint16_t c = 1; c <= kMaxCommand; ++c)
      if (name == command_name(c)) found = c;
    if (!found) {
      (void)send_line(fd, json{{"ok", false}, {"errno", EINVAL}, {"error", "unknown command " + name}}.dump(), stop_fd,
                      nullptr);
      return;
    }
    cmds.insert(found);
  }
  TraceHub& hub = TraceHub::instance();
  auto t = hub.subscribe(std::set<std::string>(devices.begin(), devices.end()), cmds);
  bool alive = send_line(fd, json{{"ok", true}, {"tracing", devices}}.dump(), stop_fd, t.get());
  while (alive) {
    std::deque<std::string> batch;
    bool dropped;
    {
      std::unique_lock lk(t->mu);
      t->cv.wait_for(lk, std::chrono::milliseconds(100), [&] { return !t->lines.empty() || t->dropped; });
      batch.swap(t->lines);
      t->bytes = 0;
      dropped = t->dropped;
    }
    pollfd p[2] = {{fd, POLLRDHUP, 0}, {stop_fd, POLLIN, 0}};
    (void)poll(p, 2, 0);
    if ((p[0].revents & (POLLRDHUP | POLLHUP | POLLERR)) || p[1].revents) break;
    if (dropped) {
      std::string last = json{{"dropped", true}, {"why", "the tracer did not keep up"}}.dump() + "\n";
      (void)!::send(fd, last.data(), last.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      break;
    }
    for (auto& line : batch)
      if (!(alive = send_line(fd, line, stop_fd, t.get()))) break;
  }
  hub.unsubscribe(t);
}

}  // namespace uvfio::vfio_user
