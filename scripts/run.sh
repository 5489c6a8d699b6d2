#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Set up, build (release) and run uvfiod in the foreground with the seed
# topology. Extra arguments go to uvfiod (e.g. --rundir DIR, --config FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release --target uvfiod uvfioctl
echo "uvfiod: starting with the seed topology; uvfioctl is build/release/uvfioctl"
exec build/release/uvfiod "$@"
