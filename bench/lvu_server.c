// SPDX-License-Identifier: BSD-3-Clause
/* The libvfio-user side of the side-by-side (bench/libvfio-user.sh): a
 * server written on libvfio-user's public API that serves what the uvfio
 * benchmarks read, so the same plain C clients measure both.
 *
 *   lvu_server SOCK [-mem SIZE_MIB] [-spin]
 *
 * BAR0: 4 KiB of registers (a read returns the register file; writes are
 * taken), accessed through the region callback. BAR2: SIZE_MIB (default 16)
 * of memory in a memfd, mappable by the client (its fd is handed over with
 * the region's info) and read through the region callback by REGION_READ.
 * Migration (v2 callbacks): STOP_COPY streams BAR2 as it is, a plain copy
 * with no header, checksum or snapshot, so its speed is an upper bound for a
 * libvfio-user device's stream.
 *
 * Blocking: vfu_run_ctx sleeps in the socket read. With -spin the context is
 * non-blocking and the loop calls vfu_run_ctx without pause (busy-poll).
 *
 * Not built by CMake: bench/libvfio-user.sh compiles it against a
 * libvfio-user build tree given to it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <libvfio-user.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static uint8_t regs[4096];
static uint8_t* mem;
static size_t mem_size;
static size_t mig_cursor;

/* A region access within [0, size) of `base`. */
static ssize_t access_range(uint8_t* base, size_t size, char* buf, size_t count, loff_t off, bool is_write) {
  if (off < 0 || (size_t)off > size || count > size - (size_t)off) {
    errno = EINVAL;
    return -1;
  }
  if (is_write)
    memcpy(base + off, buf, count);
  else
    memcpy(buf, base + off, count);
  return (ssize_t)count;
}

static ssize_t access_regs(vfu_ctx_t* ctx, char* buf, size_t count, loff_t off, bool is_write) {
  (void)ctx;
  return access_range(regs, sizeof(regs), buf, count, off, is_write);
}

static ssize_t access_mem(vfu_ctx_t* ctx, char* buf, size_t count, loff_t off, bool is_write) {
  (void)ctx;
  return access_range(mem, mem_size, buf, count, off, is_write);
}

static int transition(vfu_ctx_t* ctx, vfu_migr_state_t state) {
  (void)ctx;
  if (state == VFU_MIGR_STATE_STOP_AND_COPY || state == VFU_MIGR_STATE_PRE_COPY) mig_cursor = 0;
  return 0;
}

static ssize_t read_data(vfu_ctx_t* ctx, void* buf, uint64_t count) {
  (void)ctx;
  size_t n = mem_size - mig_cursor;
  if (n > count) n = (size_t)count;
  memcpy(buf, mem + mig_cursor, n);
  mig_cursor += n;
  return (ssize_t)n;
}

static ssize_t write_data(vfu_ctx_t* ctx, void* buf, uint64_t count) {
  (void)ctx;
  size_t n = mem_size - mig_cursor;
  if (n > count) n = (size_t)count;
  memcpy(mem + mig_cursor, buf, n);
  mig_cursor += n;
  return (ssize_t)count;
}

static void fail(const char* what) {
  perror(what);
  exit(1);
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s SOCK [-mem SIZE_MIB] [-spin]\n", argv[0]);
    return 2;
  }
  int spin = 0;
  mem_size = 16u << 20;
  for (int i = 2; i < argc; ++i) {
    if (!strcmp(argv[i], "-spin"))
      spin = 1;
    else if (i + 1 < argc && !strcmp(argv[i], "-mem"))
      mem_size = (size_t)strtoull(argv[++i], NULL, 0) << 20;
  }
  for (size_t i = 0; i < sizeof(regs); ++i) regs[i] = (uint8_t)(i * 7 + 1);

  int mfd = memfd_create("lvu-bar2", MFD_CLOEXEC);
  if (mfd < 0 || ftruncate(mfd, (off_t)mem_size) != 0) fail("memfd");
  mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
  if (mem == MAP_FAILED) fail("mmap");

  vfu_ctx_t* ctx =
      vfu_create_ctx(VFU_TRANS_SOCK, argv[1], spin ? LIBVFIO_USER_FLAG_ATTACH_NB : 0, NULL, VFU_DEV_TYPE_PCI);
  if (!ctx) fail("vfu_create_ctx");
  if (vfu_pci_init(ctx, VFU_PCI_TYPE_EXPRESS, PCI_HEADER_TYPE_NORMAL, 0) != 0) fail("vfu_pci_init");
  vfu_pci_set_id(ctx, 0x15b3, 0x101e, 0x15b3, 0x0001);
  if (vfu_setup_region(ctx, VFU_PCI_DEV_BAR0_REGION_IDX, sizeof(regs), access_regs, VFU_REGION_FLAG_RW, NULL, 0,
                       -1, 0) != 0)
    fail("BAR0");
  struct iovec whole = {.iov_base = 0, .iov_len = mem_size};
  if (vfu_setup_region(ctx, VFU_PCI_DEV_BAR2_REGION_IDX, mem_size, access_mem,
                       VFU_REGION_FLAG_RW | VFU_REGION_FLAG_MEM, &whole, 1, mfd, 0) != 0)
    fail("BAR2");
  const vfu_migration_callbacks_t mig = {
      .version = VFU_MIGR_CALLBACKS_VERS, .transition = transition, .read_data = read_data, .write_data = write_data};
  if (vfu_setup_device_migration_callbacks(ctx, &mig) != 0) fail("migration");
  if (vfu_realize_ctx(ctx) != 0) fail("vfu_realize_ctx");

  for (;;) {
    while (vfu_attach_ctx(ctx) != 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK) fail("vfu_attach_ctx");
      usleep(1000);
    }
    for (;;) {
      int r = vfu_run_ctx(ctx);
      if (r >= 0) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) continue; /* -spin: nothing yet, poll again */
      if (errno == ENOTCONN) break;
      if (errno == EINTR) continue;
      fail("vfu_run_ctx");
    }
  }
}
