// SPDX-License-Identifier: BSD-3-Clause
/* uvfio client: a vfio-user client library with a C API, for VMMs and tools
 * that drive a VFIO device served by uvfiod (or any vfio-user server).
 *
 * Handles are opaque. Every call returns 0 (or a byte count) on success and
 * a negative errno on failure: -EBUSY when the device already has a client,
 * -EACCES/-EINVAL when it refuses the VF token, the server's errno for a
 * refused request, -ECONNRESET when the server went away. No call throws,
 * aborts or keeps a pointer it was given beyond the call unless it says so.
 * Calls on one handle are serialized by the library; handles are
 * independent. Structures are the kernel's <linux/vfio.h> ones.
 *
 * Link with `pkg-config --libs uvfio-client` or, from CMake,
 * `find_package(uvfio)` and `uvfio::client`.
 */
#ifndef UVFIO_CLIENT_H
#define UVFIO_CLIENT_H

#include <linux/vfio.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define UVFIO_API __attribute__((visibility("default")))
#else
#define UVFIO_API
#endif

#define UVFIO_CLIENT_VERSION_MAJOR 0
#define UVFIO_CLIENT_VERSION_MINOR 1

typedef struct uvfio_client uvfio_client;

/* Connection options (zero-initialize, then set what you need). */
struct uvfio_connect_opts {
  /* A VF whose PF is owned by a vfio driver needs the PF's VF token
   * (uvfio's "vf_token" VERSION capability); has_vf_token = 0: none. */
  int has_vf_token;
  uint8_t vf_token[16];
};

/* Connects to a device's socket and negotiates (VERSION). */
UVFIO_API int uvfio_connect(const char* socket_path, const struct uvfio_connect_opts* opts, uvfio_client** out);
/* Disconnects and frees the handle (NULL is a no-op). Mappings made with
 * uvfio_region_mmap stay valid until munmap. */
UVFIO_API void uvfio_close(uvfio_client* c);
/* The library's version, "MAJOR.MINOR". */
UVFIO_API const char* uvfio_client_version(void);

/* DEVICE_GET_INFO. */
UVFIO_API int uvfio_get_info(uvfio_client* c, struct vfio_device_info* info);

/* DEVICE_GET_REGION_INFO: `info` as the kernel's struct (capabilities are
 * not returned here); `*mmap_fd` receives an fd to mmap the region with at
 * info->offset 0 (the caller closes it), or -1 when it cannot be mapped.
 * mmap_fd may be NULL. */
UVFIO_API int uvfio_region_info(uvfio_client* c, uint32_t index, struct vfio_region_info* info, int* mmap_fd);
/* REGION_READ / REGION_WRITE of `len` bytes at `offset` into the region.
 * Reads return the bytes read (a read may be cut at the region's end). */
UVFIO_API ssize_t uvfio_region_read(uvfio_client* c, uint32_t index, uint64_t offset, void* buf, size_t len);
UVFIO_API int uvfio_region_write(uvfio_client* c, uint32_t index, uint64_t offset, const void* buf, size_t len);
/* Maps a whole mmappable region (read/write, shared); *addr and *len
 * receive the mapping. */
UVFIO_API int uvfio_region_mmap(uvfio_client* c, uint32_t index, void** addr, size_t* len);

/* DMA_MAP of guest memory held in `fd` from `fd_offset` (a memfd, say),
 * visible to the device at `iova`; writable: the device may write it. */
UVFIO_API int uvfio_dma_map(uvfio_client* c, uint64_t iova, uint64_t size, int fd, uint64_t fd_offset, int writable);
UVFIO_API int uvfio_dma_unmap(uvfio_client* c, uint64_t iova, uint64_t size);

/* DEVICE_GET_IRQ_INFO. */
UVFIO_API int uvfio_irq_info(uvfio_client* c, uint32_t index, struct vfio_irq_info* info);
/* DEVICE_SET_IRQS, ACTION_TRIGGER with eventfds: fds[i] (or -1) for vectors
 * start..start+count-1; count 0 disables the index. */
UVFIO_API int uvfio_set_irq_eventfds(uvfio_client* c, uint32_t index, uint32_t start, uint32_t count, const int* fds);

/* DEVICE_RESET. */
UVFIO_API int uvfio_reset(uvfio_client* c);

/* DEVICE_FEATURE: `flags` as VFIO_DEVICE_FEATURE's (GET/SET/PROBE | the
 * feature); `in` is the feature's data; a GET's data is written to `out`
 * (up to out_cap bytes) and its length to *out_len (may be NULL). */
UVFIO_API int uvfio_device_feature(uvfio_client* c, uint32_t flags, const void* in, size_t in_len, void* out, size_t out_cap,
                         size_t* out_len);

/* Migration (v2): the state as enum vfio_device_mig_state; the data of a
 * saving state is read (0 = end of stream), of RESUMING written. */
UVFIO_API int uvfio_mig_get_state(uvfio_client* c, uint32_t* state);
UVFIO_API int uvfio_mig_set_state(uvfio_client* c, uint32_t state);
UVFIO_API ssize_t uvfio_mig_data_read(uvfio_client* c, void* buf, size_t len);
UVFIO_API int uvfio_mig_data_write(uvfio_client* c, const void* buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* UVFIO_CLIENT_H */
