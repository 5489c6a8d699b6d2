// SPDX-License-Identifier: BSD-3-Clause
// The control socket: the attribute tree served over a UNIX stream socket, one
// JSON object per line each way, for uvfioctl and tests (and wherever FUSE is
// not available).
//
// Requests:  {"op":"stat"|"ls"|"read"|"readlink", "path":P}
//            {"op":"write", "path":P, "data":TEXT}  (or "data_hex":HEX),
//              optionally "offset":N (a pwrite; the reply has "written")
// Replies:   {"ok":true, ...} with "kind"/"mode"/"size", "entries":[{name,kind}],
//            "data_hex", or "target"; or {"ok":false, "errno":N, "error":TEXT}.
// Paths are relative to the tree's root ("bus/pci/devices").
#pragma once

#include <sys/types.h>

#include <atomic>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>

#include "base/result.h"
#include "base/unique_fd.h"
#include "driver/attr_tree.h"

namespace uvfio::sysfs {

inline constexpr size_t kMaxRequestLine = 1 << 20;
inline constexpr int kMaxConnections = 32;

// Answers one request line (without the newline) against the tree.
nlohmann::json handle_request(const driver::Tree& tree, std::string_view line);

class ControlServer {
 public:
  // A request whose op is a stream's name turns its connection into that
  // stream: the handler writes to the connection's fd until it returns
  // (the client hung up, or `stop_fd` became readable: the server stops),
  // and the connection ends. uvfiod's "trace" is one.
  using Stream = std::function<void(int fd, const nlohmann::json& request, int stop_fd)>;

  // Listens on `path` (mode 0600; a stale socket file is replaced).
  static Result<std::unique_ptr<ControlServer>> start(const driver::Tree& tree, const std::string& path,
                                                      std::map<std::string, Stream> streams = {});
  // Stops accepting, closes every connection, joins, removes the socket file.
  ~ControlServer();

 private:
  struct Conn {
    UniqueFd fd;
    std::thread thread;
    std::atomic<bool> done{false};
  };
  ControlServer(const driver::Tree& tree, std::string path, UniqueFd listen, UniqueFd stop,
                std::map<std::string, Stream> streams)
      : tree_(tree), path_(std::move(path)), listen_(std::move(listen)), stop_(std::move(stop)),
        streams_(std::move(streams)) {}
  void accept_loop();
  void serve(Conn& c);
  void reap();

  const driver::Tree& tree_;  // outlives the server
  std::string path_;
  UniqueFd listen_;
  UniqueFd stop_;  // eventfd: readable once the server stops
  const std::map<std::string, Stream> streams_;
  std::thread acceptor_;
  std::mutex mu_;
  std::list<Conn> conns_;  // guarded by mu_
};

// The client side, for uvfioctl and tests.
class ControlClient {
 public:
  static Result<ControlClient> connect(const std::string& path);
  // Sends one request and waits for its reply. A reply with ok=false becomes
  // an Error with the server's errno.
  Result<nlohmann::json> call(const nlohmann::json& request);

  Result<std::string> read(const std::string& path);
  Result<void> write(const std::string& path, const std::string& data);
  Result<size_t> write_at(const std::string& path, uint64_t offset, const std::string& data);
  Result<std::string> readlink(const std::string& path);
  Result<std::vector<std::pair<std::string, std::string>>> ls(const std::string& path);  // name, kind
  Result<driver::NodeInfo> stat(const std::string& path);
  // The connection failed (closed, garbled): this client is done.
  bool broken() const { return broken_; }

 private:
  explicit ControlClient(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
  std::string buf_;
  bool broken_ = false;
};

std::string to_hex(std::string_view bytes);
Result<std::string> from_hex(std::string_view hex);
const char* kind_name(driver::NodeKind k);
// kind_name's inverse; nullopt for a name it never gives.
std::optional<driver::NodeKind> parse_kind(std::string_view name);

}  // namespace uvfio::sysfs
