#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Set up, build, and run every test suite: the debug, ASan/UBSan, Release
# and TSan builds, in parallel where it is safe.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# The QEMU guest (kernel, initramfs tools, QEMU's runtime libraries); the
# qemu tests fail rather than skip when it is missing.
tests/qemu/prepare-guest.sh
# Prometheus's promtool checks `uvfioctl stats --format prometheus`.
scripts/fetch-promtool.sh build/tools
export UVFIO_PROMTOOL=$PWD/build/tools/promtool
export UVFIO_REQUIRE_QEMU=1
# The FUSE tests (reset, unbind and sriov through a real mount) fail rather
# than skip when the tree cannot be mounted.
export UVFIO_REQUIRE_FUSE=1
jobs=$(nproc)
cmake --preset debug >/dev/null
cmake --preset asan-ubsan >/dev/null
cmake --build --preset debug -j "$jobs"
cmake --build --preset asan-ubsan -j "$jobs"
# The whole tree in Release too (-O3 warns differently), tests included.
cmake --preset release >/dev/null
cmake --build --preset release -j "$jobs"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
status=0
# The kernel's dmatest and VFIO selftests under QEMU (labels qemu-dmatest,
# qemu-kselftest: minutes of TCG) run against the Release and ASan/UBSan
# daemons; debug and TSan skip them.
echo "== tests (debug)"
ctest --preset debug -j "$jobs" -LE "qemu-dmatest|qemu-kselftest" || status=1
echo "== tests (asan-ubsan)"
ctest --preset asan-ubsan -j "$jobs" || status=1
# The configuration the packages ship: every suite (an optimizer once
# removed a store the SIGBUS recovery needed; only Release crashed).
echo "== tests (release)"
ctest --preset release -j "$jobs" || status=1

echo "== fuzz (libFuzzer: every target 30 s from its seed corpus, two at a time)"
cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j "$jobs" --target session_fuzz server_fuzz mig_stream_fuzz config_fuzz topology_fuzz control_fuzz
fuzz_one() {
  local t=$1 work=build/fuzz/work/$1
  rm -rf "$work" && mkdir -p "$work/corpus"
  cp fuzz/corpus/$t/* "$work/corpus/" 2>/dev/null || true
  # Per-input leak checks cost the threaded server target most of its speed;
  # leaks are still checked at exit (ASAN_OPTIONS).
  local extra=""
  [ "$t" = server ] && extra="-detect_leaks=0"
  local rc=0
  (cd "$work" && timeout 150 ../../${t}_fuzz -max_total_time=30 -max_len=16384 -timeout=20 -rss_limit_mb=4096 \
       $extra corpus) > "$work/run.log" 2>&1 || rc=$?
  echo "fuzz $t: $(grep -E '^#[0-9]+.*DONE' "$work/run.log" | tail -1)"
  if [ $rc -ne 0 ]; then tail -40 "$work/run.log"; return 1; fi
}
fuzz_status=0
for pair in "session server" "mig_stream config" "topology control"; do
  set -- $pair
  fuzz_one "$1" & p1=$!
  fuzz_one "$2" & p2=$!
  wait $p1 || fuzz_status=1
  wait $p2 || fuzz_status=1
done
[ $fuzz_status -eq 0 ] || status=1

echo "== debian packages (dpkg-buildpackage from HEAD, dpkg -x, layout)"
scripts/check-deb.sh build/deb || status=1

echo "== tests (tsan: every suite)"
export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
cmake --preset tsan >/dev/null
cmake --build --preset tsan -j "$jobs"
ctest --preset tsan -j "$jobs" -LE "qemu-dmatest|qemu-kselftest" || status=1
exit $status
