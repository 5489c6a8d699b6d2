// SPDX-License-Identifier: BSD-3-Clause
// The daemon's run directory, which only the daemon owns: it holds the
// control socket, the vfio-user sockets and the FUSE mount that root's
// tools trust. RunDir::claim() makes sure nobody else can have put anything
// there or can take it over:
//  - the directory (created 0700 if missing) must be a real directory, not
//    a symlink, owned by the daemon's user and not writable by group or
//    others; the same for each subdirectory the daemon uses;
//  - an exclusive lock (flock on RUNDIR/uvfiod.lock, which records the
//    holder's pid) keeps a second daemon out while the first runs.
#pragma once

#include <string>

#include "base/result.h"
#include "base/unique_fd.h"

namespace uvfio::daemon {

// An errno and a sentence for the admin.
struct RunDirError {
  int code;
  std::string message;
};

class RunDir {
 public:
  // EBUSY (the message names the other daemon's pid) if another daemon
  // holds it; EPERM for a directory that is not safely ours; the errno of
  // the failing call otherwise.
  static Result<RunDir, RunDirError> claim(const std::string& path);

  const std::string& path() const { return path_; }
  // Creates RUNDIR/name with `mode` if missing, then checks it as the run
  // directory itself (a symlink, another owner or group/other write: EPERM).
  Result<std::string, RunDirError> subdir(const std::string& name, mode_t mode) const;

 private:
  RunDir(std::string path, UniqueFd lock) : path_(std::move(path)), lock_(std::move(lock)) {}
  std::string path_;
  UniqueFd lock_;  // holds the flock for the daemon's lifetime
};

// Checks that `path` is a directory (not a symlink) owned by this user and
// not writable by group or others (EPERM otherwise, ENOENT if missing).
Result<void> check_private_dir(const std::string& path);

}  // namespace uvfio::daemon
