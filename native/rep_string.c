/* `rep stos` and `rep movs` over RAM at host speed, for machine/x86/rep_string.py.
 *
 * Unicorn runs a rep string instruction one element per execution of a translated block that
 * holds only that instruction (it jumps back to itself), with the instruction counter stepping
 * once per execution.  This block hook, registered natively (no Python runs per block), sees
 * such a block start and performs as many of the remaining elements as the instruction budget
 * allows directly on the RAM buffer, then leaves RCX/RDI/RSI and the retired-instruction
 * counter exactly where that many executions would have left them.  The block then runs as
 * usual: it does the next element, or stops at the budget, or finds RCX = 0 and moves on.  So
 * virtual time, stops and the final state are the same as without the hook.
 *
 * It only acts where that equivalence is easy to see: paging off (linear = physical), 16/32-bit
 * code, DF = 0, TF = 0, the destination wholly inside one range where stores are plain host
 * memory writes (and the source inside one where loads are plain reads: RAM, ROM, shadow RAM as
 * the chipset maps it), not on the page of the instruction itself, and no address-size wrap.
 * Anything else is left to Unicorn. */

#include <stdint.h>
#include <string.h>

#define MAX_RANGES  16
#define CACHE_SIZE  1024

/* Unicorn's exported API, passed in as pointers (no link-time dependency on the wheel). */
typedef int (*reg_rw_fn)(void *uc, int regid, void *value);
typedef int (*mem_read_fn)(void *uc, uint64_t address, void *bytes, uint64_t size);
typedef int (*context_save_fn)(void *uc, void *context);
typedef int (*ctl_fn)(void *uc, int control, ...);

struct direct_range {             /* guest-physical range backed 1:1 by host memory */
    uint64_t gpa, size;
    uint8_t *host;
};

struct neg_entry {                 /* a block known not to be a lone rep string instruction */
    uint64_t address;
    uint32_t size, valid;
};

/* Shared with Python (ctypes Structure in machine/x86/rep_string.py): keep in step. */
struct rep_state {
    uint64_t *counter, *budget;   /* uc_struct.emu_counter / emu_count */
    reg_rw_fn reg_read, reg_write;
    mem_read_fn mem_read;
    context_save_fn context_save;
    ctl_fn ctl;
    void *context;                /* a uc_context for reading hflags and segment bases */
    int32_t ctl_remove_cache;     /* uc_ctl control word for UC_CTL_TB_REMOVE_CACHE */
    int32_t enabled;
    int32_t reg_rax, reg_rcx, reg_rsi, reg_rdi, reg_eflags, reg_cr0;
    int32_t ctx_hflags, ctx_segs, seg_size, seg_base;   /* byte offsets in the context */
    int32_t nread, nwrite;        /* where loads / stores are plain host memory accesses */
    struct direct_range read[MAX_RANGES], write[MAX_RANGES];
    uint64_t elements, blocks;    /* statistics: elements done here, blocks accelerated */
    struct neg_entry neg[CACHE_SIZE];
};

#define HF_CS32  (1u << 4)
#define HF_CS64  (1u << 15)
#define EF_TF    (1u << 8)
#define EF_DF    (1u << 10)
#define CR0_PG   (1u << 31)

/* Host address of `gpa` and the bytes from there to the end of its range (0: not direct). */
static uint8_t *host_at(const struct direct_range *ranges, int n, uint64_t gpa, uint64_t *room)
{
    for (int i = 0; i < n; i++) {
        const struct direct_range *r = &ranges[i];
        if (gpa >= r->gpa && gpa - r->gpa < r->size) {
            *room = r->size - (gpa - r->gpa);
            return r->host + (gpa - r->gpa);
        }
    }
    *room = 0;
    return 0;
}

static uint64_t reg(struct rep_state *s, void *uc, int id)
{
    uint64_t v = 0;
    s->reg_read(uc, id, &v);
    return v;
}

static void set_reg(struct rep_state *s, void *uc, int id, uint64_t v)
{
    s->reg_write(uc, id, &v);
}

static uint64_t seg_base(struct rep_state *s, int seg)
{
    const uint8_t *data = (const uint8_t *)s->context + s->ctx_segs + seg * s->seg_size + s->seg_base;
    uint64_t base;
    memcpy(&base, data, sizeof(base));
    return base;
}

/* Prefixes and opcode of a lone `rep stos/movs`; 0 when the bytes are something else. */
static int decode(const uint8_t *b, uint32_t size, int *p66, int *p67, int *seg)
{
    uint32_t i = 0;
    int rep = 0;
    *p66 = *p67 = 0;
    *seg = 3;                                   /* DS */
    for (; i < size; i++) {
        switch (b[i]) {
        case 0xf3: case 0xf2: rep = 1; continue;
        case 0x66: *p66 = 1; continue;
        case 0x67: *p67 = 1; continue;
        case 0x26: *seg = 0; continue;
        case 0x2e: *seg = 1; continue;
        case 0x36: *seg = 2; continue;
        case 0x3e: *seg = 3; continue;
        case 0x64: *seg = 4; continue;
        case 0x65: *seg = 5; continue;
        }
        break;
    }
    if (!rep || i + 1 != size)
        return 0;
    switch (b[i]) {
    case 0xa4: case 0xa5: case 0xaa: case 0xab:
        return b[i];
    }
    return 0;
}

static void fill(uint8_t *dst, uint64_t value, uint32_t elem, uint64_t count)
{
    if (elem == 1) {
        memset(dst, (int)value, count);
        return;
    }
    uint64_t len = count * elem;
    if (!len)
        return;
    memcpy(dst, &value, elem);                  /* little-endian host, as the guest */
    uint64_t done = elem;
    while (done < len) {                        /* double the pattern */
        uint64_t n = done < len - done ? done : len - done;
        memcpy(dst + done, dst, n);
        done += n;
    }
}

void rep_string_block(void *uc, uint64_t address, uint32_t size, void *user)
{
    struct rep_state *s = user;
    if (size > 15 || !s->enabled)
        return;
    struct neg_entry *ne = &s->neg[(address ^ (address >> 10)) & (CACHE_SIZE - 1)];
    if (ne->valid && ne->address == address && ne->size == size)
        return;
    /* Only "leave this block alone" is cached: acting on a stale entry never changes what
     * the guest sees, it only forgoes the speed-up.  With paging on (linear != physical) every
     * block is left alone, and cached so, which keeps the CR0 read off the hot path. */
    uint8_t code[16];
    int p66, p67, segi, op = 0;
    if (!(reg(s, uc, s->reg_cr0) & CR0_PG) && s->mem_read(uc, address, code, size) == 0)
        op = decode(code, size, &p66, &p67, &segi);
    if (!op) {
        ne->address = address;
        ne->size = size;
        ne->valid = 1;
        return;
    }
    uint64_t counter = *s->counter, budget = *s->budget;
    if (budget <= counter)
        return;
    uint64_t eflags = reg(s, uc, s->reg_eflags);
    if (eflags & (EF_DF | EF_TF))
        return;
    if (s->context_save(uc, s->context) != 0)
        return;
    uint32_t hflags;
    memcpy(&hflags, (const uint8_t *)s->context + s->ctx_hflags, sizeof(hflags));
    if (hflags & HF_CS64)
        return;
    int code32 = (hflags & HF_CS32) != 0;
    uint32_t elem = (op == 0xa4 || op == 0xaa) ? 1 : ((code32 ^ p66) ? 4 : 2);
    uint64_t amask = (code32 ^ p67) ? 0xffffffffull : 0xffffull;

    uint64_t rcx = reg(s, uc, s->reg_rcx), rdi = reg(s, uc, s->reg_rdi);
    uint64_t n = rcx & amask;
    uint64_t k = n < budget - counter ? n : budget - counter;
    uint64_t di = rdi & amask;
    uint64_t room = (amask + 1 - di) / elem;   /* no wrap of the index register */
    if (k > room)
        k = room;
    int movs = op == 0xa4 || op == 0xa5;
    uint64_t rsi = 0, si = 0, src = 0;
    if (movs) {
        rsi = reg(s, uc, s->reg_rsi);
        si = rsi & amask;
        room = (amask + 1 - si) / elem;
        if (k > room)
            k = room;
        src = seg_base(s, segi) + si;
    }
    /* Up to the end of the range holding the first element (a later run of the block, one
     * element on, picks up the next range), and never across 4 GiB (linear addresses wrap). */
    uint64_t dst = seg_base(s, 0) + di, avail;
    uint8_t *d = host_at(s->write, s->nwrite, dst, &avail);
    if (!d || dst >= 0x100000000ull)
        return;
    if (avail > 0x100000000ull - dst)
        avail = 0x100000000ull - dst;
    if (k > avail / elem)
        k = avail / elem;
    const uint8_t *sp = 0;
    if (movs) {
        sp = host_at(s->read, s->nread, src, &avail);
        if (!sp || src >= 0x100000000ull)
            return;
        if (avail > 0x100000000ull - src)
            avail = 0x100000000ull - src;
        if (k > avail / elem)
            k = avail / elem;
    }
    if (!k)
        return;
    uint64_t len = k * elem;
    uint64_t code_lo = address & ~0xfffull, code_hi = (address + size + 0xfff) & ~0xfffull;
    if (dst < code_hi && code_lo < dst + len)
        return;                                 /* never rewrite the running block */
    if (movs) {
        if (dst > src && dst < src + len) {
            /* Forward element copy over an overlap repeats the pattern, as the CPU does. */
            for (uint64_t i = 0; i < len; i += elem)
                memmove(d + i, sp + i, elem);
        } else {
            memmove(d, sp, len);
        }
        set_reg(s, uc, s->reg_rsi, (rsi & ~amask) | ((si + len) & amask));
    } else {
        fill(d, reg(s, uc, s->reg_rax), elem, k);
    }
    set_reg(s, uc, s->reg_rdi, (rdi & ~amask) | ((di + len) & amask));
    set_reg(s, uc, s->reg_rcx, (rcx & ~amask) | ((n - k) & amask));
    *s->counter = counter + k;                  /* k executions of the instruction retired */
    s->ctl(uc, s->ctl_remove_cache, dst, dst + len);   /* translated code over the written bytes */
    s->elements += k;
    s->blocks++;
}
