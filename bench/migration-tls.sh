#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# What TLS costs a live migration: a busy VF with 256 MiB of device memory
# migrated between two daemons on this host by `uvfio-guest migrate --to-tcp`
# into a `uvfio-guest receive`, alternately over TLS 1.3 (X.509 and PSK) and
# plain TCP (--insecure), ROUNDS times each; the source reports the stream's
# throughput (payload MiB/s, pre-copy and stop-copy) and the downtime.
# Usage: bench/migration-tls.sh [BUILD_DIR] [ROUNDS] [MEMORY]
set -euo pipefail
build=${1:-build/release}
rounds=${2:-5}
mem=${3:-256M}
work=$(mktemp -d /tmp/uvfio-migtls-XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
"$(dirname "$0")/../tests/tls/make-creds.sh" "$work/creds"
"$build/uvfiod" --print-seed | sed "s/\"16M\"/\"$mem\"/" > "$work/topo.toml"
"$build/uvfiod" --rundir "$work/a" --config "$work/topo.toml" --no-fuse 2>"$work/a.log" &
"$build/uvfiod" --rundir "$work/b" --config "$work/topo.toml" --no-fuse 2>"$work/b.log" &
vf=/vfio-user/0000:08:00.0.sock
for _ in $(seq 200); do [ -S "$work/a$vf" ] && [ -S "$work/b$vf" ] && break; sleep 0.05; done
port=47311
one() {  # $1 = label, $2 = credentials
  "$build/uvfio-guest" receive --socket "$work/b$vf" --listen "127.0.0.1:$port" --ms 100 $2 >"$work/recv.out" 2>&1 &
  local r=$!
  for _ in $(seq 200); do grep -q listening "$work/recv.out" 2>/dev/null && break; sleep 0.02; done
  local out
  out=$("$build/uvfio-guest" migrate --from "$work/a$vf" --to-tcp "127.0.0.1:$port" --ms 300 $2 2>/dev/null)
  wait $r
  local down rate
  down=$(echo "$out" | sed -n 's/.*downtime \([0-9.]*\) ms$/\1/p' | tail -1)
  rate=$(echo "$out" | sed -n 's/^stream: .* s, \([0-9]*\) MiB\/s.*/\1/p')
  printf "%-6s %10s %12s\n" "$1" "$down" "$rate"
  port=$((port + 1))
}
echo "== $mem device memory, $rounds rounds each, interleaved"
printf "%-6s %10s %12s\n" path downtime_ms stream_MiB/s
for _ in $(seq "$rounds"); do
  one plain "--insecure"
  one x509 "--tls-x509-dir $work/creds/good"
  one psk "--tls-psk-file $work/creds/good.psk"
done
