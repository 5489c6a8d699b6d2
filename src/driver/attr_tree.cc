// SPDX-License-Identifier: BSD-3-Clause
#include "driver/attr_tree.h"

namespace uvfio::driver {
namespace {

std::vector<std::string_view> split(std::string_view p) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i <= p.size()) {
    size_t j = p.find('/', i);
    if (j == std::string_view::npos) j = p.size();
    if (j > i) out.push_back(p.substr(i, j - i));
    i = j + 1;
  }
  return out;
}

constexpr int kMaxLinkDepth = 40;  // as the VFS's ELOOP limit

}  // namespace

std::string Node::path() const {
  if (!parent_) return "";
  std::string pp = parent_->path();
  return pp.empty() ? name_ : pp + "/" + name_;
}

Node* Dir::child(std::string_view name) const {
  auto it = children_.find(name);
  return it == children_.end() ? nullptr : it->second.get();
}

Result<Dir*> Tree::mkdir(Dir* parent, std::string_view name) {
  if (name.empty() || name.find('/') != std::string_view::npos) return Error(EINVAL, "bad node name");
  if (parent->child(name)) return Error(EEXIST, "node exists");
  auto d = std::make_shared<Dir>(std::string(name), parent);
  Dir* raw = d.get();
  parent->children_.emplace(std::string(name), std::move(d));
  return raw;
}

Result<void> Tree::add_file(Dir* dir, Attribute a) {
  if (a.name.empty() || a.name.find('/') != std::string::npos) return Error(EINVAL, "bad node name");
  if (dir->child(a.name)) return Error(EEXIST, "node exists");
  std::string name = a.name;
  dir->children_.emplace(std::move(name), std::make_shared<File>(std::move(a), dir));
  return ok();
}

Result<void> Tree::add_link(Dir* dir, std::string_view name, std::string target_path) {
  if (name.empty() || name.find('/') != std::string_view::npos) return Error(EINVAL, "bad node name");
  if (dir->child(name)) return Error(EEXIST, "node exists");
  dir->children_.emplace(std::string(name), std::make_shared<Link>(std::string(name), std::move(target_path), dir));
  return ok();
}

void Tree::remove(Dir* dir, std::string_view name) {
  auto it = dir->children_.find(name);
  if (it != dir->children_.end()) dir->children_.erase(it);
}

Dir* Tree::find_dir(std::string_view path) {
  Dir* d = &root_;
  for (auto c : split(path)) {
    Node* n = d->child(c);
    if (!n || n->kind() != NodeKind::kDir) return nullptr;
    d = static_cast<Dir*>(n);
  }
  return d;
}

Result<Node*> Tree::resolve(std::string_view path, Follow last) const {
  // Iterative walk with a stack of remaining components, so links can splice
  // their target in.
  std::vector<std::string> todo;
  for (auto c : split(path)) todo.emplace_back(c);
  std::vector<const Dir*> stack{&root_};
  int links = 0;
  size_t i = 0;
  while (i < todo.size()) {
    const std::string comp = todo[i];
    const Dir* cur = stack.back();
    if (comp == ".") { ++i; continue; }
    if (comp == "..") {
      if (stack.size() > 1) stack.pop_back();
      ++i;
      continue;
    }
    Node* n = cur->child(comp);
    if (!n) return Error(ENOENT, "no such attribute");
    bool is_last = i + 1 == todo.size();
    if (n->kind() == NodeKind::kLink && (!is_last || last == Follow::kYes)) {
      if (++links > kMaxLinkDepth) return Error(ELOOP, "too many links");
      std::vector<std::string> rest(todo.begin() + static_cast<long>(i) + 1, todo.end());
      todo.clear();
      for (auto c : split(static_cast<Link*>(n)->target())) todo.emplace_back(c);
      todo.insert(todo.end(), rest.begin(), rest.end());
      stack.assign(1, &root_);
      i = 0;
      continue;
    }
    if (is_last) return n;
    if (n->kind() != NodeKind::kDir) return Error(ENOTDIR, "not a directory");
    stack.push_back(static_cast<const Dir*>(n));
    ++i;
  }
  return const_cast<Dir*>(stack.back());
}

Result<NodeInfo> Tree::stat(std::string_view path) const {
  CoreLock lk(mu_);
  Node* n = TRY(resolve(path, Follow::kNo));
  switch (n->kind()) {
    case NodeKind::kDir: return NodeInfo{NodeKind::kDir, 0755, 0};
    case NodeKind::kLink: return NodeInfo{NodeKind::kLink, 0777, 0};  // sysfs links stat as 0 bytes
    case NodeKind::kFile: {
      const Attribute& a = static_cast<File*>(n)->attr();
      return NodeInfo{NodeKind::kFile, a.mode, a.size};
    }
  }
  return Error(EIO);
}

Result<std::vector<DirEntry>> Tree::list(std::string_view path) const {
  CoreLock lk(mu_);
  Node* n = TRY(resolve(path, Follow::kYes));
  if (n->kind() != NodeKind::kDir) return Error(ENOTDIR, "not a directory");
  std::vector<DirEntry> out;
  for (auto& [name, child] : static_cast<Dir*>(n)->children()) out.push_back({name, child->kind()});
  return out;
}

namespace {
// The node `n` as its parent holds it: kept alive across a callback that
// may release the tree lock.
std::shared_ptr<Node> hold(Node* n) {
  Dir* p = n->parent();
  if (!p) return nullptr;
  auto it = p->children().find(n->name());
  return it == p->children().end() ? nullptr : it->second;
}

// The lock of the device `n` belongs to: its nearest device directory's.
std::shared_ptr<DevLock> owner_lock(const Node* n) {
  for (const Dir* d = n->parent(); d; d = d->parent())
    if (d->devlock()) return d->devlock();
  return nullptr;
}
}  // namespace

Result<std::string> Tree::read(std::string_view path) const {
  CoreLock lk(mu_);
  Node* n = TRY(resolve(path, Follow::kYes));
  if (n->kind() == NodeKind::kDir) return Error(EISDIR, "is a directory");
  auto keep = hold(n);
  const Attribute& a = static_cast<File*>(n)->attr();
  if (!a.show || !(a.mode & 0444)) return Error(EACCES, "attribute is write-only");
  return a.show();
}

Result<void> Tree::write(std::string_view path, std::string_view data) const {
  TRY(write_at(path, 0, data));
  return ok();
}

Result<size_t> Tree::write_at(std::string_view path, uint64_t offset, std::string_view data) const {
  CoreLock lk(mu_);
  for (;;) {
    Node* n = TRY(resolve(path, Follow::kYes));
    if (n->kind() == NodeKind::kDir) return Error(EISDIR, "is a directory");
    const Attribute& a = static_cast<File*>(n)->attr();
    if ((!a.store && !a.write_at) || !(a.mode & 0222)) return Error(EACCES, "attribute is read-only");
    std::shared_ptr<DevLock> dl = owner_lock(n);
    if (dl && dev_busy(*dl)) {
      // Another thread binds, unbinds or removes this device: wait, then
      // look the path up again (the device may be gone).
      mu_.wait();
      continue;
    }
    auto keep = hold(n);
    if (dl) lock_dev(*dl);
    Result<size_t> r = data.size();
    if (a.write_at) {
      r = a.write_at(offset, data);
    } else if (auto s = a.store(data); !s) {
      r = s.error();
    }
    if (dl) unlock_dev(*dl);
    return r;
  }
}

bool Tree::dev_busy(const DevLock& l) const { return l.depth && l.owner != std::this_thread::get_id(); }

void Tree::lock_dev(DevLock& l) const {
  mu_.assert_held();
  while (dev_busy(l)) mu_.wait();
  l.owner = std::this_thread::get_id();
  ++l.depth;
}

bool Tree::try_lock_dev(DevLock& l) const {
  if (dev_busy(l)) return false;
  l.owner = std::this_thread::get_id();
  ++l.depth;
  return true;
}

void Tree::unlock_dev(DevLock& l) const {
  if (--l.depth == 0) {
    l.owner = std::thread::id();
    mu_.notify_all();
  }
}

Result<std::string> Tree::readlink(std::string_view path) const {
  CoreLock lk(mu_);
  Node* n = TRY(resolve(path, Follow::kNo));
  if (n->kind() != NodeKind::kLink) return Error(EINVAL, "not a link");
  return relative_path(n->parent()->path(), static_cast<Link*>(n)->target());
}

std::string Tree::relative_path(std::string_view from_dir, std::string_view to) {
  auto a = split(from_dir);
  auto b = split(to);
  size_t common = 0;
  while (common < a.size() && common < b.size() && a[common] == b[common]) ++common;
  std::string out;
  for (size_t i = common; i < a.size(); ++i) out += "../";
  for (size_t i = common; i < b.size(); ++i) {
    out += b[i];
    if (i + 1 < b.size()) out += '/';
  }
  if (out.empty()) out = ".";
  else if (out.back() == '/') out.pop_back();
  return out;
}

}  // namespace uvfio::driver
