#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# uvfio side by side with libvfio-user (https://github.com/nutanix/libvfio-user),
# measured by the same plain C clients (bench/vu_pingpong, bench/vu_migstream):
# not part of CI; build libvfio-user once, e.g.
#   git clone https://github.com/nutanix/libvfio-user LVU && cd LVU &&
#   meson setup build --buildtype=release && ninja -C build
# (Debian: meson ninja-build libjson-c-dev libcmocka-dev), then
#   bench/libvfio-user.sh LVU [BUILD_DIR] [ITERS] [ROUNDS] [latency|same|across|busy|migstream]
#
# The libvfio-user server is bench/lvu_server.c, compiled here against LVU.
# Latency: REGION_READ of a BAR0 register (4 B) and of BAR2 memory (4 B,
# 4 KiB, 64 KiB), one reactor / one context, servers on CPU 1 and the client
# on CPU 0 ("across"), or all on CPU 0 ("same vCPU"); then busy-poll across
# (uvfiod --busy-poll, lvu_server -spin, the floor -spin, the client -spin;
# the server not being measured is stopped meanwhile). Each line is one
# interleaved pair: the AF_UNIX floor against uvfio, the floor against
# libvfio-user, and libvfio-user (as "floor") against uvfio.
# Migration stream: 1 GiB of random BAR2 memory read by MIG_DATA_READ of
# 1 MiB, uvfio's mlx5 VF (its real stream: records, checksums, snapshots)
# and libvfio-user streaming its memory as it is (an upper bound), runs
# alternated.
set -euo pipefail
lvu=$(cd "${1:?usage: bench/libvfio-user.sh LVU_DIR [BUILD_DIR] [ITERS] [ROUNDS] [latency|same|across|busy|migstream]}" && pwd)
build=${2:-build/release}
iters=${3:-20000}
rounds=${4:-5}
what=${5:-all}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/uvfio-lvu-XXXXXX)
trap 'kill -CONT $(jobs -p) 2>/dev/null || true; kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
cc -O2 -Wall -Wextra -I"$lvu/include" -o "$work/lvu_server" "$here/lvu_server.c" -L"$lvu/build/lib" \
  -Wl,-rpath,"$lvu/build/lib" -lvfio-user
echo "libvfio-user $(git -C "$lvu" rev-parse --short HEAD 2>/dev/null || echo '(not a git checkout)'), uvfio $(git -C "$here/.." rev-parse --short HEAD 2>/dev/null || echo '?')"
cp "$(dirname "$0")/one-vf.toml" "$work/topo.toml"
usock="$work/run/vfio-user/0000:00:10.0.sock"
lsock="$work/lvu.sock"
fsock="$work/floor.sock"
pp="$build/bench/vu_pingpong"
wait_for() { for _ in $(seq 200); do local ok=1; for s in "$@"; do [ -S "$s" ] || ok=0; done; [ $ok = 1 ] && return; sleep 0.05; done; echo "no socket" >&2; exit 1; }
pair() {  # $1 = label, $2 $3 = floor sock/pid, $4 $5 = vu sock/pid, $6 = the third pid, $7.. = client flags
  local label=$1 fs=$2 fp=$3 vs=$4 vp=$5 third=$6
  shift 6
  local extra=("$@")
  [ -n "$cspin" ] && { kill -STOP "$third"; extra+=(-spin -pause "$fp,$vp"); }
  echo "-- $label (register, then memory)"
  "$pp" client "$fs" "$vs" "${extra[@]}" -region 0 -offset 0 -sizes 4 -n "$iters" -r "$rounds" -cpu "$ccpu"
  "$pp" client "$fs" "$vs" "${extra[@]}" -region 2 -offset 0 -sizes 4,4096,65536 -n "$iters" -r "$rounds" \
    -cpu "$ccpu" | tail -n +2
  [ -n "$cspin" ] && kill -CONT "$third" "$fp" "$vp"
  return 0
}
latency() {  # $1 = label, $2 = server cpu, $3 = client cpu, $4 = "" or -spin
  local busy=""
  ccpu=$3 cspin=$4
  [ -n "$4" ] && busy="--busy-poll"
  rm -rf "$work/run" "$lsock" "$fsock"
  taskset -c "$2" "$build/uvfiod" --rundir "$work/run" --config "$work/topo.toml" --no-fuse --reactors 1 $busy \
    2>"$work/uvfiod.log" &
  local u=$!
  taskset -c "$2" "$work/lvu_server" "$lsock" $4 2>"$work/lvu.log" &
  local l=$!
  taskset -c "$2" "$pp" floor-server "$fsock" $4 &
  local f=$!
  wait_for "$usock" "$lsock" "$fsock"
  echo "== $1: servers on CPU $2, client on CPU $3 ${4:+(busy-poll)}"
  pair "floor = AF_UNIX, vu = uvfio" "$fsock" "$f" "$usock" "$u" "$l"
  pair "floor = AF_UNIX, vu = libvfio-user" "$fsock" "$f" "$lsock" "$l" "$u"
  pair "floor = libvfio-user, vu = uvfio" "$lsock" "$l" "$usock" "$u" "$f" -floor-vu
  kill "$u" "$l" "$f"
  wait "$u" "$l" "$f" 2>/dev/null || true
}
migstream() {  # runs alternated: uvfio's VF, then libvfio-user's plain-memory stream
  "$build/uvfiod" --print-seed | sed 's/device_memory = "[^"]*"/device_memory = "1G"/' >"$work/seed.toml"
  local msock="$work/mrun/vfio-user/0000:08:00.0.sock"
  for _ in $(seq "$rounds"); do
    rm -rf "$work/mrun"
    taskset -c 1 "$build/uvfiod" --rundir "$work/mrun" --config "$work/seed.toml" --no-fuse 2>"$work/uvfiod.log" &
    local u=$!
    wait_for "$msock"
    echo "== uvfio (mlx5 VF, 1 GiB)"
    taskset -c 0 "$build/bench/vu_migstream" "$msock" 3 1024 | tail -n 2
    kill -INT $u; wait $u 2>/dev/null || true
    rm -f "$lsock"
    taskset -c 1 "$work/lvu_server" "$lsock" -mem 1024 2>"$work/lvu.log" &
    local l=$!
    wait_for "$lsock"
    echo "== libvfio-user (plain memory, 1 GiB)"
    taskset -c 0 "$build/bench/vu_migstream" "$lsock" 3 1024 | tail -n 2
    kill $l; wait $l 2>/dev/null || true
  done
}
case $what in all | latency | same) latency "same vCPU" 0 0 "" ;; esac
case $what in all | latency | across) latency "across vCPUs" 1 0 "" ;; esac
case $what in all | latency | busy) latency "across vCPUs" 1 0 -spin ;; esac
if [ "$what" = all ] || [ "$what" = migstream ]; then
  migstream
fi
