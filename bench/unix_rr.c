// SPDX-License-Identifier: BSD-3-Clause
/* The ceiling of a request/reply stream over AF_UNIX: a server process that
 * answers each 16-byte request with CHUNK bytes of plain memory (1 GiB in
 * all, not in cache), and a client that asks, reads the whole reply and asks
 * again — the shape of MIG_DATA_READ, with nothing to compute on either
 * side. Server on CPU 1, client on CPU 0. Printed against memcpy of the same
 * bytes in the same chunks, as bench/vu_migstream prints the stream.
 *
 *   unix_rr [CHUNK_KIB] [SNDBUF]      (defaults 1024, the system's)
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static void pin(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  sched_setaffinity(0, sizeof s, &s);
}

int main(int argc, char** argv) {
  size_t total = (size_t)1 << 30, chunk = (size_t)(argc > 1 ? atoi(argv[1]) : 1024) << 10;
  int sndbuf = argc > 2 ? atoi(argv[2]) : 0;
  if (chunk == 0 || chunk > total) return 2;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return perror("socketpair"), 1;
  if (sndbuf) setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  char* src = malloc(total);
  char* dst = malloc(chunk);
  if (!src || !dst) return 1;
  memset(src, 1, total);
  memset(dst, 0, chunk);
  pid_t p = fork();
  if (p == 0) {
    pin(0);
    close(sv[0]);
    char q[16] = {0};
    for (size_t got = 0; got < total;) {
      if (send(sv[1], q, sizeof q, 0) != sizeof q) _exit(1);
      ssize_t n = recv(sv[1], dst, chunk, MSG_WAITALL);
      if (n <= 0) _exit(1);
      got += (size_t)n;
    }
    _exit(0);
  }
  pin(1);
  close(sv[1]);
  double t0 = now();
  char q[16];
  for (size_t off = 0; off < total; off += chunk) {
    if (recv(sv[0], q, sizeof q, MSG_WAITALL) != sizeof q) return 1;
    for (size_t d = 0; d < chunk;) {
      ssize_t n = send(sv[0], src + off + d, chunk - d, 0);
      if (n <= 0) return perror("send"), 1;
      d += (size_t)n;
    }
  }
  int st;
  waitpid(p, &st, 0);
  double t1 = now();
  double t2 = now();
  for (size_t off = 0; off < total; off += chunk) memcpy(dst, src + off, chunk);
  __asm__ volatile("" ::"r"(dst) : "memory");
  double t3 = now();
  printf("reply %zu KiB: stream %.2f GB/s, memcpy %.2f GB/s, ratio %.3f\n", chunk >> 10, total / (t1 - t0) / 1e9,
         total / (t3 - t2) / 1e9, (t3 - t2) / (t1 - t0));
  return 0;
}
