/* mode=bench: throughput of the driver + device, printed as machine-readable lines
 *     bench <op> bs=<bytes> qd=<in flight> bytes=<total> ops=<requests> ticks=<TSC ticks>
 * Time is the CPU time-stamp counter (RDTSC): on QEMU/KVM it runs at a fixed rate; on an
 * emulator it may be the host's TSC or a virtual one. A line "bench clock=tsc tsc_khz=N" comes
 * first with the TSC rate measured against PIT channel 2 (0 when that could not be measured);
 * the host should time the run as well.
 *
 * Options: bench_mib=N (span of the sequential runs, default 256, clamped to the disk),
 * bench_ops=N (random 4 KiB reads, default 4096). Writes destroy the data in the span. */
#include "cmdline.h"
#include "heap.h"
#include "io.h"
#include "platform.h"
#include "printf.h"
#include "selftest.h"

static uint32_t rng_state = 0x12345678;

static uint32_t xorshift32(void)
{
    uint32_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return rng_state = x;
}

/* Runs `total` requests of `bs` bytes keeping up to `qd` in flight on queue 0: prime qd,
 * then each time the oldest finishes, reuse its slot for the next request. */
static bool run(struct virtio_blk *b, const char *name, uint32_t type, bool random, uint32_t bs,
                uint32_t qd, uint32_t total, uint64_t span_sectors)
{
    struct virtqueue *vq = b->vqs[0];
    if (qd * 3 > vq->size)              /* header + data + status per request */
        qd = vq->size / 3;
    uintptr_t mark = heap_mark();
    struct vblk_req *reqs = heap_alloc(qd * sizeof *reqs, 64);
    char *bufs = heap_alloc((size_t)qd * bs, 4096);
    if (!reqs || !bufs) {
        kprintf("# bench %s bs=%u qd=%u: not enough memory\n", name, bs, qd);
        heap_release(mark);
        return false;
    }
    uint32_t per_req = bs / SECTOR_SIZE;
    /* Random reads pick one of `slots` bs-aligned positions (the first 2^32 if more). */
    uint64_t nslots = udiv64(span_sectors, per_req, 0);
    uint32_t slots = nslots > 0xFFFFFFFFu ? 0xFFFFFFFFu : (uint32_t)nslots;
    uint64_t next_lba = 0;
    uint32_t submitted = 0, done = 0;
    bool ok = true;

    uint64_t t0 = rdtsc();
    while (done < total) {
        /* Top up to qd in flight, then one notification for the lot. */
        bool added = false;
        while (submitted < total && submitted - done < qd) {
            uint32_t slot = submitted % qd;
            uint64_t lba;
            if (random) {
                lba = (uint64_t)(xorshift32() % slots) * per_req;
            } else {
                lba = next_lba;
                next_lba += per_req;
            }
            if (vblk_submit(b, 0, &reqs[slot], type, lba, bufs + (size_t)slot * bs, bs, 0,
                            false) < 0) {
                ok = false;
                break;
            }
            submitted++;
            added = true;
        }
        if (added)
            vq_kick(vq);
        if (!ok)
            break;
        int s = vblk_wait(b, 0, &reqs[done % qd]);
        if (s != VIRTIO_BLK_S_OK) {
            kprintf("# bench %s: request %u failed with status %d\n", name, done, s);
            ok = false;
            break;
        }
        done++;
    }
    uint64_t ticks = rdtsc() - t0;
    if (ok)
        kprintf("bench %s bs=%u qd=%u bytes=%llu ops=%u ticks=%llu\n", name, bs, qd,
                (unsigned long long)total * bs, total, (unsigned long long)ticks);
    /* If something failed, requests may still be in flight: the caller runs nothing more and
     * resets the device, so their buffers are never reused while the device owns them. */
    heap_release(mark);
    return ok;
}

bool bench_run(struct virtio_blk *b)
{
    uint64_t span = (uint64_t)cmdline_u32("bench_mib", 256) * 2048;     /* in sectors */
    if (span > b->capacity)
        span = b->capacity;
    uint32_t ops = cmdline_u32("bench_ops", 4096);
    kprintf("bench clock=tsc tsc_khz=%u\n", platform_tsc_khz());
    kprintf("# bench span=%llu sectors, random ops=%u, transport=%s\n",
            (unsigned long long)span, ops, b->vp.modern ? "modern" : "legacy");

    static const uint32_t sizes[] = { 65536, 1048576 };
    static const uint32_t depths[] = { 1, 16 };
    bool ok = true;
    for (int w = b->ro ? 1 : 0; w < 2; w++) {
        for (int s = 0; s < 2; s++) {
            uint32_t total = (uint32_t)udiv64(span, sizes[s] / SECTOR_SIZE, 0);
            if (total == 0)
                continue;
            /* Stop at the first failure: its requests may still be in flight. */
            for (int d = 0; d < 2; d++)
                ok = ok && run(b, w == 0 ? "seqwrite" : "seqread",
                               w == 0 ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN, false, sizes[s],
                               depths[d], total, span);
        }
    }
    if (b->ro)
        kprintf("# bench seqwrite skipped: the disk is read-only\n");
    if (span >= 8)
        for (int d = 0; d < 2; d++)
            ok = ok && run(b, "randread", VIRTIO_BLK_T_IN, true, 4096, depths[d], ops, span);
    vpci_reset(&b->vp);
    return ok;
}
