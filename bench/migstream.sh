#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The migration stream and STOP -> STOP_COPY from outside (bench/vu_migstream,
# a plain C client), the seed topology with 1 GiB of device memory per VF:
# the daemon pinned to CPU 1, the client to CPU 0. Given OLD_UVFIOD, that
# daemon and this build's alternate run by run (an A/B).
#
# Usage: bench/migstream.sh [BUILD_DIR] [RUNS] [ROUNDS]
set -euo pipefail
build=${1:-build/release}
runs=${2:-3}
rounds=${3:-3}
work=$(mktemp -d /tmp/uvfio-migstream-XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
"$build/uvfiod" --print-seed | sed 's/device_memory = "[^"]*"/device_memory = "1G"/' >"$work/topo.toml"
daemons=("$build/uvfiod")
[ -n "${OLD_UVFIOD:-}" ] && daemons=("$OLD_UVFIOD" "$build/uvfiod")
for _ in $(seq "$runs"); do
  for d in "${daemons[@]}"; do
    rm -rf "$work/run"
    taskset -c 1 "$d" --rundir "$work/run" --config "$work/topo.toml" --no-fuse 2>"$work/uvfiod.log" &
    pid=$!
    sock="$work/run/vfio-user/0000:08:00.0.sock"
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
    echo "== $d"
    taskset -c 0 "$build/bench/vu_migstream" "$sock" "$rounds" 1024 | tail -n 2
    kill -INT $pid; wait $pid 2>/dev/null || true
  done
done
