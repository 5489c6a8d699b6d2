#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Boots the test guest under QEMU 10.2 with the seed's two VFs attached over
# vfio-user, with the command line the CI test (tests/e2e/qemu_e2e_test.cc)
# uses. Run ./scripts/run.sh first (in another terminal); the guest prints
# lspci and vf_check's results, then powers off.
#   scripts/run-qemu.sh [RUNDIR]     (default: uvfiod's default run dir)
# QEMU: $UVFIO_QEMU, else ../shared/tools/qemu/bin/qemu-system-x86_64.
set -euo pipefail
cd "$(dirname "$0")/.."
# uvfiod's default (src/base/rundir.h).
if [ "$(id -u)" -eq 0 ]; then def=/run/uvfio
elif [ -n "${XDG_RUNTIME_DIR:-}" ]; then def=$XDG_RUNTIME_DIR/uvfio
else def=/tmp/uvfio-$(id -u); fi
rundir=${1:-${UVFIO_RUNDIR:-$def}}
qemu=${UVFIO_QEMU:-$(cd .. && pwd)/shared/tools/qemu/bin/qemu-system-x86_64}
share=$(dirname "$(dirname "$qemu")")/share
[ -x "$qemu" ] || { echo "run-qemu: no QEMU at $qemu (set UVFIO_QEMU)" >&2; exit 1; }
for vf in 0000:08:00.0 0000:09:00.0; do
  [ -S "$rundir/vfio-user/$vf.sock" ] || { echo "run-qemu: no $rundir/vfio-user/$vf.sock: is ./scripts/run.sh running?" >&2; exit 1; }
done
./scripts/setup.sh
tests/qemu/prepare-guest.sh
cmake --preset release >/dev/null
cmake --build --preset release --target qemu_guest >/dev/null
set -x
exec "$qemu" -L "$share" -M q35,memory-backend=mem -accel tcg -m 512 -smp 1 \
  -object memory-backend-memfd,id=mem,size=512M,share=on \
  -nographic -no-reboot -nodefaults -serial stdio -monitor none \
  -kernel build/guest/vmlinuz -initrd build/release/tests/initrd.cpio.gz \
  -append "console=ttyS0 panic=-1 quiet mem=256M" \
  -device '{"driver":"vfio-user-pci","id":"vf0","socket":{"type":"unix","path":"'"$rundir"'/vfio-user/0000:08:00.0.sock"}}' \
  -device '{"driver":"vfio-user-pci","id":"vf1","socket":{"type":"unix","path":"'"$rundir"'/vfio-user/0000:09:00.0.sock"}}'
