/* SPDX-License-Identifier: BSD-3-Clause */
/* edu_guest: runs inside a Linux guest and drives every edu device
 * (1234:11e8) it finds, from QEMU's docs/specs/edu.rst alone, as a
 * userspace driver would: BAR0 through sysfs resource0, Memory Space and Bus
 * Master through sysfs config, a DMA round trip between guest RAM (the
 * physical pages at PHYS, outside the kernel's mem= limit, through /dev/mem)
 * and the device's buffer. One line per check:
 *   EDUCHECK <bdf> <check> PASS|FAIL [detail]
 * and "EDUCHECK ALL PASS" or "EDUCHECK ALL FAIL" at the end.
 *
 *   edu_guest PHYS   (the device's dma_mask must reach PHYS + 64 KiB) */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

enum { ID = 0x00, LIVENESS = 0x04, FACTORIAL = 0x08, STATUS = 0x20, IRQ_STATUS = 0x24,
       DMA_SRC = 0x80, DMA_DST = 0x88, DMA_COUNT = 0x90, DMA_CMD = 0x98, BUFFER = 0x40000 };

static int failures;
static const char* cur = "-";
static volatile uint8_t* bar0;

static void report(const char* check, int ok, const char* detail) {
  printf("EDUCHECK %s %s %s %s\n", cur, check, ok ? "PASS" : "FAIL", detail ? detail : "");
  if (!ok) ++failures;
}

static uint32_t rd32(unsigned off) { return *(volatile uint32_t*)(bar0 + off); }
static void wr32(unsigned off, uint32_t v) { *(volatile uint32_t*)(bar0 + off) = v; }
static uint64_t rd64(unsigned off) { return *(volatile uint64_t*)(bar0 + off); }
static void wr64(unsigned off, uint64_t v) { *(volatile uint64_t*)(bar0 + off) = v; }

static int cfg_rw(const char* bdf, unsigned off, void* buf, size_t n, int write) {
  char p[320];
  snprintf(p, sizeof(p), "/sys/bus/pci/devices/%s/config", bdf);
  int fd = open(p, write ? O_WRONLY : O_RDONLY);
  if (fd < 0) return -1;
  ssize_t r = write ? pwrite(fd, buf, n, off) : pread(fd, buf, n, off);
  close(fd);
  return r == (ssize_t)n ? 0 : -1;
}

static int dma(uint64_t src, uint64_t dst, uint64_t count, uint64_t cmd) {
  wr64(DMA_SRC, src);
  wr64(DMA_DST, dst);
  wr64(DMA_COUNT, count);
  wr64(DMA_CMD, cmd | 1);
  for (int i = 0; i < 5000; ++i) {
    if (!(rd64(DMA_CMD) & 1)) return 0;
    usleep(1000);
  }
  return -1;
}

static void check(const char* bdf, uint64_t phys) {
  char p[320], d[128];
  cur = bdf;
  uint16_t cmd = 0;
  cfg_rw(bdf, 4, &cmd, 2, 0);
  cmd |= 0x6; /* Memory Space, Bus Master */
  snprintf(d, sizeof(d), "COMMAND=%#x", cmd);
  report("command", cfg_rw(bdf, 4, &cmd, 2, 1) == 0, d);
  snprintf(p, sizeof(p), "/sys/bus/pci/devices/%s/resource0", bdf);
  int fd = open(p, O_RDWR | O_SYNC);
  void* m = fd < 0 ? MAP_FAILED : mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  report("bar0-mmap", m != MAP_FAILED, NULL);
  if (m == MAP_FAILED) return;
  bar0 = m;

  snprintf(d, sizeof(d), "%#x", rd32(ID));
  report("identification", (rd32(ID) & 0xff) == 0xed, d);
  wr32(LIVENESS, 0xcafe0042);
  snprintf(d, sizeof(d), "%#x", rd32(LIVENESS));
  report("liveness", rd32(LIVENESS) == ~0xcafe0042u, d);
  wr32(FACTORIAL, 12);
  while (rd32(STATUS) & 1) usleep(100);
  snprintf(d, sizeof(d), "%u", rd32(FACTORIAL));
  report("factorial", rd32(FACTORIAL) == 479001600u, d);
  report("irq-status-clear", rd32(IRQ_STATUS) == 0, NULL);

  int mem = open("/dev/mem", O_RDWR | O_SYNC);
  volatile uint8_t* ram = mem < 0 ? MAP_FAILED : mmap(NULL, 64 << 10, PROT_READ | PROT_WRITE, MAP_SHARED, mem, (off_t)phys);
  report("guest-ram", ram != MAP_FAILED, NULL);
  if (ram == MAP_FAILED) return;
  for (int i = 0; i < 4096; ++i) {
    ram[i] = (uint8_t)(i * 13 + 1);
    ram[8192 + i] = 0;
  }
  report("dma-to-device", dma(phys, BUFFER, 4096, 0) == 0, NULL);
  report("dma-from-device", dma(BUFFER, phys + 8192, 4096, 2) == 0, NULL);
  int same = 1;
  for (int i = 0; i < 4096; ++i) same &= ram[i] == ram[8192 + i];
  report("dma-round-trip", same, NULL);
  /* Part of the buffer only, at an offset. */
  report("dma-partial", dma(BUFFER + 100, phys + 16384, 200, 2) == 0, NULL);
  same = 1;
  for (int i = 0; i < 200; ++i) same &= ram[16384 + i] == ram[100 + i];
  report("dma-partial-data", same, NULL);
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: edu_guest PHYS\n");
    return 2;
  }
  uint64_t phys = strtoull(argv[1], NULL, 0);
  DIR* dir = opendir("/sys/bus/pci/devices");
  if (!dir) return 2;
  struct dirent* e;
  int n = 0;
  while ((e = readdir(dir))) {
    if (e->d_name[0] == '.') continue;
    char p[320], buf[16] = "";
    snprintf(p, sizeof(p), "/sys/bus/pci/devices/%s/vendor", e->d_name);
    FILE* f = fopen(p, "r");
    if (!f) continue;
    int ok = fgets(buf, sizeof(buf), f) && strncmp(buf, "0x1234", 6) == 0;
    fclose(f);
    snprintf(p, sizeof(p), "/sys/bus/pci/devices/%s/device", e->d_name);
    if (!ok || !(f = fopen(p, "r"))) continue;
    ok = fgets(buf, sizeof(buf), f) && strncmp(buf, "0x11e8", 6) == 0;
    fclose(f);
    if (!ok) continue;
    check(e->d_name, phys + (uint64_t)n * (64 << 10));
    ++n;
  }
  closedir(dir);
  cur = "-";
  report("found", n > 0, NULL);
  printf("EDUCHECK ALL %s %d failure(s)\n", failures || !n ? "FAIL" : "PASS", failures);
  fflush(stdout);
  return failures ? 1 : 0;
}
