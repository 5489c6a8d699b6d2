#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# REGION_READ latency against a running uvfiod, measured by bench/vu_pingpong
# (a plain C client, not uvfio's library) against the raw AF_UNIX floor of
# the same sizes, interleaved. The daemon (one reactor), the floor server and
# the client are pinned: all to CPU 0 ("same vCPU"), or the servers to CPU 1
# and the client to CPU 0 ("across"). Blocking, then busy-poll on both sides.
#
# Last, the cost of the statistics counters: two daemons, one with --no-stats
# (the baseline) and one as shipped, interleaved by the same client, on the
# client's CPU and across.
#
# And the cost of uvfioctl trace: two daemons as shipped, interleaved; the
# second with a tracer attached (reading, output to /dev/null) — what
# tracing costs a device; with "ab" and OLD_UVFIOD, an older build against
# this one at 4 B, 4 KiB and 64 KiB; and, given OLD_UVFIOD (a uvfiod built without the
# trace hook), that binary against the shipped one with nobody tracing —
# what the hook costs when idle.
#
# With "poll": uvfiod --poll-us 0 against the default poll window, across
# vCPUs and on one.
#
# Usage: bench/latency.sh [BUILD_DIR] [ITERS] [ROUNDS] [stats|trace|ab|poll]   (only that A/B)
set -euo pipefail
build=${1:-build/release}
iters=${2:-20000}
rounds=${3:-5}
work=$(mktemp -d /tmp/uvfio-lat-XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
cp "$(dirname "$0")/one-vf.toml" "$work/topo.toml"
sock="$work/run/vfio-user/0000:00:10.0.sock"
run() {  # $1 = label, $2 = server cpu, $3 = client cpu, $4 = spin flag ("" or -spin)
  local busy=""
  [ -n "$4" ] && busy="--busy-poll"
  taskset -c "$2" "$build/uvfiod" --rundir "$work/run" --config "$work/topo.toml" --no-fuse --reactors 1 $busy \
    2>"$work/uvfiod.log" &
  local d=$!
  taskset -c "$2" "$build/bench/vu_pingpong" floor-server "$work/floor.sock" $4 &
  local f=$!
  for _ in $(seq 100); do [ -S "$sock" ] && [ -S "$work/floor.sock" ] && break; sleep 0.05; done
  echo "== $label: servers on CPU $2, client on CPU $3 ${4:+(busy-poll)}"
  echo "-- BAR0 register (ID), 4 bytes"
  "$build/bench/vu_pingpong" client "$work/floor.sock" "$sock" -region 0 -offset 0 -sizes 4 -n "$iters" -r "$rounds" \
    -cpu "$3" $4
  echo "-- BAR2 device memory"
  "$build/bench/vu_pingpong" client "$work/floor.sock" "$sock" -region 2 -offset 0 -sizes 4,64,4096,65536 \
    -n "$iters" -r "$rounds" -cpu "$3" $4 | tail -n +2
  kill $d $f; wait $d $f 2>/dev/null || true
  rm -f "$work/floor.sock"
}
pair() {  # $1 = server cpu, $2... = the baseline daemon and its extra options: starts it (A, at $off) and uvfiod (B)
  local cpu=$1
  shift
  taskset -c "$cpu" "$@" --rundir "$work/off" --config "$work/topo.toml" --no-fuse --reactors 1 2>"$work/off.log" &
  a=$!
  taskset -c "$cpu" "$build/uvfiod" --rundir "$work/run" --config "$work/topo.toml" --no-fuse --reactors 1 \
    2>"$work/uvfiod.log" &
  b=$!
  off="$work/off/vfio-user/0000:00:10.0.sock"
  for _ in $(seq 100); do [ -S "$sock" ] && [ -S "$off" ] && break; sleep 0.05; done
}
stats_ab() {  # $1 = server cpu (the client is on CPU 0)
  pair "$1" "$build/uvfiod" --no-stats
  echo "== statistics: floor = uvfiod --no-stats, vu = uvfiod (counters on); both on CPU $1, client on CPU 0"
  "$build/bench/vu_pingpong" client "$off" "$sock" -floor-vu -region 0 -offset 0 -sizes 4 -n "$iters" -r "$rounds" \
    -cpu 0
  "$build/bench/vu_pingpong" client "$off" "$sock" -floor-vu -region 2 -offset 0 -sizes 4096 -n "$iters" \
    -r "$rounds" -cpu 0 | tail -n +2
  kill $a $b; wait $a $b 2>/dev/null || true
  rm -rf "$work/off" "$work/run"
}
trace_ab() {  # $1 = server cpu (client and tracer on CPU 0); $2 = the baseline daemon binary; $3 = "trace" to trace B
  pair "$1" "$2"
  local t=""
  if [ "$3" = trace ]; then
    taskset -c 0 "$build/uvfioctl" --rundir "$work/run" trace 0000:00:10.0 >/dev/null 2>&1 &
    t=$!
    sleep 0.3
    echo "== trace: floor = uvfiod, vu = uvfiod with uvfioctl trace attached; daemons on CPU $1, client on CPU 0"
  else
    echo "== trace hook idle: floor = $2, vu = uvfiod (nobody tracing); both on CPU $1, client on CPU 0"
  fi
  "$build/bench/vu_pingpong" client "$off" "$sock" -floor-vu -region 0 -offset 0 -sizes 4 -n "$iters" -r "$rounds" \
    -cpu 0
  [ -n "$t" ] && kill "$t"
  kill $a $b; wait $a $b 2>/dev/null || true
  rm -rf "$work/off" "$work/run"
}
ab() {  # $1 = server cpu: OLD_UVFIOD (floor) against this uvfiod (vu), REGION_READ of 4 B to 64 KiB
  pair "$1" "$OLD_UVFIOD"
  echo "== A/B: floor = $OLD_UVFIOD, vu = $build/uvfiod; both on CPU $1, client on CPU 0"
  "$build/bench/vu_pingpong" client "$off" "$sock" -floor-vu -region 2 -offset 0 -sizes 4,4096,65536 -n "$iters" \
    -r "$rounds" -cpu 0
  kill $a $b; wait $a $b 2>/dev/null || true
  rm -rf "$work/off" "$work/run"
}
poll_ab() {  # $1 = server cpu: uvfiod --poll-us 0 (floor: sleeps at once) against uvfiod's default poll window
  pair "$1" "$build/uvfiod" --poll-us 0
  echo "== poll window: floor = uvfiod --poll-us 0, vu = uvfiod (default window); both on CPU $1, client on CPU 0"
  "$build/bench/vu_pingpong" client "$off" "$sock" -floor-vu -region 2 -offset 0 -sizes 4,4096,65536 -n "$iters" \
    -r "$rounds" -cpu 0
  kill $a $b; wait $a $b 2>/dev/null || true
  rm -rf "$work/off" "$work/run"
}
if [ "${4:-}" = poll ]; then
  poll_ab 1
  poll_ab 0
  exit 0
fi
if [ "${4:-}" = ab ]; then
  [ -n "${OLD_UVFIOD:-}" ] || { echo "ab: set OLD_UVFIOD to the uvfiod to compare with" >&2; exit 2; }
  ab 0
  ab 1
  exit 0
fi
if [ "${4:-}" = trace ]; then
  trace_ab 1 "$build/uvfiod" trace
  trace_ab 0 "$build/uvfiod" trace
  if [ -n "${OLD_UVFIOD:-}" ]; then
    trace_ab 1 "$OLD_UVFIOD" idle
    trace_ab 0 "$OLD_UVFIOD" idle
  fi
  exit 0
fi
if [ "${4:-}" != stats ]; then
  label="same vCPU"; run "$label" 0 0 ""
  label="across vCPUs"; run "$label" 1 0 ""
  # Spinning on one vCPU only measures the scheduler: busy-poll is across.
  label="across vCPUs"; run "$label" 1 0 -spin
fi
stats_ab 0
stats_ab 1
