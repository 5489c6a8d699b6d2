#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# The project as a user gets it: `cmake --install` into a fresh prefix, the
# C example built against the installed package with pkg-config and with
# find_package (shared and static), each run against the installed uvfiod;
# the installed systemd unit verified; the man pages rendered without a
# warning.
# Usage: check_install.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1 src=$2
work=$(mktemp -d /tmp/uvfio-install-XXXXXX)
D=
M=
trap '{ [ -n "$M" ] && kill $M; [ -n "$D" ] && kill $D; } 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"' EXIT
prefix=$work/prefix
cmake --install "$build" --prefix "$prefix" > "$work/install.log"
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
export LD_LIBRARY_PATH=$prefix/lib

# pkg-config
cc -Wall -Werror "$src/examples/vf_dma.c" $(pkg-config --cflags --libs uvfio-client) -o "$work/vf_dma_pc"
# find_package
cmake -S "$src/examples" -B "$work/ex" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" > "$work/ex.log"
cmake --build "$work/ex" > "$work/ex-build.log"

"$prefix/bin/uvfiod" --rundir "$work/run" --no-fuse 2>"$work/uvfiod.log" &
D=$!
sock=$work/run/vfio-user/0000:08:00.0.sock
for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
for ex in "$work/vf_dma_pc" "$work/ex/vf_dma" "$work/ex/vf_dma_static"; do
  out=$("$ex" "$sock")
  echo "$out" | sed "s|^|$(basename "$ex"): |"
  echo "$out" | grep -q ": match$" || { echo "$ex: no match"; exit 1; }
done
ldd "$work/ex/vf_dma_static" | grep -q uvfio-client && { echo "vf_dma_static links the shared library"; exit 1; }

# The unit as installed, its ExecStart pointed at this prefix (a unit is
# not relocatable: it names the configured prefix).
unit=$prefix/lib/systemd/system/uvfiod.service
grep -q "^ExecStart=.*/uvfiod --rundir /run/uvfio --no-fuse --config-if-present .*/uvfio/topology.toml$" "$unit"
sed -e "s|^ExecStart=[^ ]*/uvfiod|ExecStart=$prefix/bin/uvfiod|" "$unit" > "$work/uvfiod.service"
MANPATH=$prefix/share/man: systemd-analyze verify "$work/uvfiod.service"
# Their confinement, as systemd rates it (exposure 0-10, here x10): uvfiod,
# which parses every VM's requests, at 2.0 or below; the FUSE mount helper,
# which parses nothing from a VM but needs the host's mount namespace and
# CAP_SYS_ADMIN, at 3.5 or below.
sed -e "s|^ExecStart=[^ ]*/uvfioctl|ExecStart=$prefix/bin/uvfioctl|" "$prefix/lib/systemd/system/uvfio-sysfs.service" \
  > "$work/uvfio-sysfs.service"
MANPATH=$prefix/share/man: systemd-analyze verify "$work/uvfio-sysfs.service"
# The Prometheus textfile writer and its timer: both verify; the writer,
# which only reads the control socket and writes one file, at 2.0 or below.
sed -e "s|^ExecStart=[^ ]*/uvfioctl|ExecStart=$prefix/bin/uvfioctl|" "$prefix/lib/systemd/system/uvfio-metrics.service" \
  > "$work/uvfio-metrics.service"
cp "$prefix/lib/systemd/system/uvfio-metrics.timer" "$work/uvfio-metrics.timer"
(cd "$work" && MANPATH=$prefix/share/man: systemd-analyze verify uvfio-metrics.service uvfio-metrics.timer)
for u in uvfiod:20 uvfio-sysfs:35 uvfio-metrics:20; do
  systemd-analyze security --offline=true --threshold=${u#*:} "$work/${u%:*}.service" > "$work/security.txt" ||
    { grep -v "✓" "$work/security.txt"; echo "${u%:*}.service: exposure above ${u#*:}/10"; exit 1; }
  tail -1 "$work/security.txt"
done
grep -q -- "--no-fuse" "$work/uvfiod.service" || { echo "uvfiod.service mounts FUSE from inside its sandbox"; exit 1; }
# What the units leave the programs, without systemd: uvfiod with no
# capability at all and no new privileges serves its sockets; the mount
# helper with CAP_SYS_ADMIN alone mounts the tree from the control socket;
# reads and an unbind/bind through that mount work.
if [ -c /dev/fuse ] && [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
  kill "$D" 2>/dev/null; wait "$D" 2>/dev/null || true
  D=
  rd=$work/confined
  mkdir -m 0755 "$rd"
  setpriv --no-new-privs --bounding-set -all --inh-caps -all \
    "$prefix/bin/uvfiod" --rundir "$rd" --no-fuse > "$work/confined.log" 2>&1 &
  D=$!
  setpriv --no-new-privs --bounding-set -all,+sys_admin --inh-caps -all \
    "$prefix/bin/uvfioctl" --rundir "$rd" mount "$rd/sys" > "$work/mount.log" 2>&1 &
  M=$!
  dev=$rd/sys/bus/pci/devices/0000:08:00.0
  for _ in $(seq 200); do [ -e "$dev/vendor" ] && break; sleep 0.05; done
  [ "$(cat "$dev/vendor" 2>/dev/null)" = 0x15b3 ] ||
    { cat "$work/confined.log" "$work/mount.log"; echo "confined: no attribute tree"; exit 1; }
  echo 0000:08:00.0 > "$rd/sys/bus/pci/drivers/mlx5_vfio_pci/unbind"
  [ ! -e "$dev/driver" ] || { echo "confined: unbind through the mount did nothing"; exit 1; }
  echo 0000:08:00.0 > "$rd/sys/bus/pci/drivers/mlx5_vfio_pci/bind"
  [ "$(basename "$(readlink "$dev/driver")")" = mlx5_vfio_pci ] || { echo "confined: bind failed"; exit 1; }
  kill "$M"; wait "$M" || { cat "$work/mount.log"; echo "confined mount: bad exit"; exit 1; }
  M=
  grep -q " $rd/sys " /proc/self/mountinfo && { echo "confined mount: left mounted"; exit 1; }
  kill "$D"; wait "$D" || { cat "$work/confined.log"; echo "confined uvfiod: bad exit"; exit 1; }
  D=
  echo "confined: uvfiod without capabilities, the tree mounted by uvfioctl with CAP_SYS_ADMIN alone"
fi

# Man pages: rendered, no warning.
for page in $(find "$prefix/share/man" -type f); do
  warn=$(MANWIDTH=80 man --warnings -E UTF-8 -l "$page" 2>&1 >/dev/null)
  [ -z "$warn" ] || { echo "$page: $warn"; exit 1; }
done
echo "install: ok"
