#!/usr/bin/env bash
# Set up, build, and run every test suite: the debug build and the
# ASan/UBSan build, in parallel where it is safe.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
jobs=$(nproc)
cmake --preset debug >/dev/null
cmake --preset asan-ubsan >/dev/null
cmake --build --preset debug -j "$jobs"
cmake --build --preset asan-ubsan -j "$jobs"
# The run command's build (release, -O3 warnings differ) must stay clean too.
cmake --preset release >/dev/null
cmake --build --preset release -j "$jobs" --target uvfiod uvfioctl vfio_bench
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
status=0
echo "== tests (debug)"
ctest --preset debug -j "$jobs" || status=1
echo "== tests (asan-ubsan)"
ctest --preset asan-ubsan -j "$jobs" || status=1
exit $status
