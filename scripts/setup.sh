#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Installs what uvfio needs to build, test and run on Debian 12 (bookworm).
# Idempotent: installs only the packages that are missing.
set -euo pipefail
pkgs=(cmake ninja-build g++ clang pkg-config
      libfuse3-dev fuse3 libtoml11-dev libcli11-dev nlohmann-json3-dev libfmt-dev
      libgtest-dev libgmock-dev libbenchmark-dev linux-libc-dev pciutils libxxhash-dev
      busybox-static cpio scdoc systemd man-db debhelper dpkg-dev
      libgnutls28-dev gnutls-bin)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
