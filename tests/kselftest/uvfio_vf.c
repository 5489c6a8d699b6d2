// SPDX-License-Identifier: GPL-2.0-only OR BSD-3-Clause
/*
 * A driver for the uvfio mlx5 VF model (15b3:101e) in the kernel VFIO
 * selftests' driver framework (tools/testing/selftests/vfio/lib/drivers/),
 * for vfio_pci_driver_test. Added to an unpacked kernel tree at test time by
 * tests/kselftest/build.sh; the register map is docs/devices/mlx5-vf.md.
 *
 * memcpy_start() posts @count COPY descriptors to the VF's work queue and
 * rings its doorbell once; memcpy_wait() waits for as many completions and
 * fails if any of them carries an error status (an unmapped IOVA completes
 * with -EFAULT's positive errno) or if the queue stopped in error.
 * Interrupts are off except inside send_msi(), which copies eight bytes
 * with the queue's interrupt on and returns once the MSI-X eventfd fired.
 */
#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <unistd.h>

#include <linux/bits.h>
#include <linux/io.h>
#include <linux/sizes.h>

#include <libvfio.h>

#define UVFIO_VF_VENDOR		0x15b3
#define UVFIO_VF_DEVICE		0x101e

/* BAR0 registers */
#define UVFIO_VF_ID		0x000
#define UVFIO_VF_ID_MAGIC	0x6d6c7835
#define UVFIO_VF_VERSION	0x004
#define UVFIO_VF_STATUS		0x008
#define  UVFIO_VF_STATUS_READY	BIT(0)
#define  UVFIO_VF_STATUS_ERROR	BIT(2)
#define UVFIO_VF_SQ_BASE	0x010
#define UVFIO_VF_SQ_SIZE	0x018
#define UVFIO_VF_SQ_TAIL	0x01c
#define UVFIO_VF_CQ_BASE	0x028
#define UVFIO_VF_CQ_SIZE	0x030
#define UVFIO_VF_CQ_TAIL	0x034
#define UVFIO_VF_CQ_HEAD	0x038
#define UVFIO_VF_CTRL		0x03c
#define  UVFIO_VF_CTRL_ENABLE	BIT(0)
#define UVFIO_VF_IRQ_VECTOR	0x040
#define UVFIO_VF_IRQ_CTRL	0x044
#define  UVFIO_VF_IRQ_ON	BIT(0)

#define UVFIO_VF_OP_COPY	1
#define UVFIO_VF_MAX_LENGTH	SZ_1M
#define UVFIO_VF_RING		4096	/* entries of both rings */

struct uvfio_vf_desc {
	u8 opcode;
	u8 flags;
	u16 rsvd;
	u32 length;
	u64 src;
	u64 dst;
	u64 cookie;
};

struct uvfio_vf_cqe {
	u64 cookie;
	u32 status;
	u32 result;
};

struct uvfio_vf_state {
	struct uvfio_vf_desc sq[UVFIO_VF_RING];
	struct uvfio_vf_cqe cq[UVFIO_VF_RING];
	u32 sq_tail;
	u32 cq_head;
	u32 pending;
	u64 cookie;
	u64 msi_src;
	u64 msi_dst;
};

static_assert(sizeof(struct uvfio_vf_desc) == 32, "descriptor layout");
static_assert(sizeof(struct uvfio_vf_cqe) == 16, "completion layout");

static inline struct uvfio_vf_state *to_state(struct vfio_pci_device *device)
{
	return device->driver.region.vaddr;
}

static inline void *regs(struct vfio_pci_device *device)
{
	return device->bars[0].vaddr;
}

static int uvfio_vf_probe(struct vfio_pci_device *device)
{
	u32 id;

	if (!vfio_pci_device_match(device, UVFIO_VF_VENDOR, UVFIO_VF_DEVICE))
		return -EINVAL;

	/* A real ConnectX VF has the same IDs: only the model has this ID. */
	if (!regs(device))
		return -EINVAL;
	id = readl(regs(device) + UVFIO_VF_ID);
	if (id != UVFIO_VF_ID_MAGIC) {
		dev_err(device, "uvfio_vf: not a uvfio VF (ID register 0x%x)\n", id);
		return -EINVAL;
	}
	return 0;
}

static void uvfio_vf_queue_off(struct vfio_pci_device *device)
{
	writel(0, regs(device) + UVFIO_VF_IRQ_CTRL);
	writel(0, regs(device) + UVFIO_VF_CTRL);
}

static void uvfio_vf_queue_on(struct vfio_pci_device *device)
{
	struct uvfio_vf_state *vf = to_state(device);

	uvfio_vf_queue_off(device);
	writeq(to_iova(device, vf->sq), regs(device) + UVFIO_VF_SQ_BASE);
	writel(UVFIO_VF_RING, regs(device) + UVFIO_VF_SQ_SIZE);
	writeq(to_iova(device, vf->cq), regs(device) + UVFIO_VF_CQ_BASE);
	writel(UVFIO_VF_RING, regs(device) + UVFIO_VF_CQ_SIZE);
	/* 0 -> 1 zeroes the four ring indices. */
	writel(UVFIO_VF_CTRL_ENABLE, regs(device) + UVFIO_VF_CTRL);
	vf->sq_tail = 0;
	vf->cq_head = 0;
	vf->pending = 0;
	VFIO_ASSERT_EQ(readl(regs(device) + UVFIO_VF_STATUS) & UVFIO_VF_STATUS_ERROR, 0);
}

static void uvfio_vf_init(struct vfio_pci_device *device)
{
	VFIO_ASSERT_GE(device->driver.region.size, sizeof(struct uvfio_vf_state));

	vfio_pci_config_writew(device, PCI_COMMAND,
			       PCI_COMMAND_MEMORY |
			       PCI_COMMAND_MASTER |
			       PCI_COMMAND_INTX_DISABLE);

	uvfio_vf_queue_on(device);

	vfio_pci_msix_enable(device, 0, device->msix_info.count);

	device->driver.msi = 0;
	writel(device->driver.msi, regs(device) + UVFIO_VF_IRQ_VECTOR);
	device->driver.max_memcpy_size = UVFIO_VF_MAX_LENGTH;
	device->driver.max_memcpy_count = UVFIO_VF_RING;
}

static void uvfio_vf_remove(struct vfio_pci_device *device)
{
	uvfio_vf_queue_off(device);
	vfio_pci_msix_disable(device);
}

static void uvfio_vf_post(struct vfio_pci_device *device, iova_t src,
			  iova_t dst, u64 size, u64 count)
{
	struct uvfio_vf_state *vf = to_state(device);
	u64 i;

	VFIO_ASSERT_EQ(vf->pending, 0);
	for (i = 0; i < count; i++) {
		vf->sq[(vf->sq_tail + i) % UVFIO_VF_RING] = (struct uvfio_vf_desc) {
			.opcode = UVFIO_VF_OP_COPY,
			.length = size,
			.src = src,
			.dst = dst,
			.cookie = ++vf->cookie,
		};
	}
	vf->sq_tail += count;
	vf->pending = count;
	/* The descriptors are in memory before the doorbell. */
	__sync_synchronize();
	writel(vf->sq_tail, regs(device) + UVFIO_VF_SQ_TAIL);
}

static void uvfio_vf_memcpy_start(struct vfio_pci_device *device,
				  iova_t src, iova_t dst, u64 size, u64 count)
{
	uvfio_vf_post(device, src, dst, size, count);
}

static int uvfio_vf_memcpy_wait(struct vfio_pci_device *device)
{
	struct uvfio_vf_state *vf = to_state(device);
	u64 first = vf->cookie - vf->pending + 1;
	u32 tail, status, i;
	int r = 0;

	for (;;) {
		tail = readl(regs(device) + UVFIO_VF_CQ_TAIL);
		if (tail - vf->cq_head >= vf->pending)
			break;
		status = readl(regs(device) + UVFIO_VF_STATUS);
		if (status & UVFIO_VF_STATUS_ERROR) {
			dev_err(device, "uvfio_vf: the queue stopped in error\n");
			uvfio_vf_queue_on(device);
			return -1;
		}
	}

	__sync_synchronize();
	for (i = 0; i < vf->pending; i++) {
		struct uvfio_vf_cqe *c = &vf->cq[(vf->cq_head + i) % UVFIO_VF_RING];

		if (c->cookie != first + i) {
			dev_err(device, "uvfio_vf: completion %u has cookie %lu, expected %lu\n",
				i, (unsigned long)c->cookie, (unsigned long)(first + i));
			r = -1;
		} else if (c->status && !r) {
			dev_err(device, "uvfio_vf: copy %u of %u failed: status %u\n",
				i, vf->pending, c->status);
			r = -1;
		}
	}
	vf->cq_head += vf->pending;
	vf->pending = 0;
	writel(vf->cq_head, regs(device) + UVFIO_VF_CQ_HEAD);
	return r;
}

static void uvfio_vf_send_msi(struct vfio_pci_device *device)
{
	struct uvfio_vf_state *vf = to_state(device);
	struct pollfd pfd = {
		.fd = device->msi_eventfds[device->driver.msi],
		.events = POLLIN,
	};

	writel(UVFIO_VF_IRQ_ON, regs(device) + UVFIO_VF_IRQ_CTRL);
	uvfio_vf_post(device, to_iova(device, &vf->msi_src),
		      to_iova(device, &vf->msi_dst), sizeof(vf->msi_src), 1);
	VFIO_ASSERT_EQ(uvfio_vf_memcpy_wait(device), 0);
	/*
	 * The interrupt follows the completion: wait for it (without
	 * consuming it) before interrupts go off again.
	 */
	VFIO_ASSERT_EQ(poll(&pfd, 1, 10000), 1);
	writel(0, regs(device) + UVFIO_VF_IRQ_CTRL);
}

const struct vfio_pci_driver_ops uvfio_vf_ops = {
	.name = "uvfio_vf",
	.probe = uvfio_vf_probe,
	.init = uvfio_vf_init,
	.remove = uvfio_vf_remove,
	.memcpy_start = uvfio_vf_memcpy_start,
	.memcpy_wait = uvfio_vf_memcpy_wait,
	.send_msi = uvfio_vf_send_msi,
};
