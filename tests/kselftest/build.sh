#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-only OR BSD-3-Clause
# Builds the kernel's VFIO selftests, statically, for the QEMU guest, from
# the source tests/kselftest/fetch-source.sh unpacked, with that source's
# own UAPI headers and Makefiles. What is changed, every change checked
# (the build fails if a pattern no longer matches) and listed in
# docs/kselftest.md:
#   1. our VF's driver, tests/kselftest/uvfio_vf.c, is added to the
#      selftests' driver framework (lib/drivers/uvfio_vf/, one line in
#      lib/libvfio.mk, two in lib/vfio_pci_driver.c);
#   2. lib/iommu.c: the default IOMMU mode (iommufd, which the 6.1 guest
#      kernel lacks) can be chosen with VFIO_SELFTESTS_IOMMU_MODE; the tests
#      without variants (vfio_pci_device_test) use it;
#   3. where lib/ calls calloc_assert() but nothing defines it (Debian's
#      7.2.13 backported a caller without the helper), a definition is
#      force-included.
#   build.sh KSELFTEST_DIR OUT_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
kdir=$(cd "$1" && pwd)
mkdir -p "$2"
out=$(cd "$2" && pwd)
src=$kdir/src
st=$src/tools/testing/selftests
[ -s "$kdir/VERSION" ] || { echo "kselftest build: $kdir/VERSION missing: run tests/kselftest/fetch-source.sh" >&2; exit 1; }
# Patch a fresh copy of the pristine tree each time.
[ -d "$st/vfio.orig" ] || cp -a "$st/vfio" "$st/vfio.orig"
rm -rf "$st/vfio"
cp -a "$st/vfio.orig" "$st/vfio"
v=$st/vfio
mkdir -p "$v/lib/drivers/uvfio_vf"
cp "$here/uvfio_vf.c" "$v/lib/drivers/uvfio_vf/"

must() {  # must FILE PATTERN: the anchor a change needs is there
  grep -q -- "$2" "$1" || { echo "kselftest build: '$2' not found in $1: update tests/kselftest/build.sh" >&2; exit 1; }
}
must "$v/lib/libvfio.mk" '^LIBVFIO_C += drivers/dsa/dsa.c$'
sed -i 's|^LIBVFIO_C += drivers/dsa/dsa.c$|&\nLIBVFIO_C += drivers/uvfio_vf/uvfio_vf.c|' "$v/lib/libvfio.mk"
must "$v/lib/vfio_pci_driver.c" '^extern struct vfio_pci_driver_ops ioat_ops;$'
must "$v/lib/vfio_pci_driver.c" '^	&ioat_ops,$'
sed -i -e 's|^extern struct vfio_pci_driver_ops ioat_ops;$|&\nextern struct vfio_pci_driver_ops uvfio_vf_ops;|' \
       -e 's|^	&ioat_ops,$|&\n	\&uvfio_vf_ops,|' "$v/lib/vfio_pci_driver.c"
must "$v/lib/iommu.c" '^const char \*default_iommu_mode = MODE_IOMMUFD;$'
cat >> "$v/lib/iommu.c" <<'EOF'

/* uvfio (tests/kselftest/build.sh): the default mode from the environment. */
static void __attribute__((constructor)) uvfio_default_iommu_mode(void)
{
	const char *mode = getenv("VFIO_SELFTESTS_IOMMU_MODE");

	if (mode && *mode)
		default_iommu_mode = mode;
}
EOF
extra=""
if grep -rq 'calloc_assert(' "$v/lib" && ! grep -rqE '(\*|define )calloc_assert' "$v/lib" "$st"/*.h; then
  extra="-include $here/calloc_assert.h"
fi
rm -rf "$out"/*
make -s -C "$v" OUTPUT="$out" \
  KHDR_INCLUDES="-isystem $src/include/uapi -isystem $src/arch/x86/include/uapi" \
  EXTRA_CFLAGS="$extra" LDFLAGS="-static -pthread" > "$out/build.log" 2>&1 || { cat "$out/build.log"; exit 1; }
# Our driver follows the kernel's style: the same source's checkpatch.pl, strict.
if ! perl "$src/scripts/checkpatch.pl" --no-tree --strict --quiet -f "$here/uvfio_vf.c" "$here/calloc_assert.h" \
    > "$out/checkpatch.log" 2>&1; then
  cat "$out/checkpatch.log"
  echo "kselftest build: checkpatch.pl --strict found problems in tests/kselftest/" >&2
  exit 1
fi
progs=(vfio_pci_device_test vfio_dma_mapping_test vfio_dma_mapping_mmio_test vfio_pci_driver_test)
mkdir -p "$out/bin"
for p in "${progs[@]}"; do
  file "$out/$p" | grep -q "statically linked" || { echo "kselftest build: $p is not static" >&2; exit 1; }
  strip -o "$out/bin/$p" "$out/$p"
done
cp "$kdir/VERSION" "$out/bin/VERSION"
echo "kselftest: ${progs[*]} from $(cat "$kdir/VERSION")"
