#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The device SDK as a plugin author gets it: `cmake --install` into a fresh
# prefix, the edu example (examples/edu) built against it alone, with
# find_package(uvfio COMPONENTS sdk) and with pkg-config uvfio-sdk; two
# installed uvfiod load the plugin; a vfio-user client (edu_check, on the
# installed client library) drives the device and migrates it from one
# daemon to the other.
# Usage: check_plugin.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1 src=$2
work=$(mktemp -d /tmp/uvfio-plugin-XXXXXX)
A= B=
trap '{ [ -n "$A" ] && kill $A; [ -n "$B" ] && kill $B; } 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"' EXIT
prefix=$work/prefix
cmake --install "$build" --prefix "$prefix" > "$work/install.log"
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig LD_LIBRARY_PATH=$prefix/lib

# Only the SDK's headers: nothing of the source tree is on the include path.
[ "$(pkg-config --variable=plugin_abi uvfio-sdk)" = "$(sed -n 's/^#define UVFIO_PLUGIN_ABI \([0-9]*\)$/\1/p' "$src/src/sdk/plugin.h")" ]
cmake -S "$src/examples/edu" -B "$work/edu" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" > "$work/edu-cfg.log"
cmake --build "$work/edu" > "$work/edu-build.log" || { cat "$work/edu-build.log"; exit 1; }
c++ -std=c++20 -shared -fPIC -Wall -Wextra -Werror $(pkg-config --cflags uvfio-sdk) \
  "$src/examples/edu/edu_plugin.cc" "$src/examples/edu/edu_model.cc" "$src/examples/edu/edu_driver.cc" \
  $(pkg-config --libs uvfio-sdk) -o "$work/edu_pc.so"
if nm -D --defined-only "$work/edu/edu.so" | grep -q " T _ZN5uvfio"; then
  echo "the plugin carries uvfio's own code"; exit 1
fi

run() {  # run NAME PLUGIN: a uvfiod with one edu device from PLUGIN
  cat > "$work/$1.toml" <<TOML
[[plugin]]
path = "$2"

[[device]]
address = "0000:00:03.0"
model = "edu"
TOML
  "$prefix/bin/uvfiod" --rundir "$work/$1" --no-fuse --config "$work/$1.toml" 2> "$work/$1.log" &
}
run a "$work/edu/edu.so"; A=$!
run b "$work/edu_pc.so"; B=$!
for d in a b; do
  for _ in $(seq 200); do [ -S "$work/$d/vfio-user/0000:00:03.0.sock" ] && break; sleep 0.05; done
  [ -S "$work/$d/vfio-user/0000:00:03.0.sock" ] || { cat "$work/$d.log"; echo "uvfiod $d did not serve the edu device"; exit 1; }
done
"$prefix/bin/uvfioctl" --rundir "$work/a" list | grep -q "^0000:00:03.0  1234:11e8  00ff00  edu_vfio_pci    vfio0" ||
  { "$prefix/bin/uvfioctl" --rundir "$work/a" list; echo "the edu device is not bound to edu_vfio_pci"; exit 1; }
grep -q "loaded plugin edu ($work/edu/edu.so)" "$work/a.log"
"$work/edu/edu_check" "$work/a/vfio-user/0000:00:03.0.sock" "$work/b/vfio-user/0000:00:03.0.sock" | tee "$work/check.log"
! grep -q MISMATCH "$work/check.log"
grep -q "^DMA buffer after migration: match" "$work/check.log"
# Counted like a built-in device.
"$prefix/bin/uvfioctl" --rundir "$work/a" stats 0000:00:03.0 | grep -q MIG_DATA_READ
echo "plugin: built against the installed SDK, loaded, driven and migrated"
