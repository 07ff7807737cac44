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

/* Does translated code sit on a page of one of these RAM buffers? */
static int iov_holds_code(const struct blkfast_dev *d, const uint8_t *code,
                          const struct iovec *iov, int n)
{
    for (int k = 0; k < n; k++)
        if (holds_code(code, (uint64_t)((const uint8_t *)iov[k].iov_base - d->ram), iov[k].iov_len))
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

/* A plain request, checked and ready to run: what execute() and the I/O lane need. */
struct plain {
    uint32_t type;                        /* BLK_T_IN or BLK_T_OUT */
    int niov;
    uint64_t pos, nbytes;                 /* image offset and length */
    uint64_t status_off;                  /* the status byte in the buffer */
};

/* Check the chain's request is a plain read or write that can complete OK (everything but the
 * I/O itself), filling *p and iov[] (at least MAX_BUFFERS entries): 0, or -1. */
static int prepare(const struct blkfast_dev *d, const struct blkfast_queue *q,
                   const struct chain *c, struct plain *p, struct iovec *iov)
{
    if (!c->nr || !c->nw || c->rlen < HEADER || c->seg[0].len < HEADER)
        return -1;                        /* malformed, or a header split over descriptors */
    const uint8_t *hdr = d->ram + c->seg[0].off;
    uint32_t type = ld32(hdr);
    uint64_t sector = ld64(hdr + 8);
    const struct seg *status = &c->seg[c->nr + c->nw - 1];
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
    if (type == BLK_T_IN && iov_holds_code(d, q->code, iov, n))
        return -1;
    *p = (struct plain){type, n, sector * SECTOR, nbytes, status_off};
    return 0;
}

/* The I/O of a prepared request: 0 with *used_len set, or -1 (a host error, or a regular
 * image that shrank under a write: Python's to report). */
static int perform(int fd, uint32_t regular, const struct plain *p, struct iovec *iov,
                   uint32_t *used_len)
{
    if (p->type == BLK_T_IN) {
        if (full_io(fd, iov, p->niov, p->pos, p->nbytes, 0))
            return -1;
        *used_len = (uint32_t)p->nbytes + 1;
        return 0;
    }
    struct stat st;                       /* RawImage._check_not_shrunk */
    if (regular && (fstat(fd, &st) || (uint64_t)st.st_size < p->pos + p->nbytes))
        return -1;
    if (full_io(fd, iov, p->niov, p->pos, p->nbytes, 1))
        return -1;
    *used_len = 1;
    return 0;
}

/* Carry out the chain's request if it is a plain read or write that completes OK: 0 with
 * *used_len set, or -1 (nothing done that Python would not do again). */
static int execute(const struct blkfast_dev *d, const struct blkfast_queue *q, struct chain *c,
                   uint32_t *used_len)
{
    static __thread struct iovec iov[MAX_BUFFERS];
    struct plain p;
    if (prepare(d, q, c, &p, iov) || perform(q->fd, q->regular, &p, iov, used_len))
        return -1;
    d->ram[p.status_off] = BLK_S_OK;
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

/* -- the I/O lane ---------------------------------------------------------------------------
 *
 * With `iothread=`, while the driver polls (it asked for no used-buffer notifications), the
 * notify front hands plain requests to worker threads here instead of running them inside the
 * kick: the kick only checks and queues them (prepare), and returns to the guest, which goes
 * on filling the queue while a worker moves the data.  A worker runs a request's I/O, then
 * writes its status byte and puts it on the used ring itself, where the polling driver sees it
 * at once, with no Python and no slice boundary in between: QEMU's dataplane, where the
 * iothread completes requests on the ring.
 *
 * Ownership.  From the moment Python arms a slot with a lane (blk_fast.FastPath.arm_lane) the
 * lane owns the queue's indices (`q`): the CPU thread moves last_avail_idx as it queues, the
 * workers move used_idx as they complete, both under `mu`.  Python gets the queue back with
 * blkfast_lane_drain, which waits until every queued request is finished; FastPath.sync calls it
 * before any Python code of the device runs and after every CPU slice, as for the front.  So no
 * request outlives the slice it was queued in, and Python never sees a half-owned queue.
 *
 * What a worker cannot complete as Python would (a host error, a regular image that shrank,
 * translated code found on a page it is about to write) it leaves untouched but for the data
 * of a failed read: the head goes on `left`, and Python runs that request at the drain, with
 * its errors and policies.  Requests complete in the order they finish (2.7.14 lets a device
 * use buffers in any order); a request whose image range overlaps one a worker is running, and
 * either writes, waits for it.  A head the driver makes available again while the lane has it
 * stops the queueing, and Python reports the rule (HeadInFlight) once the lane is drained. */

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <time.h>

#define LANE_JOBS     1024                /* a split queue has at most 32768 entries; ... */
#define LANE_IOVS     16384               /* ... more in flight than these: queueing stops */
#define LANE_THREADS  4
#define LANE_SPIN_NS  50000               /* a worker looks for more work this long before it sleeps */

enum { JOB_QUEUED, JOB_RUNNING, JOB_DONE, JOB_LEFT };

struct lane_job {
    struct plain p;
    uint64_t iov_at;                      /* its iovecs: iov[iov_at % LANE_IOVS] on */
    uint16_t head;
    uint8_t state;
};

struct blkfast_lane {
    struct blkfast_queue q;               /* first: Python packs and reads it (blk_fast._QUEUE) */
    /* Read by Python after a drain (blk_fast._LaneOut): keep in step. */
    uint64_t completed;                   /* requests the workers put on the used ring */
    uint32_t nleft;                       /* heads in left[], for Python to run */
    uint32_t reused;                      /* 1 + a head made available while the lane had it */
    uint32_t deep;                        /* the driver keeps several requests in flight ... */
    uint32_t idle_kicks;                  /* ... unless its last kicks all found the lane empty */
    uint16_t left[LANE_JOBS];
    /* The lane's own. */
    const struct blkfast_dev *d;
    pthread_mutex_t mu;
    pthread_cond_t work, finished;
    pthread_t thread[LANE_THREADS];
    uint32_t nthreads, started, closing, sleeping;
    uint64_t queued, taken, released;     /* jobs: queued > taken > released, free-running */
    uint64_t iov_head, iov_tail;
    uint8_t busy[32768 / 8];              /* heads in the lane */
    struct lane_job job[LANE_JOBS];
    struct iovec iov[LANE_IOVS];
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int overlaps(const struct plain *a, const struct plain *b)
{
    return (a->type == BLK_T_OUT || b->type == BLK_T_OUT) &&
           a->pos < b->pos + b->nbytes && b->pos < a->pos + a->nbytes;
}

/* Under mu: the next job a worker may start, or NULL. */
static struct lane_job *next_job(struct blkfast_lane *L)
{
    if (L->taken == L->queued)
        return NULL;
    struct lane_job *j = &L->job[L->taken % LANE_JOBS];
    for (uint64_t k = L->released; k < L->taken; k++) {
        const struct lane_job *o = &L->job[k % LANE_JOBS];
        if (o->state == JOB_RUNNING && overlaps(&o->p, &j->p))
            return NULL;                  /* after that one */
    }
    L->taken++;
    j->state = JOB_RUNNING;
    return j;
}

/* Under mu: a job finished; put it on the used ring (its status byte first), or on `left`. */
static void finish_job(struct blkfast_lane *L, struct lane_job *j, int ok, uint32_t used_len)
{
    const struct blkfast_dev *d = L->d;
    struct blkfast_queue *q = &L->q;
    if (ok && !holds_code(q->code, q->used, 6 + 8ull * q->size) &&
        !holds_code(q->code, j->p.status_off, 1) &&
        !(j->p.type == BLK_T_IN && iov_holds_code(d, q->code, &L->iov[j->iov_at % LANE_IOVS], j->p.niov))) {
        d->ram[j->p.status_off] = BLK_S_OK;
        uint8_t *used = d->ram + q->used;
        uint8_t *elem = used + 4 + 8u * (q->used_idx % q->size);
        st32(elem, j->head);
        st32(elem + 4, used_len);
        __atomic_store_n(&q->used_idx, (uint16_t)(q->used_idx + 1), __ATOMIC_RELAXED);
        __atomic_store_n((uint16_t *)(used + 2), q->used_idx, __ATOMIC_RELEASE);
        L->busy[j->head / 8] &= (uint8_t)~(1u << (j->head % 8));
        L->completed++;
        j->state = JOB_DONE;
    } else {
        L->left[L->nleft++] = j->head;    /* stays busy: Python runs it at the drain */
        j->state = JOB_LEFT;
    }
    while (L->released < L->taken && L->job[L->released % LANE_JOBS].state >= JOB_DONE) {
        const struct lane_job *r = &L->job[L->released % LANE_JOBS];
        L->iov_tail = r->iov_at + (uint64_t)r->p.niov;
        L->released++;
    }
    if (L->released == L->taken && L->taken == L->queued)
        L->iov_tail = L->iov_head;
    pthread_cond_broadcast(&L->finished);
}

/* Under mu, which it lets go during the I/O: run a job taken with next_job, and finish it. */
static void run_job(struct blkfast_lane *L, struct lane_job *j)
{
    int fd = L->q.fd;
    uint32_t regular = L->q.regular, used_len = 0;
    struct iovec *iov = &L->iov[j->iov_at % LANE_IOVS];
    pthread_mutex_unlock(&L->mu);
    int ok = perform(fd, regular, &j->p, iov, &used_len) == 0;
    pthread_mutex_lock(&L->mu);
    finish_job(L, j, ok, used_len);
}

static void *lane_worker(void *arg)
{
    struct blkfast_lane *L = arg;
    pthread_setname_np(pthread_self(), "virtio-blk-lane");    /* as top and gdb show it */
    pthread_mutex_lock(&L->mu);
    for (;;) {
        struct lane_job *j = next_job(L);
        if (!j) {
            if (L->closing)
                break;
            /* Poll a little before sleeping: the guest is about to queue the next request,
             * and a sleeping worker costs the kick a wake-up. */
            uint64_t t0 = now_ns();
            while (!(j = next_job(L)) && !L->closing && L->taken == L->queued &&
                   now_ns() - t0 < LANE_SPIN_NS) {
                pthread_mutex_unlock(&L->mu);
                sched_yield();
                pthread_mutex_lock(&L->mu);
            }
            if (!j) {
                if (L->closing)
                    break;
                L->sleeping++;
                pthread_cond_wait(L->taken == L->queued ? &L->work : &L->finished, &L->mu);
                L->sleeping--;
                continue;
            }
        }
        run_job(L, j);
    }
    pthread_mutex_unlock(&L->mu);
    return NULL;
}

struct blkfast_lane *blkfast_lane_new(const struct blkfast_dev *d, uint32_t nthreads)
{
    struct blkfast_lane *L = calloc(1, sizeof *L);
    if (!L)
        return NULL;
    L->d = d;
    L->nthreads = nthreads > LANE_THREADS ? LANE_THREADS : nthreads;   /* 0: all at the drain */
    pthread_mutex_init(&L->mu, NULL);
    pthread_cond_init(&L->work, NULL);
    pthread_cond_init(&L->finished, NULL);
    return L;
}

/* Queue what is available (the CPU thread; L->q is the lane's): BLKFAST_DONE when all was
 * queued, BLKFAST_BAIL at the first request Python must handle (still available). q->done
 * counts the requests queued by this call. */
static int lane_queue(struct blkfast_lane *L)
{
    static __thread struct chain c;
    static __thread struct iovec iov[MAX_BUFFERS];
    const struct blkfast_dev *d = L->d;
    struct blkfast_queue *q = &L->q;
    const uint8_t *avail = d->ram + q->avail;
    if (holds_code(q->code, q->used, 6 + 8ull * q->size))
        return BLKFAST_BAIL;
    for (;;) {
        uint16_t pending = (uint16_t)(ld16(avail + 2) - q->last_avail_idx);
        if (pending > q->size)
            return BLKFAST_BAIL;
        for (uint16_t k = 0; k < pending; k++) {
            uint16_t head = ld16(avail + 4 + 2u * (q->last_avail_idx % q->size));
            struct plain p;
            if (head >= q->size)
                return BLKFAST_BAIL;
            pthread_mutex_lock(&L->mu);
            int reused = (L->busy[head / 8] >> (head % 8)) & 1;
            pthread_mutex_unlock(&L->mu);
            if (reused) {
                L->reused = 1u + head;
                return BLKFAST_BAIL;
            }
            if (walk(d, q, head, &c) || prepare(d, q, &c, &p, iov))
                return BLKFAST_BAIL;
            pthread_mutex_lock(&L->mu);
            uint64_t at = L->iov_head;
            if (at % LANE_IOVS + (uint64_t)p.niov > LANE_IOVS)
                at += LANE_IOVS - at % LANE_IOVS;     /* not across the end */
            if (L->queued - L->released + L->nleft >= LANE_JOBS ||
                at + (uint64_t)p.niov - L->iov_tail > LANE_IOVS) {
                pthread_mutex_unlock(&L->mu);
                return BLKFAST_BAIL;      /* full: Python drains it and goes on */
            }
            memcpy(&L->iov[at % LANE_IOVS], iov, sizeof *iov * (size_t)p.niov);
            L->iov_head = at + (uint64_t)p.niov;
            struct lane_job *j = &L->job[L->queued % LANE_JOBS];
            j->p = p;
            j->iov_at = at;
            j->head = head;
            j->state = JOB_QUEUED;
            L->queued++;
            L->busy[head / 8] |= (uint8_t)(1u << (head % 8));
            q->last_avail_idx++;
            q->done++;
            q->nbytes += c.rlen + c.wlen;
            if (L->sleeping)
                pthread_cond_signal(&L->work);
            while (L->started < L->nthreads) {  /* (none that fail: the drain runs the jobs) */
                if (pthread_create(&L->thread[L->started], NULL, lane_worker, L))
                    break;
                L->started++;
            }
            pthread_mutex_unlock(&L->mu);
        }
        pthread_mutex_lock(&L->mu);
        int more = rearm_kicks(d, q);
        pthread_mutex_unlock(&L->mu);
        if (!more)
            return BLKFAST_DONE;
    }
}

/* Is the lane empty? (Only the CPU thread queues: once empty it stays so until it does.) */
static int lane_idle(struct blkfast_lane *L)
{
    pthread_mutex_lock(&L->mu);
    int idle = L->released == L->queued;
    pthread_mutex_unlock(&L->mu);
    return idle;
}

/* Kicks in a row that find the lane empty and one request waiting, after which the driver is
 * taken to wait for each request before the next (one in flight). */
#define LANE_SHALLOW_KICKS 8

/* A kick of the lane's queue.  A driver that waits for each request before it makes the next
 * one available gains nothing from a hand-over but a wake-up: its requests run here, as
 * blkfast_serve does.  One that keeps several in flight has them queued, so that it can make
 * the next ones available while a worker moves the data of the first. */
int blkfast_lane_kick(struct blkfast_lane *L)
{
    struct blkfast_queue *q = &L->q;
    uint16_t pending = (uint16_t)(ld16(L->d->ram + q->avail + 2) - q->last_avail_idx);
    if (lane_idle(L) && pending <= 1) {
        if (L->deep && ++L->idle_kicks >= LANE_SHALLOW_KICKS)
            L->deep = 0;
    } else {
        L->deep = 1;
        L->idle_kicks = 0;
    }
    if (!L->deep)
        return blkfast_serve(L->d, q);
    return lane_queue(L);
}

/* Wait until every queued request is finished (run here when the lane has no worker): the
 * queue is Python's again.  With workers it only waits, so that one worker completes requests
 * in the order they were queued. */
void blkfast_lane_drain(struct blkfast_lane *L)
{
    pthread_mutex_lock(&L->mu);
    while (L->released != L->queued) {
        struct lane_job *j = L->started ? NULL : next_job(L);
        if (!j) {
            pthread_cond_wait(&L->finished, &L->mu);
            continue;
        }
        run_job(L, j);
    }
    L->iov_head = L->iov_tail = 0;
    memset(L->busy, 0, sizeof L->busy);
    pthread_mutex_unlock(&L->mu);
}

/* After Python took the drain's results. */
void blkfast_lane_reset_results(struct blkfast_lane *L)
{
    L->completed = 0;
    L->nleft = 0;
    L->reused = 0;
}

/* Drain, end the workers and free the lane. */
void blkfast_lane_close(struct blkfast_lane *L)
{
    blkfast_lane_drain(L);
    pthread_mutex_lock(&L->mu);
    L->closing = 1;
    pthread_cond_broadcast(&L->work);
    pthread_cond_broadcast(&L->finished);
    pthread_mutex_unlock(&L->mu);
    for (uint32_t i = 0; i < L->started; i++)
        pthread_join(L->thread[i], NULL);
    pthread_mutex_destroy(&L->mu);
    pthread_cond_destroy(&L->work);
    pthread_cond_destroy(&L->finished);
    free(L);
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
    struct blkfast_lane *lane;            /* kicks go to this lane (its own q), or NULL */
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

/* VirtioDevice.notify's decision (SplitQueue.should_notify) without its side effect, with the
 * used index at `now`. */
static int would_notify(const struct blkfast_dev *d, const struct blkfast_queue *q,
                        const struct blkfast_slot *s, uint16_t now)
{
    const uint8_t *avail = d->ram + q->avail;
    if (q->event_idx) {
        uint16_t used_event = ld16(avail + 4 + 2ull * q->size);
        uint16_t old = (uint16_t)s->signalled_used;
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
            struct blkfast_queue *q = s->lane ? &s->lane->q : &s->q;
            q->done = 0;
            q->nbytes = 0;
            int r = s->lane ? blkfast_lane_kick(s->lane) : blkfast_serve(f->dev, q);
            /* With a lane, workers move used_idx meanwhile: decide on one reading of it. */
            uint16_t now = __atomic_load_n(&q->used_idx, __ATOMIC_ACQUIRE);
            if (r == BLKFAST_DONE && (!q->done || !would_notify(f->dev, q, s, now))) {
                if (q->done && q->event_idx) {    /* should_notify's bookkeeping */
                    s->signalled_used = now;
                    s->signalled_valid = 1;
                }
                f->kicks++;
                f->requests += q->done;
                return;
            }
            s->token = 0;                 /* Python takes this kick over from here */
            s->fell_back = 1 + (uint32_t)r;
        }
    }
    f->fallback(uc, offset, size, value, 0);
}
