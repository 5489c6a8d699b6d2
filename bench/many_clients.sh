#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# 255 VFs on one PF (the seed's switch), each with its own closed-loop
# client (bench/many_clients.cc), against one uvfiod with its default
# reactors (one per core): aggregate ops/s, fairness, latency percentiles,
# and the daemon's threads idle and under load.
# Usage: bench/many_clients.sh [BUILD_DIR] [SECONDS]
set -euo pipefail
build=${1:-build/release}
secs=${2:-10}
work=$(mktemp -d /tmp/uvfio-many-XXXXXX)
trap 'kill $D 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
"$build/uvfiod" --print-seed | sed -e '0,/total_vfs = 8/s//total_vfs = 255/' \
  -e '0,/num_vfs = 1/s//num_vfs = 255/' > "$work/topo.toml"
ulimit -n 4096
"$build/uvfiod" --rundir "$work/run" --config "$work/topo.toml" --no-fuse 2>"$work/uvfiod.log" &
D=$!
for _ in $(seq 400); do [ "$(ls "$work/run/vfio-user" 2>/dev/null | wc -l)" -ge 256 ] && break; sleep 0.05; done
"$build/bench/many_clients" "$D" "$work/run/vfio-user" "$secs"
