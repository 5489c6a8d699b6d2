#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Build the benchmarks (release) and run every one that backs a table of
# docs/PERFORMANCE.md; every benchmark has its baseline in the same run.
# With LVU_DIR set to a libvfio-user checkout built with meson into
# LVU_DIR/build (see bench/libvfio-user.sh), the side-by-side runs too.
# Arguments go to vfio_bench (Google Benchmark).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release --target uvfiod uvfioctl uvfio-guest vfio_bench vfio_user_latency mlx5_migration_bench \
  dma_message_bench vu_pingpong vu_migstream unix_rr many_clients dma_map_bench eventfd_bench crc32c_bench \
  tls_channel_bench
b=build/release
echo "### $(date -u +%F) uvfio $(git rev-parse --short HEAD)"
echo "### vfio_bench"
$b/bench/vfio_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true "$@"
echo "### vfio_user_latency"
$b/bench/vfio_user_latency 20000 5
echo "### latency.sh"
bench/latency.sh $b 20000 5
echo "### latency.sh poll"
bench/latency.sh $b 10000 5 poll
echo "### latency.sh trace"
bench/latency.sh $b 20000 5 trace
if [ -n "${LVU_DIR:-}" ]; then
  echo "### libvfio-user.sh"
  bench/libvfio-user.sh "$LVU_DIR" $b 20000 5
fi
echo "### migstream.sh"
bench/migstream.sh $b 3 3
echo "### unix_rr"
$b/bench/unix_rr
echo "### dma_message_bench"
for size in 4096 65536 1M; do
  $b/bench/dma_message_bench "$size" 16M 5
  $b/bench/dma_message_bench "$size" 16M 5 scattered
done
echo "### crc32c_bench"
taskset -c 1 $b/bench/crc32c_bench 9 256
echo "### many_clients.sh"
bench/many_clients.sh $b 10
echo "### mlx5_migration_bench"
for size in 16M 256M 1G; do $b/bench/mlx5_migration_bench "$size"; done
echo "### migration.sh"
bench/migration.sh $b
echo "### tls_channel_bench"
creds=$(mktemp -d /tmp/uvfio-bench-creds-XXXXXX)
tests/tls/make-creds.sh "$creds/c" >/dev/null
$b/bench/tls_channel_bench "$creds/c" 5 1024
rm -rf "$creds"
echo "### migration-tls.sh"
bench/migration-tls.sh $b 3
echo "### dma_map_bench"
taskset -c 1 $b/bench/dma_map_bench 5
echo "### eventfd_bench"
taskset -c 1 $b/bench/eventfd_bench 9 200000
