// SPDX-License-Identifier: BSD-3-Clause
/* The migration stream from outside: a minimal vfio-user client in plain C
 * (not uvfio's library; messages laid out from the vfio-user spec, feature
 * numbers from <linux/vfio.h>) against one device of a running server.
 *
 *   vu_migstream SOCK [ROUNDS] [READ_KIB]
 *
 * Fills the device's BAR2 (its device memory, mapped through the fd
 * DEVICE_GET_REGION_INFO hands over) with random bytes, then per round:
 * RUNNING -> STOP, STOP -> STOP_COPY (timed: the transition), MIG_DATA_READ
 * of READ_KIB (default 1024) until the end of the stream (timed: GB/s of
 * stream bytes), STOP, RUNNING; interleaved with a memcpy of the same number
 * of bytes out of the mapping in the same chunks (the baseline). Prints the
 * medians and the ratio stream/memcpy.
 */
#define _GNU_SOURCE
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

struct hdr {
  uint16_t msg_id, command;
  uint32_t msg_size, flags, error_no;
} __attribute__((packed));

enum { VERSION = 1, GET_REGION_INFO = 5, DEVICE_FEATURE = 16, MIG_DATA_READ = 17 };
enum { FLAG_ERROR = 1 << 5 };

static int fd;
static uint16_t next_id;
static uint8_t* rbuf;
static size_t rcap;

static void die(const char* what) {
  perror(what);
  exit(1);
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static void send_all(const void* p, size_t n) {
  while (n) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w <= 0) die("send");
    p = (const uint8_t*)p + w;
    n -= (size_t)w;
  }
}

static void recv_all(void* p, size_t n) {
  while (n) {
    ssize_t r = recv(fd, p, n, 0);
    if (r <= 0) die("recv");
    p = (uint8_t*)p + r;
    n -= (size_t)r;
  }
}

/* One request; the reply's payload in rbuf (its length returned). An fd
 * that comes with the reply goes to *rfd. */
static size_t call(uint16_t cmd, const void* payload, uint32_t len, int* rfd) {
  struct hdr h = {next_id++, cmd, (uint32_t)sizeof(h) + len, 0, 0};
  send_all(&h, sizeof(h));
  if (len) send_all(payload, len);
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } u;
  struct hdr r;
  struct iovec iov = {&r, sizeof(r)};
  struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf)};
  ssize_t got = recvmsg(fd, &m, MSG_CMSG_CLOEXEC | MSG_WAITALL);
  if (got != sizeof(r)) die("recvmsg");
  struct cmsghdr* c = CMSG_FIRSTHDR(&m);
  if (rfd) *rfd = -1;
  if (c && c->cmsg_type == SCM_RIGHTS && rfd) memcpy(rfd, CMSG_DATA(c), sizeof(int));
  if (r.flags & FLAG_ERROR) {
    fprintf(stderr, "vu_migstream: command %u failed: %s\n", cmd, strerror((int)r.error_no));
    exit(1);
  }
  size_t n = r.msg_size - sizeof(r);
  if (n > rcap) {
    rbuf = realloc(rbuf, n);
    rcap = n;
  }
  recv_all(rbuf, n);
  return n;
}

static void set_state(uint32_t state) {
  struct {
    uint32_t argsz, flags;
    struct vfio_device_feature_mig_state s;
  } __attribute__((packed)) f = {sizeof(f), VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, {state, -1}};
  call(DEVICE_FEATURE, &f, sizeof(f), NULL);
}

static int cmp(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

static double median(double* v, int n) {
  qsort(v, (size_t)n, sizeof(double), cmp);
  return v[n / 2];
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: vu_migstream SOCK [ROUNDS] [READ_KIB]\n");
    return 2;
  }
  int rounds = argc > 2 ? atoi(argv[2]) : 3;
  uint32_t chunk = (uint32_t)(argc > 3 ? atoi(argv[3]) : 1024) << 10;
  if (rounds < 1 || rounds > 100 || chunk == 0 || chunk > (1u << 20)) return 2;
  fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  snprintf(a.sun_path, sizeof(a.sun_path), "%s", argv[1]);
  if (fd < 0 || connect(fd, (struct sockaddr*)&a, sizeof(a))) die(argv[1]);
  const char js[] = "{\"capabilities\":{\"max_msg_fds\":8,\"max_data_xfer_size\":1048576}}";
  uint8_t v[4 + sizeof(js)] = {0, 0, 0, 0};
  memcpy(v + 4, js, sizeof(js));
  call(VERSION, v, sizeof(v), NULL);

  /* As QEMU does: when the info's capabilities do not fit (its argsz grew),
   * ask again with room for them; a server may hand the fd only then. */
  struct vfio_region_info ri = {.argsz = sizeof(ri), .index = VFIO_PCI_BAR2_REGION_INDEX};
  int mfd;
  call(GET_REGION_INFO, &ri, sizeof(ri), &mfd);
  memcpy(&ri, rbuf, sizeof(ri));
  if (mfd < 0 && ri.argsz > sizeof(ri) && ri.argsz <= 4096) {
    uint8_t big[4096] = {0};
    struct vfio_region_info again = {.argsz = ri.argsz, .index = VFIO_PCI_BAR2_REGION_INDEX};
    memcpy(big, &again, sizeof(again));
    call(GET_REGION_INFO, big, again.argsz, &mfd);
    memcpy(&ri, rbuf, sizeof(ri));
  }
  if (mfd < 0) {
    fprintf(stderr, "vu_migstream: BAR2 came without an fd to map\n");
    return 1;
  }
  uint8_t* dm = mmap(NULL, ri.size, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, (off_t)ri.offset);
  if (dm == MAP_FAILED) die("mmap BAR2");
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (uint64_t i = 0; i + 8 <= ri.size; i += 8) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    memcpy(dm + i, &x, 8);
  }
  uint8_t* out = malloc(chunk);
  double trans[100], stream[100], copy[100];
  uint64_t total = 0;
  for (int r = 0; r < rounds; ++r) {
    set_state(VFIO_DEVICE_STATE_STOP);
    double t0 = now();
    set_state(VFIO_DEVICE_STATE_STOP_COPY);
    double t1 = now();
    total = 0;
    struct {
      uint32_t argsz, size;
    } rq = {sizeof(rq) + chunk, chunk};
    for (;;) {
      size_t n = call(MIG_DATA_READ, &rq, sizeof(rq), NULL);
      if (n < 8) return 1;
      uint32_t got;
      memcpy(&got, rbuf + 4, 4);
      if (got == 0) break;
      total += got;
    }
    double t2 = now();
    set_state(VFIO_DEVICE_STATE_STOP);
    set_state(VFIO_DEVICE_STATE_RUNNING);
    double t3 = now();
    for (uint64_t done = 0; done < total; done += chunk) {
      uint64_t at = done % ri.size, n = total - done < chunk ? total - done : chunk;
      if (at + n > ri.size) at = 0;
      memcpy(out, dm + at, n);
    }
    double t4 = now();
    trans[r] = (t1 - t0) * 1e3;
    stream[r] = total / (t2 - t1) / 1e9;
    copy[r] = total / (t4 - t3) / 1e9;
  }
  double s = median(stream, rounds), c = median(copy, rounds);
  printf("device memory %llu MiB, stream %llu MiB, reads of %u KiB, %d rounds\n",
         (unsigned long long)(ri.size >> 20), (unsigned long long)(total >> 20), chunk >> 10, rounds);
  printf("STOP -> STOP_COPY: %.2f ms (median)\n", median(trans, rounds));
  printf("stream %.2f GB/s, memcpy %.2f GB/s, ratio %.3f\n", s, c, s / c);
  return 0;
}
