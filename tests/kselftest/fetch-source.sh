#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-only OR BSD-3-Clause
# Fetches the kernel's VFIO selftests for the QEMU kselftest test: the
# newest linux-source-<N> in Debian's unstable suite (bookworm's 6.1 and
# backports' 6.12 do not carry tools/testing/selftests/vfio), downloaded with
# `apt-get download` through a temporary source list and package state under
# DIR/apt (nothing is added to the host's apt configuration, nothing is
# installed), and unpacked under DIR/src: tools/ (the selftests, their
# harness and tools/include), the UAPI headers, include/linux/pci_ids.h, scripts/subarch.include and
# the DMA engine register headers the selftests' own drivers include, and
# scripts/checkpatch.pl (our driver must pass it, --strict).
# DIR/VERSION records the package and version unpacked. Idempotent: a
# source already unpacked is kept (delete DIR to take a newer one).
#   fetch-source.sh [DIR]        (default build/guest/kselftest)
# UVFIO_KSELFTEST_SOURCE=linux-source-7.2 chooses the package instead.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:-build/guest/kselftest}
if [ -s "$dir/VERSION" ] && [ -d "$dir/src/tools/testing/selftests/vfio" ] && [ -f "$dir/src/scripts/checkpatch.pl" ]; then
  exit 0
fi
rm -rf "$dir"
mkdir -p "$dir/apt/lists/partial" "$dir/apt/cache/archives/partial" "$dir/src"
apt_dir=$(cd "$dir/apt" && pwd)
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian unstable main" \
  > "$apt_dir/sources.list"
: > "$apt_dir/status"
opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
      -o "Dir::State::Status=$apt_dir/status" -o APT::Sandbox::User=root)
apt-get "${opts[@]}" update -qq
pkg=${UVFIO_KSELFTEST_SOURCE:-}
if [ -z "$pkg" ]; then
  # The newest versioned source package (linux-source itself is a meta-package).
  pkg=$(apt-cache "${opts[@]}" search --names-only '^linux-source-[0-9]+\.[0-9]+$' | awk '{print $1}' |
        sort -V | tail -1)
fi
[ -n "$pkg" ] || { echo "kselftest: no linux-source-<N> in Debian unstable" >&2; exit 1; }
ver=$(apt-cache "${opts[@]}" show "$pkg" | awk '/^Version:/{print $2; exit}')
(cd "$apt_dir" && apt-get "${opts[@]}" download -qq "$pkg=$ver")
deb=$(ls "$apt_dir"/"$pkg"_*.deb)
series=${pkg#linux-source-}
top=linux-source-$series
dpkg-deb --fsys-tarfile "$deb" | tar -x -O "./usr/src/$top.tar.xz" | xz -dc |
  tar -x -C "$dir/src" --strip-components=1 \
    "$top/tools" "$top/include/uapi" "$top/include/linux/pci_ids.h" "$top/arch/x86/include/uapi" "$top/scripts/subarch.include" \
    "$top/scripts/checkpatch.pl" "$top/scripts/spelling.txt" "$top/scripts/const_structs.checkpatch" \
    "$top/drivers/dma/ioat/hw.h" "$top/drivers/dma/ioat/registers.h" "$top/drivers/dma/idxd/registers.h"
rm -f "$deb"
if [ ! -d "$dir/src/tools/testing/selftests/vfio" ]; then
  echo "kselftest: $pkg $ver has no tools/testing/selftests/vfio" >&2
  exit 1
fi
echo "$pkg $ver" > "$dir/VERSION"
echo "kselftest: $dir/src from $pkg $ver"
