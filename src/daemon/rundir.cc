// SPDX-License-Identifier: BSD-3-Clause
#include "daemon/rundir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cstring>

namespace uvfio::daemon {

namespace {

// mkdir -p for the parents, 0755 (system places like /run exist already);
// the last component is created 0700.
Result<void> make_path(const std::string& path) {
  std::string cur;
  for (size_t i = 0; i < path.size(); ++i) {
    cur += path[i];
    if ((path[i] == '/' && i > 0) || i + 1 == path.size()) {
      bool last = i + 1 == path.size() || (i + 2 == path.size() && path.back() == '/');
      if (::mkdir(cur.c_str(), last ? 0700 : 0755) < 0 && errno != EEXIST)
        return Error(errno, "cannot create the run directory");
    }
  }
  return ok();
}

}  // namespace

Result<void> check_private_dir(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) < 0) return Error(errno, "lstat");
  if (S_ISLNK(st.st_mode)) return Error(EPERM, "is a symbolic link");
  if (!S_ISDIR(st.st_mode)) return Error(EPERM, "is not a directory");
  if (st.st_uid != geteuid()) return Error(EPERM, "is owned by another user");
  if (st.st_mode & (S_IWGRP | S_IWOTH)) return Error(EPERM, "is writable by group or others");
  return ok();
}

Result<RunDir, RunDirError> RunDir::claim(const std::string& path) {
  if (auto r = make_path(path); !r) return RunDirError{r.error().code, fmt::format("{}: {}", path, std::strerror(r.error().code))};
  if (auto r = check_private_dir(path); !r)
    return RunDirError{r.error().code, fmt::format("{} {}: refusing to use it", path, r.error().context)};
  std::string lock = path + "/uvfiod.lock";
  UniqueFd fd(::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd) return RunDirError{errno, fmt::format("{}: {}", lock, std::strerror(errno))};
  if (flock(fd.get(), LOCK_EX | LOCK_NB) < 0) {
    int e = errno;
    char pid[32] = {};
    (void)!pread(fd.get(), pid, sizeof(pid) - 1, 0);
    if (e == EWOULDBLOCK)
      return RunDirError{EBUSY, fmt::format("{} is in use by another uvfiod (pid {})", path,
                                            std::string(pid, strcspn(pid, "\n")))};
    return RunDirError{e, fmt::format("{}: lock: {}", lock, std::strerror(e))};
  }
  std::string me = fmt::format("{}\n", getpid());
  if (ftruncate(fd.get(), 0) < 0 || pwrite(fd.get(), me.data(), me.size(), 0) < 0)
    return RunDirError{errno, fmt::format("{}: {}", lock, std::strerror(errno))};
  return RunDir(path, std::move(fd));
}

Result<std::string, RunDirError> RunDir::subdir(const std::string& name, mode_t mode) const {
  std::string p = path_ + "/" + name;
  if (::mkdir(p.c_str(), mode) < 0 && errno != EEXIST) return RunDirError{errno, fmt::format("{}: {}", p, std::strerror(errno))};
  if (auto r = check_private_dir(p); !r)
    return RunDirError{r.error().code, fmt::format("{} {}: refusing to use it", p, r.error().context)};
  return p;
}

}  // namespace uvfio::daemon
