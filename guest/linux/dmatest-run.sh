#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-only OR BSD-3-Clause
#
# Runs the kernel's dmatest on every uvfio VF channel, as the QEMU e2e test
# asks on the kernel command line:
#   uvfio.dmatest=ITERATIONS  iterations per thread (threads_per_chan=2,
#                             test_buf_size=16384, verification on)
#   uvfio.corrupt=N           uvfio_vf_dma's test-only corrupt_every=N
#   uvfio.maptest=MIB         uvfio_vf_dma's test-only map_test_mib=MIB
# memcpy and memset, each with interrupts and polled; then a function reset
# of every VF under the bound driver and a short run again; then rmmod.
#
# Polled runs use one thread per channel: dmatest's polled mode calls
# dmaengine_terminate_sync() after each of its tests, and by the dmaengine
# contract that aborts every transfer on the channel, the other thread's
# too (a provider that implements terminate_all loses them at random; ours
# reports them as DMA_ERROR).
# Everything between "=== dmatest ..." and "=== end" is dmatest's own log.

arg() {
	sed -n "s/.*$1=\([0-9]*\).*/\1/p" /proc/cmdline
}

iters=$(arg uvfio.dmatest)
corrupt=$(arg uvfio.corrupt)
maptest=$(arg uvfio.maptest)
params="test_buf_size=16384 timeout=30000"

run() {	# run TYPE POLLED ITERATIONS
	threads=2
	[ "$2" = 1 ] && threads=1
	dmesg -c > /dev/null
	if ! insmod /lib/uvfio/dmatest.ko $params threads_per_chan=$threads \
			dmatest=$1 polled=$2 iterations=$3 run=1; then
		echo "DMATEST-LOAD-FAILED type=$1 polled=$2"
		return
	fi
	cat /sys/module/dmatest/parameters/wait > /dev/null
	echo "=== dmatest type=$1 polled=$2 iterations=$3"
	dmesg | grep -e dmatest -e uvfio_vf_dma
	echo "=== end"
	rmmod dmatest
}

dmesg -c > /dev/null
insmod /lib/uvfio/uvfio_vf_dma.ko ${corrupt:+corrupt_every=$corrupt} \
	${maptest:+map_test_mib=$maptest} ||
	echo "DMATEST-DRIVER-LOAD-FAILED"
echo "=== driver"
dmesg | grep uvfio_vf_dma
echo "=== end"
for type in 0 1; do
	for polled in 0 1; do
		run $type $polled $iters
	done
done

# FLR with the driver bound: reset_prepare/reset_done, then the engine
# works again.
dmesg -c > /dev/null
for dev in /sys/bus/pci/drivers/uvfio_vf_dma/0000:*; do
	echo 1 > "$dev/reset" && echo "DMATEST-RESET-OK ${dev##*/}" ||
		echo "DMATEST-RESET-FAILED ${dev##*/}"
done
echo "=== reset"
dmesg | grep uvfio_vf_dma
echo "=== end"
run 0 0 50

dmesg -c > /dev/null
rmmod uvfio_vf_dma && echo "DMATEST-RMMOD-OK" || echo "DMATEST-RMMOD-FAILED"
echo "=== removed"
dmesg | grep uvfio_vf_dma
echo "=== end"

# Loaded again after the remove: it binds both VFs and works as before.
dmesg -c > /dev/null
insmod /lib/uvfio/uvfio_vf_dma.ko && echo "DMATEST-RELOAD-OK" || echo "DMATEST-RELOAD-FAILED"
run 1 0 30
rmmod uvfio_vf_dma && echo "DMATEST-RMMOD-AGAIN-OK" || echo "DMATEST-RMMOD-AGAIN-FAILED"
