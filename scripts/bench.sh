#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Build the benchmarks (release) and run them with repetitions; every
# benchmark has its baseline in the same run (see docs/PERFORMANCE.md).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release --target uvfiod uvfio-guest vfio_bench vfio_user_latency mlx5_migration_bench dma_message_bench \
  vu_pingpong many_clients dma_map_bench eventfd_bench
build/release/bench/vfio_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true "$@"
build/release/bench/vfio_user_latency 20000 5
for size in 4096 65536 1M; do build/release/bench/dma_message_bench "$size" 32M 5; done
bench/latency.sh build/release 20000 5
bench/many_clients.sh build/release 10
bench/migration.sh build/release
for size in 16M 256M 1G; do build/release/bench/mlx5_migration_bench "$size"; done
build/release/bench/dma_map_bench 5
build/release/bench/eventfd_bench 9 200000
