/* The split virtqueue, driver side (VIRTIO 1.2 section 2.7).
 *
 * Three areas in guest memory, shared with the device:
 *   descriptor table  (2.7.5)  what the buffers are: address, length, flags, next
 *   available ring    (2.7.6)  driver -> device: heads of chains ready to be processed
 *   used ring         (2.7.8)  device -> driver: heads of chains it has finished, and how many
 *                              bytes it wrote into each
 * Free descriptors are kept on a list threaded through their own `next` fields (the device
 * never reads descriptors that are not in a chain it was given). */
#ifndef GUEST_VIRTQUEUE_H
#define GUEST_VIRTQUEUE_H

#include <stdbool.h>
#include <stdint.h>
#include "virtio_pci.h"

/* 2.7.5: struct virtq_desc */
struct virtq_desc {
    uint64_t addr;              /* guest-physical address of the buffer */
    uint32_t len;
    uint16_t flags;
    uint16_t next;              /* index of the next descriptor when flags has NEXT */
};
#define VIRTQ_DESC_F_NEXT     1 /* the chain continues in `next` */
#define VIRTQ_DESC_F_WRITE    2 /* device writes this buffer (otherwise it only reads it) */
#define VIRTQ_DESC_F_INDIRECT 4 /* the buffer is a table of descriptors (2.7.5.3) */

/* 2.7.6: struct virtq_avail; used_event follows ring[size] (only with EVENT_IDX). */
struct virtq_avail {
    uint16_t flags;
    uint16_t idx;               /* where the driver puts the next head (free-running, mod 2^16) */
    uint16_t ring[];
};
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1

/* 2.7.8: struct virtq_used; avail_event follows ring[size] (only with EVENT_IDX). */
struct virtq_used_elem {
    uint32_t id;                /* head of the finished chain */
    uint32_t len;               /* bytes the device wrote into the chain's writable buffers */
};
struct virtq_used {
    uint16_t flags;
    uint16_t idx;
    struct virtq_used_elem ring[];
};
#define VIRTQ_USED_F_NO_NOTIFY 1

/* The largest queue this driver sets up: ring memory is sized for it (QEMU's limit is 1024). */
#define VQ_MAX_SIZE 1024

/* One buffer of a request, as the driver sees it. */
struct vq_buf {
    void *addr;
    uint32_t len;
    bool device_writes;         /* device-writable buffers come after all readable ones (2.7.4.2) */
};

/* 2.8.13: struct pvirtq_desc, and the event suppression structure of 2.8.14. */
struct pvirtq_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t id;                /* buffer ID: the device returns it in the used descriptor */
    uint16_t flags;
};
struct pvirtq_event {
    uint16_t off_wrap;          /* descriptor ring offset (14:0) and wrap counter (15) */
    uint16_t flags;
};
#define VIRTQ_DESC_F_AVAIL       (1 << 7)
#define VIRTQ_DESC_F_USED        (1 << 15)
#define RING_EVENT_FLAGS_ENABLE  0
#define RING_EVENT_FLAGS_DISABLE 1
#define RING_EVENT_FLAGS_DESC    2

struct virtqueue {
    struct virtio_pci *vp;
    bool packed;                /* VIRTIO_F_RING_PACKED negotiated: the packed layout (2.8) */
    uint16_t index;             /* queue number on the device */
    uint16_t size;              /* number of descriptors (a power of 2) */
    bool event_idx;             /* VIRTIO_F_EVENT_IDX negotiated: use used_event/avail_event */
    bool indirect;              /* VIRTIO_F_INDIRECT_DESC negotiated */

    struct virtq_desc *desc;
    struct virtq_avail *avail;
    struct virtq_used *used;
    uint16_t *used_event;       /* &avail->ring[size] */
    uint16_t *avail_event;      /* &used->ring[size] */

    uint16_t free_head;         /* first free descriptor; chain through desc[].next */
    uint16_t num_free;
    uint16_t avail_idx;         /* our copy of avail->idx (the device never writes it) */
    uint16_t last_kick_idx;     /* avail_idx at the previous notification decision */
    uint16_t last_used_idx;     /* next used-ring entry to look at */
    uint16_t in_flight;

    void *cookie[VQ_MAX_SIZE];  /* per head: what the caller submitted (NULL = not in flight) */

    /* Packed layout: one descriptor ring, the driver's and the device's event structures, the
     * next slots we write and read with their wrap counters, and free buffer IDs. */
    struct pvirtq_desc *pdesc;
    struct pvirtq_event *driver_event, *device_event;
    uint16_t next_avail, next_used, added_since_kick;
    bool avail_wrap, used_wrap;
    uint16_t free_ids[VQ_MAX_SIZE], num_free_ids;
    uint16_t ndescs[VQ_MAX_SIZE];   /* per buffer ID: ring slots its chain took */
    /* statistics, for the self-test */
    uint32_t kicks, kicks_suppressed, device_errors;

    /* ring memory kept across device resets, so re-initialisation reuses it */
    void *mem;
    uint32_t mem_size;
};

/* Lays out the rings for `size` descriptors (the legacy layout of 2.7.2, which also meets the
 * modern alignment rules), resets all driver state and hands the addresses to the device.
 * Returns false if memory ran out or the device refused. */
bool vq_setup(struct virtqueue *vq, struct virtio_pci *vp, uint16_t index, uint16_t size,
              bool event_idx, bool indirect, bool packed);

/* Adds one request made of n buffers as a chain of n descriptors (device-readable first).
 * Returns the head index, or -1 if there are not enough free descriptors. Makes the chain
 * available to the device, but does not notify it: call vq_kick. */
int vq_add(struct virtqueue *vq, const struct vq_buf *bufs, int n, void *cookie);

/* Same, but the n descriptors go into `table` (16-byte aligned, n entries, owned by the caller
 * until the request completes) and the ring holds a single INDIRECT descriptor (2.7.5.3). */
int vq_add_indirect(struct virtqueue *vq, const struct vq_buf *bufs, int n,
                    struct virtq_desc *table, void *cookie);

/* Notifies the device unless it asked not to be (2.7.10): with EVENT_IDX, only when avail_idx
 * has moved past avail_event since the last kick; without it, unless used->flags has
 * NO_NOTIFY. Returns true if a notification was sent. */
bool vq_kick(struct virtqueue *vq);

/* Takes the next used element, if any: returns its cookie and the written length. */
bool vq_get_used(struct virtqueue *vq, void **cookie, uint32_t *len);
bool vq_has_used(struct virtqueue *vq);

/* Ask the device for an interrupt on the next completion (2.7.7), or tell it not to bother. */
void vq_enable_interrupts(struct virtqueue *vq);
void vq_disable_interrupts(struct virtqueue *vq);

#endif
