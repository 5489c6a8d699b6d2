#!/usr/bin/env bash
# Fetches the guest kernel for the QEMU e2e test: Debian's linux-image-amd64
# (the package's vmlinuz only, extracted with dpkg-deb: nothing is installed
# on the host), into DIR/vmlinuz (default build/guest). Idempotent.
# Also installs the QEMU runtime libraries and what the initramfs is built
# from (busybox-static, pciutils, cpio).
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:-build/guest}
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
pkgs=(busybox-static pciutils cpio libglib2.0-0 libpixman-1-0 libslirp0 libfdt1 libpng16-16 libjpeg62-turbo
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
if [ ! -s "$dir/vmlinuz" ]; then
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
  if [ -z "$pkg" ] && [ $updated = 0 ]; then
    $sudo apt-get update -qq
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
  fi
  [ -n "$pkg" ] || { echo "prepare-guest: no linux-image-amd64 in the package lists" >&2; exit 1; }
  tmp=$(mktemp -d)
  chmod 755 "$tmp"
  (cd "$tmp" && apt-get download -qq "$pkg" 2>/dev/null || (cd "$tmp" && $sudo apt-get download -qq "$pkg"))
  deb=$(ls "$tmp"/*.deb)
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards './boot/vmlinuz-*'
  cp "$tmp"/boot/vmlinuz-* "$dir/vmlinuz.tmp"
  mv "$dir/vmlinuz.tmp" "$dir/vmlinuz"
  basename "$tmp"/boot/vmlinuz-* > "$dir/vmlinuz.version"
  rm -rf "$tmp"
  echo "prepare-guest: $dir/vmlinuz from $pkg"
fi
