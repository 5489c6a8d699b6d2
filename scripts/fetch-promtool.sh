#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Fetches Prometheus's own checker, promtool, for the test of
# `uvfioctl stats --format prometheus`: Debian's prometheus package,
# downloaded with `apt-get download` and unpacked with dpkg-deb (nothing is
# installed on the host, no service starts), into DIR/promtool (default
# build/tools). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build/tools}
[ -x "$dir/promtool" ] && exit 0
mkdir -p "$dir"
tmp=$(mktemp -d)
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
(cd "$tmp" && apt-get download -qq prometheus 2>/dev/null) || (cd "$tmp" && $sudo apt-get download -qq prometheus)
dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$tmp" ./usr/bin/promtool
cp "$tmp/usr/bin/promtool" "$dir/promtool.tmp"
mv "$dir/promtool.tmp" "$dir/promtool"
echo "fetch-promtool: $dir/promtool ($("$dir/promtool" --version 2>&1 | head -1))"
