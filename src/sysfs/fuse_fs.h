// SPDX-License-Identifier: BSD-3-Clause
// The attribute tree as a FUSE filesystem (libfuse3), so `ls -l`, `readlink`,
// `cat`, `echo > bind` and pciutils work on it as on /sys.
//
// Files are direct-I/O and report sysfs's sizes (a page for text attributes,
// the real size for binary ones such as `config`); a read at offset 0 takes a
// fresh snapshot of the attribute, later offsets read from it, as sysfs's
// seq_file buffering does. Nothing is cached by the kernel, so devices that
// come and go show at once.
#pragma once

#include <cerrno>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <vector>
#include <thread>

#include "base/result.h"
#include "driver/attr_tree.h"

struct fuse;

namespace uvfio::sysfs {

struct FuseContext;

// libfuse is C: nothing may unwind into it. A callback wrapped in this
// answers an exception with an errno for that one call (ENOMEM for
// bad_alloc, EIO otherwise) instead of std::terminate taking the daemon.
template <auto Fn>
struct FuseGuard;
template <class... A, int (*Fn)(A...)>
struct FuseGuard<Fn> {
  static int call(A... a) noexcept {
    try {
      return Fn(a...);
    } catch (const std::bad_alloc&) {
      return -ENOMEM;
    } catch (...) {
      return -EIO;
    }
  }
};
template <auto Fn>
inline constexpr auto fuse_guarded = &FuseGuard<Fn>::call;

// What the filesystem serves: the daemon's own tree (in process), or a
// daemon's tree reached through its control socket (`uvfioctl mount`, so
// the mount can be made outside the daemon's sandbox). Called from FUSE's
// worker threads, several at once.
class TreeSource {
 public:
  virtual ~TreeSource() = default;
  virtual Result<driver::NodeInfo> stat(std::string_view path) = 0;
  virtual Result<std::vector<driver::DirEntry>> list(std::string_view path) = 0;
  virtual Result<std::string> read(std::string_view path) = 0;
  // pwrite(): the bytes taken (Tree::write_at).
  virtual Result<size_t> write(std::string_view path, uint64_t offset, std::string_view data) = 0;
  virtual Result<std::string> readlink(std::string_view path) = 0;
};

class FuseMount {
 public:
  // Mounts at `mountpoint` (created if missing) and serves from a thread
  // pool. ENODEV/EPERM etc. when FUSE is not available here.
  static Result<std::unique_ptr<FuseMount>> mount(const driver::Tree& tree, const std::string& mountpoint);
  // The same for any source; `name` is the program named in the mount table.
  static Result<std::unique_ptr<FuseMount>> mount(std::unique_ptr<TreeSource> source, const std::string& mountpoint,
                                                  const char* name = "uvfiod");
  // Unmounts and joins.
  ~FuseMount();

  const std::string& mountpoint() const { return mountpoint_; }

 private:
  explicit FuseMount(std::string mp);
  std::string mountpoint_;
  std::unique_ptr<TreeSource> source_;
  std::unique_ptr<FuseContext> ctx_;
  struct fuse* fuse_ = nullptr;
  std::thread loop_;
};

}  // namespace uvfio::sysfs
