// SPDX-License-Identifier: BSD-3-Clause
// The C API (include/uvfio/client.h) over the C++ client: opaque handles,
// negative errnos, nothing thrown across it.
#include "uvfio/client.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>

#include "client/client.h"

struct uvfio_client {
  std::unique_ptr<uvfio::client::Client> c;
};

namespace {

using uvfio::Error;

int neg(const Error& e) { return -(e.code > 0 ? e.code : EIO); }

// Runs `fn`, turning any exception into an errno (the library never throws).
template <class Fn>
auto guarded(Fn&& fn) noexcept -> decltype(fn()) {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  } catch (...) {
    return -EIO;
  }
}

}  // namespace

extern "C" {

const char* uvfio_client_version(void) { return "0.1"; }

int uvfio_connect(const char* socket_path, const struct uvfio_connect_opts* opts, uvfio_client** out) {
  if (!socket_path || !out) return -EINVAL;
  *out = nullptr;
  return guarded([&]() -> int {
    uvfio::client::ConnectOptions o;
    if (opts && opts->has_vf_token) {
      uvfio::vfio::Uuid u{};
      std::memcpy(u.data(), opts->vf_token, sizeof(opts->vf_token));
      o.vf_token = u;
    }
    auto r = uvfio::client::Client::connect(socket_path, o);
    if (!r) return neg(r.error());
    *out = new uvfio_client{std::move(*r)};
    return 0;
  });
}

void uvfio_close(uvfio_client* c) { delete c; }

int uvfio_get_info(uvfio_client* c, struct vfio_device_info* info) {
  if (!c || !info) return -EINVAL;
  return guarded([&]() -> int {
    auto r = c->c->get_info();
    if (!r) return neg(r.error());
    *info = *r;
    return 0;
  });
}

int uvfio_region_info(uvfio_client* c, uint32_t index, struct vfio_region_info* info, int* mmap_fd) {
  if (!c || !info) return -EINVAL;
  if (mmap_fd) *mmap_fd = -1;
  return guarded([&]() -> int {
    auto r = c->c->get_region_info(index);
    if (!r) return neg(r.error());
    *info = r->info;
    if (mmap_fd && r->mmap_fd) *mmap_fd = r->mmap_fd.release();
    return 0;
  });
}

ssize_t uvfio_region_read(uvfio_client* c, uint32_t index, uint64_t offset, void* buf, size_t len) {
  if (!c || (!buf && len)) return -EINVAL;
  return guarded([&]() -> ssize_t {
    auto r = c->c->region_read(index, offset, std::span<uint8_t>(static_cast<uint8_t*>(buf), len));
    if (!r) return neg(r.error());
    return static_cast<ssize_t>(*r);
  });
}

int uvfio_region_write(uvfio_client* c, uint32_t index, uint64_t offset, const void* buf, size_t len) {
  if (!c || (!buf && len)) return -EINVAL;
  return guarded([&]() -> int {
    auto r = c->c->region_write(index, offset, std::span<const uint8_t>(static_cast<const uint8_t*>(buf), len));
    return r ? 0 : neg(r.error());
  });
}

int uvfio_region_mmap(uvfio_client* c, uint32_t index, void** addr, size_t* len) {
  if (!c || !addr || !len) return -EINVAL;
  return guarded([&]() -> int {
    auto r = c->c->get_region_info(index);
    if (!r) return neg(r.error());
    if (!r->mmap_fd || !r->info.size) return -EINVAL;
    void* p = mmap(nullptr, r->info.size, PROT_READ | PROT_WRITE, MAP_SHARED, r->mmap_fd.get(), 0);
    if (p == MAP_FAILED) return -errno;
    *addr = p;
    *len = r->info.size;
    return 0;
  });
}

int uvfio_dma_map(uvfio_client* c, uint64_t iova, uint64_t size, int fd, uint64_t fd_offset, int writable) {
  if (!c || fd < 0) return -EINVAL;
  return guarded([&]() -> int {
    auto r = c->c->dma_map(iova, size, fd, fd_offset, writable != 0);
    return r ? 0 : neg(r.error());
  });
}

int uvfio_dma_unmap(uvfio_client* c, uint64_t iova, uint64_t size) {
  if (!c) return -EINVAL;
  return guarded([&]() -> int {
    auto r = c->c->dma_unmap(iova, size);
    return r ? 0 : neg(r.error());
  });
}

int uvfio_irq_info(uvfio_client* c, uint32_t index, struct vfio_irq_info* info) {
  if (!c || !info) return -EINVAL;
  return guarded([&]() -> int {
    auto r = c->c->get_irq_info(index);
    if (!r) return neg(r.error());
    *info = *r;
    return 0;
  });
}

int uvfio_set_irq_eventfds(uvfio_client* c, uint32_t index, uint32_t start, uint32_t count, const int* fds) {
  if (!c || (count && !fds)) return -EINVAL;
  return guarded([&]() -> int {
    auto r = count ? c->c->set_irqs(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, index, start, count,
                                     std::span<const int>(fds, count))
                   : c->c->set_irqs(VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, index, 0, 0);
    return r ? 0 : neg(r.error());
  });
}

int uvfio_reset(uvfio_client* c) {
  if (!c) return -EINVAL;
  return guarded([&]() -> int {
    auto r = c->c->reset();
    return r ? 0 : neg(r.error());
  });
}

int uvfio_device_feature(uvfio_client* c, uint32_t flags, const void* in, size_t in_len, void* out, size_t out_cap,
                         size_t* out_len) {
  if (!c || (!in && in_len) || (!out && out_cap)) return -EINVAL;
  if (out_len) *out_len = 0;
  return guarded([&]() -> int {
    auto r = c->c->device_feature(flags, std::span<const uint8_t>(static_cast<const uint8_t*>(in), in_len), out_cap);
    if (!r) return neg(r.error());
    size_t n = std::min(out_cap, r->size());
    if (n) std::memcpy(out, r->data(), n);
    if (out_len) *out_len = n;
    return 0;
  });
}

int uvfio_mig_get_state(uvfio_client* c, uint32_t* state) {
  if (!c || !state) return -EINVAL;
  return guarded([&]() -> int {
    auto r = c->c->get_mig_state();
    if (!r) return neg(r.error());
    *state = static_cast<uint32_t>(*r);
    return 0;
  });
}

int uvfio_mig_set_state(uvfio_client* c, uint32_t state) {
  if (!c) return -EINVAL;
  return guarded([&]() -> int {
    auto r = c->c->set_mig_state(static_cast<uvfio::vfio::MigState>(state));
    return r ? 0 : neg(r.error());
  });
}

ssize_t uvfio_mig_data_read(uvfio_client* c, void* buf, size_t len) {
  if (!c || (!buf && len)) return -EINVAL;
  return guarded([&]() -> ssize_t {
    auto r = c->c->mig_data_read(std::span<uint8_t>(static_cast<uint8_t*>(buf), len));
    if (!r) return neg(r.error());
    return static_cast<ssize_t>(*r);
  });
}

int uvfio_mig_data_write(uvfio_client* c, const void* buf, size_t len) {
  if (!c || (!buf && len)) return -EINVAL;
  return guarded([&]() -> int {
    auto r = c->c->mig_data_write(std::span<const uint8_t>(static_cast<const uint8_t*>(buf), len));
    return r ? 0 : neg(r.error());
  });
}

}  // extern "C"
