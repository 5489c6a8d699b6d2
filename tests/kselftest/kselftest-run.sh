#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-only OR BSD-3-Clause
#
# Runs the kernel's VFIO selftests on every uvfio VF inside the QEMU guest
# (the init runs it when uvfio.kselftest is on the kernel command line).
# Loads the guest kernel's own VFIO modules, binds each VF (15b3:101e) to
# vfio-pci through driver_override, and runs each selftest on each VF:
#   vfio_pci_device_test      once per type1 mode (it has no IOMMU variants:
#                             VFIO_SELFTESTS_IOMMU_MODE chooses, build.sh)
#   vfio_dma_mapping_test,    once, with every variant but the iommufd ones
#   vfio_dma_mapping_mmio_test, (this guest kernel has no iommufd): both
#   vfio_pci_driver_test      type1 modes
# With uvfio.kselftest=driver, only vfio_pci_driver_test's memcpy_success
# and memcpy_storm run, on the first VF (the negative run of the QEMU test).
# Everything between "=== kselftest ..." and "=== end rc=N seconds=S" is
# the selftest's own TAP output.

iommufd_variants() {	# the -V options that leave out the iommufd variants (-l lists on stderr)
	VFIO_SELFTESTS_IOMMU_MODE=vfio_type1v2_iommu "$1" -l "$2" 2>&1 |
		tr -s ' \t' '\n\n' | grep '^iommufd' | sort -u | sed 's/^/-V /'
}

run() {	# run PROGRAM MODE|variants BDF [OPTIONS...]
	prog=$1 mode=$2 bdf=$3
	shift 3
	# With variants, the default mode is only what vfio_pci_driver_test's
	# main() uses to look for a driver before the harness runs.
	env=$mode
	[ "$mode" = variants ] && env=vfio_type1v2_iommu
	echo "=== kselftest $prog mode=$mode bdf=$bdf"
	start=$(date +%s)
	VFIO_SELFTESTS_IOMMU_MODE=$env /bin/kselftest/$prog "$@" "$bdf" 2>&1
	rc=$?
	echo "=== end rc=$rc seconds=$(($(date +%s) - start))"
}

only=$(sed -n 's/.*uvfio.kselftest=\([a-z]*\).*/\1/p' /proc/cmdline)

echo "=== kselftest-setup"
cat /bin/kselftest/VERSION
for m in irqbypass vfio vfio_virqfd vfio_iommu_type1 vfio-pci-core vfio-pci; do
	insmod /lib/vfio/$m.ko || echo "KSELFTEST-INSMOD-FAILED $m"
done
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
# Large pinned regions map as 2 MiB pages through the guest IOMMU.
echo always > /sys/kernel/mm/transparent_hugepage/shmem_enabled
echo always > /sys/kernel/mm/transparent_hugepage/enabled
echo 8 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
grep -q pdpe1gb /proc/cpuinfo || echo "KSELFTEST-NO-1G-PAGES (the CPU has no pdpe1gb)"
echo "hugepages 2M: $(cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages)" \
	"1G: $(cat /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages 2>/dev/null)"
vfs=""
for d in /sys/bus/pci/devices/*; do
	[ "$(cat "$d/vendor")" = 0x15b3 ] && [ "$(cat "$d/device")" = 0x101e ] || continue
	bdf=${d##*/}
	echo vfio-pci > "$d/driver_override"
	echo "$bdf" > /sys/bus/pci/drivers_probe
	drv=$(readlink "$d/driver")
	echo "KSELFTEST-VF $bdf driver=${drv##*/} group=$(readlink "$d/iommu_group" | sed 's|.*/||')"
	vfs="$vfs $bdf"
done
ls /dev/vfio
echo "=== end"

if [ "$only" = driver ]; then
	for bdf in $vfs; do
		# -V before -t: the harness takes the first option that names a test.
		run vfio_pci_driver_test variants "$bdf" \
			$(iommufd_variants /bin/kselftest/vfio_pci_driver_test "$bdf") \
			-t memcpy_success -t memcpy_storm
		break
	done
	echo "KSELFTEST-DONE"
	exit 0
fi
for bdf in $vfs; do
	for mode in vfio_type1_iommu vfio_type1v2_iommu; do
		run vfio_pci_device_test $mode "$bdf"
	done
	for prog in vfio_dma_mapping_test vfio_dma_mapping_mmio_test vfio_pci_driver_test; do
		# shellcheck disable=SC2046
		run $prog variants "$bdf" $(iommufd_variants /bin/kselftest/$prog "$bdf")
	done
done
echo "KSELFTEST-DONE"
