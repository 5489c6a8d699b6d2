// SPDX-License-Identifier: BSD-3-Clause
// The attribute tree: a sysfs-shaped tree of directories, attribute files and
// symbolic links that the driver core keeps as devices, drivers and buses come
// and go. Frontends (FUSE, the control socket) walk it by path.
//
// Links store their target as an absolute tree path and are printed relative
// to the link's directory, as sysfs prints them
// ("../../../devices/pci0000:00/...").
//
// Locking: every method requires the tree's lock (the driver core's
// CoreMutex). The path API (stat/list/read/write/readlink) takes it itself;
// attribute callbacks therefore run with it held and may call back into the
// core. A callback that waits (an unbind waiting for a VFIO user) releases
// it meanwhile (CoreMutex::unlocked); the node it runs for stays alive until
// it returns, even if removed meanwhile.
//
// Device locks: a device's directory carries its DevLock (Linux's
// device_lock()). Writing an attribute takes the lock of the device the
// attribute belongs to (its nearest device directory) for the store, so a
// store waits while another thread binds, unbinds or removes that device —
// and only that device. Reads never wait for device locks: listing and
// reading every other device, and this one, go on meanwhile.
#pragma once

#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "driver/core_mutex.h"

namespace uvfio::driver {

// A device lock: held by one thread (recursively), waited for with the
// CoreMutex released. Shared by the device and its directory so a store
// that removed its own device can still let go of it.
struct DevLock {
  std::thread::id owner;  // guarded by the CoreMutex
  unsigned depth = 0;     // guarded by the CoreMutex
};

struct Attribute {
  std::string name;
  mode_t mode = 0444;
  std::function<Result<std::string>()> show;             // null: not readable
  std::function<Result<void>(std::string_view)> store;   // null: not writable
  uint64_t size = 4096;  // what stat() says: sysfs reports a page for text attributes
  // A binary attribute's write (bin_attribute.write): the bytes at an
  // offset; returns how many it took (0 past the end). Where set, it takes
  // every write and `store` is not used.
  std::function<Result<size_t>(uint64_t, std::string_view)> write_at = nullptr;
};

enum class NodeKind { kDir, kFile, kLink };

class Dir;

class Node {
 public:
  virtual ~Node() = default;
  NodeKind kind() const { return kind_; }
  const std::string& name() const { return name_; }
  Dir* parent() const { return parent_; }
  std::string path() const;  // "" for the root, else "a/b/c"

 protected:
  Node(NodeKind k, std::string name, Dir* parent) : kind_(k), name_(std::move(name)), parent_(parent) {}

 private:
  NodeKind kind_;
  std::string name_;
  Dir* parent_;  // owns this node
};

class Dir : public Node {
 public:
  Dir(std::string name, Dir* parent) : Node(NodeKind::kDir, std::move(name), parent) {}
  Node* child(std::string_view name) const;
  const std::map<std::string, std::shared_ptr<Node>, std::less<>>& children() const { return children_; }
  // The lock of the device this directory is the directory of (null for
  // other directories).
  const std::shared_ptr<DevLock>& devlock() const { return devlock_; }
  void set_devlock(std::shared_ptr<DevLock> l) { devlock_ = std::move(l); }

 private:
  friend class Tree;
  std::map<std::string, std::shared_ptr<Node>, std::less<>> children_;
  std::shared_ptr<DevLock> devlock_;
};

class File : public Node {
 public:
  File(Attribute a, Dir* parent) : Node(NodeKind::kFile, a.name, parent), attr_(std::move(a)) {}
  const Attribute& attr() const { return attr_; }

 private:
  Attribute attr_;
};

class Link : public Node {
 public:
  Link(std::string name, std::string target, Dir* parent)
      : Node(NodeKind::kLink, std::move(name), parent), target_(std::move(target)) {}
  const std::string& target() const { return target_; }

 private:
  std::string target_;  // absolute tree path
};

struct NodeInfo {
  NodeKind kind;
  mode_t mode;
  uint64_t size;
};

struct DirEntry {
  std::string name;
  NodeKind kind;
};

class Tree {
 public:
  explicit Tree(CoreMutex& mu) : mu_(mu), root_("", nullptr) {}

  CoreMutex& lock() const { return mu_; }
  Dir* root() { return &root_; }

  // ---- Mutation (lock held). Names must be unique in their directory:
  // EEXIST otherwise.
  Result<Dir*> mkdir(Dir* parent, std::string_view name);
  Result<void> add_file(Dir* dir, Attribute a);
  Result<void> add_link(Dir* dir, std::string_view name, std::string target_path);
  // Removes a node (recursively for directories). Missing names are ignored.
  void remove(Dir* dir, std::string_view name);
  // Resolves "a/b/c" to a directory without following links; nullptr if absent.
  Dir* find_dir(std::string_view path);

  // ---- Path API for frontends (takes the lock). Paths are relative to the
  // root; "" and "/" name it. Intermediate links are followed; the last
  // component is followed by read/write/list, not by stat/readlink.
  Result<NodeInfo> stat(std::string_view path) const;
  Result<std::vector<DirEntry>> list(std::string_view path) const;
  Result<std::string> read(std::string_view path) const;
  Result<void> write(std::string_view path, std::string_view data) const;
  // A write at `offset` (pwrite): a binary attribute's write_at, or a text
  // attribute's store (which ignores the offset, as sysfs does). Returns
  // the bytes taken.
  Result<size_t> write_at(std::string_view path, uint64_t offset, std::string_view data) const;
  Result<std::string> readlink(std::string_view path) const;

  // ---- Device locks (tree lock held). lock_dev waits, with the tree lock
  // released, while another thread holds `l`; the caller keeps `l` alive.
  bool dev_busy(const DevLock& l) const;  // held by another thread
  void lock_dev(DevLock& l) const;
  bool try_lock_dev(DevLock& l) const;
  void unlock_dev(DevLock& l) const;

  // "../../x" for a link living in directory `from_dir` that points at `to`.
  static std::string relative_path(std::string_view from_dir, std::string_view to);

 private:
  enum class Follow { kNo, kYes };
  Result<Node*> resolve(std::string_view path, Follow last) const;
  CoreMutex& mu_;
  Dir root_;
};

}  // namespace uvfio::driver
