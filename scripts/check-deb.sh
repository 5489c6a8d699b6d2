#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Builds the Debian packages from the committed tree (git archive of HEAD, so
# nothing from build/ leaks in) with dpkg-buildpackage -b -us -uc, unpacks
# them with dpkg -x into an empty root and checks the layout: every file the
# packages promise, nothing internal, the programs run from there, and the C
# example builds against the unpacked -dev package with pkg-config; the edu
# plugin builds against the unpacked SDK package and the unpacked uvfiod
# loads it and serves its device.
#
# Usage: scripts/check-deb.sh [WORKDIR]   (default: a fresh temporary directory)
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD
work=${1:-$(mktemp -d /tmp/uvfio-deb-XXXXXX)}
mkdir -p "$work"
work=$(cd "$work" && pwd)  # absolute: paths below go into files read from elsewhere
rm -rf "$work/uvfio" "$work/root" "$work"/*.deb
mkdir -p "$work/uvfio" "$work/root"
if git -C "$src" rev-parse --verify -q HEAD >/dev/null 2>&1; then
  git -C "$src" archive HEAD | tar -x -C "$work/uvfio"
else  # not a git checkout: the tree as it is, without builds
  tar -C "$src" --exclude=./build --exclude=./.git -c . | tar -x -C "$work/uvfio"
fi
echo "== dpkg-buildpackage -b -us -uc (log: $work/build.log)"
if ! (cd "$work/uvfio" && dpkg-buildpackage -b -us -uc -j"$(nproc)") >"$work/build.log" 2>&1; then
  tail -40 "$work/build.log"
  exit 1
fi
fail=0
for p in uvfio libuvfio-client0 libuvfio-client-dev libuvfio-sdk-dev; do
  deb=$(ls "$work"/${p}_*_*.deb 2>/dev/null | head -1)
  if [ -z "$deb" ]; then echo "missing package $p"; fail=1; continue; fi
  dpkg -x "$deb" "$work/root"
done
root=$work/root
arch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
want=(usr/bin/uvfiod usr/bin/uvfioctl usr/bin/uvfio-guest
      usr/lib/systemd/system/uvfiod.service usr/lib/systemd/system/uvfio-sysfs.service
      usr/lib/systemd/system/uvfio-metrics.service usr/lib/systemd/system/uvfio-metrics.timer
      usr/share/man/man8/uvfiod.8.gz usr/share/man/man8/uvfioctl.8.gz
      usr/share/man/man1/uvfio-guest.1.gz usr/share/man/man5/uvfio-topology.5.gz
      usr/share/bash-completion/completions/uvfioctl
      usr/include/uvfio/client.h
      "usr/lib/$arch/libuvfio-client.so" "usr/lib/$arch/libuvfio-client.so.0" "usr/lib/$arch/libuvfio-client.a"
      "usr/lib/$arch/pkgconfig/uvfio-client.pc" "usr/lib/$arch/cmake/uvfio/uvfioConfig.cmake"
      usr/include/uvfio/sdk/sdk/plugin.h usr/include/uvfio/sdk/sdk/version.h usr/include/uvfio/sdk/hw/function.h
      usr/include/uvfio/sdk/vfio/pci_core/core.h "usr/lib/$arch/pkgconfig/uvfio-sdk.pc")
for f in "${want[@]}"; do
  [ -e "$root/$f" ] || { echo "missing: /$f"; fail=1; }
done
# Only the C API header and the SDK's are public (the SDK's list:
# UVFIO_SDK_HEADERS in src/CMakeLists.txt).
extra=$(cd "$root" && find usr/include -type f ! -path usr/include/uvfio/client.h ! -path 'usr/include/uvfio/sdk/*')
[ -z "$extra" ] || { echo "internal headers installed: $extra"; fail=1; }
sdk_headers=$(sed -n '/^set(UVFIO_SDK_HEADERS/,/)/p' "$src/src/CMakeLists.txt" | tr ' ()' '\n\n\n' | grep -c '\.h$')
[ "$(find "$root/usr/include/uvfio/sdk" -name '*.h' | wc -l)" = $((sdk_headers + 1)) ] ||
  { echo "the SDK package does not hold exactly the SDK's headers (+ version.h)"; fail=1; }
# The shared library exports only uvfio_* (and its version node).
bad=$(nm -D --defined-only "$root/usr/lib/$arch/libuvfio-client.so.0" | awk '{print $3}' | grep -v '^uvfio_' |
      grep -v '^UVFIO_CLIENT_' || true)
[ -z "$bad" ] || { echo "exported beyond uvfio_*: $bad"; fail=1; }
# The programs run from the unpacked tree.
LD_LIBRARY_PATH="$root/usr/lib/$arch" "$root/usr/bin/uvfioctl" --help >/dev/null || { echo "uvfioctl --help failed"; fail=1; }
"$root/usr/bin/uvfiod" --print-seed | grep -q mlx5 || { echo "uvfiod --print-seed failed"; fail=1; }
# The example against the unpacked -dev package (its .pc is relocatable).
if ! PKG_CONFIG_PATH="$root/usr/lib/$arch/pkgconfig" cc -std=c11 -Wall -Wextra -Werror -o "$work/vf_dma" \
       "$src/examples/vf_dma.c" $(PKG_CONFIG_PATH="$root/usr/lib/$arch/pkgconfig" pkg-config --cflags --libs uvfio-client); then
  echo "examples/vf_dma.c does not build against the package"; fail=1
fi
# The edu plugin against the unpacked SDK package, loaded by the unpacked uvfiod.
pc="$root/usr/lib/$arch/pkgconfig"
if ! PKG_CONFIG_PATH=$pc c++ -std=c++20 -shared -fPIC -Wall -Wextra -Werror \
       $(PKG_CONFIG_PATH=$pc pkg-config --cflags uvfio-sdk) "$src/examples/edu/edu_plugin.cc" \
       "$src/examples/edu/edu_model.cc" "$src/examples/edu/edu_driver.cc" -o "$work/edu.so"; then
  echo "examples/edu does not build against the SDK package"; fail=1
else
  printf '[[plugin]]\npath = "%s"\n\n[[device]]\naddress = "0000:00:03.0"\nmodel = "edu"\n' "$work/edu.so" > "$work/edu.toml"
  rm -rf "$work/run"
  "$root/usr/bin/uvfiod" --rundir "$work/run" --no-fuse --config "$work/edu.toml" 2> "$work/edu.log" &
  pid=$!
  for _ in $(seq 200); do [ -S "$work/run/vfio-user/0000:00:03.0.sock" ] && break; sleep 0.05; done
  [ -S "$work/run/vfio-user/0000:00:03.0.sock" ] || { cat "$work/edu.log"; echo "the packaged uvfiod did not serve the plugin's device"; fail=1; }
  kill $pid 2>/dev/null || true
  wait $pid || true
fi
[ $fail -eq 0 ] && echo "debian packages: $(cd "$work" && ls *.deb | tr '\n' ' ')— layout ok"
exit $fail
