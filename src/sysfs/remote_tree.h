// SPDX-License-Identifier: BSD-3-Clause
// A daemon's attribute tree reached through its control socket, served by a
// FUSE mount made outside the daemon (`uvfioctl mount`): the daemon itself
// can then run in a sandbox whose mounts never reach the host (systemd's
// mount-namespace options), and the mount helper, which needs the host's
// mount namespace and CAP_SYS_ADMIN, parses nothing from any VM.
//
// Connections are pooled: each call takes a free one or opens one, so a
// write that waits (an unbind waiting for a client to leave) holds only its
// own, and no lock is held across a call. A connection that broke is dropped
// and the call made once more on a new one (the daemon restarted).
#pragma once

#include <mutex>
#include <string>
#include <vector>

#include "sysfs/control.h"
#include "sysfs/fuse_fs.h"

namespace uvfio::sysfs {

class RemoteTree : public TreeSource {
 public:
  explicit RemoteTree(std::string control_path) : path_(std::move(control_path)) {}
  Result<driver::NodeInfo> stat(std::string_view p) override;
  Result<std::vector<driver::DirEntry>> list(std::string_view p) override;
  Result<std::string> read(std::string_view p) override;
  Result<size_t> write(std::string_view p, uint64_t offset, std::string_view data) override;
  Result<std::string> readlink(std::string_view p) override;

 private:
  template <class Fn>
  auto with_client(Fn&& fn) -> decltype(fn(std::declval<ControlClient&>()));
  std::string path_;
  std::mutex mu_;
  std::vector<ControlClient> idle_;  // guarded by mu_
};

}  // namespace uvfio::sysfs
