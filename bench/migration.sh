#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Whole live migrations of a busy VF between two daemons on this host
# (uvfio-guest migrate: the workload runs throughout, the tool reports each
# pre-copy round and the downtime: STOP_COPY requested on the source until
# RUNNING on the destination), for 16 MiB, 256 MiB and 1 GiB of device
# memory; three migrations per size, back and forth (the first of each
# daemon, then later ones).
# Usage: bench/migration.sh [BUILD_DIR]
set -euo pipefail
build=${1:-build/release}
for mem in 16M 256M 1G; do
  work=$(mktemp -d /tmp/uvfio-mig-XXXXXX)
  "$build/uvfiod" --print-seed | sed "s/\"16M\"/\"$mem\"/" > "$work/topo.toml"
  "$build/uvfiod" --rundir "$work/a" --config "$work/topo.toml" --no-fuse 2>"$work/a.log" & A=$!
  "$build/uvfiod" --rundir "$work/b" --config "$work/topo.toml" --no-fuse 2>"$work/b.log" & B=$!
  vf=/vfio-user/0000:08:00.0.sock
  for _ in $(seq 200); do [ -S "$work/a$vf" ] && [ -S "$work/b$vf" ] && break; sleep 0.05; done
  echo "== $mem device memory"
  from=$work/a; to=$work/b
  for i in 1 2 3; do
    "$build/uvfio-guest" migrate --from "$from$vf" --to "$to$vf" --ms 300 | grep -E "stop-copy|pre-copy round 1:" | sed "s/^/  #$i /"
    t=$from; from=$to; to=$t
  done
  kill $A $B; wait $A $B 2>/dev/null || true
  rm -rf "$work"
done
