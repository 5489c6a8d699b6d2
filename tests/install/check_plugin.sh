#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The device SDK as a plugin author gets it: `cmake --install` into a fresh
# prefix, the edu example (examples/edu) built against it alone, with
# find_package(uvfio COMPONENTS sdk) and with pkg-config uvfio-sdk; two
# installed uvfiod load the plugin; a vfio-user client (edu_check, on the
# installed client library) drives the device and migrates it from one
# daemon to the other. With QEMU and the guest kernel, a Linux guest drives
# two edu devices of a third uvfiod from inside (examples/edu/edu_guest.c),
# with its RAM shared (memfd) and with QEMU's default RAM (DMA by message).
# Usage: check_plugin.sh BUILD_DIR SOURCE_DIR [QEMU GUEST_KERNEL]
set -euo pipefail
build=$1 src=$2 qemu=${3:-} kernel=${4:-}
work=$(mktemp -d /tmp/uvfio-plugin-XXXXXX)
A= B= G=
trap '{ [ -n "$A" ] && kill $A; [ -n "$B" ] && kill $B; [ -n "$G" ] && kill $G; } 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"' EXIT
prefix=$work/prefix
cmake --install "$build" --prefix "$prefix" > "$work/install.log"
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig LD_LIBRARY_PATH=$prefix/lib

# Only the SDK's headers: nothing of the source tree is on the include path.
[ "$(pkg-config --variable=plugin_abi uvfio-sdk)" = "$(sed -n 's/^#define UVFIO_PLUGIN_ABI \([0-9]*\)$/\1/p' "$src/src/sdk/plugin.h")" ]
# Every installed header stands alone on the installed include path: none
# reaches for a header the SDK does not ship.
sdk=$prefix/include/uvfio/sdk
for h in $(cd "$sdk" && find . -name '*.h' | sed 's|^\./||' | sort); do
  echo "#include \"$h\"" | c++ -std=c++20 -fsyntax-only -Wall -Wextra -Werror -I"$sdk" -x c++ - ||
    { echo "SDK header $h does not compile on its own"; exit 1; }
done
[ "$(cd "$sdk" && find . -name '*.h' | wc -l)" -ge 30 ]
cmake -S "$src/examples/edu" -B "$work/edu" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" > "$work/edu-cfg.log"
cmake --build "$work/edu" > "$work/edu-build.log" || { cat "$work/edu-build.log"; exit 1; }
c++ -std=c++20 -shared -fPIC -Wall -Wextra -Werror $(pkg-config --cflags uvfio-sdk) \
  "$src/examples/edu/edu_plugin.cc" "$src/examples/edu/edu_model.cc" "$src/examples/edu/edu_driver.cc" \
  $(pkg-config --libs uvfio-sdk) -o "$work/edu_pc.so"
if nm -D --defined-only "$work/edu/edu.so" | grep -q " T _ZN5uvfio"; then
  echo "the plugin carries uvfio's own code"; exit 1
fi

run() {  # run NAME PLUGIN [MORE TOML]: a uvfiod with an edu device from PLUGIN
  cat > "$work/$1.toml" <<TOML
[[plugin]]
path = "$2"

[[device]]
address = "0000:00:03.0"
model = "edu"
${3:-}
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

# A Linux guest drives the plugin's devices.
if [ -z "$qemu" ] || [ ! -x "$qemu" ] || [ ! -r "$kernel" ] || [ ! -x "$build/tests/vf_check" ]; then
  [ -n "${UVFIO_REQUIRE_QEMU:-}" ] && { echo "QEMU, the guest kernel or vf_check is missing"; exit 1; }
  echo "plugin: no QEMU guest (QEMU, guest kernel or vf_check missing): skipped"
  exit 0
fi
cc -O2 -static -Wall -Wextra -Werror -o "$work/edu_guest" "$src/examples/edu/edu_guest.c"
EDU_GUEST=$work/edu_guest "$src/tests/qemu/make-initramfs.sh" "$work/initrd.cpio.gz" "$build/tests/vf_check"
run g "$work/edu/edu.so" '
dma_mask_bits = 32

[[device]]
address = "0000:00:04.0"
model = "edu"
dma_mask_bits = 32'
G=$!
for s in 03 04; do
  for _ in $(seq 200); do [ -S "$work/g/vfio-user/0000:00:$s.0.sock" ] && break; sleep 0.05; done
done
share=${qemu%/bin/*}/share
for ram in memfd default; do
  machine=q35 mem=()
  [ $ram = memfd ] && machine=q35,memory-backend=mem mem=(-object memory-backend-memfd,id=mem,size=512M,share=on)
  timeout 300 "$qemu" -L "$share" -M $machine -accel tcg -m 512 -smp 1 "${mem[@]}" \
    -nographic -no-reboot -nodefaults -serial stdio -monitor none -kernel "$kernel" -initrd "$work/initrd.cpio.gz" \
    -append "console=ttyS0 panic=-1 quiet mem=256M uvfio.edu" \
    -device '{"driver":"vfio-user-pci","id":"edu0","socket":{"type":"unix","path":"'"$work/g/vfio-user/0000:00:03.0.sock"'"}}' \
    -device '{"driver":"vfio-user-pci","id":"edu1","socket":{"type":"unix","path":"'"$work/g/vfio-user/0000:00:04.0.sock"'"}}' \
    < /dev/null > "$work/serial-$ram.log" 2>&1 || true
  grep "^EDUCHECK" "$work/serial-$ram.log" | sed "s/^/$ram: /"
  if ! grep -q "^EDUCHECK ALL PASS" "$work/serial-$ram.log" || grep -q "^EDUCHECK .* FAIL" "$work/serial-$ram.log" ||
     [ "$(grep -c '^EDUCHECK .* dma-round-trip PASS' "$work/serial-$ram.log")" != 2 ]; then
    cat "$work/serial-$ram.log" "$work/g.log"; echo "the guest ($ram RAM) did not drive both edu devices"; exit 1
  fi
done
echo "plugin: a Linux guest drove the plugin's devices (shared and message-based DMA)"
