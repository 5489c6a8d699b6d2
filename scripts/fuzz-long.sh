#!/bin/bash
# SPDX-License-Identifier: BSD-3-Clause
# A long libFuzzer run of one target, as recorded in docs/fuzzing.md:
#   scripts/fuzz-long.sh TARGET [RUNS] [WORKDIR]
# TARGET is session, server, mig_stream, config, topology or control; RUNS
# defaults to 10 M. The run starts from a copy of the repo's seed corpus in
# WORKDIR (default /tmp/uvfio-fuzz-long/TARGET) and logs there; the final
# stats (executions, coverage, peak RSS) end the log. More libFuzzer flags
# come from UVFIO_FUZZ_FLAGS, e.g. UVFIO_FUZZ_FLAGS=-fork=2 for one
# campaign on two CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${1:?usage: scripts/fuzz-long.sh TARGET [RUNS] [WORKDIR]}
runs=${2:-10000000}
work=${3:-/tmp/uvfio-fuzz-long/$t}
bin=build/fuzz/${t}_fuzz
[ -d "fuzz/corpus/$t" ] || { echo "fuzz-long: no target '$t'" >&2; exit 2; }
if [ ! -x "$bin" ]; then
  cmake --preset fuzz >/dev/null
  cmake --build --preset fuzz --target "${t}_fuzz"
fi
mkdir -p "$work/corpus"
cp "fuzz/corpus/$t"/* "$work/corpus/"
extra=()
# Per-input leak checks stop the server's threads on every input; leaks are
# still checked at exit.
[ "$t" = server ] && extra+=(-detect_leaks=0)
read -r -a more <<<"${UVFIO_FUZZ_FLAGS:-}"
extra+=("${more[@]}")
echo "fuzz-long: $t, $runs runs, log in $work/log"
cd "$work"
"$OLDPWD/$bin" -runs="$runs" -entropic=0 -max_len=4096 -rss_limit_mb=4096 -print_final_stats=1 \
  "${extra[@]}" corpus >log 2>&1
tail -8 log
