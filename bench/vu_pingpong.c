// SPDX-License-Identifier: BSD-3-Clause
/* A minimal vfio-user client in plain C — not uvfio's client library — for
 * latency measurements, and the floor it is compared with: a raw AF_UNIX
 * ping-pong of the same message sizes, served by this same program.
 *
 *   vu_pingpong floor-server SOCK [-spin]
 *       Echo server: reads a 32-byte request (vfio-user header + region
 *       access), answers 32 + count bytes, as a REGION_READ reply is.
 *   vu_pingpong client FLOOR_SOCK VU_SOCK -region R -offset O -sizes 4,4096
 *               [-n ITERS] [-r ROUNDS] [-cpu C] [-spin]
 *       Interleaves rounds of ITERS round trips against the floor and
 *       against the vfio-user server, per size, and prints one line per
 *       size: medians, p99s, ops/s and the ratio to the floor.
 *       With -floor-vu, FLOOR_SOCK is a vfio-user server too (an A/B of
 *       two daemons, e.g. uvfiod --no-stats against uvfiod).
 *       With -pause FLOOR_PID,VU_PID the server not being measured is
 *       stopped (SIGSTOP) for the other's rounds: two busy-polling servers
 *       on one vCPU would otherwise take turns by time slice.
 *
 * One recv and one send per side per round trip; with -spin both use
 * MSG_DONTWAIT and spin instead of sleeping in the kernel.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

struct hdr {
  uint16_t msg_id, command;
  uint32_t msg_size, flags, error_no;
} __attribute__((packed));

struct access {
  uint64_t offset;
  uint32_t region, count;
} __attribute__((packed));

static int spin;
static int floor_epoll, floor_cmsg; /* floor variants: an epoll loop, a control buffer on recvmsg */

static void die(const char* what) {
  perror(what);
  exit(1);
}

static int unix_connect(const char* path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
  if (fd < 0 || connect(fd, (struct sockaddr*)&a, sizeof(a)) != 0) die(path);
  return fd;
}

/* Exactly n bytes, one recv per call when they are all there. */
static void recv_all(int fd, void* buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = recv(fd, (char*)buf + got, n - got, spin ? MSG_DONTWAIT : 0);
    if (r > 0) {
      got += (size_t)r;
    } else if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
      continue;
    } else {
      fprintf(stderr, "recv: %s\n", r == 0 ? "peer closed" : strerror(errno));
      exit(1);
    }
  }
}

static void send_all(int fd, const void* buf, size_t n) {
  size_t sent = 0;
  while (sent < n) {
    ssize_t r = send(fd, (const char*)buf + sent, n - sent, MSG_NOSIGNAL);
    if (r > 0) sent += (size_t)r;
    else if (r < 0 && errno == EINTR) continue;
    else die("send");
  }
}

__attribute__((noreturn)) static void floor_server(const char* path) {
  int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
  unlink(path);
  if (l < 0 || bind(l, (struct sockaddr*)&a, sizeof(a)) != 0 || listen(l, 4) != 0) die(path);
  static char buf[32 + (1 << 20)];
  for (;;) {
    int c = accept(l, NULL, NULL);
    if (c < 0) continue;
    int ep = -1;
    if (floor_epoll) {
      ep = epoll_create1(0);
      struct epoll_event ev = {.events = EPOLLIN};
      epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
    }
    for (;;) {
      char req[32];
      size_t got = 0;
      int gone = 0;
      while (got < sizeof(req)) {
        if (ep >= 0) {
          struct epoll_event ev;
          if (epoll_wait(ep, &ev, 1, spin ? 0 : (getenv("FLOOR_EPOLL_TIMEOUT") ? atoi(getenv("FLOOR_EPOLL_TIMEOUT")) : -1)) <= 0) continue;
        }
        char control[CMSG_SPACE(sizeof(int) * 64)];
        struct iovec iov = {req + got, sizeof(req) - got};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
        if (floor_cmsg) {
          mh.msg_control = control;
          mh.msg_controllen = sizeof(control);
        }
        ssize_t r = recvmsg(c, &mh, (spin || ep >= 0) ? MSG_DONTWAIT : 0);
        if (r > 0) got += (size_t)r;
        else if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        else {
          gone = 1;
          break;
        }
      }
      if (gone) break;
      struct access acc;
      memcpy(&acc, req + 16, sizeof(acc));
      size_t n = 32 + (acc.count > (1u << 20) ? (1u << 20) : acc.count);
      memcpy(buf, req, 32);
      struct hdr h;
      memcpy(&h, buf, sizeof(h));
      h.msg_size = (uint32_t)n;
      h.flags = 1; /* a reply */
      memcpy(buf, &h, sizeof(h));
      send_all(c, buf, n);
    }
    close(c);
    if (ep >= 0) close(ep);
  }
}

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void version(int fd) {
  const char* js = "{\"capabilities\":{\"max_msg_fds\":8,\"max_data_xfer_size\":1048576}}";
  char msg[256];
  size_t jl = strlen(js) + 1;
  struct hdr h = {1, 1, (uint32_t)(16 + 4 + jl), 0, 0};
  memcpy(msg, &h, 16);
  memset(msg + 16, 0, 4); /* major 0, minor 0 */
  memcpy(msg + 20, js, jl);
  send_all(fd, msg, h.msg_size);
  struct hdr r;
  recv_all(fd, &r, sizeof(r));
  char rest[4096];
  if (r.msg_size < 16 || r.msg_size - 16 > sizeof(rest)) {
    fprintf(stderr, "bad VERSION reply\n");
    exit(1);
  }
  recv_all(fd, rest, r.msg_size - 16);
  if (r.flags & 0x20) {
    fprintf(stderr, "VERSION refused: errno %u\n", r.error_no);
    exit(1);
  }
}

/* One round trip: a REGION_READ request, its reply read whole. */
static uint64_t round_trip(int fd, uint16_t id, uint32_t region, uint64_t off, uint32_t size, char* reply) {
  char req[32];
  struct hdr h = {id, 9 /* REGION_READ */, 32, 0, 0};
  struct access a = {off, region, size};
  memcpy(req, &h, 16);
  memcpy(req + 16, &a, 16);
  uint64_t t0 = now_ns();
  send_all(fd, req, sizeof(req));
  recv_all(fd, reply, 32 + size);
  uint64_t t1 = now_ns();
  struct hdr rh;
  memcpy(&rh, reply, 16);
  if (rh.msg_id != id || (rh.flags & 0x2f) != 1 || rh.msg_size != 32 + size) {
    fprintf(stderr, "bad reply: id %u flags %#x size %u errno %u\n", rh.msg_id, rh.flags, rh.msg_size, rh.error_no);
    exit(1);
  }
  return t1 - t0;
}

/* -pause: let only server `which` (0 floor, 1 vu) run; nothing without -pause. */
static pid_t pause_pid[2];
static void only(int which) {
  if (!pause_pid[0]) return;
  kill(pause_pid[which], SIGCONT);
  kill(pause_pid[!which], SIGSTOP);
}

static int cmp_u64(const void* a, const void* b) {
  uint64_t x = *(const uint64_t*)a, y = *(const uint64_t*)b;
  return x < y ? -1 : x > y;
}

static void stats(uint64_t* v, size_t n, double* median, double* p99, double* ops) {
  qsort(v, n, sizeof(*v), cmp_u64);
  *median = (double)v[n / 2];
  *p99 = (double)v[n * 99 / 100];
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += (double)v[i];
  *ops = 1e9 * (double)n / total;
}

int main(int argc, char** argv) {
  if (argc >= 3 && !strcmp(argv[1], "floor-server")) {
    for (int i = 3; i < argc; ++i) {
      if (!strcmp(argv[i], "-spin")) spin = 1;
      if (!strcmp(argv[i], "-epoll")) floor_epoll = 1;
      if (!strcmp(argv[i], "-cmsg")) floor_cmsg = 1;
    }
    floor_server(argv[2]);
  }
  if (argc < 4 || strcmp(argv[1], "client")) {
    fprintf(stderr, "usage: %s floor-server SOCK [-spin] | client FLOOR_SOCK VU_SOCK -region R -offset O "
                    "-sizes A,B [-n N] [-r R] [-cpu C] [-spin] [-floor-vu] [-pause FPID,VPID]\n", argv[0]);
    return 2;
  }
  const char *floor_path = argv[2], *vu_path = argv[3], *sizes = "4";
  uint32_t region = 0;
  uint64_t offset = 0;
  long iters = 20000, rounds = 5, cpu = -1;
  int no_version = 0; /* -floor2: the second socket is another floor variant */
  int floor_vu = 0;   /* -floor-vu: the first socket is a vfio-user server too (an A/B of two daemons) */
  for (int i = 4; i < argc; ++i) {
    if (!strcmp(argv[i], "-spin")) spin = 1;
    else if (i + 1 < argc && !strcmp(argv[i], "-region")) region = (uint32_t)strtoul(argv[++i], NULL, 0);
    else if (i + 1 < argc && !strcmp(argv[i], "-offset")) offset = strtoull(argv[++i], NULL, 0);
    else if (i + 1 < argc && !strcmp(argv[i], "-sizes")) sizes = argv[++i];
    else if (i + 1 < argc && !strcmp(argv[i], "-n")) iters = strtol(argv[++i], NULL, 0);
    else if (i + 1 < argc && !strcmp(argv[i], "-r")) rounds = strtol(argv[++i], NULL, 0);
    else if (i + 1 < argc && !strcmp(argv[i], "-cpu")) cpu = strtol(argv[++i], NULL, 0);
    else if (!strcmp(argv[i], "-floor2")) no_version = 1;
    else if (!strcmp(argv[i], "-floor-vu")) floor_vu = 1;
    else if (i + 1 < argc && !strcmp(argv[i], "-pause")) {
      long a = 0, b = 0;
      if (sscanf(argv[++i], "%ld,%ld", &a, &b) != 2 || a <= 0 || b <= 0) {
        fprintf(stderr, "-pause FLOOR_PID,VU_PID\n");
        return 2;
      }
      pause_pid[0] = (pid_t)a, pause_pid[1] = (pid_t)b;
    }
  }
  if (cpu >= 0) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET((int)cpu, &s);
    if (sched_setaffinity(0, sizeof(s), &s) != 0) die("sched_setaffinity");
  }
  int ffd = unix_connect(floor_path), vfd = unix_connect(vu_path);
  if (!no_version) version(vfd);
  if (floor_vu) version(ffd);
  static char reply[32 + (1 << 20)];
  printf("%-8s %12s %12s %12s %12s %12s %8s\n", "size", "floor_med", "vu_med", "floor_p99", "vu_p99", "vu_ops/s",
         "ratio");
  char list[256];
  snprintf(list, sizeof(list), "%s", sizes);
  for (char* tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
    uint32_t size = (uint32_t)strtoul(tok, NULL, 0);
    size_t n = (size_t)(iters * rounds);
    uint64_t* f = malloc(n * sizeof(uint64_t));
    uint64_t* v = malloc(n * sizeof(uint64_t));
    size_t k = 0;
    uint16_t id = 2;
    only(0);
    for (int w = 0; w < 1000; ++w) (void)round_trip(ffd, id++, region, offset, size, reply); /* warm both paths */
    only(1);
    for (int w = 0; w < 1000; ++w) (void)round_trip(vfd, id++, region, offset, size, reply);
    for (long r = 0; r < rounds; ++r) {
      only(0);
      for (long i = 0; i < iters; ++i) f[k + (size_t)i] = round_trip(ffd, id++, region, offset, size, reply);
      only(1);
      for (long i = 0; i < iters; ++i) v[k + (size_t)i] = round_trip(vfd, id++, region, offset, size, reply);
      k += (size_t)iters;
    }
    double fm, fp, fo, vm, vp, vo;
    stats(f, n, &fm, &fp, &fo);
    stats(v, n, &vm, &vp, &vo);
    printf("%-8u %12.0f %12.0f %12.0f %12.0f %12.0f %8.2f\n", size, fm, vm, fp, vp, vo, vm / fm);
    fflush(stdout);
    free(f);
    free(v);
  }
  if (pause_pid[0]) kill(pause_pid[0], SIGCONT);
  return 0;
}
