#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Builds the guest's kernel modules for the QEMU e2e tests, out of tree,
# against exactly the guest kernel (tests/qemu/prepare-guest.sh unpacks its
# headers): uvfio_vf_dma.ko (guest/linux/, our VF's dmaengine driver) and
# the kernel's own dmatest.ko from the same kernel's source package; the
# driver must pass the same kernel's scripts/checkpatch.pl --strict.
#   build-modules.sh GUEST_DIR SOURCE_DIR OUT_DIR
set -euo pipefail
guest=$(cd "$1" && pwd) src=$(cd "$2" && pwd) out=$3
k=$guest/kernel
[ -s "$k/ready" ] || { echo "build-modules: $k missing: run tests/qemu/prepare-guest.sh" >&2; exit 1; }
headers=$(ls -d "$k"/root/usr/src/linux-headers-*-amd64)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/vf" "$work/dmatest" "$out"
cp "$src/guest/linux/uvfio_vf_dma.c" "$src/guest/linux/Kbuild" "$work/vf/"
cp "$k/src/drivers/dma/dmaengine.h" "$work/vf/"
cp "$k/src/drivers/dma/dmatest.c" "$work/dmatest/"
echo 'obj-m := dmatest.o' > "$work/dmatest/Kbuild"
for m in vf dmatest; do
  make -s -C "$headers" M="$work/$m" W=1 modules > "$work/$m.log" 2>&1 || { cat "$work/$m.log"; exit 1; }
  # Our driver builds without a warning (W=1); dmatest is the kernel's.
  if [ $m = vf ] && grep -q "warning:" "$work/$m.log"; then cat "$work/$m.log"; exit 1; fi
done
# The kernel's own style check, strict: nothing to report.
if ! perl "$k/src/scripts/checkpatch.pl" --no-tree --strict --quiet -f "$src/guest/linux/uvfio_vf_dma.c" \
    > "$work/checkpatch.log" 2>&1; then
  cat "$work/checkpatch.log"
  echo "build-modules: checkpatch.pl --strict found problems in guest/linux/uvfio_vf_dma.c" >&2
  exit 1
fi
cp "$work/vf/uvfio_vf_dma.ko" "$work/dmatest/dmatest.ko" "$out/"
