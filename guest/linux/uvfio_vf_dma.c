// SPDX-License-Identifier: GPL-2.0-only OR BSD-3-Clause
/*
 * uvfio_vf_dma: a dmaengine provider for the uvfio mlx5-model VF
 * (15b3:101e, docs/devices/mlx5-vf.md), so that Linux's own DMA clients
 * (dmatest, async_tx users) drive the device as they drive any DMA engine.
 *
 * One channel per VF work queue. A transfer becomes one or more 32-byte
 * descriptors (at most 1 MiB each) on the submission ring; the device
 * executes them in order and writes a 16-byte completion for each, then
 * raises MSI-X vector 0. Completions are reaped from the interrupt's
 * tasklet, or by device_tx_status() for clients that poll.
 *
 * A real ConnectX VF has the same PCI IDs: the driver claims a function only
 * when BAR0's ID register reads the model's value, and refuses it
 * otherwise.
 */
#include <linux/delay.h>
#include <linux/dmaengine.h>
#include <linux/dma-mapping.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/io-64-nonatomic-lo-hi.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/sizes.h>
#include <linux/slab.h>
#include <linux/spinlock.h>

#include "dmaengine.h"	/* drivers/dma/dmaengine.h of the same kernel */

#define UVF_REG_ID		0x000
#define UVF_REG_VERSION		0x004
#define UVF_REG_STATUS		0x008
#define UVF_REG_SQ_BASE		0x010
#define UVF_REG_SQ_SIZE		0x018
#define UVF_REG_SQ_TAIL		0x01c
#define UVF_REG_SQ_HEAD		0x020
#define UVF_REG_CQ_BASE		0x028
#define UVF_REG_CQ_SIZE		0x030
#define UVF_REG_CQ_TAIL		0x034
#define UVF_REG_CQ_HEAD		0x038
#define UVF_REG_CTRL		0x03c
#define UVF_REG_IRQ_VECTOR	0x040
#define UVF_REG_IRQ_CTRL	0x044
#define UVF_REG_COUNT_DONE	0x048
#define UVF_REG_COUNT_ERR	0x050

#define UVF_ID_VALUE		0x6d6c7835	/* "5xlm" */
#define UVF_STATUS_READY	BIT(0)
#define UVF_STATUS_QUEUE_ON	BIT(1)
#define UVF_STATUS_ERROR	BIT(2)
#define UVF_CTRL_ENABLE		BIT(0)

#define UVF_OP_COPY		1
#define UVF_OP_FILL		4

#define UVF_RING		256		/* entries in each ring */
#define UVF_MAX_LEN		SZ_1M		/* bytes per descriptor */
#define UVF_FAILED_KEPT		32		/* failed cookies tx_status reports */

static unsigned int corrupt_every;
module_param(corrupt_every, uint, 0644);
MODULE_PARM_DESC(corrupt_every,
		 "Test only: shorten every Nth copy by one byte (0: never), to show a test harness catches corruption");

static unsigned int map_test_mib;
module_param(map_test_mib, uint, 0444);
MODULE_PARM_DESC(map_test_mib,
		 "Test only: at probe, map this many MiB for the device at once (4 MiB pieces), fill each through the engine, verify, unmap");

struct uvf_hw_desc {
	u8	opcode;
	u8	flags;
	__le16	rsvd;
	__le32	length;
	__le64	src;
	__le64	dst;
	__le64	cookie;
} __packed;

struct uvf_hw_cpl {
	__le64	cookie;
	__le32	status;
	__le32	result;
} __packed;

struct uvf_desc {
	struct dma_async_tx_descriptor	txd;
	struct list_head		node;
	u8				op;
	dma_addr_t			src;	/* FILL: the byte value */
	dma_addr_t			dst;
	size_t				len;
	unsigned int			parts;	/* hardware descriptors */
	unsigned int			posted;
	unsigned int			done;
	u32				status;	/* the first errno of a part */
	bool				aborted;
};

struct uvf_dev {
	struct pci_dev		*pdev;
	void __iomem		*regs;
	struct dma_device	dma;
	struct dma_chan		chan;
	struct tasklet_struct	tasklet;
	int			irq;

	spinlock_t		lock;	/* everything below */
	struct list_head	submitted;	/* tx_submit()ted, not issued */
	struct list_head	issued;		/* issued, parts left to post */
	struct list_head	active;		/* all parts posted */
	struct list_head	done;		/* completed: callbacks due */
	struct list_head	waiting_ack;	/* done, not yet acked */
	struct uvf_hw_desc	*sq;
	struct uvf_hw_cpl	*cq;
	dma_addr_t		sq_dma;
	dma_addr_t		cq_dma;
	struct uvf_desc		*slot[UVF_RING];	/* the desc of each posted part */
	u32			sq_tail;	/* parts posted */
	u32			cq_head;	/* completions consumed */
	u32			copies;		/* for corrupt_every */
	bool			stopped;	/* reset in progress */
	dma_cookie_t		failed[UVF_FAILED_KEPT];
	unsigned int		failed_at;
};

static inline struct uvf_dev *to_uvf(struct dma_chan *c)
{
	return container_of(c, struct uvf_dev, chan);
}

static inline struct uvf_desc *to_desc(struct dma_async_tx_descriptor *t)
{
	return container_of(t, struct uvf_desc, txd);
}

static u32 uvf_inflight(struct uvf_dev *u)
{
	return u->sq_tail - u->cq_head;
}

/* Posts what the ring has room for, oldest transfer first; rings the bell. */
static void uvf_post_locked(struct uvf_dev *u)
{
	struct uvf_desc *d, *n;
	u32 before = u->sq_tail;

	if (u->stopped)
		return;
	list_for_each_entry_safe(d, n, &u->issued, node) {
		while (d->posted < d->parts && uvf_inflight(u) < UVF_RING) {
			size_t off = (size_t)d->posted * UVF_MAX_LEN;
			size_t len = min_t(size_t, d->len - off, UVF_MAX_LEN);
			u32 slot = u->sq_tail % UVF_RING;
			struct uvf_hw_desc *hw = &u->sq[slot];

			hw->opcode = d->op;
			hw->flags = 0;
			hw->rsvd = 0;
			hw->length = cpu_to_le32(len);
			hw->src = cpu_to_le64(d->op == UVF_OP_FILL ?
					      d->src : d->src + off);
			hw->dst = cpu_to_le64(d->dst + off);
			hw->cookie = cpu_to_le64(slot);
			u->slot[slot] = d;
			u->sq_tail++;
			d->posted++;
		}
		if (d->posted < d->parts)
			break;
		list_move_tail(&d->node, &u->active);
	}
	if (u->sq_tail != before) {
		/* The descriptors are in memory before the doorbell. */
		wmb();
		writel(u->sq_tail, u->regs + UVF_REG_SQ_TAIL);
	}
}

static void uvf_remember_failed_locked(struct uvf_dev *u, dma_cookie_t c)
{
	u->failed[u->failed_at++ % UVF_FAILED_KEPT] = c;
}

/*
 * Consumes the completions the device has written; transfers whose parts
 * have all completed move to the done list. Returns true if any did.
 */
static bool uvf_reap_locked(struct uvf_dev *u)
{
	u32 tail;
	bool any = false;

	if (u->stopped)
		return false;
	tail = readl(u->regs + UVF_REG_CQ_TAIL);
	if (tail == u->cq_head)
		return false;
	/* The completions are read after the index that covers them. */
	dma_rmb();
	while (u->cq_head != tail) {
		struct uvf_hw_cpl *c = &u->cq[u->cq_head % UVF_RING];
		u32 slot = le64_to_cpu(c->cookie) % UVF_RING;
		u32 status = le32_to_cpu(c->status);
		struct uvf_desc *d = u->slot[slot];

		u->slot[slot] = NULL;
		u->cq_head++;
		if (!d)		/* its transfer was terminated */
			continue;
		d->done++;
		if (d->aborted) {
			/* Terminated: freed once the parts it posted are back. */
			if (d->done == d->posted) {
				list_del(&d->node);
				kfree(d);
			}
			continue;
		}
		if (status && !d->status)
			d->status = status;
		if (d->done < d->parts)
			continue;
		dma_cookie_complete(&d->txd);
		if (d->status)
			uvf_remember_failed_locked(u, d->txd.cookie);
		list_move_tail(&d->node, &u->done);
		any = true;
	}
	writel(u->cq_head, u->regs + UVF_REG_CQ_HEAD);
	uvf_post_locked(u);
	return any;
}

static void uvf_free_acked_locked(struct uvf_dev *u)
{
	struct uvf_desc *d, *n;

	list_for_each_entry_safe(d, n, &u->waiting_ack, node) {
		if (async_tx_test_ack(&d->txd)) {
			list_del(&d->node);
			kfree(d);
		}
	}
}

/* Runs the callbacks of completed transfers, outside the lock. */
static void uvf_tasklet(struct tasklet_struct *t)
{
	struct uvf_dev *u = from_tasklet(u, t, tasklet);
	struct uvf_desc *d, *n;
	unsigned long flags;
	LIST_HEAD(done);

	spin_lock_irqsave(&u->lock, flags);
	uvf_reap_locked(u);
	list_splice_tail_init(&u->done, &done);
	spin_unlock_irqrestore(&u->lock, flags);

	list_for_each_entry_safe(d, n, &done, node) {
		struct dmaengine_desc_callback cb;
		struct dmaengine_result res;

		res.result = d->status ? DMA_TRANS_WRITE_FAILED :
					 DMA_TRANS_NOERROR;
		res.residue = d->status ? d->len : 0;
		dmaengine_desc_get_callback(&d->txd, &cb);
		dmaengine_desc_callback_invoke(&cb, &res);
		dma_run_dependencies(&d->txd);
		spin_lock_irqsave(&u->lock, flags);
		if (async_tx_test_ack(&d->txd)) {
			list_del(&d->node);
			kfree(d);
		} else {
			list_move_tail(&d->node, &u->waiting_ack);
		}
		spin_unlock_irqrestore(&u->lock, flags);
	}
}

static irqreturn_t uvf_irq(int irq, void *data)
{
	struct uvf_dev *u = data;

	tasklet_schedule(&u->tasklet);
	return IRQ_HANDLED;
}

static dma_cookie_t uvf_tx_submit(struct dma_async_tx_descriptor *tx)
{
	struct uvf_dev *u = to_uvf(tx->chan);
	unsigned long flags;
	dma_cookie_t cookie;

	spin_lock_irqsave(&u->lock, flags);
	cookie = dma_cookie_assign(tx);
	list_add_tail(&to_desc(tx)->node, &u->submitted);
	spin_unlock_irqrestore(&u->lock, flags);
	return cookie;
}

static struct dma_async_tx_descriptor *
uvf_prep(struct dma_chan *c, u8 op, dma_addr_t dst, dma_addr_t src,
	 size_t len, unsigned long flags)
{
	struct uvf_dev *u = to_uvf(c);
	struct uvf_desc *d;
	unsigned long irqf;

	if (!len)
		return NULL;
	spin_lock_irqsave(&u->lock, irqf);
	uvf_free_acked_locked(u);
	if (op == UVF_OP_COPY && corrupt_every && len > 1 &&
	    ++u->copies % corrupt_every == 0)
		len--;
	spin_unlock_irqrestore(&u->lock, irqf);

	d = kzalloc(sizeof(*d), GFP_NOWAIT);
	if (!d)
		return NULL;
	dma_async_tx_descriptor_init(&d->txd, c);
	d->txd.tx_submit = uvf_tx_submit;
	d->txd.flags = flags;
	d->op = op;
	d->src = src;
	d->dst = dst;
	d->len = len;
	d->parts = DIV_ROUND_UP(len, UVF_MAX_LEN);
	INIT_LIST_HEAD(&d->node);
	return &d->txd;
}

static struct dma_async_tx_descriptor *
uvf_prep_memcpy(struct dma_chan *c, dma_addr_t dst, dma_addr_t src,
		size_t len, unsigned long flags)
{
	return uvf_prep(c, UVF_OP_COPY, dst, src, len, flags);
}

static struct dma_async_tx_descriptor *
uvf_prep_memset(struct dma_chan *c, dma_addr_t dst, int value, size_t len,
		unsigned long flags)
{
	return uvf_prep(c, UVF_OP_FILL, dst, (u8)value, len, flags);
}

static void uvf_issue_pending(struct dma_chan *c)
{
	struct uvf_dev *u = to_uvf(c);
	unsigned long flags;

	spin_lock_irqsave(&u->lock, flags);
	list_splice_tail_init(&u->submitted, &u->issued);
	uvf_post_locked(u);
	spin_unlock_irqrestore(&u->lock, flags);
}

static bool uvf_failed(struct uvf_dev *u, dma_cookie_t cookie)
{
	unsigned long flags;
	unsigned int i;
	bool failed = false;

	spin_lock_irqsave(&u->lock, flags);
	for (i = 0; i < UVF_FAILED_KEPT && !failed; i++)
		failed = u->failed[i] == cookie;
	spin_unlock_irqrestore(&u->lock, flags);
	return failed;
}

static enum dma_status uvf_tx_status(struct dma_chan *c, dma_cookie_t cookie,
				     struct dma_tx_state *state)
{
	struct uvf_dev *u = to_uvf(c);
	enum dma_status st;
	unsigned long flags;
	bool reaped;

	if (uvf_failed(u, cookie))
		return DMA_ERROR;
	st = dma_cookie_status(c, cookie, state);
	if (st == DMA_COMPLETE)
		return st;
	/* Polling clients: reap here; callbacks still run from the tasklet. */
	spin_lock_irqsave(&u->lock, flags);
	reaped = uvf_reap_locked(u);
	spin_unlock_irqrestore(&u->lock, flags);
	if (reaped)
		tasklet_schedule(&u->tasklet);
	if (uvf_failed(u, cookie))
		return DMA_ERROR;
	return dma_cookie_status(c, cookie, state);
}

/*
 * Aborts every transfer of the channel, with the lock held: those with
 * parts on the ring stay (marked) until the device has given those back;
 * the rest go to @aborted for freeing.
 */
static void uvf_abort_all_locked(struct uvf_dev *u, struct list_head *aborted)
{
	struct uvf_desc *d, *n;

	list_splice_tail_init(&u->submitted, aborted);
	list_splice_tail_init(&u->issued, aborted);
	list_for_each_entry(d, &u->active, node)
		d->aborted = true;
	list_for_each_entry_safe(d, n, aborted, node) {
		if (d->done < d->posted) {
			d->aborted = true;
			list_move_tail(&d->node, &u->active);
		}
	}
}

static int uvf_terminate_all(struct dma_chan *c)
{
	struct uvf_dev *u = to_uvf(c);
	struct uvf_desc *d, *n;
	unsigned long flags;
	LIST_HEAD(aborted);

	spin_lock_irqsave(&u->lock, flags);
	uvf_abort_all_locked(u, &aborted);
	/* Whoever polls an aborted transfer learns it did not complete. */
	list_for_each_entry(d, &aborted, node)
		if (d->txd.cookie > 0)
			uvf_remember_failed_locked(u, d->txd.cookie);
	spin_unlock_irqrestore(&u->lock, flags);
	list_for_each_entry_safe(d, n, &aborted, node) {
		list_del(&d->node);
		kfree(d);
	}
	return 0;
}

/* Waits (up to 2 s) until every part on the ring has completed. */
static void uvf_drain(struct uvf_dev *u)
{
	unsigned long deadline = jiffies + 2 * HZ;
	unsigned long flags;
	bool busy;

	for (;;) {
		spin_lock_irqsave(&u->lock, flags);
		uvf_reap_locked(u);
		busy = !u->stopped && uvf_inflight(u);
		spin_unlock_irqrestore(&u->lock, flags);
		if (!busy)
			return;
		if (time_after(jiffies, deadline)) {
			dev_warn(&u->pdev->dev, "%u descriptors still on the ring\n",
				 uvf_inflight(u));
			return;
		}
		usleep_range(50, 200);
	}
}

static void uvf_synchronize(struct dma_chan *c)
{
	struct uvf_dev *u = to_uvf(c);
	unsigned long flags;
	bool active;

	spin_lock_irqsave(&u->lock, flags);
	active = !list_empty(&u->active);
	spin_unlock_irqrestore(&u->lock, flags);
	if (active)
		uvf_drain(u);
	synchronize_irq(u->irq);
	tasklet_unlock_wait(&u->tasklet);
}

static int uvf_alloc_chan_resources(struct dma_chan *c)
{
	dma_cookie_init(c);
	return 0;
}

static void uvf_free_chan_resources(struct dma_chan *c)
{
	struct uvf_dev *u = to_uvf(c);
	unsigned long flags;

	uvf_terminate_all(c);
	uvf_synchronize(c);
	spin_lock_irqsave(&u->lock, flags);
	list_splice_tail_init(&u->done, &u->waiting_ack);
	while (!list_empty(&u->waiting_ack)) {
		struct uvf_desc *d = list_first_entry(&u->waiting_ack,
						      struct uvf_desc, node);
		list_del(&d->node);
		kfree(d);
	}
	spin_unlock_irqrestore(&u->lock, flags);
}

/* Programs the rings and turns the queue on (probe, and after an FLR). */
static int uvf_hw_start(struct uvf_dev *u)
{
	u32 status;

	writel(0, u->regs + UVF_REG_CTRL);
	lo_hi_writeq(u->sq_dma, u->regs + UVF_REG_SQ_BASE);
	lo_hi_writeq(u->cq_dma, u->regs + UVF_REG_CQ_BASE);
	writel(UVF_RING, u->regs + UVF_REG_SQ_SIZE);
	writel(UVF_RING, u->regs + UVF_REG_CQ_SIZE);
	writel(0, u->regs + UVF_REG_IRQ_VECTOR);
	writel(1, u->regs + UVF_REG_IRQ_CTRL);
	u->sq_tail = 0;
	u->cq_head = 0;
	memset(u->slot, 0, sizeof(u->slot));
	writel(UVF_CTRL_ENABLE, u->regs + UVF_REG_CTRL);
	status = readl(u->regs + UVF_REG_STATUS);
	if ((status & UVF_STATUS_ERROR) || !(status & UVF_STATUS_QUEUE_ON)) {
		dev_err(&u->pdev->dev, "queue refused to start (status %#x)\n",
			status);
		return -EIO;
	}
	return 0;
}

/*
 * Function reset (sysfs reset, VFIO): the device forgets its rings and the
 * transfers in them. They complete as aborted; the queue restarts after.
 */
static void uvf_reset_prepare(struct pci_dev *pdev)
{
	struct uvf_dev *u = pci_get_drvdata(pdev);
	struct uvf_desc *d, *n;
	unsigned long flags;
	LIST_HEAD(lost);

	dev_info(&pdev->dev, "reset: %llu descriptors done, %llu failed before it\n",
		 lo_hi_readq(u->regs + UVF_REG_COUNT_DONE),
		 lo_hi_readq(u->regs + UVF_REG_COUNT_ERR));
	spin_lock_irqsave(&u->lock, flags);
	u->stopped = true;
	list_splice_tail_init(&u->active, &lost);
	list_splice_tail_init(&u->issued, &lost);
	memset(u->slot, 0, sizeof(u->slot));
	spin_unlock_irqrestore(&u->lock, flags);
	synchronize_irq(u->irq);
	tasklet_unlock_wait(&u->tasklet);
	list_for_each_entry_safe(d, n, &lost, node) {
		struct dmaengine_desc_callback cb;
		struct dmaengine_result res = {
			.result = DMA_TRANS_ABORTED,
			.residue = d->len,
		};

		list_del(&d->node);
		if (d->aborted) {
			kfree(d);
			continue;
		}
		spin_lock_irqsave(&u->lock, flags);
		dma_cookie_complete(&d->txd);
		uvf_remember_failed_locked(u, d->txd.cookie);
		spin_unlock_irqrestore(&u->lock, flags);
		dmaengine_desc_get_callback(&d->txd, &cb);
		dmaengine_desc_callback_invoke(&cb, &res);
		kfree(d);
	}
}

static void uvf_reset_done(struct pci_dev *pdev)
{
	struct uvf_dev *u = pci_get_drvdata(pdev);
	unsigned long flags;

	spin_lock_irqsave(&u->lock, flags);
	if (!uvf_hw_start(u))
		u->stopped = false;
	uvf_post_locked(u);
	spin_unlock_irqrestore(&u->lock, flags);
}

/*
 * map_test_mib: many MiB mapped for the device at the same time (through a
 * guest IOMMU, the VMM maps them all for the device), every piece filled by
 * the engine while all are mapped, then checked by the CPU.
 */
static int uvf_map_test(struct uvf_dev *u)
{
	struct device *dev = &u->pdev->dev;
	unsigned int n = DIV_ROUND_UP(map_test_mib, 4), i, mapped = 0;
	unsigned int order = get_order(SZ_4M);
	struct page **pages;
	dma_addr_t *iova;
	int ret = 0;

	pages = kcalloc(n, sizeof(*pages), GFP_KERNEL);
	iova = kcalloc(n, sizeof(*iova), GFP_KERNEL);
	if (!pages || !iova) {
		ret = -ENOMEM;
		goto out;
	}
	for (mapped = 0; mapped < n; mapped++) {
		pages[mapped] = alloc_pages(GFP_KERNEL | __GFP_NOWARN, order);
		if (!pages[mapped]) {
			ret = -ENOMEM;
			break;
		}
		iova[mapped] = dma_map_page(dev, pages[mapped], 0, SZ_4M,
					    DMA_BIDIRECTIONAL);
		if (dma_mapping_error(dev, iova[mapped])) {
			__free_pages(pages[mapped], order);
			ret = -EIO;
			break;
		}
	}
	for (i = 0; i < mapped && !ret; i++) {
		struct dma_async_tx_descriptor *tx;
		dma_cookie_t cookie;

		tx = uvf_prep(&u->chan, UVF_OP_FILL, iova[i], (u8)(0x5a + i),
			      SZ_4M, DMA_CTRL_ACK);
		if (!tx) {
			ret = -ENOMEM;
			break;
		}
		cookie = dmaengine_submit(tx);
		if (dma_sync_wait(&u->chan, cookie) != DMA_COMPLETE)
			ret = -EIO;
	}
	for (i = 0; i < mapped; i++) {
		u8 *p;

		dma_unmap_page(dev, iova[i], SZ_4M, DMA_BIDIRECTIONAL);
		p = page_address(pages[i]);
		if (!ret && (p[0] != (u8)(0x5a + i) ||
			     p[SZ_2M + 7] != (u8)(0x5a + i) ||
			     p[SZ_4M - 1] != (u8)(0x5a + i)))
			ret = -EILSEQ;
		__free_pages(pages[i], order);
	}
	if (ret)
		dev_err(dev, "map test: failed (%d) with %u MiB mapped\n", ret,
			mapped * 4);
	else
		dev_info(dev, "map test: %u MiB mapped at once in %u pieces, filled by the device and verified\n",
			 mapped * 4, mapped);
out:
	kfree(pages);
	kfree(iova);
	return ret;
}

static const struct pci_error_handlers uvf_err_handlers = {
	.reset_prepare	= uvf_reset_prepare,
	.reset_done	= uvf_reset_done,
};

static int uvf_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct device *dev = &pdev->dev;
	struct uvf_dev *u;
	u32 ident;
	int ret;

	ret = pcim_enable_device(pdev);
	if (ret)
		return ret;
	if (!(pci_resource_flags(pdev, 0) & IORESOURCE_MEM) ||
	    pci_resource_len(pdev, 0) < 0x1000)
		return -ENODEV;
	ret = pcim_iomap_regions(pdev, BIT(0), KBUILD_MODNAME);
	if (ret)
		return ret;
	u = devm_kzalloc(dev, sizeof(*u), GFP_KERNEL);
	if (!u)
		return -ENOMEM;
	u->pdev = pdev;
	u->regs = pcim_iomap_table(pdev)[0];

	/* Never touch a real ConnectX VF: it has the same IDs. */
	ident = readl(u->regs + UVF_REG_ID);
	if (ident != UVF_ID_VALUE) {
		dev_info(dev, "not a uvfio VF (ID register %#x): left alone\n",
			 ident);
		return -ENODEV;
	}

	ret = dma_set_mask_and_coherent(dev, DMA_BIT_MASK(64));
	if (ret)
		return ret;
	dma_set_max_seg_size(dev, UVF_MAX_LEN);
	u->sq = dmam_alloc_coherent(dev, UVF_RING * sizeof(*u->sq),
				    &u->sq_dma, GFP_KERNEL);
	u->cq = dmam_alloc_coherent(dev, UVF_RING * sizeof(*u->cq),
				    &u->cq_dma, GFP_KERNEL);
	if (!u->sq || !u->cq)
		return -ENOMEM;
	spin_lock_init(&u->lock);
	INIT_LIST_HEAD(&u->submitted);
	INIT_LIST_HEAD(&u->issued);
	INIT_LIST_HEAD(&u->active);
	INIT_LIST_HEAD(&u->done);
	INIT_LIST_HEAD(&u->waiting_ack);
	tasklet_setup(&u->tasklet, uvf_tasklet);

	ret = pci_alloc_irq_vectors(pdev, 1, 1, PCI_IRQ_MSIX);
	if (ret < 0)
		return ret;
	u->irq = pci_irq_vector(pdev, 0);
	ret = request_irq(u->irq, uvf_irq, 0, KBUILD_MODNAME, u);
	if (ret)
		goto err_vectors;
	pci_set_master(pdev);
	pci_set_drvdata(pdev, u);
	ret = uvf_hw_start(u);
	if (ret)
		goto err_irq;

	u->dma.dev = dev;
	dma_cap_set(DMA_MEMCPY, u->dma.cap_mask);
	dma_cap_set(DMA_MEMSET, u->dma.cap_mask);
	u->dma.copy_align = DMAENGINE_ALIGN_1_BYTE;
	u->dma.fill_align = DMAENGINE_ALIGN_1_BYTE;
	u->dma.device_alloc_chan_resources = uvf_alloc_chan_resources;
	u->dma.device_free_chan_resources = uvf_free_chan_resources;
	u->dma.device_prep_dma_memcpy = uvf_prep_memcpy;
	u->dma.device_prep_dma_memset = uvf_prep_memset;
	u->dma.device_issue_pending = uvf_issue_pending;
	u->dma.device_tx_status = uvf_tx_status;
	u->dma.device_terminate_all = uvf_terminate_all;
	u->dma.device_synchronize = uvf_synchronize;
	INIT_LIST_HEAD(&u->dma.channels);
	u->chan.device = &u->dma;
	dma_cookie_init(&u->chan);
	list_add_tail(&u->chan.device_node, &u->dma.channels);
	ret = dma_async_device_register(&u->dma);
	if (ret)
		goto err_stop;
	dev_info(dev, "uvfio VF DMA engine: %s, ring %u, version %u\n",
		 dma_chan_name(&u->chan), UVF_RING,
		 readl(u->regs + UVF_REG_VERSION));
	if (map_test_mib)
		uvf_map_test(u);
	return 0;

err_stop:
	writel(0, u->regs + UVF_REG_CTRL);
err_irq:
	free_irq(u->irq, u);
	pci_clear_master(pdev);
err_vectors:
	pci_free_irq_vectors(pdev);
	return ret;
}

static void uvf_remove(struct pci_dev *pdev)
{
	struct uvf_dev *u = pci_get_drvdata(pdev);

	dma_async_device_unregister(&u->dma);
	uvf_drain(u);	/* nothing may reach the rings once they are freed */
	writel(0, u->regs + UVF_REG_IRQ_CTRL);
	writel(0, u->regs + UVF_REG_CTRL);
	free_irq(u->irq, u);
	tasklet_kill(&u->tasklet);
	pci_free_irq_vectors(pdev);
	pci_clear_master(pdev);
	dev_info(&pdev->dev, "removed: %llu descriptors done, %llu failed\n",
		 lo_hi_readq(u->regs + UVF_REG_COUNT_DONE),
		 lo_hi_readq(u->regs + UVF_REG_COUNT_ERR));
}

static const struct pci_device_id uvf_ids[] = {
	{ PCI_DEVICE(PCI_VENDOR_ID_MELLANOX, 0x101e) },
	{ }
};
MODULE_DEVICE_TABLE(pci, uvf_ids);

static struct pci_driver uvf_driver = {
	.name		= KBUILD_MODNAME,
	.id_table	= uvf_ids,
	.probe		= uvf_probe,
	.remove		= uvf_remove,
	.err_handler	= &uvf_err_handlers,
};
module_pci_driver(uvf_driver);

MODULE_DESCRIPTION("dmaengine provider for the uvfio mlx5-model VF");
MODULE_LICENSE("Dual BSD/GPL");
