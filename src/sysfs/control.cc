// SPDX-License-Identifier: BSD-3-Clause
#include "sysfs/control.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cstring>

#include "base/accept.h"
#include "base/log.h"

namespace uvfio::sysfs {

using nlohmann::json;

std::optional<driver::NodeKind> parse_kind(std::string_view name) {
  if (name == "dir") return driver::NodeKind::kDir;
  if (name == "file") return driver::NodeKind::kFile;
  if (name == "link") return driver::NodeKind::kLink;
  return std::nullopt;
}

const char* kind_name(driver::NodeKind k) {
  switch (k) {
    case driver::NodeKind::kDir: return "dir";
    case driver::NodeKind::kFile: return "file";
    case driver::NodeKind::kLink: return "link";
  }
  return "?";
}

std::string to_hex(std::string_view bytes) {
  static const char* d = "0123456789abcdef";
  std::string s;
  s.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    s += d[c >> 4];
    s += d[c & 15];
  }
  return s;
}

Result<std::string> from_hex(std::string_view hex) {
  if (hex.size() % 2) return Error(EINVAL, "odd hex length");
  auto nib = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  out.reserve(hex.size() / 2);
  for (size_t i = 0; i < hex.size(); i += 2) {
    int a = nib(hex[i]), b = nib(hex[i + 1]);
    if (a < 0 || b < 0) return Error(EINVAL, "bad hex digit");
    out += static_cast<char>(a << 4 | b);
  }
  return out;
}

namespace {

json fail(const Error& e) { return json{{"ok", false}, {"errno", e.code}, {"error", to_string(e)}}; }

UniqueFd make_unix_socket() { return UniqueFd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)); }

Result<sockaddr_un> unix_addr(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof(a.sun_path)) return Error(ENAMETOOLONG, "socket path too long");
  std::memcpy(a.sun_path, path.data(), path.size());
  return a;
}

bool write_all(int fd, std::string_view s) {
  while (!s.empty()) {
    ssize_t n = send(fd, s.data(), s.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    s.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

}  // namespace

json handle_request(const driver::Tree& tree, std::string_view line) {
  json req = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (req.is_discarded() || !req.is_object()) return fail(Error(EINVAL, "request is not a JSON object"));
  if (!req.contains("op") || !req["op"].is_string()) return fail(Error(EINVAL, "request has no op"));
  if (!req.contains("path") || !req["path"].is_string()) return fail(Error(EINVAL, "request has no path"));
  const std::string op = req["op"].get<std::string>();
  const std::string path = req["path"].get<std::string>();
  if (op == "stat") {
    auto r = tree.stat(path);
    if (!r) return fail(r.error());
    return json{{"ok", true}, {"kind", kind_name(r->kind)}, {"mode", r->mode}, {"size", r->size}};
  }
  if (op == "ls") {
    auto r = tree.list(path);
    if (!r) return fail(r.error());
    json e = json::array();
    for (auto& d : *r) e.push_back(json{{"name", d.name}, {"kind", kind_name(d.kind)}});
    return json{{"ok", true}, {"entries", e}};
  }
  if (op == "read") {
    auto r = tree.read(path);
    if (!r) return fail(r.error());
    return json{{"ok", true}, {"data_hex", to_hex(*r)}};
  }
  if (op == "readlink") {
    auto r = tree.readlink(path);
    if (!r) return fail(r.error());
    return json{{"ok", true}, {"target", *r}};
  }
  if (op == "write") {
    std::string data;
    if (req.contains("data") && req["data"].is_string()) {
      data = req["data"].get<std::string>();
    } else if (req.contains("data_hex") && req["data_hex"].is_string()) {
      auto d = from_hex(req["data_hex"].get<std::string>());
      if (!d) return fail(d.error());
      data = std::move(*d);
    } else {
      return fail(Error(EINVAL, "write without data"));
    }
    uint64_t offset = 0;
    if (req.contains("offset")) {
      if (!req["offset"].is_number_unsigned()) return fail(Error(EINVAL, "offset is not an unsigned integer"));
      offset = req["offset"].get<uint64_t>();
    }
    auto r = tree.write_at(path, offset, data);
    if (!r) return fail(r.error());
    return json{{"ok", true}, {"written", *r}};
  }
  return fail(Error(EINVAL, "unknown op"));
}

Result<std::unique_ptr<ControlServer>> ControlServer::start(const driver::Tree& tree, const std::string& path,
                                                            std::map<std::string, Stream> streams) {
  sockaddr_un addr = TRY(unix_addr(path));
  UniqueFd fd = make_unix_socket();
  if (!fd) return Error(errno, "socket");
  struct stat st;
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return Error(EEXIST, "control socket path exists and is not a socket");
    unlink(path.c_str());
  }
  mode_t old = umask(0077);
  int rc = bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  umask(old);
  if (rc < 0) return Error(errno, "bind control socket");
  if (listen(fd.get(), 16) < 0) return Error(errno, "listen");
  UniqueFd stop(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop) return Error(errno, "eventfd");
  std::unique_ptr<ControlServer> s(new ControlServer(tree, path, std::move(fd), std::move(stop), std::move(streams)));
  s->acceptor_ = std::thread([p = s.get()] { p->accept_loop(); });
  return s;
}

ControlServer::~ControlServer() {
  uint64_t one = 1;
  (void)!::write(stop_.get(), &one, sizeof(one));
  if (acceptor_.joinable()) acceptor_.join();
  std::list<Conn> conns;
  {
    std::lock_guard lk(mu_);
    conns.swap(conns_);
  }
  for (auto& c : conns)
    if (c.thread.joinable()) c.thread.join();
  unlink(path_.c_str());
}

void ControlServer::reap() {
  std::lock_guard lk(mu_);
  for (auto it = conns_.begin(); it != conns_.end();) {
    if (it->done) {
      it->thread.join();
      it = conns_.erase(it);
    } else {
      ++it;
    }
  }
}

void ControlServer::accept_loop() {
  Acceptor acceptor;
  bool paused = false;
  for (;;) {
    // Out of fds with nothing to shed: only the stop fd for a while.
    pollfd p[2] = {{paused ? -1 : listen_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
    int n = poll(p, 2, paused ? static_cast<int>(Acceptor::kBackoff.count()) : -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (p[1].revents) return;
    paused = false;
    if (n == 0) continue;
    reap();
    auto got = acceptor.accept(listen_.get(), SOCK_CLOEXEC, [](int fd) {
      (void)write_all(fd, fail(Error(EMFILE, "uvfiod is out of file descriptors")).dump() + "\n");
    }, &paused);
    if (!got) {
      if ((got.error().code == EMFILE || got.error().code == ENFILE) && acceptor.warn_due())
        log::warn("uvfiod", "control socket: out of file descriptors: connection refused");
      continue;
    }
    UniqueFd c = std::move(*got);
    std::lock_guard lk(mu_);
    if (conns_.size() >= kMaxConnections) {
      (void)write_all(c.get(), fail(Error(EBUSY, "too many control connections")).dump(-1, ' ', false, json::error_handler_t::replace) + "\n");
      continue;
    }
    Conn& conn = conns_.emplace_back();
    conn.fd = std::move(c);
    conn.thread = std::thread([this, &conn] {
      serve(conn);
      conn.done = true;
    });
  }
}

void ControlServer::serve(Conn& c) {
  std::string buf;
  char chunk[4096];
  for (;;) {
    pollfd p[2] = {{c.fd.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (p[1].revents) break;
    ssize_t n = recv(c.fd.get(), chunk, sizeof(chunk), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    buf.append(chunk, static_cast<size_t>(n));
    size_t nl;
    bool alive = true;
    while (alive && (nl = buf.find('\n')) != std::string::npos) {
      if (!streams_.empty()) {
        json req = json::parse(std::string_view(buf).substr(0, nl), nullptr, /*allow_exceptions=*/false);
        if (req.is_object() && req.contains("op") && req["op"].is_string()) {
          auto it = streams_.find(req["op"].get<std::string>());
          if (it != streams_.end()) {
            it->second(c.fd.get(), req, stop_.get());  // the connection is the stream's now
            c.fd.reset();
            return;
          }
        }
      }
      json reply = handle_request(tree_, std::string_view(buf).substr(0, nl));
      buf.erase(0, nl + 1);
      alive = write_all(c.fd.get(), reply.dump(-1, ' ', false, json::error_handler_t::replace) + "\n");
    }
    if (!alive) break;
    if (buf.size() > kMaxRequestLine) {
      (void)write_all(c.fd.get(), fail(Error(E2BIG, "request line too long")).dump(-1, ' ', false, json::error_handler_t::replace) + "\n");
      break;
    }
  }
  c.fd.reset();
}

Result<ControlClient> ControlClient::connect(const std::string& path) {
  sockaddr_un addr = TRY(unix_addr(path));
  UniqueFd fd = make_unix_socket();
  if (!fd) return Error(errno, "socket");
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0)
    return Error(errno, "connect to control socket");
  return ControlClient(std::move(fd));
}

Result<json> ControlClient::call(const json& request) {
  // A server that refused the connection (out of fds, too many
  // connections) has said why before closing: read that even when our
  // request could not be written.
  bool sent = write_all(fd_.get(), request.dump(-1, ' ', false, json::error_handler_t::replace) + "\n");
  char chunk[65536];
  size_t nl;
  while ((nl = buf_.find('\n')) == std::string::npos) {
    ssize_t n = recv(fd_.get(), chunk, sizeof(chunk), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      broken_ = true;
      return Error(sent ? ECONNRESET : EPIPE, "control socket closed");
    }
    buf_.append(chunk, static_cast<size_t>(n));
  }
  json reply = json::parse(std::string_view(buf_).substr(0, nl), nullptr, false);
  buf_.erase(0, nl + 1);
  if (reply.is_discarded() || !reply.is_object()) {
    broken_ = true;
    return Error(EPROTO, "bad reply from uvfiod");
  }
  if (!reply.contains("ok") || !reply["ok"].is_boolean() || !reply["ok"].get<bool>()) {
    int e = reply.contains("errno") && reply["errno"].is_number_integer() ? reply["errno"].get<int>() : EIO;
    return Error(e);
  }
  return reply;
}

Result<std::string> ControlClient::read(const std::string& path) {
  json r = TRY(call(json{{"op", "read"}, {"path", path}}));
  if (!r.contains("data_hex") || !r["data_hex"].is_string()) return Error(EPROTO, "bad reply");
  return from_hex(r["data_hex"].get<std::string>());
}

Result<void> ControlClient::write(const std::string& path, const std::string& data) {
  TRY(write_at(path, 0, data));
  return ok();
}

Result<size_t> ControlClient::write_at(const std::string& path, uint64_t offset, const std::string& data) {
  json r = TRY(call(json{{"op", "write"}, {"path", path}, {"offset", offset}, {"data_hex", to_hex(data)}}));
  if (!r.contains("written") || !r["written"].is_number_unsigned()) return Error(EPROTO, "bad reply");
  return r["written"].get<size_t>();
}

Result<driver::NodeInfo> ControlClient::stat(const std::string& path) {
  json r = TRY(call(json{{"op", "stat"}, {"path", path}}));
  if (!r.contains("kind") || !r["kind"].is_string() || !r.contains("mode") || !r["mode"].is_number_unsigned() ||
      !r.contains("size") || !r["size"].is_number_unsigned())
    return Error(EPROTO, "bad reply");
  auto kind = parse_kind(r["kind"].get<std::string>());
  if (!kind) return Error(EPROTO, "bad reply");
  driver::NodeInfo info{};
  info.kind = *kind;
  info.mode = static_cast<mode_t>(r["mode"].get<uint64_t>() & 07777);
  info.size = r["size"].get<uint64_t>();
  return info;
}

Result<std::string> ControlClient::readlink(const std::string& path) {
  json r = TRY(call(json{{"op", "readlink"}, {"path", path}}));
  if (!r.contains("target") || !r["target"].is_string()) return Error(EPROTO, "bad reply");
  return r["target"].get<std::string>();
}

Result<std::vector<std::pair<std::string, std::string>>> ControlClient::ls(const std::string& path) {
  json r = TRY(call(json{{"op", "ls"}, {"path", path}}));
  if (!r.contains("entries") || !r["entries"].is_array()) return Error(EPROTO, "bad reply");
  std::vector<std::pair<std::string, std::string>> out;
  for (auto& e : r["entries"]) {
    if (!e.is_object() || !e.contains("name") || !e["name"].is_string()) return Error(EPROTO, "bad reply");
    std::string kind = e.contains("kind") && e["kind"].is_string() ? e["kind"].get<std::string>() : "?";
    out.emplace_back(e["name"].get<std::string>(), kind);
  }
  return out;
}

}  // namespace uvfio::sysfs
