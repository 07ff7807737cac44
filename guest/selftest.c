/* The self-test: one TAP line per test ("ok N - name", "not ok N - name # reason",
 * "ok N - name # SKIP reason"), in the order of the table below. Every test that writes leaves
 * the plain data pattern (pattern.h) on the sectors it touched, all inside the first
 * TEST_REGION sectors, so the image can be checked from the host afterwards. On a read-only
 * device (VIRTIO_BLK_F_RO) the same tests only read and verify: the host must have filled the
 * image with the pattern beforehand.
 *
 * Sectors each test uses (overlaps are harmless: every test leaves the same pattern behind):
 *   rw_sizes 0..1581   segments 1600..1663   indirect 1700..1763   inflight 0..(queue size - 1)
 *   reset 1800..1815   interrupt 1816 + 8 per queue, 1900.., 1960..1967
 *   multiqueue 1900 + 8 per queue (16 queues: ..2027)   out_of_range: the last sector
 *   pattern: pattern_lba.. (default 0..2047) */
#include "selftest.h"
#include "cmdline.h"
#include "heap.h"
#include "pattern.h"
#include "printf.h"
#include "string.h"

#define TEST_REGION 2048        /* sectors (1 MiB) the tests may write */

enum result { PASS, FAIL, SKIP };

static struct virtio_blk *B;
static bool initialised;
static char why[192];

#define FAILF(...) do { ksnprintf(why, sizeof why, __VA_ARGS__); return FAIL; } while (0)
#define SKIPF(...) do { ksnprintf(why, sizeof why, __VA_ARGS__); return SKIP; } while (0)

void options_from_cmdline(struct vblk_options *o)
{
    char t[16] = "auto";
    cmdline_get("transport", t, sizeof t);
    o->transport = !strcmp(t, "modern") ? TRANSPORT_MODERN
                 : !strcmp(t, "legacy") ? TRANSPORT_LEGACY : TRANSPORT_AUTO;
    char irq[8] = "intx";
    cmdline_get("irq", irq, sizeof irq);
    o->msix = !strcmp(irq, "msix");
    char ring[8] = "split";
    cmdline_get("ring", ring, sizeof ring);
    o->packed = !strcmp(ring, "packed");
    o->use_event_idx = cmdline_u32("event_idx", 1) != 0;
    o->use_indirect = cmdline_u32("indirect", 1) != 0;
    o->max_queue_size = (uint16_t)cmdline_u32("queue_size", VQ_MAX_SIZE);
    o->max_queues = (uint16_t)cmdline_u32("max_queues", VBLK_MAX_QUEUES);
}

static const char *status_name(int s)
{
    switch (s) {
    case VIRTIO_BLK_S_OK: return "OK";
    case VIRTIO_BLK_S_IOERR: return "IOERR";
    case VIRTIO_BLK_S_UNSUPP: return "UNSUPP";
    case VBLK_TIMEOUT: return "timeout";
    default: return "invalid";
    }
}

/* Some DMA-able memory at `offset` bytes past a page boundary; freed by heap_release. */
static void *buffer_at(uint32_t len, uint32_t offset)
{
    char *p = heap_alloc(len + offset + 4096, 4096);
    return p ? p + offset : 0;
}

/* One synchronous request, checking the status and (modern interface) the used length: the
 * device must report exactly the bytes it wrote, i.e. data + status byte for a read, just the
 * status byte for a write (2.7.8: len is the total written). Legacy devices are allowed to get
 * len wrong (2.7.8.2 legacy note), so it is not checked there. Nor is it checked for failed
 * requests: QEMU 7.2 then still reports the full writable length (data + status) although it
 * wrote only the status byte, where the spec asks for the bytes actually written. */
static enum result do_io(uint16_t q, uint32_t type, uint64_t lba, void *buf, uint32_t len,
                         const struct vblk_layout *layout, int want_status)
{
    static struct vblk_req request;       /* static: outlives every heap mark */
    struct vblk_req *req = &request;
    int s = vblk_do(B, q, req, type, lba, buf, len, layout);
    if (s != want_status)
        FAILF("type %u lba %u len %u on queue %u: status %s (%d), expected %s", type,
              (uint32_t)lba, len, q, status_name(s), s, status_name(want_status));
    if (s == VIRTIO_BLK_S_OK && B->vp.modern && (type == VIRTIO_BLK_T_IN ||
                                                 type == VIRTIO_BLK_T_OUT)) {
        uint32_t expect = (type == VIRTIO_BLK_T_IN ? len : 0) + 1;
        if (req->used_len != expect)
            FAILF("type %u len %u: used.len %u, expected %u", type, len, req->used_len, expect);
    }
    return PASS;
}

/* Write the complement, read it back; write the pattern, read it back (a writable disk).
 * Read and compare with the pattern only (a read-only disk). */
static enum result rw_check(uint16_t q, uint64_t lba, void *buf, uint32_t len,
                            const struct vblk_layout *layout)
{
    uint32_t sectors = len / SECTOR_SIZE;
    for (int pass = B->ro ? 1 : 0; pass < 2; pass++) {
        bool invert = pass == 0;
        if (!B->ro) {
            pattern_fill(buf, lba, sectors, invert);
            if (do_io(q, VIRTIO_BLK_T_OUT, lba, buf, len, layout, VIRTIO_BLK_S_OK) != PASS)
                return FAIL;
        }
        memset(buf, 0xCC, len);
        if (do_io(q, VIRTIO_BLK_T_IN, lba, buf, len, layout, VIRTIO_BLK_S_OK) != PASS)
            return FAIL;
        int32_t bad = pattern_check(buf, lba, sectors, invert);
        if (bad >= 0)
            FAILF("lba %u len %u: data mismatch at byte %d (%s pattern)", (uint32_t)lba, len,
                  bad, invert ? "inverted" : "plain");
    }
    return PASS;
}

static enum result need_region(void)
{
    if (!initialised)
        FAILF("device not initialised");
    if (B->capacity < TEST_REGION)
        FAILF("disk too small: %u sectors, the tests need %u", (uint32_t)B->capacity,
              TEST_REGION);
    return PASS;
}

/* --- the tests ------------------------------------------------------------------------------ */

static enum result t_init(void)
{
    struct vblk_options o;
    options_from_cmdline(&o);
    if (vblk_probe(B, &o) < 0)
        FAILF("no usable virtio-blk device");
    if (vblk_init(B, why, sizeof why) < 0)
        return FAIL;
    uint8_t st = vpci_get_status(&B->vp);
    if (!(st & VIRTIO_STATUS_DRIVER_OK))
        FAILF("status %x after init: DRIVER_OK not set", st);
    if (B->vp.modern && vpci_get_driver_features(&B->vp) != B->features)
        FAILF("driver features read back %llx, wrote %llx",
              (unsigned long long)vpci_get_driver_features(&B->vp),
              (unsigned long long)B->features);
    kprintf("# transport=%s device_features=%llx accepted=%llx queues=%u queue_size=%u\n",
            B->vp.modern ? "modern" : "legacy", (unsigned long long)B->device_features,
            (unsigned long long)B->features, B->nvqs, B->vqs[0]->size);
    initialised = true;
    return PASS;
}

static enum result t_config(void)
{
    if (!initialised)
        FAILF("device not initialised");
    kprintf("# capacity=%llu sectors blk_size=%u size_max=%u seg_max=%u num_queues=%u ro=%u\n",
            (unsigned long long)B->capacity, B->blk_size, B->size_max, B->seg_max,
            B->num_queues, B->ro);
    if (B->capacity == 0)
        FAILF("capacity is 0");
    if (B->blk_size < 512 || (B->blk_size & (B->blk_size - 1)))
        FAILF("blk_size %u is not a power of 2 >= 512", B->blk_size);
    uint32_t expect = cmdline_u32("expect_sectors", 0);
    if (expect && B->capacity != expect)
        FAILF("capacity %llu, expected %u", (unsigned long long)B->capacity, expect);
    return PASS;
}

static enum result t_rw_sizes(void)
{
    if (need_region() != PASS)
        return FAIL;
    static const struct { uint32_t len, offset; } cases[] = {
        { 512, 0 }, { 512, 1 }, { 1024, 511 }, { 4096, 0 }, { 4096, 7 }, { 4608, 4095 },
        { 8192, 2048 }, { 65536, 3 }, { 66048, 100 }, { 131072, 4093 }, { 262144, 0 },
        { 262144, 1 },
    };
    uint32_t max = cmdline_u32("rw_max_kib", 256) * 1024;
    uint64_t lba = 0;
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (cases[i].len > max)
            continue;
        uintptr_t mark = heap_mark();
        void *buf = buffer_at(cases[i].len, cases[i].offset);
        if (!buf)
            FAILF("out of memory");
        enum result r = rw_check(0, lba, buf, cases[i].len, 0);
        heap_release(mark);
        if (r != PASS)
            return r;
        lba += cases[i].len / SECTOR_SIZE;
    }
    return PASS;
}

/* Data split over several descriptors, pieces of uneven, non-sector sizes. */
static enum result split_test(bool indirect)
{
    static const uint8_t splits[] = { 2, 3, 5, 16, 33 };
    uint32_t len = 16384;
    uint64_t lba = indirect ? 1700 : 1600;
    uintptr_t mark = heap_mark();
    void *buf = buffer_at(len, 1000);
    if (!buf)
        FAILF("out of memory");
    for (unsigned i = 0; i < sizeof splits; i++) {
        struct vblk_layout layout = { splits[i], indirect };
        if (B->seg_max && splits[i] > B->seg_max)
            continue;
        /* A chain longer than the queue is not allowed (2.7.5.3.1 / 2.7.13.1). */
        if (!indirect && splits[i] + 2u > B->vqs[0]->size)
            continue;
        enum result r = rw_check(0, lba, buf, len, &layout);
        if (r != PASS) {
            heap_release(mark);
            return r;
        }
        lba += 8;
    }
    heap_release(mark);
    return PASS;
}

static enum result t_segments(void)
{
    if (need_region() != PASS)
        return FAIL;
    return split_test(false);
}

static enum result t_indirect(void)
{
    if (need_region() != PASS)
        return FAIL;
    if (!vblk_has(B, VIRTIO_F_INDIRECT_DESC))
        SKIPF("VIRTIO_F_INDIRECT_DESC not negotiated");
    return split_test(true);
}

/* Runs one batch of n one-sector requests in flight at once: all submitted, one kick, then
 * reaped in whatever order the device finishes them. */
static enum result batch(uint16_t q, uint32_t type, uint64_t lba, uint32_t n,
                         struct vblk_req *reqs, char *bufs, bool invert,
                         const struct vblk_layout *layout)
{
    struct virtqueue *vq = B->vqs[q];
    for (uint32_t k = 0; k < n; k++) {
        char *buf = bufs + k * SECTOR_SIZE;
        if (type == VIRTIO_BLK_T_OUT)
            pattern_fill(buf, lba + k, 1, invert);
        else
            memset(buf, 0xCC, SECTOR_SIZE);
        if (vblk_submit(B, q, &reqs[k], type, lba + k, buf, SECTOR_SIZE, layout, false) < 0) {
            /* Finish what was submitted, so later tests find an idle queue. */
            ksnprintf(why, sizeof why, "submit %u of %u failed with %u descriptors free", k, n,
                      vq->num_free);
            vq_kick(vq);
            while (k--)
                vblk_wait(B, q, &reqs[k]);
            return FAIL;
        }
    }
    vq_kick(vq);
    for (uint32_t k = 0; k < n; k++) {
        int s = vblk_wait(B, q, &reqs[k]);
        if (s != VIRTIO_BLK_S_OK)
            FAILF("request %u of %u: status %s", k, n, status_name(s));
    }
    if (vq->in_flight || vq->num_free != vq->size)
        FAILF("after reaping: %u in flight, %u of %u descriptors free", vq->in_flight,
              vq->num_free, vq->size);
    if (type == VIRTIO_BLK_T_IN)
        for (uint32_t k = 0; k < n; k++)
            if (pattern_check(bufs + k * SECTOR_SIZE, lba + k, 1, invert) >= 0)
                FAILF("request %u of %u (lba %u): data mismatch", k, n, (uint32_t)(lba + k));
    return PASS;
}

/* Fills the ring to the last descriptor, then checks that one more request is refused by the
 * driver (not written over a descriptor the device still owns), and that all complete. */
static enum result overfill(uint16_t q, uint32_t n, struct vblk_req *reqs, char *bufs)
{
    struct virtqueue *vq = B->vqs[q];
    static struct vblk_req extra;
    for (uint32_t k = 0; k < n; k++)
        if (vblk_submit(B, q, &reqs[k], VIRTIO_BLK_T_IN, k, bufs + k * SECTOR_SIZE,
                        SECTOR_SIZE, 0, false) < 0)
            FAILF("refill %u of %u failed", k, n);
    bool refused = vblk_submit(B, q, &extra, VIRTIO_BLK_T_IN, 0, bufs, SECTOR_SIZE, 0,
                               false) < 0;
    vq_kick(vq);
    if (!refused)
        vblk_wait(B, q, &extra);
    for (uint32_t k = 0; k < n; k++)
        if (vblk_wait(B, q, &reqs[k]) != VIRTIO_BLK_S_OK)
            FAILF("refilled request %u of %u failed", k, n);
    if (!refused)
        FAILF("a request beyond a full queue (%u free descriptors) was accepted", vq->num_free);
    return PASS;
}

static enum result t_inflight(void)
{
    if (need_region() != PASS)
        return FAIL;
    uint16_t q = 0;
    struct virtqueue *vq = B->vqs[q];
    uint32_t n = vq->num_free / 3;          /* header + data + status per request */
    if (n > TEST_REGION)
        n = TEST_REGION;
    uintptr_t mark = heap_mark();
    struct vblk_req *reqs = heap_alloc(n * sizeof *reqs, 64);
    char *bufs = heap_alloc(n * SECTOR_SIZE, 4096);
    if (!reqs || !bufs)
        FAILF("out of memory for %u requests", n);
    uint32_t kicks0 = vq->kicks, supp0 = vq->kicks_suppressed;
    enum result r = PASS;
    if (!B->ro) {
        r = batch(q, VIRTIO_BLK_T_OUT, 0, n, reqs, bufs, true, 0);
        if (r == PASS)
            r = batch(q, VIRTIO_BLK_T_IN, 0, n, reqs, bufs, true, 0);
        if (r == PASS)
            r = batch(q, VIRTIO_BLK_T_OUT, 0, n, reqs, bufs, false, 0);
    }
    if (r == PASS)
        r = batch(q, VIRTIO_BLK_T_IN, 0, n, reqs, bufs, false, 0);
    if (r == PASS)
        r = overfill(q, n, reqs, bufs);
    kprintf("# inflight: %u requests per batch, queue size %u, notifications sent %u, "
            "suppressed %u\n", n, vq->size, vq->kicks - kicks0, vq->kicks_suppressed - supp0);
    heap_release(mark);
    /* With indirect descriptors each request takes one ring slot: the whole avail ring fills. */
    if (r == PASS && vblk_has(B, VIRTIO_F_INDIRECT_DESC) && vq->size <= TEST_REGION) {
        static const struct vblk_layout indirect = { 1, true };
        n = vq->size;
        reqs = heap_alloc(n * sizeof *reqs, 64);
        bufs = heap_alloc(n * SECTOR_SIZE, 4096);
        if (!reqs || !bufs)
            FAILF("out of memory for %u requests", n);
        if (!B->ro)
            r = batch(q, VIRTIO_BLK_T_OUT, 0, n, reqs, bufs, false, &indirect);
        if (r == PASS)
            r = batch(q, VIRTIO_BLK_T_IN, 0, n, reqs, bufs, false, &indirect);
        kprintf("# inflight: %u indirect requests fill the ring\n", n);
        heap_release(mark);
    }
    return r;
}

static enum result t_flush(void)
{
    if (!initialised)
        FAILF("device not initialised");
    if (!vblk_has(B, VIRTIO_BLK_F_FLUSH))
        SKIPF("VIRTIO_BLK_F_FLUSH not offered");
    static struct vblk_req req;
    int s = vblk_do(B, 0, &req, VIRTIO_BLK_T_FLUSH, 0, 0, 0, 0);
    if (s != VIRTIO_BLK_S_OK)
        FAILF("FLUSH: status %s", status_name(s));
    if (B->vp.modern && req.used_len != 1)
        FAILF("FLUSH: used.len %u, expected 1", req.used_len);
    return PASS;
}

static enum result t_get_id(void)
{
    if (!initialised)
        FAILF("device not initialised");
    static struct vblk_req req;
    char id[VIRTIO_BLK_ID_BYTES + 1];
    uintptr_t mark = heap_mark();
    char *buf = buffer_at(VIRTIO_BLK_ID_BYTES, 4090);   /* crosses a page boundary */
    memset(buf, 0xAA, VIRTIO_BLK_ID_BYTES);
    int s = vblk_do(B, 0, &req, VIRTIO_BLK_T_GET_ID, 0, buf, VIRTIO_BLK_ID_BYTES, 0);
    memcpy(id, buf, VIRTIO_BLK_ID_BYTES);
    heap_release(mark);
    if (s != VIRTIO_BLK_S_OK)
        FAILF("GET_ID: status %s", status_name(s));
    /* 5.2.6: a serial shorter than 20 bytes is NUL-terminated; one of exactly 20 is not. */
    id[VIRTIO_BLK_ID_BYTES] = '\0';
    kprintf("# serial=\"%s\"\n", id);
    char expect[VIRTIO_BLK_ID_BYTES + 1];
    if (cmdline_get("expect_serial", expect, sizeof expect)) {
        size_t n = strlen(expect);
        if (memcmp(id, expect, n) || (n < VIRTIO_BLK_ID_BYTES && id[n] != '\0'))
            FAILF("serial \"%s\", expected \"%s\"", id, expect);
    }
    return PASS;
}

static enum result t_out_of_range(void)
{
    if (!initialised)
        FAILF("device not initialised");
    uintptr_t mark = heap_mark();
    char *buf = buffer_at(2 * SECTOR_SIZE, 0);
    uint64_t cap = B->capacity;
    enum result r = PASS;
    /* The last sector is fine; anything touching a sector >= capacity is refused.
     * Spec vs QEMU: 5.2.6.1 says the *driver* MUST NOT submit a read or write beyond capacity
     * and leaves the device's answer open; QEMU (and our device) complete such a request with
     * VIRTIO_BLK_S_IOERR and transfer nothing. This test breaks the driver rule on purpose to
     * check that answer, the one a robust device must give an untrusted driver. */
    if (r == PASS && !B->ro) {
        pattern_fill(buf, cap - 1, 1, false);
        r = do_io(0, VIRTIO_BLK_T_OUT, cap - 1, buf, SECTOR_SIZE, 0, VIRTIO_BLK_S_OK);
    }
    if (r == PASS)
        r = do_io(0, VIRTIO_BLK_T_IN, cap - 1, buf, SECTOR_SIZE, 0, VIRTIO_BLK_S_OK);
    if (r == PASS)
        r = do_io(0, VIRTIO_BLK_T_IN, cap, buf, SECTOR_SIZE, 0, VIRTIO_BLK_S_IOERR);
    if (r == PASS)
        r = do_io(0, VIRTIO_BLK_T_IN, cap - 1, buf, 2 * SECTOR_SIZE, 0, VIRTIO_BLK_S_IOERR);
    if (r == PASS)
        r = do_io(0, VIRTIO_BLK_T_OUT, cap, buf, SECTOR_SIZE, 0, VIRTIO_BLK_S_IOERR);
    if (r == PASS)
        r = do_io(0, VIRTIO_BLK_T_OUT, cap - 1, buf, 2 * SECTOR_SIZE, 0, VIRTIO_BLK_S_IOERR);
    if (r == PASS)      /* sector + count wraps around 2^64 */
        r = do_io(0, VIRTIO_BLK_T_IN, ~0ULL, buf, 2 * SECTOR_SIZE, 0, VIRTIO_BLK_S_IOERR);
    heap_release(mark);
    return r;
}

static enum result t_unsupported(void)
{
    if (!initialised)
        FAILF("device not initialised");
    /* 5.2.6: a request type the device does not implement gets VIRTIO_BLK_S_UNSUPP.
     * 0x7E is no type in 1.2, and has neither the legacy OUT (bit 0) nor BARRIER (bit 31)
     * flag, which devices with legacy roots may strip before looking at the type. */
    return do_io(0, 0x7E, 0, 0, 0, 0, VIRTIO_BLK_S_UNSUPP);
}

static enum result t_read_only(void)
{
    if (!initialised)
        FAILF("device not initialised");
    char v[4];
    if (!cmdline_get("expect_ro", v, sizeof v))
        SKIPF("expect_ro not given (device says ro=%u)", B->ro);
    bool expect = cmdline_u32("expect_ro", 0) != 0;
    if (B->ro != expect)
        FAILF("VIRTIO_BLK_F_RO is %u, expected %u", B->ro, expect);
    if (!expect)
        return PASS;
    /* 5.2.6.2: writes to a read-only device fail with IOERR and change nothing. */
    uintptr_t mark = heap_mark();
    char *buf = buffer_at(SECTOR_SIZE, 0);
    pattern_fill(buf, 0, 1, true);
    enum result r = do_io(0, VIRTIO_BLK_T_OUT, 0, buf, SECTOR_SIZE, 0, VIRTIO_BLK_S_IOERR);
    if (r == PASS) {
        memset(buf, 0, SECTOR_SIZE);
        r = do_io(0, VIRTIO_BLK_T_IN, 0, buf, SECTOR_SIZE, 0, VIRTIO_BLK_S_OK);
        if (r == PASS && pattern_check(buf, 0, 1, false) >= 0)
            r = FAIL, ksnprintf(why, sizeof why, "sector 0 changed by a refused write");
    }
    heap_release(mark);
    return r;
}

static enum result t_reset(void)
{
    if (need_region() != PASS)
        return FAIL;
    uint64_t features = B->features;
    initialised = false;
    /* Write 0 to the status and wait until it reads back 0 (4.1.4.3.2); the device must then
     * have forgotten its queues (2.4: reset returns it to its initial state). */
    if (!vpci_reset(&B->vp))
        FAILF("device status never read 0 after writing 0");
    for (uint16_t q = 0; q < B->nvqs; q++)
        if (vpci_queue_enabled(&B->vp, q))
            FAILF("queue %u still enabled after reset", q);
    /* Re-initialise from scratch: vblk_init runs the whole 3.1.1 sequence (resetting again). */
    if (vblk_init(B, why, sizeof why) < 0)
        return FAIL;
    initialised = true;
    if (B->features != features)
        FAILF("features changed across reset: %llx -> %llx", (unsigned long long)features,
              (unsigned long long)B->features);
    uintptr_t mark = heap_mark();
    void *buf = buffer_at(8192, 0);
    enum result r = rw_check(0, 1800, buf, 8192, 0);
    heap_release(mark);
    return r;
}

static enum result t_multiqueue(void)
{
    if (need_region() != PASS)
        return FAIL;
    uint32_t expect = cmdline_u32("expect_queues", 0);
    if (expect && B->num_queues != expect)
        FAILF("device has %u queues, expected %u", B->num_queues, expect);
    kprintf("# multiqueue: device has %u request queues, using %u\n", B->num_queues, B->nvqs);
    uintptr_t mark = heap_mark();
    void *buf = buffer_at(4096, 5);
    enum result r = PASS;
    for (uint16_t q = 0; q < B->nvqs && r == PASS; q++)
        r = rw_check(q, 1900 + 8u * q, buf, 4096, 0);
    heap_release(mark);
    return r;
}

static enum result t_interrupt(void)
{
    if (need_region() != PASS)
        return FAIL;
    if (!vblk_set_irq_mode(B, true))
        SKIPF("no usable INTx line (interrupt line register = %u)", B->vp.irq_line);
    if (B->vp.msix)
        kprintf("# interrupt: by MSI-X, %u vectors\n", B->vp.msix_vectors);
    uint32_t irqs0 = B->irqs, events0 = B->isr_queue_events;
    uintptr_t mark = heap_mark();
    void *buf = buffer_at(4096, 0);
    enum result r = PASS;
    /* 1. Strictly by interrupt: sleep after the kick until the device interrupts, on every
     * queue; only then look at the used ring. */
    static struct vblk_req req;
    for (uint16_t q = 0; q < B->nvqs && r == PASS; q++) {
        uint32_t before = B->isr_queue_events;
        if (vblk_submit(B, q, &req, VIRTIO_BLK_T_IN, 1900 + 8u * q, buf, 4096, 0, true) < 0)
            r = FAIL, ksnprintf(why, sizeof why, "submit on queue %u failed", q);
        else if (vblk_wait_interrupt(B, q, &req) != VIRTIO_BLK_S_OK)
            r = FAIL, ksnprintf(why, sizeof why, "queue %u: no interrupt or bad status (%s)",
                                q, status_name(req.status));
        else if (B->isr_queue_events == before)
            r = FAIL, ksnprintf(why, sizeof why, "queue %u: completion without interrupt", q);
    }
    /* 2. The normal driver path in interrupt mode (sleep only when nothing is used yet). */
    for (uint16_t q = 0; q < B->nvqs && r == PASS; q++)
        r = rw_check(q, 1816 + 8u * q, buf, 4096, 0);
    /* 3. Several in flight, completions signalled by interrupt. */
    if (r == PASS) {
        uint32_t n = B->vqs[0]->num_free / 3;
        if (n > 8)
            n = 8;
        struct vblk_req *reqs = heap_alloc(n * sizeof *reqs, 64);
        char *bufs = heap_alloc(n * SECTOR_SIZE, 4096);
        if (!B->ro)
            r = batch(0, VIRTIO_BLK_T_OUT, 1960, n, reqs, bufs, false, 0);
        if (r == PASS)
            r = batch(0, VIRTIO_BLK_T_IN, 1960, n, reqs, bufs, false, 0);
    }
    heap_release(mark);
    vblk_set_irq_mode(B, false);
    kprintf("# interrupt: line %u, %u interrupts, %u with the queue bit\n", B->vp.irq_line,
            B->irqs - irqs0, B->isr_queue_events - events0);
    if (r == PASS && B->isr_queue_events == events0)
        FAILF("requests completed but no interrupt reported a used buffer");
    return r;
}

static enum result t_pattern(void)
{
    if (!initialised)
        FAILF("device not initialised");
    uint32_t start = cmdline_u32("pattern_lba", 0);
    uint32_t count = cmdline_u32("pattern_sectors", TEST_REGION);
    if ((uint64_t)start + count > B->capacity)
        FAILF("pattern region %u+%u beyond capacity %llu", start, count,
              (unsigned long long)B->capacity);
    uint32_t chunk = 128;                   /* sectors per request: 64 KiB */
    uintptr_t mark = heap_mark();
    char *buf = buffer_at(chunk * SECTOR_SIZE, 0);
    enum result r = PASS;
    for (uint32_t lba = start; lba < start + count && r == PASS; lba += chunk) {
        uint32_t n = start + count - lba < chunk ? start + count - lba : chunk;
        if (!B->ro) {
            pattern_fill(buf, lba, n, false);
            r = do_io(0, VIRTIO_BLK_T_OUT, lba, buf, n * SECTOR_SIZE, 0, VIRTIO_BLK_S_OK);
        }
    }
    for (uint32_t lba = start; lba < start + count && r == PASS; lba += chunk) {
        uint32_t n = start + count - lba < chunk ? start + count - lba : chunk;
        memset(buf, 0, n * SECTOR_SIZE);
        r = do_io(0, VIRTIO_BLK_T_IN, lba, buf, n * SECTOR_SIZE, 0, VIRTIO_BLK_S_OK);
        if (r == PASS && pattern_check(buf, lba, n, false) >= 0)
            r = FAIL, ksnprintf(why, sizeof why, "pattern mismatch in sectors %u..%u", lba,
                                lba + n - 1);
    }
    heap_release(mark);
    return r;
}

static const struct {
    const char *name;
    enum result (*fn)(void);
} tests[] = {
    { "init", t_init },                 /* always runs: the others need the device */
    { "config", t_config },
    { "rw_sizes", t_rw_sizes },
    { "segments", t_segments },
    { "indirect", t_indirect },
    { "inflight", t_inflight },
    { "flush", t_flush },
    { "get_id", t_get_id },
    { "out_of_range", t_out_of_range },
    { "unsupported", t_unsupported },
    { "read_only", t_read_only },
    { "reset", t_reset },
    { "multiqueue", t_multiqueue },
    { "interrupt", t_interrupt },
    { "pattern", t_pattern },
};
#define NTESTS ((int)(sizeof tests / sizeof tests[0]))

bool selftest_run(struct virtio_blk *b)
{
    B = b;
    char list[512] = "all";
    cmdline_get("tests", list, sizeof list);
    bool all = !strcmp(list, "all");
    /* A misspelt test name must not pass silently by running nothing. */
    for (const char *p = list; !all && *p;) {
        char name[32];
        size_t n = 0;
        while (p[n] && p[n] != ',' && n + 1 < sizeof name) {
            name[n] = p[n];
            n++;
        }
        name[n] = '\0';
        bool known = n == 0;
        for (int i = 0; i < NTESTS && !known; i++)
            known = !strcmp(name, tests[i].name);
        if (!known) {
            kprintf("Bail out! unknown test \"%s\" in tests=\n", name);
            return false;
        }
        p += n;
        while (*p && *p != ',')
            p++;
        if (*p == ',')
            p++;
    }
    bool selected[NTESTS];
    int planned = 0;
    for (int i = 0; i < NTESTS; i++) {
        selected[i] = i == 0 || all || list_contains(list, tests[i].name);
        planned += selected[i];
    }
    kprintf("1..%d\n", planned);
    int n = 0, failed = 0;
    for (int i = 0; i < NTESTS; i++) {
        if (!selected[i])
            continue;
        why[0] = '\0';
        enum result r = tests[i].fn();
        n++;
        if (r == PASS)
            kprintf("ok %d - %s\n", n, tests[i].name);
        else if (r == SKIP)
            kprintf("ok %d - %s # SKIP %s\n", n, tests[i].name, why);
        else {
            kprintf("not ok %d - %s # %s\n", n, tests[i].name, why[0] ? why : "failed");
            failed++;
        }
    }
    /* Leave the device quiet: a reset stops it touching our memory after we exit. */
    if (initialised)
        vpci_reset(&b->vp);
    kprintf("# %d of %d tests failed\n", failed, n);
    return failed == 0;
}
