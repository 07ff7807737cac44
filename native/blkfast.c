/* The common virtio-blk request in native code, for machine/virtio/blk_fast.py.
 *
 * One call does what VirtioBlk.handle_queue does for a split queue whose requests are plain
 * reads and writes that succeed: walk each chain (direct or one indirect table), parse the
 * header, move the data between the image and guest RAM with one preadv/pwritev, write the
 * status byte, put the chain on the used ring, and at the end ask for the next kick as the
 * Python path does (avail_event or used->flags), looping while the driver added more.
 *
 * It never decides anything the Python path would decide differently: before it takes a
 * request (before last_avail_idx moves) it checks that the request is one it can complete
 * exactly as Python would, with status OK; anything else (a ring or descriptor the spec
 * forbids, a rule a strict device refuses, another request type, a sector range Python fails,
 * a buffer on a page that holds translated code, a host error) stops the call with BLKFAST_BAIL
 * and the request still available: Python takes it from there with its errors, statuses,
 * reports and trace events.  A host error leaves at most data bytes written into the request's
 * own buffers (a read) or the same bytes written to the image (a write), which the Python path
 * writes again.
 *
 * Guest-controlled values are read once each, every guest range is checked to lie wholly in
 * one RAM window (writable where the device writes) before it is touched, and every loop is
 * bounded by the table it walks.  Python owns the device: it fills `struct blkfast_dev` and
 * `struct blkfast_queue` before the call and reads the queue's indices back after it. */

#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define DESC_F_NEXT      1
#define DESC_F_WRITE     2
#define DESC_F_INDIRECT  4
#define AVAIL_F_NO_INTERRUPT 1
#define BLK_T_IN   0
#define BLK_T_OUT  1
#define BLK_S_OK   0
#define SECTOR     512
#define HEADER     16                     /* struct virtio_blk_outhdr */
#define MAX_BUFFERS 1024                  /* machine/virtio/queue.py MAX_BUFFERS */
#define MAX_CHAIN_BYTES (1ull << 32)
#define REQUEST_MAX_SECTORS (0x7FFFFE00ull >> 9)
#define MAX_RANGES 8
#define PAGE_BITS 12

enum { BLKFAST_DONE = 0, BLKFAST_MORE = 1, BLKFAST_BAIL = 2 };

/* Read and written by Python (ctypes Structures in machine/virtio/blk_fast.py): keep in step. */
struct blkfast_range {
    uint64_t gpa, size, offset;           /* a guest-physical RAM window -> offset in the buffer */
    uint32_t read_only, pad;
};

struct blkfast_dev {
    uint8_t *ram;                         /* the RAM buffer and its size */
    uint64_t ram_size;
    struct blkfast_range range[MAX_RANGES];   /* sorted by gpa, not overlapping */
    uint32_t nranges, pad;
};

/* One call: the queue's state (the indices are written back) and the device's as of now. */
struct blkfast_queue {
    uint64_t desc, avail, used;           /* ring offsets in the RAM buffer (checked by Python) */
    uint32_t size;
    uint32_t event_idx;                   /* VIRTIO_F_EVENT_IDX negotiated */
    uint16_t last_avail_idx, used_idx;    /* in and out */
    uint32_t done;                        /* in and out: requests and bytes of this notify */
    uint64_t nbytes;
    uint32_t max_requests;                /* the notify's budget */
    uint32_t pad;
    uint64_t max_bytes;
    const uint8_t *code;                  /* per buffer page: translated code there (or NULL) */
    uint64_t capacity;                    /* sectors */
    int32_t fd;                           /* the image */
    uint32_t regular;                     /* a regular file: a write checks it did not shrink */
    uint32_t lbs;                         /* logical block size */
    uint32_t seg_max;
    uint32_t can_write;                   /* writes complete OK without more than a pwritev */
    uint32_t indirect;                    /* VIRTIO_F_INDIRECT_DESC negotiated */
    uint64_t request_max_bytes;           /* larger requests are left to Python */
};

static inline uint16_t ld16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void st16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void st32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

/* Offset in the buffer of [gpa, gpa+len) when it lies wholly in one window (a writable one if
 * `write`), else -1: GuestMemory.host_offset. */
static int64_t host_offset(const struct blkfast_dev *d, uint64_t gpa, uint64_t len, int write)
{
    for (uint32_t i = 0; i < d->nranges; i++) {
        const struct blkfast_range *r = &d->range[i];
        if (gpa < r->gpa)
            break;
        if (gpa - r->gpa < r->size) {
            if (len > r->size - (gpa - r->gpa) || (write && r->read_only))
                return -1;
            return (int64_t)(r->offset + (gpa - r->gpa));
        }
    }
    return -1;
}

/* Has code been translated on a page of [off, off+len) of the buffer? A host write there must
 * drop it, which only the Python path does. */
static int holds_code(const uint8_t *code, uint64_t off, uint64_t len)
{
    if (!code || !len)
        return 0;
    for (uint64_t p = off >> PAGE_BITS; p <= (off + len - 1) >> PAGE_BITS; p++)
        if (code[p])
            return 1;
    return 0;
}

struct seg { uint64_t off, len; };

struct chain {
    uint16_t head;
    uint32_t nr, nw;                      /* readable / writable buffers */
    uint64_t rlen, wlen;
    struct seg seg[MAX_BUFFERS];          /* readable first, then writable */
};

/* Walk the chain at `head` as SplitQueue.walk does; 0, or -1 for anything it would refuse or
 * report. */
static int walk(const struct blkfast_dev *d, const struct blkfast_queue *q, uint16_t head,
                struct chain *c)
{
    const uint8_t *ram = d->ram;
    uint64_t table = q->desc, limit = q->size, count = 0;
    uint32_t i = head;
    int in_indirect = 0;
    c->head = head;
    c->nr = c->nw = 0;
    c->rlen = c->wlen = 0;
    for (;;) {
        if (++count > limit)
            return -1;                    /* looped */
        const uint8_t *desc = ram + table + 16ull * i;
        uint64_t addr = ld64(desc);
        uint32_t len = ld32(desc + 8);
        uint16_t flags = ld16(desc + 12), next = ld16(desc + 14);
        if (flags & DESC_F_INDIRECT) {
            if (in_indirect || !q->indirect || (flags & DESC_F_NEXT) || len == 0 || len % 16)
                return -1;
            int64_t t = host_offset(d, addr, len, 0);
            if (t < 0)
                return -1;
            table = (uint64_t)t;
            limit = len / 16;
            in_indirect = 1;
            i = 0;
            count = 0;
            continue;
        }
        if (len == 0)
            return -1;
        int writable = (flags & DESC_F_WRITE) != 0;
        int64_t off = host_offset(d, addr, len, writable);
        if (off < 0 || c->nr + c->nw >= MAX_BUFFERS)
            return -1;
        if (writable) {
            c->seg[c->nr + c->nw++] = (struct seg){(uint64_t)off, len};
            c->wlen += len;
        } else {
            if (c->nw)
                return -1;                /* readable after writable */
            c->seg[c->nr++] = (struct seg){(uint64_t)off, len};
            c->rlen += len;
        }
        if (c->rlen + c->wlen > MAX_CHAIN_BYTES)
            return -1;
        if (!(flags & DESC_F_NEXT))
            break;
        i = next;
        if (i >= limit)
            return -1;
    }
    if (c->nr + c->nw > q->size)
        return -1;                        /* chain-longer-than-queue: a rule Python reports */
    return 0;
}

/* Sector ranges as VirtioBlk._range_ok. */
static int range_ok(const struct blkfast_queue *q, uint64_t sector, uint64_t nbytes)
{
    if (nbytes % SECTOR || nbytes % q->lbs || sector % (q->lbs / SECTOR))
        return 0;
    uint64_t n = nbytes / SECTOR;
    return n <= REQUEST_MAX_SECTORS && sector <= q->capacity && n <= q->capacity - sector;
}

static int full_io(int fd, struct iovec *iov, int n, uint64_t pos, uint64_t want, int write)
{
    ssize_t got = write ? pwritev(fd, iov, n, (off_t)pos) : preadv(fd, iov, n, (off_t)pos);
    return got >= 0 && (uint64_t)got == want ? 0 : -1;
}

/* Carry out the chain's request if it is a plain read or write that completes OK: 0 with
 * *used_len set, or -1 (nothing done that Python would not do again). */
static int execute(const struct blkfast_dev *d, const struct blkfast_queue *q, struct chain *c,
                   uint32_t *used_len)
{
    static __thread struct iovec iov[MAX_BUFFERS];
    if (!c->nr || !c->nw || c->rlen < HEADER || c->seg[0].len < HEADER)
        return -1;                        /* malformed, or a header split over descriptors */
    const uint8_t *hdr = d->ram + c->seg[0].off;
    uint32_t type = ld32(hdr);
    uint64_t sector = ld64(hdr + 8);
    struct seg *status = &c->seg[c->nr + c->nw - 1];
    uint64_t status_off = status->off + status->len - 1;
    if (holds_code(q->code, status_off, 1))
        return -1;
    int n = 0;
    uint64_t nbytes;
    if (type == BLK_T_IN) {
        /* The writable buffers but the status byte. */
        for (uint32_t k = c->nr; k < c->nr + c->nw; k++) {
            uint64_t len = c->seg[k].len - (k == c->nr + c->nw - 1);
            if (len)
                iov[n++] = (struct iovec){d->ram + c->seg[k].off, len};
        }
        nbytes = c->wlen - 1;
    } else if (type == BLK_T_OUT) {
        if (!q->can_write)
            return -1;
        uint64_t skip = HEADER;
        for (uint32_t k = 0; k < c->nr; k++) {
            uint64_t len = c->seg[k].len, off = c->seg[k].off;
            if (skip >= len) {
                skip -= len;
                continue;
            }
            iov[n++] = (struct iovec){d->ram + off + skip, len - skip};
            skip = 0;
        }
        nbytes = c->rlen - HEADER;
    } else {
        return -1;
    }
    if ((uint32_t)n > q->seg_max || !nbytes || nbytes > q->request_max_bytes ||
        !range_ok(q, sector, nbytes))
        return -1;
    if (type == BLK_T_IN) {
        for (int k = 0; k < n; k++)
            if (holds_code(q->code, (uint64_t)((uint8_t *)iov[k].iov_base - d->ram), iov[k].iov_len))
                return -1;
        if (full_io(q->fd, iov, n, sector * SECTOR, nbytes, 0))
            return -1;
        *used_len = (uint32_t)nbytes + 1;
    } else {
        struct stat st;                   /* RawImage._check_not_shrunk */
        if (q->regular && (fstat(q->fd, &st) || (uint64_t)st.st_size < sector * SECTOR + nbytes))
            return -1;
        if (full_io(q->fd, iov, n, sector * SECTOR, nbytes, 1))
            return -1;
        *used_len = 1;
    }
    d->ram[status_off] = BLK_S_OK;
    return 0;
}

/* SplitQueue._ask_for_kicks + the check of rearm_kicks: whether chains are already waiting. */
static int rearm_kicks(const struct blkfast_dev *d, const struct blkfast_queue *q)
{
    uint8_t *used = d->ram + q->used;
    uint16_t idx = ld16(d->ram + q->avail + 2);
    if (q->event_idx) {
        uint8_t *ev = used + 4 + 8ull * q->size;
        if (ld16(ev) != idx)
            st16(ev, idx);
    } else if (ld16(used) != 0) {
        st16(used, 0);
    }
    return ld16(d->ram + q->avail + 2) != q->last_avail_idx;
}

/* Serve the queue (VirtioBlk.handle_queue's loop): BLKFAST_DONE when nothing is left,
 * BLKFAST_MORE when the notify's budget ran out, BLKFAST_BAIL at the first request Python must
 * handle (still available).  q->done, q->nbytes, q->last_avail_idx, q->used_idx say how far it
 * got either way. */
int blkfast_serve(const struct blkfast_dev *d, struct blkfast_queue *q)
{
    static __thread struct chain c;
    const uint8_t *avail = d->ram + q->avail;
    uint8_t *used = d->ram + q->used;
    if (holds_code(q->code, q->used, 6 + 8ull * q->size))
        return BLKFAST_BAIL;              /* its writes must drop code: Python's */
    for (;;) {
        uint16_t pending = (uint16_t)(ld16(avail + 2) - q->last_avail_idx);
        if (pending > q->size)
            return BLKFAST_BAIL;          /* AvailIndexTooFar: Python breaks the device */
        for (uint16_t k = 0; k < pending; k++) {
            if (q->done >= q->max_requests || q->nbytes >= q->max_bytes) {
                rearm_kicks(d, q);        /* as Python's loop does before it stops */
                return BLKFAST_MORE;
            }
            uint16_t head = ld16(avail + 4 + 2u * (q->last_avail_idx % q->size));
            uint32_t used_len;
            if (head >= q->size || walk(d, q, head, &c) || execute(d, q, &c, &used_len))
                return BLKFAST_BAIL;
            q->last_avail_idx++;
            q->done++;
            q->nbytes += c.rlen + c.wlen;
            uint8_t *elem = used + 4 + 8u * (q->used_idx % q->size);
            st32(elem, head);
            st32(elem + 4, used_len);
            q->used_idx++;
            st16(used + 2, q->used_idx);
        }
        if (!rearm_kicks(d, q))
            return BLKFAST_DONE;
    }
}

/* -- the notify front ---------------------------------------------------------------------
 *
 * The modern BAR's write callback is this function: a notify of a queue Python armed is
 * served here, with no Python at all, when the
 * whole kick ends the way Python's would without more work: every available request plain,
 * the budget not reached, and no used-buffer notification due (the driver suppressed it, or
 * nothing completed).  Otherwise, and for every other write, it calls the region's Python
 * write, and Python goes on from where this left off (VirtioBlk reads the queue state back
 * first, and counts what was done here as part of the same kick).
 *
 * Arming lasts until the CPU next runs Python: `token` points at the CPU's token, new at
 * every slice start and at every callback that brings virtual time up to date (Cpu.slice_token),
 * 0 in slices that observe single instructions.  Whatever could change what the device would
 * do happens either between slices (monitor, debugger, trace events, snapshots, timers) or in
 * a callback (a new token), or in Python code of this device (transport registers, PCI config,
 * a change of the memory map), which disarms first.  And as the Python path brings the clock
 * up to date at every access and ends the slice once the next timer is due, the front only
 * acts while the instruction clock is below the count at which that timer falls due: the
 * clock, the port time and the timers cannot change before the next Python callback. */

typedef void (*mmio_write_fn)(void *uc, uint64_t offset, unsigned size, uint64_t value, void *ud);

#define FRONT_QUEUES 8

struct blkfast_slot {
    uint64_t token;                       /* armed for the slice with this token; 0: not armed */
    uint32_t signalled_used;              /* SplitQueue._signalled_used / _valid: in and out */
    uint32_t signalled_valid;
    uint32_t fell_back;                   /* a kick handed to Python: 1 + blkfast_serve's result */
    uint32_t pad;
    const uint64_t *counter;              /* the CPU's instruction clock ... */
    uint64_t limit;                       /* ... at which virtual time reaches the next timer */
    struct blkfast_queue q;
};

struct blkfast_front {
    mmio_write_fn fallback;               /* the region's Python write */
    const uint64_t *token;                /* the CPU's slice token */
    const struct blkfast_dev *dev;
    uint64_t notify_off;                  /* region offset of queue 0's notify address */
    uint32_t notify_mult;
    uint32_t nqueues;                     /* slots in use (at most FRONT_QUEUES) */
    uint64_t kicks;                       /* kicks served here, whole (statistics) */
    uint64_t requests;                    /* requests completed by them */
    struct blkfast_slot slot[FRONT_QUEUES];
};

/* VirtioDevice.notify's decision (SplitQueue.should_notify) without its side effect. */
static int would_notify(const struct blkfast_dev *d, const struct blkfast_slot *s)
{
    const struct blkfast_queue *q = &s->q;
    const uint8_t *avail = d->ram + q->avail;
    if (q->event_idx) {
        uint16_t used_event = ld16(avail + 4 + 2ull * q->size);
        uint16_t now = q->used_idx, old = (uint16_t)s->signalled_used;
        return !s->signalled_valid || (uint16_t)(now - used_event - 1) < (uint16_t)(now - old);
    }
    return !(ld16(avail) & AVAIL_F_NO_INTERRUPT);
}

void blkfast_front_write(void *uc, uint64_t offset, unsigned size, uint64_t value, void *ud)
{
    struct blkfast_front *f = ud;
    uint64_t rel = offset - f->notify_off;
    if (f->token && offset >= f->notify_off && rel % f->notify_mult == 0 &&
        rel / f->notify_mult < f->nqueues) {
        struct blkfast_slot *s = &f->slot[rel / f->notify_mult];
        if (s->token && s->token == *f->token && *s->counter < s->limit) {
            s->q.done = 0;
            s->q.nbytes = 0;
            int r = blkfast_serve(f->dev, &s->q);
            if (r == BLKFAST_DONE && (!s->q.done || !would_notify(f->dev, s))) {
                if (s->q.done && s->q.event_idx) {    /* should_notify's bookkeeping */
                    s->signalled_used = s->q.used_idx;
                    s->signalled_valid = 1;
                }
                f->kicks++;
                f->requests += s->q.done;
                return;
            }
            s->token = 0;                 /* Python takes this kick over from here */
            s->fell_back = 1 + (uint32_t)r;
        }
    }
    f->fallback(uc, offset, size, value, 0);
}
