#!/usr/bin/env bash
# Build the benchmarks (release) and run them with repetitions; every
# benchmark has its baseline in the same run (see docs/PERFORMANCE.md).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release --target vfio_bench
build/release/bench/vfio_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true "$@"
