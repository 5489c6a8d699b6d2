/* SPDX-License-Identifier: BSD-3-Clause */
/* Drives an edu device (QEMU's docs/specs/edu.rst) served by uvfiod from the
 * edu plugin, as a VMM would, through the uvfio client C API: the ID and
 * liveness registers, the factorial unit, a DMA round trip through its
 * buffer, an interrupt; then migrates it to a second uvfiod's edu (STOP_COPY
 * out of one, RESUMING into the other) and checks the state arrived.
 *
 *   edu_check SOURCE.sock [DESTINATION.sock]
 *
 * Prints one line per check ("...: match"); exits non-zero on the first
 * mismatch. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/pci_regs.h>
#include <linux/vfio.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <uvfio/client.h>

enum { ID = 0x00, LIVENESS = 0x04, FACTORIAL = 0x08, STATUS = 0x20, IRQ_STATUS = 0x24, IRQ_RAISE = 0x60,
       IRQ_ACK = 0x64, DMA_SRC = 0x80, DMA_DST = 0x88, DMA_COUNT = 0x90, DMA_CMD = 0x98 };
enum { BUFFER = 0x40000, GUEST = 1 << 20, IOVA = 0x100000 };
#define BAR0 VFIO_PCI_BAR0_REGION_INDEX
#define CONFIG VFIO_PCI_CONFIG_REGION_INDEX

static int failed;

static void check(const char* what, unsigned long long got, unsigned long long want) {
  printf("%s: %s (0x%llx, want 0x%llx)\n", what, got == want ? "match" : "MISMATCH", got, want);
  if (got != want) failed = 1;
}

static void die(const char* what, int err) {
  fprintf(stderr, "edu_check: %s: %s\n", what, strerror(err < 0 ? -err : err));
  exit(2);
}

static uint32_t rd32(uvfio_client* c, uint64_t off) {
  uint32_t v = 0;
  if (uvfio_region_read(c, BAR0, off, &v, 4) != 4) die("region read", EIO);
  return v;
}
static uint64_t rd64(uvfio_client* c, uint64_t off) {
  uint64_t v = 0;
  if (uvfio_region_read(c, BAR0, off, &v, 8) != 8) die("region read", EIO);
  return v;
}
static void wr32(uvfio_client* c, uint64_t off, uint32_t v) {
  int r = uvfio_region_write(c, BAR0, off, &v, 4);
  if (r) die("region write", r);
}
static void wr64(uvfio_client* c, uint64_t off, uint64_t v) {
  int r = uvfio_region_write(c, BAR0, off, &v, 8);
  if (r) die("region write", r);
}

/* Guest memory (a memfd) at IOVA, and bus mastering on. */
static unsigned char* give_memory(uvfio_client* c) {
  int fd = memfd_create("edu-guest", MFD_CLOEXEC);
  if (fd < 0 || ftruncate(fd, GUEST)) die("memfd", errno);
  unsigned char* m = mmap(NULL, GUEST, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) die("mmap", errno);
  int r = uvfio_dma_map(c, IOVA, GUEST, fd, 0, 1);
  if (r) die("dma map", r);
  close(fd);
  uint16_t cmd;
  if (uvfio_region_read(c, CONFIG, PCI_COMMAND, &cmd, 2) != 2) die("config read", EIO);
  cmd |= PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
  if ((r = uvfio_region_write(c, CONFIG, PCI_COMMAND, &cmd, 2))) die("config write", r);
  return m;
}

static void dma(uvfio_client* c, uint64_t src, uint64_t dst, uint64_t count, uint64_t cmd) {
  wr64(c, DMA_SRC, src);
  wr64(c, DMA_DST, dst);
  wr64(c, DMA_COUNT, count);
  wr64(c, DMA_CMD, cmd | 1);
  for (int i = 0; i < 5000 && (rd64(c, DMA_CMD) & 1); ++i) usleep(1000);
  if (rd64(c, DMA_CMD) & 1) die("DMA did not finish", ETIMEDOUT);
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: edu_check SOURCE.sock [DESTINATION.sock]\n");
    return 2;
  }
  uvfio_client* a;
  int r = uvfio_connect(argv[1], NULL, &a);
  if (r) die(argv[1], r);
  uint32_t ids;
  if (uvfio_region_read(a, CONFIG, 0, &ids, 4) != 4) die("config read", EIO);
  check("vendor:device", ids, 0x11e81234);
  check("identification", rd32(a, ID), 0x010000ed);
  wr32(a, LIVENESS, 0x12345678);
  check("liveness", rd32(a, LIVENESS), (uint32_t)~0x12345678u);
  wr32(a, FACTORIAL, 10);
  check("factorial of 10", rd32(a, FACTORIAL), 3628800);
  check("a 2-byte access below 0x80 is ignored", (uvfio_region_read(a, BAR0, ID, &ids, 2), ids & 0xffff), 0xffff);

  /* DMA: a page of guest memory into the device's buffer and back. */
  unsigned char* m = give_memory(a);
  for (int i = 0; i < 4096; ++i) m[i] = (unsigned char)(i * 7 + 3);
  dma(a, IOVA, BUFFER, 4096, 0);
  dma(a, BUFFER, IOVA + 8192, 4096, 2);
  check("DMA round trip", memcmp(m, m + 8192, 4096) == 0, 1);

  /* An interrupt: INTx through an eventfd, raised and acknowledged. */
  int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if ((r = uvfio_set_irq_eventfds(a, VFIO_PCI_INTX_IRQ_INDEX, 0, 1, &efd))) die("set irqs", r);
  wr32(a, IRQ_RAISE, 0x42);
  struct pollfd p = {efd, POLLIN, 0};
  check("interrupt delivered", poll(&p, 1, 5000), 1);
  check("interrupt status", rd32(a, IRQ_STATUS), 0x42);
  wr32(a, IRQ_ACK, 0x42);
  check("interrupt acknowledged", rd32(a, IRQ_STATUS), 0);
  wr32(a, STATUS, 0x80);
  if (argc < 3) return failed;

  /* Migration: STOP_COPY out of the source, RESUMING into the destination. */
  uvfio_client* b;
  if ((r = uvfio_connect(argv[2], NULL, &b))) die(argv[2], r);
  if ((r = uvfio_mig_set_state(a, VFIO_DEVICE_STATE_STOP_COPY))) die("source STOP_COPY", r);
  if ((r = uvfio_mig_set_state(b, VFIO_DEVICE_STATE_RESUMING))) die("destination RESUMING", r);
  unsigned char buf[1024];
  size_t total = 0;
  for (;;) {
    ssize_t n = uvfio_mig_data_read(a, buf, sizeof(buf));
    if (n < 0) die("migration read", (int)n);
    if (n == 0) break;
    if ((r = uvfio_mig_data_write(b, buf, (size_t)n))) die("migration write", r);
    total += (size_t)n;
  }
  printf("migrated %zu bytes of device state\n", total);
  if ((r = uvfio_mig_set_state(b, VFIO_DEVICE_STATE_RUNNING))) die("destination RUNNING", r);
  check("liveness after migration", rd32(b, LIVENESS), (uint32_t)~0x12345678u);
  check("factorial after migration", rd32(b, FACTORIAL), 3628800);
  check("status after migration", rd32(b, STATUS), 0x80);
  unsigned char* mb = give_memory(b);
  dma(b, BUFFER, IOVA, 4096, 2);
  check("DMA buffer after migration", memcmp(m, mb, 4096) == 0, 1);
  wr32(b, FACTORIAL, 5);  /* status 0x80: an interrupt too, on the new side */
  check("factorial on the destination", rd32(b, FACTORIAL), 120);
  check("factorial interrupt on the destination", rd32(b, IRQ_STATUS), 1);
  uvfio_close(b);
  uvfio_close(a);
  return failed;
}
