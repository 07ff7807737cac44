/* The split virtqueue, driver side. Section numbers refer to VIRTIO 1.2. */
#include "virtqueue.h"
#include "heap.h"
#include "io.h"
#include "printf.h"
#include "string.h"

#define LEGACY_ALIGN 4096

/* 2.7.2 legacy layout (also fine for modern devices, whose alignment needs are 16/2/4):
 *   desc[size]                       at offset 0
 *   avail {flags, idx, ring[size], used_event}
 *   padding up to the next 4096 boundary
 *   used {flags, idx, ring[size], avail_event}                                             */
static uint32_t avail_bytes(uint16_t size) { return 6 + 2u * size; }
static uint32_t used_offset(uint16_t size)
{
    uint32_t end_of_avail = 16u * size + avail_bytes(size);
    return (end_of_avail + LEGACY_ALIGN - 1) & ~(uint32_t)(LEGACY_ALIGN - 1);
}
static uint32_t ring_bytes(uint16_t size) { return used_offset(size) + 6 + 8u * size; }

bool vq_setup(struct virtqueue *vq, struct virtio_pci *vp, uint16_t index, uint16_t size,
              bool event_idx, bool indirect, bool packed)
{
    if (size == 0 || size > VQ_MAX_SIZE || (!packed && (size & (size - 1))))
        return false;
    /* Keep the ring memory of an earlier set-up (device reset and re-init) if it is big enough;
     * the device forgot the old addresses when it was reset. */
    if (!vq->mem || vq->mem_size < ring_bytes(size)) {
        vq->mem = heap_alloc(ring_bytes(size), LEGACY_ALIGN);
        if (!vq->mem)
            return false;
        vq->mem_size = ring_bytes(size);
    }
    void *mem = vq->mem;
    uint32_t mem_size = vq->mem_size;
    memset(mem, 0, mem_size);
    memset(vq, 0, sizeof *vq);
    vq->mem = mem;
    vq->mem_size = mem_size;

    vq->vp = vp;
    vq->index = index;
    vq->size = size;
    vq->event_idx = event_idx;
    vq->indirect = indirect;
    vq->num_free = size;
    if (packed) {
        /* 2.8: the descriptor ring (16-byte aligned), then the two 4-byte event structures. */
        vq->packed = true;
        vq->pdesc = (struct pvirtq_desc *)mem;
        vq->driver_event = (struct pvirtq_event *)((char *)mem + 16u * size);
        vq->device_event = vq->driver_event + 1;
        vq->avail_wrap = vq->used_wrap = true;          /* 2.8.1: both counters start at 1 */
        for (uint16_t i = 0; i < size; i++)
            vq->free_ids[i] = (uint16_t)(size - 1 - i);
        vq->num_free_ids = size;
        vq_disable_interrupts(vq);
        return vpci_queue_enable(vp, index, size, (uintptr_t)vq->pdesc, (uintptr_t)vq->driver_event,
                                 (uintptr_t)vq->device_event);
    }
    vq->desc = (struct virtq_desc *)mem;
    vq->avail = (struct virtq_avail *)((char *)mem + 16u * size);
    vq->used = (struct virtq_used *)((char *)mem + used_offset(size));
    vq->used_event = &vq->avail->ring[size];
    vq->avail_event = (uint16_t *)&vq->used->ring[size];

    /* Every descriptor starts on the free list: 0 -> 1 -> ... -> size-1. */
    for (uint16_t i = 0; i + 1 < size; i++)
        vq->desc[i].next = i + 1;
    vq->free_head = 0;

    /* Polling by default: the self-test turns interrupts on when it wants them. */
    vq_disable_interrupts(vq);

    return vpci_queue_enable(vp, index, size, (uintptr_t)vq->desc, (uintptr_t)vq->avail,
                             (uintptr_t)vq->used);
}

/* Puts the head on the available ring (2.7.13): write the ring slot, then (after a barrier, so
 * the device never sees the new index before the slot) bump avail->idx. */
static void publish(struct virtqueue *vq, uint16_t head, void *cookie)
{
    vq->cookie[head] = cookie;
    vq->in_flight++;
    vq->avail->ring[vq->avail_idx % vq->size] = head;
    wmb();                                          /* 2.7.13.3.1 */
    vq->avail_idx++;
    *(volatile uint16_t *)&vq->avail->idx = vq->avail_idx;     /* the device polls this */
}

/* 2.8.21: write a chain of n packed descriptors from the next slot, the first one's flags last
 * (after a barrier), so the device never sees a half-written chain. Returns the buffer ID. */
static int packed_add(struct virtqueue *vq, const struct pvirtq_desc *descs, int n, void *cookie)
{
    if (n <= 0 || n > vq->num_free || !vq->num_free_ids)
        return -1;
    uint16_t id = vq->free_ids[--vq->num_free_ids];
    uint16_t first = vq->next_avail, first_flags = 0;
    for (int k = 0; k < n; k++) {
        struct pvirtq_desc *d = &vq->pdesc[vq->next_avail];
        uint16_t flags = descs[k].flags | (k + 1 < n ? VIRTQ_DESC_F_NEXT : 0) |
                         (vq->avail_wrap ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED);
        d->addr = descs[k].addr;
        d->len = descs[k].len;
        d->id = id;
        if (k == 0)
            first_flags = flags;
        else
            d->flags = flags;
        if (++vq->next_avail == vq->size) {
            vq->next_avail = 0;
            vq->avail_wrap = !vq->avail_wrap;
        }
    }
    vq->ndescs[id] = (uint16_t)n;
    vq->num_free -= n;
    vq->added_since_kick += n;
    vq->cookie[id] = cookie;
    vq->in_flight++;
    wmb();                                          /* 2.8.21.1 */
    *(volatile uint16_t *)&vq->pdesc[first].flags = first_flags;
    return id;
}

int vq_add(struct virtqueue *vq, const struct vq_buf *bufs, int n, void *cookie)
{
    if (vq->packed) {
        struct pvirtq_desc descs[n > 0 ? n : 1];
        for (int k = 0; k < n; k++) {
            descs[k].addr = (uintptr_t)bufs[k].addr;
            descs[k].len = bufs[k].len;
            descs[k].flags = bufs[k].device_writes ? VIRTQ_DESC_F_WRITE : 0;
        }
        return packed_add(vq, descs, n, cookie);
    }
    if (n <= 0 || n > vq->num_free)
        return -1;
    uint16_t head = vq->free_head, i = head;
    for (int k = 0; k < n; k++) {
        struct virtq_desc *d = &vq->desc[i];
        d->addr = (uintptr_t)bufs[k].addr;
        d->len = bufs[k].len;
        d->flags = (bufs[k].device_writes ? VIRTQ_DESC_F_WRITE : 0) |
                   (k + 1 < n ? VIRTQ_DESC_F_NEXT : 0);
        i = d->next;                                /* free-list link = next in the chain */
    }
    vq->free_head = i;
    vq->num_free -= n;
    publish(vq, head, cookie);
    return head;
}

int vq_add_indirect(struct virtqueue *vq, const struct vq_buf *bufs, int n,
                    struct virtq_desc *table, void *cookie)
{
    if (!vq->indirect || n <= 0 || vq->num_free < 1)
        return -1;
    if (vq->packed) {
        /* 2.8.19: the table holds packed descriptors, used in order (no NEXT, no IDs). */
        struct pvirtq_desc *t = (struct pvirtq_desc *)table;
        for (int k = 0; k < n; k++) {
            t[k].addr = (uintptr_t)bufs[k].addr;
            t[k].len = bufs[k].len;
            t[k].id = 0;
            t[k].flags = bufs[k].device_writes ? VIRTQ_DESC_F_WRITE : 0;
        }
        struct pvirtq_desc d = { (uintptr_t)table, (uint32_t)n * sizeof *t, 0, VIRTQ_DESC_F_INDIRECT };
        return packed_add(vq, &d, 1, cookie);
    }
    for (int k = 0; k < n; k++) {
        table[k].addr = (uintptr_t)bufs[k].addr;
        table[k].len = bufs[k].len;
        table[k].flags = (bufs[k].device_writes ? VIRTQ_DESC_F_WRITE : 0) |
                         (k + 1 < n ? VIRTQ_DESC_F_NEXT : 0);
        table[k].next = (uint16_t)(k + 1);          /* indices within the table (2.7.5.3.1) */
    }
    uint16_t head = vq->free_head;
    struct virtq_desc *d = &vq->desc[head];
    vq->free_head = d->next;
    vq->num_free--;
    d->addr = (uintptr_t)table;
    d->len = (uint32_t)n * sizeof(struct virtq_desc);
    d->flags = VIRTQ_DESC_F_INDIRECT;               /* never together with NEXT (2.7.5.3.1) */
    publish(vq, head, cookie);
    return head;
}

bool vq_kick(struct virtqueue *vq)
{
    /* The device may read avail_event / used->flags only after seeing our new avail->idx, and
     * we must read them only after that store is visible: a full fence (2.7.10). */
    mb();
    if (vq->packed) {
        /* 2.8.10: DISABLE, ENABLE, or DESC: notify iff the slot off_wrap names is among those
         * made available since the last notification (slots, taken mod 2^16 as 2.7.10 does). */
        struct pvirtq_event e = *(volatile struct pvirtq_event *)vq->device_event;
        uint16_t new = vq->next_avail, old = (uint16_t)(new - vq->added_since_kick);
        vq->added_since_kick = 0;
        bool notify;
        if (e.flags == RING_EVENT_FLAGS_DESC) {
            uint16_t event = e.off_wrap & 0x7FFF;
            if ((bool)(e.off_wrap >> 15) != vq->avail_wrap)
                event = (uint16_t)(event - vq->size);
            notify = (uint16_t)(new - event - 1) < (uint16_t)(new - old);
        } else {
            notify = e.flags != RING_EVENT_FLAGS_DISABLE;
        }
        if (notify) {
            vpci_notify(vq->vp, vq->index);
            vq->kicks++;
        } else {
            vq->kicks_suppressed++;
        }
        return notify;
    }
    uint16_t old = vq->last_kick_idx, new = vq->avail_idx;
    vq->last_kick_idx = new;
    bool notify;
    if (vq->event_idx) {
        /* 2.7.10: notify iff avail_event lies in [old, new), i.e. the device asked to be told
         * once the index moved past avail_event and we just did that. All mod 2^16. */
        uint16_t event = *(volatile uint16_t *)vq->avail_event;
        notify = (uint16_t)(new - event - 1) < (uint16_t)(new - old);
    } else {
        notify = !(*(volatile uint16_t *)&vq->used->flags & VIRTQ_USED_F_NO_NOTIFY);
    }
    if (notify) {
        vpci_notify(vq->vp, vq->index);
        vq->kicks++;
    } else {
        vq->kicks_suppressed++;
    }
    return notify;
}

bool vq_has_used(struct virtqueue *vq)
{
    if (vq->packed) {
        /* 2.8.1: used when both AVAIL and USED equal our used wrap counter. */
        uint16_t f = *(volatile uint16_t *)&vq->pdesc[vq->next_used].flags;
        return !!(f & VIRTQ_DESC_F_AVAIL) == vq->used_wrap && !!(f & VIRTQ_DESC_F_USED) == vq->used_wrap;
    }
    return *(volatile uint16_t *)&vq->used->idx != vq->last_used_idx;
}

/* Returns a finished chain's descriptors to the free list. */
static void free_chain(struct virtqueue *vq, uint16_t head)
{
    uint16_t i = head, n = 1;
    /* Bounded walk: our own descriptors, but never trust a loop over shared memory. */
    while ((vq->desc[i].flags & VIRTQ_DESC_F_NEXT) && n < vq->size) {
        i = vq->desc[i].next;
        n++;
    }
    vq->desc[i].next = vq->free_head;
    vq->free_head = head;
    vq->num_free += n;
}

bool vq_get_used(struct virtqueue *vq, void **cookie, uint32_t *len)
{
    if (!vq_has_used(vq))
        return false;
    rmb();                          /* read the entry only after seeing used->idx move (2.7.14) */
    if (vq->packed) {
        struct pvirtq_desc d = vq->pdesc[vq->next_used];
        if (d.id >= vq->size || !vq->cookie[d.id]) {
            kprintf("# virtqueue %u: device returned bogus buffer id %u\n", vq->index, d.id);
            vq->device_errors++;
            *cookie = 0;
            *len = 0;
            vq->next_used = (uint16_t)((vq->next_used + 1) % vq->size);
            return true;
        }
        *cookie = vq->cookie[d.id];
        *len = d.len;
        vq->cookie[d.id] = 0;
        vq->in_flight--;
        vq->next_used += vq->ndescs[d.id];          /* 2.8.7: one used descriptor per chain */
        if (vq->next_used >= vq->size) {
            vq->next_used -= vq->size;
            vq->used_wrap = !vq->used_wrap;
        }
        vq->num_free += vq->ndescs[d.id];
        vq->free_ids[vq->num_free_ids++] = d.id;
        return true;
    }
    struct virtq_used_elem e = vq->used->ring[vq->last_used_idx % vq->size];
    vq->last_used_idx++;
    if (e.id >= vq->size || !vq->cookie[e.id]) {
        /* The device returned a head we never gave it (or twice): a device bug. */
        kprintf("# virtqueue %u: device returned bogus head %u\n", vq->index, e.id);
        vq->device_errors++;
        *cookie = 0;
        *len = 0;
        return true;
    }
    *cookie = vq->cookie[e.id];
    *len = e.len;
    vq->cookie[e.id] = 0;
    vq->in_flight--;
    free_chain(vq, (uint16_t)e.id);
    /* With interrupts enabled the caller re-arms used_event (vq_enable_interrupts) before it
     * sleeps again, so the device's next completion wakes it. */
    return true;
}

void vq_enable_interrupts(struct virtqueue *vq)
{
    if (vq->packed) {
        /* 2.8.10: with EVENT_IDX ask for an interrupt when the next slot we read is used. */
        if (vq->event_idx) {
            vq->driver_event->off_wrap = (uint16_t)(vq->next_used | (vq->used_wrap ? 0x8000 : 0));
            wmb();
            *(volatile uint16_t *)&vq->driver_event->flags = RING_EVENT_FLAGS_DESC;
        } else {
            *(volatile uint16_t *)&vq->driver_event->flags = RING_EVENT_FLAGS_ENABLE;
        }
        mb();
        return;
    }
    if (vq->event_idx) {
        /* 2.7.7.2: with EVENT_IDX, flags stays 0 and used_event says "interrupt when you
         * write the used entry with this index": the next one we have not seen. */
        vq->avail->flags = 0;
        *(volatile uint16_t *)vq->used_event = vq->last_used_idx;
    } else {
        vq->avail->flags = 0;
    }
    mb();                           /* the device must see this before we check used->idx */
}

void vq_disable_interrupts(struct virtqueue *vq)
{
    if (vq->packed) {
        *(volatile uint16_t *)&vq->driver_event->flags = RING_EVENT_FLAGS_DISABLE;
        return;
    }
    if (vq->event_idx) {
        /* flags MUST stay 0 with EVENT_IDX; point used_event as far behind as possible
         * (an interrupt only after 2^16 - 1 more completions). */
        vq->avail->flags = 0;
        *(volatile uint16_t *)vq->used_event = (uint16_t)(vq->last_used_idx - 1);
    } else {
        vq->avail->flags = VIRTQ_AVAIL_F_NO_INTERRUPT;
    }
}
