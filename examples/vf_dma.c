// SPDX-License-Identifier: BSD-3-Clause
/* Example: drive an mlx5 VF served by uvfiod through the uvfio client C API.
 *
 * Connects to the VF's socket, prints its identity from config space, gives
 * it 1 MiB of guest memory (a memfd), runs one CRC32C descriptor over a
 * buffer the program filled, and prints the device's result next to the
 * one computed here. The VF's programming interface is in
 * docs/devices/mlx5-vf.md (registers in BAR0, 32-byte descriptors, 16-byte
 * completions).
 *
 *   cc vf_dma.c $(pkg-config --cflags --libs uvfio-client) -o vf_dma
 *   ./vf_dma /run/uvfio/vfio-user/0000:08:00.0.sock
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/pci_regs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <uvfio/client.h>

enum { REG_ID = 0x000, REG_STATUS = 0x008, REG_SQ_BASE = 0x010, REG_SQ_SIZE = 0x018, REG_SQ_TAIL = 0x01c,
       REG_CQ_BASE = 0x028, REG_CQ_SIZE = 0x030, REG_CQ_TAIL = 0x034, REG_CTRL = 0x03c };
enum { OP_CRC32C = 5 };
enum { GUEST = 1 << 20, SQ = 0x0000, CQ = 0x1000, DATA = 0x10000, DATA_LEN = 4096 };

struct __attribute__((packed)) desc {
  uint8_t opcode, flags;
  uint16_t rsvd;
  uint32_t length;
  uint64_t src, dst, cookie;
};
struct __attribute__((packed)) completion {
  uint64_t cookie;
  uint32_t status, result;
};

static int check(int r, const char* what) {
  if (r < 0) {
    fprintf(stderr, "%s: %s\n", what, strerror(-r));
    exit(1);
  }
  return r;
}

static void wr(uvfio_client* c, uint32_t reg, uint64_t v, size_t width) {
  check(uvfio_region_write(c, VFIO_PCI_BAR0_REGION_INDEX, reg, &v, width), "BAR0 write");
}
static uint32_t rd32(uvfio_client* c, uint32_t reg) {
  uint32_t v = 0;
  check((int)uvfio_region_read(c, VFIO_PCI_BAR0_REGION_INDEX, reg, &v, 4), "BAR0 read");
  return v;
}

/* CRC32C (Castagnoli), bitwise: the reference for the device's result. */
static uint32_t crc32c(const uint8_t* p, size_t n) {
  uint32_t crc = ~0u;
  for (size_t i = 0; i < n; ++i) {
    crc ^= p[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1)));
  }
  return ~crc;
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s VF_SOCKET\n", argv[0]);
    return 2;
  }
  uvfio_client* c = NULL;
  check(uvfio_connect(argv[1], NULL, &c), "connect");
  printf("uvfio client %s\n", uvfio_client_version());
  /* A VMM resets the device before it uses it: the queue state of a
   * previous user is gone. */
  check(uvfio_reset(c), "reset");

  uint8_t cfg[64];
  check((int)uvfio_region_read(c, VFIO_PCI_CONFIG_REGION_INDEX, 0, cfg, sizeof(cfg)), "config read");
  printf("config: vendor %02x%02x device %02x%02x class %02x%02x%02x\n", cfg[1], cfg[0], cfg[3], cfg[2], cfg[11],
         cfg[10], cfg[9]);
  printf("BAR0 ID register: %#x\n", rd32(c, REG_ID));

  /* Guest memory: a memfd the device reaches through its IOMMU at IOVA 0. */
  int mem = memfd_create("guest", MFD_CLOEXEC);
  if (mem < 0 || ftruncate(mem, GUEST) != 0) return 1;
  uint8_t* guest = mmap(NULL, GUEST, PROT_READ | PROT_WRITE, MAP_SHARED, mem, 0);
  if (guest == MAP_FAILED) return 1;
  check(uvfio_dma_map(c, 0, GUEST, mem, 0, 1), "DMA map");
  for (int i = 0; i < DATA_LEN; ++i) guest[DATA + i] = (uint8_t)(i * 7 + 1);

  /* Bus master on, then the queue: 16 descriptors, 16 completions. */
  uint16_t cmd = 0;
  check((int)uvfio_region_read(c, VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, &cmd, 2), "command read");
  cmd |= PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
  check(uvfio_region_write(c, VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, &cmd, 2), "command write");
  wr(c, REG_SQ_BASE, SQ, 8);
  wr(c, REG_SQ_SIZE, 16, 4);
  wr(c, REG_CQ_BASE, CQ, 8);
  wr(c, REG_CQ_SIZE, 16, 4);
  wr(c, REG_CTRL, 1, 4);

  struct desc d = {OP_CRC32C, 0, 0, DATA_LEN, DATA, 0, 0xc0ffee};
  memcpy(guest + SQ, &d, sizeof(d));
  wr(c, REG_SQ_TAIL, 1, 4);
  for (int i = 0; i < 5000 && rd32(c, REG_CQ_TAIL) < 1; ++i) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  struct completion done;
  memcpy(&done, guest + CQ, sizeof(done));
  uint32_t expect = crc32c(guest + DATA, DATA_LEN);
  printf("descriptor %#llx: status %u, device CRC32C %#010x, computed here %#010x: %s\n",
         (unsigned long long)done.cookie, done.status, done.result, expect,
         done.cookie == 0xc0ffee && done.status == 0 && done.result == expect ? "match" : "MISMATCH");
  int ok = done.cookie == 0xc0ffee && done.status == 0 && done.result == expect;

  check(uvfio_dma_unmap(c, 0, GUEST), "DMA unmap");
  uvfio_close(c);
  munmap(guest, GUEST);
  close(mem);
  return ok ? 0 : 1;
}
