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
              bool event_idx, bool indirect)
{
    if (size == 0 || size > VQ_MAX_SIZE || (size & (size - 1)))
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
    vq->desc = (struct virtq_desc *)mem;
    vq->avail = (struct virtq_avail *)((char *)mem + 16u * size);
    vq->used = (struct virtq_used *)((char *)mem + used_offset(size));
    vq->used_event = &vq->avail->ring[size];
    vq->avail_event = (uint16_t *)&vq->used->ring[size];

    /* Every descriptor starts on the free list: 0 -> 1 -> ... -> size-1. */
    for (uint16_t i = 0; i + 1 < size; i++)
        vq->desc[i].next = i + 1;
    vq->free_head = 0;
    vq->num_free = size;

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

int vq_add(struct virtqueue *vq, const struct vq_buf *bufs, int n, void *cookie)
{
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
    if (vq->event_idx) {
        /* flags MUST stay 0 with EVENT_IDX; point used_event as far behind as possible
         * (an interrupt only after 2^16 - 1 more completions). */
        vq->avail->flags = 0;
        *(volatile uint16_t *)vq->used_event = (uint16_t)(vq->last_used_idx - 1);
    } else {
        vq->avail->flags = VIRTQ_AVAIL_F_NO_INTERRUPT;
    }
}
