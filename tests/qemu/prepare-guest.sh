#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Fetches the guest kernel for the QEMU e2e test: Debian's linux-image-amd64
# (the package's vmlinuz only, extracted with dpkg-deb: nothing is installed
# on the host), into DIR/vmlinuz (default build/guest). Idempotent.
# Also installs the QEMU runtime libraries and what the initramfs is built
# from (busybox-static, pciutils, cpio).
#
# And what guest kernel modules are built against, for exactly that kernel
# (tests/qemu/build-modules.sh): linux-headers-<abi>-amd64,
# linux-headers-<abi>-common and linux-kbuild-<version> unpacked under
# DIR/kernel/root, and from linux-source-<version> of the same package
# version only drivers/dma/dmatest.c (Debian's kernel does not build it)
# and drivers/dma/dmaengine.h (the helpers providers take), and
# scripts/checkpatch.pl with its data (the kernel's style check for our
# driver), under DIR/kernel/src. Nothing is installed on the host.
#
# The guest kernel's ABI is chosen here, in one place: UVFIO_GUEST_ABI
# (e.g. 6.1.0-57), by default the one linux-image-amd64 depends on now
# (Debian keeps only the current one of a suite in its archive).
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:-build/guest}
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
pkgs=(busybox-static pciutils cpio make xz-utils libglib2.0-0 libpixman-1-0 libslirp0 libfdt1 libpng16-16 libjpeg62-turbo
      libfuse3-3 libgnutls30 libncursesw6)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
updated=0
if ((${#missing[@]})); then
  echo "prepare-guest: installing ${missing[*]}"
  $sudo apt-get update -qq
  updated=1
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
mkdir -p "$dir"
abi=${UVFIO_GUEST_ABI:-}
if [ -z "$abi" ] && [ -s "$dir/vmlinuz.version" ]; then
  abi=$(sed -e 's/^vmlinuz-//' -e 's/-amd64$//' "$dir/vmlinuz.version")
fi
if [ -z "$abi" ]; then
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
  if [ -z "$pkg" ] && [ $updated = 0 ]; then
    $sudo apt-get update -qq
    updated=1
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
  fi
  [ -n "$pkg" ] || { echo "prepare-guest: no linux-image-amd64 in the package lists" >&2; exit 1; }
  abi=${pkg#linux-image-}
  abi=${abi%-amd64}
fi
download() {  # download DIR PACKAGE[=VERSION]...
  local d=$1; shift
  (cd "$d" && apt-get download -qq "$@" 2>/dev/null) || (cd "$d" && $sudo apt-get download -qq "$@")
}
if [ ! -s "$dir/vmlinuz" ]; then
  pkg=linux-image-$abi-amd64
  tmp=$(mktemp -d)
  chmod 755 "$tmp"
  download "$tmp" "$pkg"
  deb=$(ls "$tmp"/*.deb)
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards './boot/vmlinuz-*'
  cp "$tmp"/boot/vmlinuz-* "$dir/vmlinuz.tmp"
  mv "$dir/vmlinuz.tmp" "$dir/vmlinuz"
  basename "$tmp"/boot/vmlinuz-* > "$dir/vmlinuz.version"
  rm -rf "$tmp"
  echo "prepare-guest: $dir/vmlinuz from $pkg"
fi
# The guest kernel's own VFIO modules (for the kernel's VFIO selftests in
# the guest), from the same image package.
if [ ! -s "$dir/vfio-modules/vfio-pci.ko" ]; then
  tmp=$(mktemp -d)
  chmod 755 "$tmp"
  download "$tmp" "linux-image-$abi-amd64"
  deb=$(ls "$tmp"/*.deb)
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards \
    './lib/modules/*/kernel/drivers/vfio/*.ko' './lib/modules/*/kernel/virt/lib/irqbypass.ko'
  mkdir -p "$dir/vfio-modules"
  find "$tmp/lib/modules" -name '*.ko' -exec cp {} "$dir/vfio-modules/" \;
  rm -rf "$tmp"
  echo "prepare-guest: $dir/vfio-modules from linux-image-$abi-amd64"
fi
# The kernel's VFIO selftests, from Debian unstable's newest kernel source.
tests/kselftest/fetch-source.sh "$dir/kselftest"
k=$dir/kernel
if [ ! -s "$k/ready" ] || [ ! -f "$k/src/scripts/checkpatch.pl" ]; then
  rm -rf "$k"
  mkdir -p "$k/root" "$k/src"
  tmp=$(mktemp -d)
  chmod 755 "$tmp"
  # The package version of the image (headers, kbuild and source must match it).
  ver=$(apt-cache show "linux-headers-$abi-amd64" | awk '/^Version:/{print $2; exit}')
  [ -n "$ver" ] || { echo "prepare-guest: no linux-headers-$abi-amd64 in the package lists" >&2; exit 1; }
  upstream=${abi%%-*}           # 6.1.0 -> the linux-kbuild/linux-source series 6.1
  series=${upstream%.*}
  download "$tmp" "linux-headers-$abi-amd64=$ver" "linux-headers-$abi-common=$ver" \
    "linux-kbuild-$series=$ver" "linux-source-$series=$ver"
  for d in "$tmp"/linux-headers-*.deb "$tmp"/linux-kbuild-*.deb; do dpkg-deb -x "$d" "$k/root"; done
  # The headers name their common half by absolute path: point it here.
  sed -i "s|/usr/src/|$(cd "$k/root" && pwd)/usr/src/|" "$k/root/usr/src/linux-headers-$abi-amd64/Makefile"
  dpkg-deb --fsys-tarfile "$tmp"/linux-source-*.deb | tar -x -O "./usr/src/linux-source-$series.tar.xz" |
    xz -dc | tar -x -C "$k/src" --strip-components=1 \
      "linux-source-$series/drivers/dma/dmatest.c" "linux-source-$series/drivers/dma/dmaengine.h" \
      "linux-source-$series/scripts/checkpatch.pl" "linux-source-$series/scripts/spelling.txt" \
      "linux-source-$series/scripts/const_structs.checkpatch"
  rm -rf "$tmp"
  echo "linux-headers-$abi-amd64 $ver" > "$k/ready"
  echo "prepare-guest: $k: headers, kbuild and dmatest.c of $abi ($ver)"
fi
