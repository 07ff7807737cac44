/* virtio-blk driver. Section numbers refer to VIRTIO 1.2. */
#include "virtio_blk.h"
#include "heap.h"
#include "interrupts.h"
#include "io.h"
#include "platform.h"
#include "printf.h"
#include "string.h"

/* struct virtio_blk_config, 5.2.4: byte offsets in the device-specific configuration. */
#define CFG_CAPACITY   0      /* le64, in 512-byte sectors */
#define CFG_SIZE_MAX   8      /* le32, if VIRTIO_BLK_F_SIZE_MAX */
#define CFG_SEG_MAX    12     /* le32, if VIRTIO_BLK_F_SEG_MAX */
#define CFG_BLK_SIZE   20     /* le32, if VIRTIO_BLK_F_BLK_SIZE */
#define CFG_NUM_QUEUES 34     /* le16, if VIRTIO_BLK_F_MQ */

/* Polling budget before a request counts as lost (iterations of a PAUSE loop; seconds on any
 * real or emulated CPU). In interrupt mode the PIT watchdog bounds the wait instead. */
#define POLL_SPINS      400000000u
#define IRQ_WAIT_TICKS  (10 * PLATFORM_TICK_HZ)

int vblk_probe(struct virtio_blk *b, const struct vblk_options *opts)
{
    static const uint16_t ids[] = { VIRTIO_BLK_PCI_ID_TRANSITIONAL, VIRTIO_BLK_PCI_ID_MODERN };
    b->opts = *opts;
    int r = vpci_probe(&b->vp, ids, 2, opts->transport);
    if (r < 0 || !opts->msix)
        return r;
    /* MSI-X: one table entry per vector we have (entry 0 for config changes, 1.. for queues),
     * delivered to this CPU's local APIC. Done once: a device reset leaves the table alone. */
    uint8_t apic = lapic_enable();
    uint16_t n = vpci_enable_msix(&b->vp, apic, MSI_VECTOR_BASE, MSI_VECTORS);
    if (n == 0)
        return -4;
    kprintf("# msix: %u vectors from 0x%x to APIC %u\n", n, MSI_VECTOR_BASE, apic);
    return 0;
}

/* The MSI-X table entry queue q signals (entry 0 is the config vector; with too few entries
 * queues share, and with one entry everything shares it). */
static uint16_t queue_entry(const struct virtio_blk *b, uint16_t q)
{
    uint16_t n = b->vp.msix_vectors;
    return n > 1 ? 1 + q % (n - 1) : 0;
}

/* The feature bits this driver understands, i.e. may accept (3.1.1 step 4). */
static uint64_t wanted_features(const struct virtio_blk *b)
{
    uint64_t f = (1ULL << VIRTIO_BLK_F_SIZE_MAX) | (1ULL << VIRTIO_BLK_F_SEG_MAX) |
                 (1ULL << VIRTIO_BLK_F_GEOMETRY) | (1ULL << VIRTIO_BLK_F_RO) |
                 (1ULL << VIRTIO_BLK_F_BLK_SIZE) | (1ULL << VIRTIO_BLK_F_FLUSH) |
                 (1ULL << VIRTIO_BLK_F_TOPOLOGY) | (1ULL << VIRTIO_BLK_F_MQ);
    if (b->opts.use_indirect)
        f |= 1ULL << VIRTIO_F_INDIRECT_DESC;
    if (b->opts.use_event_idx)
        f |= 1ULL << VIRTIO_F_EVENT_IDX;
    if (b->vp.modern)
        f |= 1ULL << VIRTIO_F_VERSION_1;   /* 6.1: a modern driver MUST accept VERSION_1 */
    if (b->opts.packed)
        f |= 1ULL << VIRTIO_F_RING_PACKED;
    return f;
}

static int fail(struct virtio_blk *b, char *why, int why_size, const char *msg)
{
    /* 3.1.1: "If any of these steps go irrecoverably wrong, the driver SHOULD set the FAILED
     * status bit to indicate that it has given up on the device." */
    vpci_set_status(&b->vp, vpci_get_status(&b->vp) | VIRTIO_STATUS_FAILED);
    ksnprintf(why, why_size, "%s", msg);
    return -1;
}

static uint16_t round_down_pow2(uint16_t v)
{
    uint16_t p = 1;
    while ((uint32_t)p * 2 <= v)
        p *= 2;
    return v ? p : 0;
}

int vblk_init(struct virtio_blk *b, char *why, int why_size)
{
    struct virtio_pci *vp = &b->vp;

    /* 3.1.1 step 1: reset the device. */
    if (!vpci_reset(vp))
        return fail(b, why, why_size, "device status did not read 0 after reset");
    b->irq_mode = false;

    /* Steps 2 and 3: we noticed the device, and we know how to drive it. */
    vpci_set_status(vp, VIRTIO_STATUS_ACKNOWLEDGE);
    vpci_set_status(vp, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);

    /* Step 4: read the device's features, write the subset we understand. */
    b->device_features = vpci_get_device_features(vp);
    if (vp->modern && !(b->device_features & (1ULL << VIRTIO_F_VERSION_1)))
        return fail(b, why, why_size, "modern interface without VIRTIO_F_VERSION_1");
    b->features = b->device_features & wanted_features(b);
    vpci_set_driver_features(vp, b->features);

    /* Steps 5 and 6: FEATURES_OK, then check it stuck (the device clears it if it cannot work
     * with our subset). Legacy devices have no FEATURES_OK step (3.1.2). */
    if (vp->modern) {
        vpci_set_status(vp, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                            VIRTIO_STATUS_FEATURES_OK);
        if (!(vpci_get_status(vp) & VIRTIO_STATUS_FEATURES_OK))
            return fail(b, why, why_size, "device did not keep FEATURES_OK");
    }
    if (b->opts.packed && !vblk_has(b, VIRTIO_F_RING_PACKED))
        return fail(b, why, why_size, "ring=packed asked for, but VIRTIO_F_RING_PACKED was not negotiated");

    /* Step 7: device-specific set-up: read the configuration (5.2.5), then the queues. */
    b->capacity = vpci_cfg_read64(vp, CFG_CAPACITY);
    b->blk_size = vblk_has(b, VIRTIO_BLK_F_BLK_SIZE) ? vpci_cfg_read32(vp, CFG_BLK_SIZE)
                                                      : SECTOR_SIZE;
    b->size_max = vblk_has(b, VIRTIO_BLK_F_SIZE_MAX) ? vpci_cfg_read32(vp, CFG_SIZE_MAX) : 0;
    b->seg_max = vblk_has(b, VIRTIO_BLK_F_SEG_MAX) ? vpci_cfg_read32(vp, CFG_SEG_MAX) : 0;
    b->num_queues = vblk_has(b, VIRTIO_BLK_F_MQ) ? vpci_cfg_read16(vp, CFG_NUM_QUEUES) : 1;
    b->ro = vblk_has(b, VIRTIO_BLK_F_RO);
    if (b->num_queues == 0)
        return fail(b, why, why_size, "MQ offered with num_queues = 0");

    uint16_t nvqs = b->num_queues;
    if (nvqs > VBLK_MAX_QUEUES)
        nvqs = VBLK_MAX_QUEUES;
    if (b->opts.max_queues && nvqs > b->opts.max_queues)
        nvqs = b->opts.max_queues;
    if (vp->modern && vpci_num_queues(vp) < nvqs)
        return fail(b, why, why_size, "common config num_queues < blk num_queues");

    for (uint16_t q = 0; q < nvqs; q++) {
        uint16_t max = vpci_queue_max_size(vp, q);
        if (max == 0)
            return fail(b, why, why_size, "a request queue has size 0 (does not exist)");
        uint16_t size = max;
        if (vp->modern) {
            /* The driver may choose a smaller size (4.1.4.3.2); ours is bounded by the ring
             * memory it reserves and must be a power of 2 for our index arithmetic. */
            if (size > VQ_MAX_SIZE)
                size = VQ_MAX_SIZE;
            if (b->opts.max_queue_size && size > b->opts.max_queue_size)
                size = b->opts.max_queue_size;
            size = round_down_pow2(size);
        } else if (size > VQ_MAX_SIZE || (size & (size - 1))) {
            /* Legacy: the size is the device's, take it or leave it. */
            return fail(b, why, why_size, "legacy queue size too large or not a power of 2");
        }
        /* A request is at least three descriptors (header, data, status) and this driver also
         * sends them as direct chains, so a smaller ring could never take one (2.7.13.1). */
        if (size < 3)
            return fail(b, why, why_size, "queue size below 3 cannot hold a request");
        if (!b->vqs[q]) {
            b->vqs[q] = heap_alloc(sizeof(struct virtqueue), 64);
            if (!b->vqs[q])
                return fail(b, why, why_size, "out of memory for virtqueues");
        }
        if (!vq_setup(b->vqs[q], vp, q, size, vblk_has(b, VIRTIO_F_EVENT_IDX),
                      vblk_has(b, VIRTIO_F_INDIRECT_DESC), vblk_has(b, VIRTIO_F_RING_PACKED)))
            return fail(b, why, why_size, "queue set-up refused");
    }
    b->nvqs = nvqs;

    /* With MSI-X on, map config changes and each queue to a table entry; the device reads
     * back NO_VECTOR for a mapping it cannot make (4.1.5.1.2). A reset cleared the old ones. */
    if (vp->msix) {
        if (!vpci_set_config_vector(vp, 0))
            return fail(b, why, why_size, "device refused MSI-X entry 0 for config changes");
        for (uint16_t q = 0; q < nvqs; q++)
            if (!vpci_set_queue_vector(vp, q, queue_entry(b, q)))
                return fail(b, why, why_size, "device refused an MSI-X entry for a queue");
    }

    /* Step 8: DRIVER_OK; the device is live. */
    vpci_set_status(vp, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
                        (vp->modern ? VIRTIO_STATUS_FEATURES_OK : 0) | VIRTIO_STATUS_DRIVER_OK);
    if (vpci_get_status(vp) & VIRTIO_STATUS_DEVICE_NEEDS_RESET)
        return fail(b, why, why_size, "device set DEVICE_NEEDS_RESET during set-up");
    return 0;
}

/* Chops [data, data+len) into `want` descriptors of roughly equal size, none larger than
 * size_max. Sizes need not be sector multiples: only the total must be (5.2.6.1). */
static int split_data(const struct virtio_blk *b, struct vq_buf *out, int max_out, void *data,
                      uint32_t len, bool device_writes, unsigned want)
{
    if (!len)
        return 0;
    if (want < 1)
        want = 1;
    if (b->size_max) {
        uint32_t needed = (len + b->size_max - 1) / b->size_max;
        if (want < needed)
            want = needed;
    }
    if (want > len)
        want = len;
    if ((int)want > max_out)
        return -1;
    uint32_t piece = len / want, done = 0;
    for (unsigned k = 0; k < want; k++) {
        uint32_t n = (k + 1 == want) ? len - done : piece;
        out[k].addr = (char *)data + done;
        out[k].len = n;
        out[k].device_writes = device_writes;
        done += n;
    }
    return (int)want;
}

int vblk_submit(struct virtio_blk *b, uint16_t q, struct vblk_req *req, uint32_t type,
                uint64_t sector, void *data, uint32_t len, const struct vblk_layout *layout,
                bool kick)
{
    if (q >= b->nvqs)
        return -1;
    struct virtqueue *vq = b->vqs[q];
    static const struct vblk_layout simple = { 1, false };
    if (!layout)
        layout = &simple;

    /* 5.2.6: header (device-readable), data (readable for OUT, writable for IN/GET_ID),
     * status byte (writable), each in its own descriptor(s). */
    req->hdr.type = type;
    req->hdr.reserved = 0;
    req->hdr.sector = sector;
    req->status = 0xFF;            /* not a valid status: shows whether the device wrote it */
    req->done = false;
    req->used_len = 0;

    struct vq_buf bufs[VBLK_MAX_SEGS + 2];
    int n = 0;
    bufs[n++] = (struct vq_buf){ &req->hdr, sizeof req->hdr, false };
    bool device_writes = type != VIRTIO_BLK_T_OUT;
    int max_segs = VBLK_MAX_SEGS;
    if (b->seg_max && (int)b->seg_max < max_segs)
        max_segs = (int)b->seg_max;
    int segs = split_data(b, &bufs[n], max_segs, data, len, device_writes, layout->data_split);
    if (segs < 0)
        return -1;
    n += segs;
    bufs[n++] = (struct vq_buf){ (void *)&req->status, 1, true };

    int head;
    if (layout->indirect)
        head = vq_add_indirect(vq, bufs, n, req->table, req);
    else
        head = vq_add(vq, bufs, n, req);
    if (head >= 0 && kick)
        vq_kick(vq);
    return head;
}

int vblk_reap(struct virtio_blk *b, uint16_t q)
{
    struct virtqueue *vq = b->vqs[q];
    void *cookie;
    uint32_t len;
    int n = 0;
    while (vq_get_used(vq, &cookie, &len)) {
        struct vblk_req *r = cookie;
        if (!r)
            continue;
        r->used_len = len;
        r->done = true;
        n++;
    }
    return n;
}

int vblk_wait(struct virtio_blk *b, uint16_t q, struct vblk_req *req)
{
    struct virtqueue *vq = b->vqs[q];
    uint32_t spins = 0, start_tick = platform_ticks();
    for (;;) {
        vblk_reap(b, q);
        if (req->done) {
            if (b->irq_mode)
                vq_enable_interrupts(vq);   /* keep the next completion signalled */
            return req->status;
        }
        if (!b->irq_mode) {
            if (++spins > POLL_SPINS)
                return VBLK_TIMEOUT;
            cpu_relax();
            continue;
        }
        /* Interrupt mode: arm the used-buffer notification, then check once more before
         * sleeping, so a completion that raced with arming is not slept through (2.7.7). */
        vq_enable_interrupts(vq);
        if (vq_has_used(vq))
            continue;
        irq_wait();                 /* sti; hlt; cli: woken by the device or the PIT tick */
        if (platform_ticks() - start_tick > IRQ_WAIT_TICKS)
            return VBLK_TIMEOUT;
    }
}

int vblk_wait_interrupt(struct virtio_blk *b, uint16_t q, struct vblk_req *req)
{
    struct virtqueue *vq = b->vqs[q];
    uint32_t start_tick = platform_ticks();
    while (!req->done) {
        uint32_t seen = b->isr_queue_events;
        while (b->isr_queue_events == seen) {
            irq_wait();
            if (platform_ticks() - start_tick > IRQ_WAIT_TICKS)
                return VBLK_TIMEOUT;
        }
        vblk_reap(b, q);
        vq_enable_interrupts(vq);   /* re-arm for the next used buffer */
    }
    return req->status;
}

int vblk_do(struct virtio_blk *b, uint16_t q, struct vblk_req *req, uint32_t type,
            uint64_t sector, void *data, uint32_t len, const struct vblk_layout *layout)
{
    if (vblk_submit(b, q, req, type, sector, data, len, layout, true) < 0)
        return VBLK_TIMEOUT;
    return vblk_wait(b, q, req);
}

/* --- Interrupts (INTx, 4.1.4.5 / 4.1.5.3) -------------------------------------------------- */

static void vblk_irq(void *ctx)
{
    struct virtio_blk *b = ctx;
    /* Reading ISR acknowledges the interrupt and deasserts INTx (4.1.4.5.1). The line may be
     * shared: an ISR of 0 means it was not us. The used ring is processed by the waiter. */
    uint8_t isr = vpci_read_isr(&b->vp);
    b->irqs++;
    if (isr & VIRTIO_ISR_QUEUE)
        b->isr_queue_events++;
    if (isr & VIRTIO_ISR_CONFIG)
        b->isr_config_events++;
}

/* MSI-X: the entry says what happened, no ISR read needed (4.1.4.5: ISR is for INTx); an
 * entry shared by config and queues falls back to reading it. */
static void vblk_msi_queue(void *ctx)
{
    struct virtio_blk *b = ctx;
    b->irqs++;
    b->isr_queue_events++;
}

static void vblk_msi_config(void *ctx)
{
    struct virtio_blk *b = ctx;
    if (b->vp.msix_vectors > 1) {
        b->irqs++;
        b->isr_config_events++;
    } else {
        vblk_irq(ctx);
    }
}

bool vblk_set_irq_mode(struct virtio_blk *b, bool on)
{
    if (b->vp.msix) {
        for (uint16_t e = 0; e < b->vp.msix_vectors; e++)
            msi_install((uint8_t)e, on ? (e ? vblk_msi_queue : vblk_msi_config) : 0, b);
        b->irq_mode = on;
        for (uint16_t q = 0; q < b->nvqs; q++) {
            if (on)
                vq_enable_interrupts(b->vqs[q]);
            else
                vq_disable_interrupts(b->vqs[q]);
        }
        if (on)
            platform_ticker_start();
        else
            platform_ticker_stop();
        return true;
    }
    uint8_t line = b->vp.irq_line;
    if (line == 0 || line == 2 || line >= 16)      /* unassigned (0xFF), timer, cascade */
        return false;
    if (on) {
        vpci_read_isr(&b->vp);                     /* drop a stale pending interrupt */
        irq_install(line, vblk_irq, b);
        platform_ticker_start();
        b->irq_mode = true;
        for (uint16_t q = 0; q < b->nvqs; q++)
            vq_enable_interrupts(b->vqs[q]);
    } else {
        b->irq_mode = false;
        for (uint16_t q = 0; q < b->nvqs; q++)
            vq_disable_interrupts(b->vqs[q]);
        platform_ticker_stop();
        irq_remove(line);
    }
    return true;
}
