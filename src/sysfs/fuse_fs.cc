// SPDX-License-Identifier: BSD-3-Clause
#define FUSE_USE_VERSION 312
#include "sysfs/fuse_fs.h"

#include <fuse3/fuse.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include <cstring>
#include <ctime>

#include "base/log.h"

namespace uvfio::sysfs {

struct FuseContext {
  TreeSource* tree;
  time_t mounted;
};

namespace {

// The daemon's own tree.
class LocalTree : public TreeSource {
 public:
  explicit LocalTree(const driver::Tree& t) : t_(t) {}
  Result<driver::NodeInfo> stat(std::string_view p) override { return t_.stat(p); }
  Result<std::vector<driver::DirEntry>> list(std::string_view p) override { return t_.list(p); }
  Result<std::string> read(std::string_view p) override { return t_.read(p); }
  Result<size_t> write(std::string_view p, uint64_t off, std::string_view d) override { return t_.write_at(p, off, d); }
  Result<std::string> readlink(std::string_view p) override { return t_.readlink(p); }

 private:
  const driver::Tree& t_;  // outlives the mount
};

FuseContext* ctx() { return static_cast<FuseContext*>(fuse_get_context()->private_data); }

// FUSE hands us "/a/b"; the tree wants "a/b".
std::string_view rel(const char* path) {
  std::string_view p(path);
  while (!p.empty() && p.front() == '/') p.remove_prefix(1);
  return p;
}

struct Handle {
  std::string data;
  bool loaded = false;
};

void* fs_init(fuse_conn_info*, fuse_config* cfg) {
  cfg->entry_timeout = 0;
  cfg->attr_timeout = 0;
  cfg->negative_timeout = 0;
  cfg->direct_io = 1;
  cfg->kernel_cache = 0;
  return fuse_get_context()->private_data;
}

int fs_getattr(const char* path, struct stat* st, fuse_file_info*) {
  auto r = ctx()->tree->stat(rel(path));
  if (!r) return -r.error().code;
  std::memset(st, 0, sizeof(*st));
  switch (r->kind) {
    case driver::NodeKind::kDir: st->st_mode = S_IFDIR | r->mode; st->st_nlink = 2; break;
    case driver::NodeKind::kFile: st->st_mode = S_IFREG | r->mode; st->st_nlink = 1; break;
    case driver::NodeKind::kLink: st->st_mode = S_IFLNK | 0777; st->st_nlink = 1; break;
  }
  st->st_size = static_cast<off_t>(r->size);
  st->st_atime = st->st_mtime = st->st_ctime = ctx()->mounted;
  st->st_blksize = 4096;
  return 0;
}

int fs_readlink(const char* path, char* buf, size_t size) {
  if (size == 0) return -EINVAL;
  auto r = ctx()->tree->readlink(rel(path));
  if (!r) return -r.error().code;
  size_t n = std::min(size - 1, r->size());
  std::memcpy(buf, r->data(), n);
  buf[n] = '\0';
  return 0;
}

int fs_readdir(const char* path, void* buf, fuse_fill_dir_t fill, off_t, fuse_file_info*, fuse_readdir_flags) {
  auto r = ctx()->tree->list(rel(path));
  if (!r) return -r.error().code;
  fill(buf, ".", nullptr, 0, static_cast<fuse_fill_dir_flags>(0));
  fill(buf, "..", nullptr, 0, static_cast<fuse_fill_dir_flags>(0));
  for (auto& e : *r) fill(buf, e.name.c_str(), nullptr, 0, static_cast<fuse_fill_dir_flags>(0));
  return 0;
}

int fs_open(const char* path, fuse_file_info* fi) {
  auto r = ctx()->tree->stat(rel(path));
  if (!r) return -r.error().code;
  if (r->kind == driver::NodeKind::kDir) return -EISDIR;
  int acc = fi->flags & O_ACCMODE;
  // As kernfs: an attribute without show cannot be opened for reading, one
  // without store not for writing — even by root.
  if ((acc == O_RDONLY || acc == O_RDWR) && !(r->mode & 0444)) return -EACCES;
  if ((acc == O_WRONLY || acc == O_RDWR) && !(r->mode & 0222)) return -EACCES;
  fi->direct_io = 1;
  fi->fh = reinterpret_cast<uint64_t>(new Handle());
  return 0;
}

int fs_release(const char*, fuse_file_info* fi) {
  delete reinterpret_cast<Handle*>(fi->fh);
  return 0;
}

int fs_read(const char* path, char* buf, size_t size, off_t off, fuse_file_info* fi) {
  auto* h = reinterpret_cast<Handle*>(fi->fh);
  if (!h) return -EBADF;
  if (off < 0) return -EINVAL;
  if (off == 0 || !h->loaded) {
    auto r = ctx()->tree->read(rel(path));
    if (!r) return -r.error().code;
    h->data = std::move(*r);
    h->loaded = true;
  }
  if (static_cast<size_t>(off) >= h->data.size()) return 0;
  size_t n = std::min(size, h->data.size() - static_cast<size_t>(off));
  std::memcpy(buf, h->data.data() + off, n);
  return static_cast<int>(n);
}

int fs_write(const char* path, const char* buf, size_t size, off_t off, fuse_file_info* fi) {
  if (off < 0) return -EINVAL;
  auto r = ctx()->tree->write(rel(path), static_cast<uint64_t>(off), std::string_view(buf, size));
  if (!r) return -r.error().code;
  // What this handle read before is stale now (config: a read-modify-write
  // on one descriptor, as setpci does, must see its own write).
  if (fi && fi->fh) reinterpret_cast<Handle*>(fi->fh)->loaded = false;
  return static_cast<int>(std::min(*r, size));
}

int fs_truncate(const char* path, off_t, fuse_file_info*) {
  // `echo x > attr` opens with O_TRUNC; sysfs ignores the truncation.
  auto r = ctx()->tree->stat(rel(path));
  if (!r) return -r.error().code;
  if (r->kind != driver::NodeKind::kFile) return -EISDIR;
  return (r->mode & 0222) ? 0 : -EACCES;
}

const fuse_operations kOps = [] {
  fuse_operations o{};
  o.init = fs_init;
  o.getattr = fuse_guarded<fs_getattr>;
  o.readlink = fuse_guarded<fs_readlink>;
  o.readdir = fuse_guarded<fs_readdir>;
  o.open = fuse_guarded<fs_open>;
  o.release = fuse_guarded<fs_release>;
  o.read = fuse_guarded<fs_read>;
  o.write = fuse_guarded<fs_write>;
  o.truncate = fuse_guarded<fs_truncate>;
  return o;
}();

}  // namespace

FuseMount::FuseMount(std::string mp) : mountpoint_(std::move(mp)) {}

Result<std::unique_ptr<FuseMount>> FuseMount::mount(const driver::Tree& tree, const std::string& mountpoint) {
  return mount(std::make_unique<LocalTree>(tree), mountpoint);
}

Result<std::unique_ptr<FuseMount>> FuseMount::mount(std::unique_ptr<TreeSource> source, const std::string& mountpoint,
                                                    const char* name) {
  if (access("/dev/fuse", R_OK | W_OK) != 0) return Error(errno, "/dev/fuse not usable");
  ::mkdir(mountpoint.c_str(), 0755);
  std::unique_ptr<FuseMount> m(new FuseMount(mountpoint));
  m->source_ = std::move(source);
  m->ctx_ = std::make_unique<FuseContext>(FuseContext{m->source_.get(), time(nullptr)});
  const char* argv[] = {name, "-o", "fsname=uvfio,subtype=uvfio,default_permissions", nullptr};
  fuse_args args = FUSE_ARGS_INIT(3, const_cast<char**>(argv));
  m->fuse_ = fuse_new(&args, &kOps, sizeof(kOps), m->ctx_.get());
  fuse_opt_free_args(&args);
  if (!m->fuse_) return Error(EIO, "fuse_new");
  if (fuse_mount(m->fuse_, mountpoint.c_str()) != 0) {
    fuse_destroy(m->fuse_);
    m->fuse_ = nullptr;
    return Error(EPERM, "fuse_mount");
  }
  struct fuse* f = m->fuse_;
  m->loop_ = std::thread([f] {
    fuse_loop_config* cfg = fuse_loop_cfg_create();
    fuse_loop_cfg_set_max_threads(cfg, 8);
    // Workers beyond one leave when idle: a burst of admin reads costs
    // threads only while it lasts.
    fuse_loop_cfg_set_idle_threads(cfg, 1);
    fuse_loop_mt(f, cfg);
    fuse_loop_cfg_destroy(cfg);
  });
  return m;
}

FuseMount::~FuseMount() {
  if (!fuse_) return;
  fuse_exit(fuse_);
  // Unmount in the kernel first: the loop's threads see ENODEV on their
  // reads and leave, and only then does libfuse close the device fd (its
  // fuse_unmount() closing it under threads still reading is a race). Not
  // being allowed to (an unprivileged daemon mounts through fusermount3)
  // falls back to libfuse's order.
  if (::umount2(mountpoint_.c_str(), MNT_DETACH | UMOUNT_NOFOLLOW) == 0) {
    if (loop_.joinable()) loop_.join();
    fuse_unmount(fuse_);
  } else {
    fuse_unmount(fuse_);
    if (loop_.joinable()) loop_.join();
  }
  fuse_destroy(fuse_);
}

}  // namespace uvfio::sysfs
