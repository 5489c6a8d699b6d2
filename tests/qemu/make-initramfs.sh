#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Builds the guest's initramfs for the QEMU e2e test: busybox (static),
# lspci/setpci with their libraries and pci.ids, and vf_check, with an init
# that prints `lspci -vvv` of the mlx5 VFs, runs vf_check and powers off
# (or, with uvfio.hold on the kernel command line, waits to be killed).
# With MODULES_DIR (uvfio_vf_dma.ko, dmatest.ko: tests/qemu/build-modules.sh)
# and uvfio.dmatest=ITERATIONS on the kernel command line, the init loads
# the VF's dmaengine driver instead and runs the kernel's dmatest on every
# channel (guest/linux/dmatest-run.sh).
# With KSELFTEST_DIR (the static VFIO selftests: tests/kselftest/build.sh)
# and VFIO_MODULES_DIR (the guest kernel's own vfio modules:
# tests/qemu/prepare-guest.sh) and uvfio.kselftest on the kernel command
# line, the init runs the kernel's VFIO selftests on every VF
# (tests/kselftest/kselftest-run.sh).
# With EDU_GUEST (a static examples/edu/edu_guest) in the environment and
# uvfio.edu on the kernel command line, the init drives the edu devices
# with it instead.
#   make-initramfs.sh OUT.cpio.gz VF_CHECK_BINARY [MODULES_DIR [KSELFTEST_DIR VFIO_MODULES_DIR]]
# Needs: busybox-static, pciutils, cpio (scripts/setup.sh installs them).
set -euo pipefail
out=$1
check=$2
modules=${3:-}
kselftest=${4:-}
vfio_modules=${5:-}
busybox=$(command -v busybox || true)
[ -n "$busybox" ] && file -L "$busybox" 2>/dev/null | grep -q "statically linked" || busybox=/bin/busybox
for need in "$busybox" /usr/bin/lspci /usr/bin/setpci /usr/share/misc/pci.ids "$check"; do
  [ -e "$need" ] || { echo "make-initramfs: missing $need (run scripts/setup.sh)" >&2; exit 1; }
done
command -v cpio >/dev/null || { echo "make-initramfs: cpio missing (run scripts/setup.sh)" >&2; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,proc,sys,dev,tmp,usr/share/misc,lib64}
cp "$busybox" "$root/bin/busybox"
for c in sh mount poweroff sleep cat grep dmesg echo ls insmod rmmod sed head tr wc seq sort readlink date; do ln -s busybox "$root/bin/$c"; done
cp /usr/bin/lspci /usr/bin/setpci "$root/bin/"
cp /usr/share/misc/pci.ids "$root/usr/share/misc/"
# The dynamic loader and every library lspci/setpci need, at their paths.
for lib in $(ldd /usr/bin/lspci /usr/bin/setpci | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $1 !~ /:$/ {print $1}' | sort -u); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cp "$check" "$root/bin/vf_check"
[ -n "${EDU_GUEST:-}" ] && cp "$EDU_GUEST" "$root/bin/edu_guest"
if [ -n "$modules" ]; then
  mkdir -p "$root/lib/uvfio"
  cp "$modules/uvfio_vf_dma.ko" "$modules/dmatest.ko" "$root/lib/uvfio/"
  cp "$(dirname "$0")/../../guest/linux/dmatest-run.sh" "$root/bin/dmatest-run"
  chmod +x "$root/bin/dmatest-run"
fi
if [ -n "$kselftest" ]; then
  mkdir -p "$root/bin/kselftest" "$root/lib/vfio"
  cp "$kselftest"/* "$root/bin/kselftest/"
  cp "$vfio_modules"/*.ko "$root/lib/vfio/"
  cp "$(dirname "$0")/../kselftest/kselftest-run.sh" "$root/bin/kselftest-run"
  chmod +x "$root/bin/kselftest-run"
fi
cat > "$root/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "GUEST-BOOT-OK $(cat /proc/sys/kernel/osrelease)"
echo "=== lspci"
lspci -vvv -nn -d 15b3:101e 2>&1
echo "=== end lspci"
if grep -q uvfio.edu /proc/cmdline && [ -x /bin/edu_guest ]; then
  lspci -vv -nn -d 1234:11e8 2>&1
  /bin/edu_guest 0x10000000
elif grep -q uvfio.kselftest /proc/cmdline && [ -x /bin/kselftest-run ]; then
  /bin/kselftest-run
elif grep -q uvfio.dmatest= /proc/cmdline && [ -x /bin/dmatest-run ]; then
  /bin/dmatest-run
else
  /bin/vf_check 0x10000000 208
fi
echo "GUEST-DONE"
if grep -q uvfio.hold /proc/cmdline; then
  echo "GUEST-HOLDING"
  while true; do sleep 60; done
fi
poweroff -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet) | gzip -1 > "$out.tmp"
mv "$out.tmp" "$out"
