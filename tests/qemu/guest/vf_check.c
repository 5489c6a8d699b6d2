// SPDX-License-Identifier: BSD-3-Clause
// vf_check: runs inside a Linux guest under QEMU and drives every mlx5 VF
// (15b3:101e) it finds the way a guest driver would, written from the
// register map in docs/devices/mlx5-vf.md only (no uvfio code): BAR0
// registers at every width, the work queue with rings and buffers in guest
// physical memory (above the kernel's mem= limit, through /dev/mem), every
// opcode with its result checked, device memory through BAR2, and an MSI-X
// vector programmed in the table, whose delivery the guest kernel logs
// ("No irq handler for vector"). Prints one line per check:
//   VFCHECK <bdf> <check> PASS|FAIL [detail]
// and at the end "VFCHECK ALL PASS" or "VFCHECK ALL FAIL".
//
// Usage: vf_check PHYS_BASE VECTOR   (PHYS_BASE: free guest RAM, 16 MiB per VF)
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/klog.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

// docs/devices/mlx5-vf.md
enum {
  R_ID = 0x000, R_VERSION = 0x004, R_STATUS = 0x008, R_SCRATCH = 0x00c,
  R_SQ_BASE = 0x010, R_SQ_SIZE = 0x018, R_SQ_TAIL = 0x01c, R_SQ_HEAD = 0x020,
  R_CQ_BASE = 0x028, R_CQ_SIZE = 0x030, R_CQ_TAIL = 0x034, R_CQ_HEAD = 0x038,
  R_CTRL = 0x03c, R_IRQ_VECTOR = 0x040, R_IRQ_CTRL = 0x044,
  R_COUNT_DONE = 0x048, R_COUNT_ERR = 0x050, R_BYTES = 0x058,
  MSIX_TABLE = 0x2000,
};
enum { OP_COPY = 1, OP_TO_DEVICE = 2, OP_FROM_DEVICE = 3, OP_FILL = 4, OP_CRC32C = 5 };

struct desc {
  uint8_t opcode, flags;
  uint16_t rsvd;
  uint32_t length;
  uint64_t src, dst, cookie;
} __attribute__((packed));
struct compl {
  uint64_t cookie;
  uint32_t status, result;
} __attribute__((packed));

static int failures;
static const char* cur_bdf = "-";

static void report(const char* check, int ok, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
static void report(const char* check, int ok, const char* fmt, ...) {
  char detail[256] = "";
  if (fmt) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
  }
  printf("VFCHECK %s %s %s %s\n", cur_bdf, check, ok ? "PASS" : "FAIL", detail);
  fflush(stdout);
  if (!ok) ++failures;
}

// ---- MMIO ------------------------------------------------------------------
static volatile uint8_t* bar0;
static uint32_t rd32(uint32_t off) { return *(volatile uint32_t*)(bar0 + off); }
static uint64_t rd64(uint32_t off) { return *(volatile uint64_t*)(bar0 + off); }
static uint16_t rd16(uint32_t off) { return *(volatile uint16_t*)(bar0 + off); }
static uint8_t rd8(uint32_t off) { return *(volatile uint8_t*)(bar0 + off); }
static void wr32(uint32_t off, uint32_t v) { *(volatile uint32_t*)(bar0 + off) = v; }
static void wr64(uint32_t off, uint64_t v) { *(volatile uint64_t*)(bar0 + off) = v; }

// ---- CRC32C (Castagnoli, reflected 0x82f63b78), the guest's own ----------------
static uint32_t crc32c(const uint8_t* p, size_t n) {
  static uint32_t t[256];
  if (!t[1]) {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
      t[i] = c;
    }
  }
  uint32_t crc = ~0u;
  for (size_t i = 0; i < n; ++i) crc = t[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

// ---- sysfs -------------------------------------------------------------------
static int read_hex(const char* path, unsigned* v) {
  FILE* f = fopen(path, "r");
  if (!f) return -1;
  int n = fscanf(f, "%x", v);
  fclose(f);
  return n == 1 ? 0 : -1;
}

static int cfg_rw(const char* bdf, unsigned off, void* buf, size_t n, int write) {
  char p[256];
  snprintf(p, sizeof(p), "/sys/bus/pci/devices/%s/config", bdf);
  int fd = open(p, write ? O_WRONLY : O_RDONLY);
  if (fd < 0) return -1;
  ssize_t r = write ? pwrite(fd, buf, n, off) : pread(fd, buf, n, off);
  close(fd);
  return r == (ssize_t)n ? 0 : -1;
}

static unsigned find_cap(const char* bdf, uint8_t id) {
  uint8_t ptr = 0;
  if (cfg_rw(bdf, 0x34, &ptr, 1, 0)) return 0;
  for (int guard = 0; ptr >= 0x40 && guard < 48; ++guard) {
    uint8_t hdr[2];
    if (cfg_rw(bdf, ptr, hdr, 2, 0)) return 0;
    if (hdr[0] == id) return ptr;
    ptr = hdr[1] & 0xfc;
  }
  return 0;
}

static void* map_file(const char* path, size_t len, off_t off) {
  int fd = open(path, O_RDWR | O_SYNC);
  if (fd < 0) return NULL;
  void* p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off);
  close(fd);
  return p == MAP_FAILED ? NULL : p;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

// Count of "No irq handler for vector" lines for `vector` in the kernel log.
static int count_vector_logs(unsigned vector) {
  int size = klogctl(10 /* SYSLOG_ACTION_SIZE_BUFFER */, NULL, 0);
  if (size <= 0) return -1;
  char* buf = malloc((size_t)size + 1);
  int n = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, buf, size);
  if (n < 0) {
    free(buf);
    return -1;
  }
  buf[n] = 0;
  char needle[32];
  snprintf(needle, sizeof(needle), ".%u No irq handler for vector", vector);
  int count = 0;
  for (char* p = buf; (p = strstr(p, needle)); p += strlen(needle)) ++count;
  free(buf);
  return count;
}

// ---- one VF ---------------------------------------------------------------------
static void check_vf(const char* bdf, uint64_t phys, unsigned vector) {
  cur_bdf = bdf;
  char p[256];
  // Memory decode and bus mastering, as a driver's pci_enable_device/set_master.
  uint16_t cmd = 0;
  cfg_rw(bdf, 4, &cmd, 2, 0);
  cmd |= 0x6;
  report("command", cfg_rw(bdf, 4, &cmd, 2, 1) == 0, "COMMAND=%#x", cmd);

  snprintf(p, sizeof(p), "/sys/bus/pci/devices/%s/resource0", bdf);
  bar0 = map_file(p, 64 << 10, 0);
  report("bar0-mmap", bar0 != NULL, "%s", bar0 ? "" : strerror(errno));
  if (!bar0) return;
  snprintf(p, sizeof(p), "/sys/bus/pci/devices/%s/resource2", bdf);
  size_t dm_size = 1 << 20;  // map the first MiB of device memory
  volatile uint8_t* dm = map_file(p, dm_size, 0);
  report("bar2-mmap", dm != NULL, "%s", dm ? "" : strerror(errno));

  // -- registers, at every width
  report("id", rd32(R_ID) == 0x6d6c7835, "ID=%#x", rd32(R_ID));
  report("version", rd32(R_VERSION) == 1, "VERSION=%u", rd32(R_VERSION));
  report("status-ready", (rd32(R_STATUS) & 1) != 0, "STATUS=%#x", rd32(R_STATUS));
  report("id-narrow", rd16(R_ID) == 0x7835 && rd16(R_ID + 2) == 0x6d6c && rd8(R_ID + 3) == 0x6d, "%#x %#x %#x",
         rd16(R_ID), rd16(R_ID + 2), rd8(R_ID + 3));
  wr32(R_SCRATCH, 0xdeadbeef);
  report("scratch", rd32(R_SCRATCH) == 0xdeadbeef, "SCRATCH=%#x", rd32(R_SCRATCH));
  wr32(R_SQ_BASE, 0x89abcdef);
  wr32(R_SQ_BASE + 4, 0x01234567);
  report("sq-base-halves", rd64(R_SQ_BASE) == 0x0123456789abcdefull && rd32(R_SQ_BASE + 4) == 0x01234567 &&
                               rd32(R_SQ_BASE) == 0x89abcdef,
         "64-bit %#" PRIx64 " high %#x low %#x", rd64(R_SQ_BASE), rd32(R_SQ_BASE + 4), rd32(R_SQ_BASE));
  wr64(R_CQ_BASE, 0xfedcba9876543210ull);
  report("cq-base-64", rd32(R_CQ_BASE + 4) == 0xfedcba98 && rd32(R_CQ_BASE) == 0x76543210 &&
                           rd64(R_CQ_BASE) == 0xfedcba9876543210ull,
         "high %#x low %#x", rd32(R_CQ_BASE + 4), rd32(R_CQ_BASE));
  uint64_t done0 = rd64(R_COUNT_DONE), bytes0 = rd64(R_BYTES);

  // -- rings and buffers in guest RAM the kernel does not use
  int memfd = open("/dev/mem", O_RDWR | O_SYNC);
  volatile uint8_t* ram = memfd < 0 ? NULL : mmap(NULL, 16 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, (off_t)phys);
  if (ram == MAP_FAILED) ram = NULL;
  report("guest-ram", ram != NULL, "/dev/mem at %#" PRIx64 "%s%s", phys, ram ? "" : ": ", ram ? "" : strerror(errno));
  if (!ram) return;
  const uint64_t SQ = 0x0, CQ = 0x1000, A = 0x10000, B = 0x20000, C = 0x30000, D = 0x40000;
  const uint32_t LEN = 8192, NSQ = 64, DEVOFF = 0x8000;
  memset((void*)ram, 0, 0x50000);
  for (uint32_t i = 0; i < LEN; ++i) ram[A + i] = (uint8_t)(i * 7 + 3);

  wr32(R_CTRL, 0);
  wr64(R_SQ_BASE, phys + SQ);
  wr64(R_CQ_BASE, phys + CQ);
  wr32(R_SQ_SIZE, NSQ);
  wr32(R_CQ_SIZE, NSQ);

  // -- MSI-X: entry 0 -> this CPU's local APIC, `vector`; then enable
  unsigned msix = find_cap(bdf, 0x11);
  report("msix-cap", msix != 0, "at %#x", msix);
  wr32(MSIX_TABLE + 0, 0xfee00000);
  wr32(MSIX_TABLE + 4, 0);
  wr32(MSIX_TABLE + 8, vector);
  wr32(MSIX_TABLE + 12, 0);  // unmasked
  if (msix) {
    uint16_t ctl = 0;
    cfg_rw(bdf, msix + 2, &ctl, 2, 0);
    ctl = (uint16_t)((ctl | 0x8000) & ~0x4000);  // enable, function mask off
    cfg_rw(bdf, msix + 2, &ctl, 2, 1);
  }
  wr32(R_IRQ_VECTOR, 0);
  wr32(R_IRQ_CTRL, 1);
  int logs_before = count_vector_logs(vector);

  wr32(R_CTRL, 1);
  report("queue-on", (rd32(R_STATUS) & 2) && !(rd32(R_STATUS) & 4), "STATUS=%#x", rd32(R_STATUS));

  // -- one of each opcode
  struct desc d[5] = {
      {OP_FILL, 0, 0, LEN, 0x5a, phys + B, 0x1001},
      {OP_COPY, 0, 0, LEN, phys + A, phys + C, 0x1002},
      {OP_TO_DEVICE, 0, 0, LEN, phys + A, DEVOFF, 0x1003},
      {OP_FROM_DEVICE, 0, 0, LEN, DEVOFF, phys + D, 0x1004},
      {OP_CRC32C, 0, 0, LEN, phys + A, 0, 0x1005},
  };
  for (int i = 0; i < 5; ++i) memcpy((void*)(ram + SQ + i * sizeof(struct desc)), &d[i], sizeof(d[i]));
  __sync_synchronize();
  wr32(R_SQ_TAIL, 5);
  double t0 = now();
  while (rd32(R_CQ_TAIL) < 5 && now() - t0 < 10) usleep(1000);
  report("completions", rd32(R_CQ_TAIL) == 5 && rd32(R_SQ_HEAD) == 5, "CQ_TAIL=%u SQ_HEAD=%u STATUS=%#x",
         rd32(R_CQ_TAIL), rd32(R_SQ_HEAD), rd32(R_STATUS));
  struct compl c[5];
  memcpy(c, (void*)(ram + CQ), sizeof(c));
  int order = 1;
  for (int i = 0; i < 5; ++i) order &= c[i].cookie == d[i].cookie && c[i].status == 0;
  report("completion-order", order, "cookies %#" PRIx64 "..%#" PRIx64 " status %u %u %u %u %u", c[0].cookie,
         c[4].cookie, c[0].status, c[1].status, c[2].status, c[3].status, c[4].status);
  wr32(R_CQ_HEAD, 5);

  int fill = 1, copy = 1, todev = 1, fromdev = 1;
  for (uint32_t i = 0; i < LEN; ++i) {
    fill &= ram[B + i] == 0x5a;
    copy &= ram[C + i] == ram[A + i];
    if (dm) todev &= dm[DEVOFF + i] == ram[A + i];
    fromdev &= ram[D + i] == ram[A + i];
  }
  report("fill", fill, NULL);
  report("copy", copy, NULL);
  report("to-device", dm && todev, "device memory through BAR2");
  report("from-device", fromdev, NULL);
  uint8_t local[8192];
  memcpy(local, (void*)(ram + A), LEN);
  uint32_t want = crc32c(local, LEN);
  report("crc32c", c[4].result == want, "device %#x guest %#x", c[4].result, want);

  // -- counters, 64-bit and as halves
  uint64_t done = rd64(R_COUNT_DONE), bytes = rd64(R_BYTES);
  report("count-done", done - done0 == 5 && (uint32_t)done == rd32(R_COUNT_DONE) && (uint32_t)(done >> 32) == rd32(R_COUNT_DONE + 4),
         "COUNT_DONE %" PRIu64 " (was %" PRIu64 ")", done, done0);
  report("bytes", bytes - bytes0 == 5ull * LEN && (uint32_t)(bytes >> 32) == rd32(R_BYTES + 4), "BYTES %" PRIu64, bytes);
  report("count-err", rd64(R_COUNT_ERR) == 0, "COUNT_ERR %" PRIu64, rd64(R_COUNT_ERR));

  // -- the MSI-X vector reached this CPU
  int logs = logs_before;
  t0 = now();
  while (logs <= logs_before && now() - t0 < 5) {
    usleep(10000);
    logs = count_vector_logs(vector);
  }
  report("msix-delivered", logs > logs_before, "vector %u logged %d time(s), %d before", vector, logs, logs_before);

  wr32(R_CTRL, 0);
  wr32(R_IRQ_CTRL, 0);
  munmap((void*)ram, 16 << 20);
  close(memfd);
  munmap((void*)bar0, 64 << 10);
  if (dm) munmap((void*)dm, dm_size);
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s PHYS_BASE VECTOR\n", argv[0]);
    return 2;
  }
  uint64_t phys = strtoull(argv[1], NULL, 0);
  unsigned vector = (unsigned)strtoul(argv[2], NULL, 0);
  DIR* dir = opendir("/sys/bus/pci/devices");
  if (!dir) return 2;
  char* bdfs[16];
  int n = 0;
  struct dirent* e;
  while ((e = readdir(dir)) && n < 16) {
    if (e->d_name[0] == '.') continue;
    char p[300];
    unsigned ven = 0, dev = 0;
    snprintf(p, sizeof(p), "/sys/bus/pci/devices/%s/vendor", e->d_name);
    if (read_hex(p, &ven)) continue;
    snprintf(p, sizeof(p), "/sys/bus/pci/devices/%s/device", e->d_name);
    if (read_hex(p, &dev)) continue;
    if (ven == 0x15b3 && dev == 0x101e) bdfs[n++] = strdup(e->d_name);
  }
  closedir(dir);
  // Sorted, so the output is stable.
  for (int i = 0; i < n; ++i)
    for (int j = i + 1; j < n; ++j)
      if (strcmp(bdfs[j], bdfs[i]) < 0) {
        char* t = bdfs[i];
        bdfs[i] = bdfs[j];
        bdfs[j] = t;
      }
  printf("VFCHECK - found %s %d mlx5 VF(s)\n", n ? "PASS" : "FAIL", n);
  for (int i = 0; i < n; ++i) check_vf(bdfs[i], phys + (uint64_t)i * (16 << 20), vector);
  printf("VFCHECK ALL %s %d failure(s)\n", failures || n == 0 ? "FAIL" : "PASS", failures);
  fflush(stdout);
  return failures ? 1 : 0;
}
