#!/usr/bin/env bash
# Set up, build, and run every test suite: the debug build and the
# ASan/UBSan build, in parallel where it is safe.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# The QEMU guest (kernel, initramfs tools, QEMU's runtime libraries); the
# qemu tests fail rather than skip when it is missing.
tests/qemu/prepare-guest.sh
export UVFIO_REQUIRE_QEMU=1
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

echo "== fuzz smoke (libFuzzer, 30 s)"
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j "$jobs" --target session_fuzz
mkdir -p build/fuzz/corpus
cp fuzz/corpus/session/* build/fuzz/corpus/
(cd build/fuzz && timeout 120 ./session_fuzz -max_total_time=30 -max_len=4096 -timeout=10 -rss_limit_mb=4096 corpus) \
  > build/fuzz/last-run.log 2>&1 || { tail -40 build/fuzz/last-run.log; status=1; }
tail -2 build/fuzz/last-run.log

echo "== tests (tsan: every suite)"
export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
cmake --preset tsan >/dev/null
cmake --build --preset tsan -j "$jobs"
ctest --preset tsan -j "$jobs" || status=1
exit $status
