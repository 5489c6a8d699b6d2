// SPDX-License-Identifier: BSD-3-Clause
#include "sysfs/remote_tree.h"

#include <optional>

namespace uvfio::sysfs {

namespace {
constexpr size_t kMaxIdle = 8;  // FUSE's worker threads at most
}  // namespace

template <class Fn>
auto RemoteTree::with_client(Fn&& fn) -> decltype(fn(std::declval<ControlClient&>())) {
  for (int attempt = 0;; ++attempt) {
    std::optional<ControlClient> c;
    {
      std::lock_guard lk(mu_);
      if (!idle_.empty()) {
        c.emplace(std::move(idle_.back()));
        idle_.pop_back();
      }
    }
    if (!c) {
      auto fresh = ControlClient::connect(path_);
      if (!fresh) return fresh.error();
      c.emplace(std::move(*fresh));
    }
    auto r = fn(*c);
    if (c->broken()) {
      // A pooled connection the daemon closed (it restarted): the request
      // was not written (EPIPE), so it is made once more on a new one.
      if (attempt == 0 && !r && r.error().code == EPIPE) continue;
      return r;
    }
    std::lock_guard lk(mu_);
    if (idle_.size() < kMaxIdle) idle_.push_back(std::move(*c));
    return r;
  }
}

Result<driver::NodeInfo> RemoteTree::stat(std::string_view p) {
  return with_client([&](ControlClient& c) { return c.stat(std::string(p)); });
}

Result<std::vector<driver::DirEntry>> RemoteTree::list(std::string_view p) {
  return with_client([&](ControlClient& c) -> Result<std::vector<driver::DirEntry>> {
    auto entries = TRY(c.ls(std::string(p)));
    std::vector<driver::DirEntry> out;
    out.reserve(entries.size());
    for (auto& [name, kind] : entries)
      out.push_back(driver::DirEntry{std::move(name), parse_kind(kind).value_or(driver::NodeKind::kFile)});
    return out;
  });
}

Result<std::string> RemoteTree::read(std::string_view p) {
  return with_client([&](ControlClient& c) { return c.read(std::string(p)); });
}

Result<size_t> RemoteTree::write(std::string_view p, uint64_t offset, std::string_view data) {
  return with_client([&](ControlClient& c) { return c.write_at(std::string(p), offset, std::string(data)); });
}

Result<std::string> RemoteTree::readlink(std::string_view p) {
  return with_client([&](ControlClient& c) { return c.readlink(std::string(p)); });
}

}  // namespace uvfio::sysfs
