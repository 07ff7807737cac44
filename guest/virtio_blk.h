/* virtio-blk driver (VIRTIO 1.2 section 5.2) on the PCI transport and split virtqueues. */
#ifndef GUEST_VIRTIO_BLK_H
#define GUEST_VIRTIO_BLK_H

#include <stdbool.h>
#include <stdint.h>
#include "virtio_pci.h"
#include "virtqueue.h"

/* PCI device IDs, 4.1.2.1: transitional (legacy + maybe modern), modern-only (0x1040 + 2). */
#define VIRTIO_BLK_PCI_ID_TRANSITIONAL 0x1001
#define VIRTIO_BLK_PCI_ID_MODERN       0x1042

/* Feature bits, 5.2.3. */
#define VIRTIO_BLK_F_SIZE_MAX   1
#define VIRTIO_BLK_F_SEG_MAX    2
#define VIRTIO_BLK_F_GEOMETRY   4
#define VIRTIO_BLK_F_RO         5
#define VIRTIO_BLK_F_BLK_SIZE   6
#define VIRTIO_BLK_F_FLUSH      9
#define VIRTIO_BLK_F_TOPOLOGY   10
#define VIRTIO_BLK_F_CONFIG_WCE 11
#define VIRTIO_BLK_F_MQ         12
#define VIRTIO_BLK_F_DISCARD    13
#define VIRTIO_BLK_F_WRITE_ZEROES 14

/* Request types and status values, 5.2.6. */
#define VIRTIO_BLK_T_IN     0
#define VIRTIO_BLK_T_OUT    1
#define VIRTIO_BLK_T_FLUSH  4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_S_OK     0
#define VIRTIO_BLK_S_IOERR  1
#define VIRTIO_BLK_S_UNSUPP 2
#define VBLK_TIMEOUT        (-1)   /* no completion: not a device status */

#define VIRTIO_BLK_ID_BYTES 20     /* GET_ID answers with at most 20 bytes */
#define SECTOR_SIZE         512    /* capacity and `sector` are always in 512-byte units */

#define VBLK_MAX_QUEUES     16     /* request queues this driver uses at most */
#define VBLK_MAX_SEGS       64     /* data descriptors per request at most */

/* 5.2.6: the device-readable header of every request. */
struct virtio_blk_outhdr {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
};

/* One request. The header and status byte are shared with the device (separate descriptors
 * point at them); the rest is driver bookkeeping. */
struct vblk_req {
    struct virtio_blk_outhdr hdr;
    volatile uint8_t status;
    volatile bool done;
    uint32_t used_len;            /* bytes the device says it wrote (data + status byte) */
    struct virtq_desc table[VBLK_MAX_SEGS + 2] __attribute__((aligned(16)));  /* indirect */
};

/* How to lay a request out in descriptors (the device must accept any of these). */
struct vblk_layout {
    uint8_t data_split;           /* data in this many descriptors (>= 1; capped by seg_max) */
    bool indirect;                /* the whole chain in an indirect table (when negotiated) */
};

struct vblk_options {
    enum virtio_transport transport;
    bool msix;                    /* interrupts by MSI-X instead of INTx (irq=msix) */
    bool packed;                  /* packed virtqueues (ring=packed; needs VIRTIO_F_RING_PACKED) */
    bool use_event_idx;           /* accept VIRTIO_F_EVENT_IDX when offered */
    bool use_indirect;            /* accept VIRTIO_F_INDIRECT_DESC when offered */
    uint16_t max_queue_size;      /* cap on each queue's size (power of 2) */
    uint16_t max_queues;          /* cap on the number of request queues */
};

struct virtio_blk {
    struct virtio_pci vp;
    struct vblk_options opts;
    uint64_t device_features;     /* what the device offered */
    uint64_t features;            /* what we accepted (and the device kept) */

    /* configuration, 5.2.4 */
    uint64_t capacity;            /* in 512-byte sectors */
    uint32_t blk_size;            /* logical block size (512 unless BLK_SIZE) */
    uint32_t size_max;            /* max bytes per data descriptor (0: no limit) */
    uint32_t seg_max;             /* max data descriptors per request (0: no limit given) */
    uint16_t num_queues;          /* request queues the device has */
    bool ro;

    uint16_t nvqs;                /* queues set up */
    struct virtqueue *vqs[VBLK_MAX_QUEUES];

    /* interrupt mode (INTx through the PIC) */
    bool irq_mode;
    volatile uint32_t isr_queue_events;   /* ISR reads with the queue bit set */
    volatile uint32_t isr_config_events;
    volatile uint32_t irqs;               /* interrupts taken */
};

static inline bool vblk_has(const struct virtio_blk *b, unsigned bit)
{
    return (b->features >> bit) & 1;
}

/* Finds the device and picks the transport; does not touch device status. */
int vblk_probe(struct virtio_blk *b, const struct vblk_options *opts);
/* Runs the whole initialisation of 3.1.1 (reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK,
 * queues, DRIVER_OK). Returns 0, or a negative value with `why` filled in; on failure the
 * device is left with FAILED set (3.1.1 step 8 note). Safe to call again to re-initialise. */
int vblk_init(struct virtio_blk *b, char *why, int why_size);

/* Submits a request on queue q without waiting. `data`/`len` may be NULL/0 (FLUSH). Returns the
 * head index, or -1 if the queue is too full (or the layout is impossible). `kick` false lets a
 * caller batch several requests under one notification (then call vq_kick itself). */
int vblk_submit(struct virtio_blk *b, uint16_t q, struct vblk_req *req, uint32_t type,
                uint64_t sector, void *data, uint32_t len, const struct vblk_layout *layout,
                bool kick);
/* Reaps every finished request on queue q (marks each done). Returns how many. */
int vblk_reap(struct virtio_blk *b, uint16_t q);
/* Waits for `req` (polling or, in interrupt mode, sleeping in HLT); returns its status or
 * VBLK_TIMEOUT. */
int vblk_wait(struct virtio_blk *b, uint16_t q, struct vblk_req *req);
/* Interrupt mode only: sleeps until the device raises an interrupt with the ISR queue bit
 * (even if the used ring already shows the completion), then reaps; repeats until `req` is
 * done. The self-test uses it to prove completions are signalled, not just polled. Requires the
 * used-buffer notification to have been armed before the request was made available. */
int vblk_wait_interrupt(struct virtio_blk *b, uint16_t q, struct vblk_req *req);
/* Submit + wait, with the default layout when `layout` is NULL. */
int vblk_do(struct virtio_blk *b, uint16_t q, struct vblk_req *req, uint32_t type,
            uint64_t sector, void *data, uint32_t len, const struct vblk_layout *layout);

/* Interrupt mode on or off: installs the INTx handler on the device's PIC input, re-arms the
 * used-ring event, and starts a PIT tick so a lost interrupt becomes a timeout, not a hang.
 * Returns false if the device has no usable interrupt line. */
bool vblk_set_irq_mode(struct virtio_blk *b, bool on);

#endif
