/* A cache in front of Unicorn's physical-address -> MemoryRegion lookup, for
 * machine/unicorn_internals.py (MappingCache).
 *
 * Unicorn 2.1.4 looks up the region of a physical address (`uc->memory_mapping`, a walk of
 * QEMU's flat view) on every store that takes its slow path, twice (the store helper and the
 * "not dirty" path), and on slow loads.  Every store to a page the guest may execute from takes
 * that path (Unicorn never clears TLB_NOTDIRTY for an executable mapping), so in a firmware,
 * a kernel decompressor or early kernel boot the walk alone was a quarter of the run.  This
 * cache answers repeated lookups of a page from a direct-mapped table.
 *
 * Correctness rests on two rules kept by Python: while the engine's memory map changes
 * (uc_mem_map/unmap/protect, uc_mmio_map) `bypass` is set, because Unicorn's own map functions
 * look regions up between their steps; after a change `generation` moves on, which empties the
 * table at once (an entry is valid only under the generation it was filled in). */

#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>

typedef void *(*lookup_fn)(void *uc, uint64_t addr);

#define ENTRIES    1024                     /* a power of two */
#define PAGE_BITS  12

struct entry {
    uint64_t page;
    uint64_t generation;
    void *mr;
};

/* Read and written by Python (ctypes Structure in machine/region_cache.py): keep in step. */
struct mapcache {
    void *uc;                     /* the engine */
    lookup_fn lookup;             /* Unicorn's own lookup */
    uint64_t generation;          /* starts at 1: a zeroed entry is never valid */
    uint32_t bypass;              /* the map is changing: ask Unicorn */
    uint32_t unused;
    uint64_t hits, misses;        /* statistics */
    struct entry e[ENTRIES];
};

#define MAX_ENGINES 1024                /* engines alive at once (tests build many) */
static struct mapcache *engines[MAX_ENGINES];
static struct mapcache *last;
static lookup_fn original;        /* Unicorn's lookup (the same function for every engine) */

static int used;                  /* engines[] slots in use are below this */

static struct mapcache *find(void *uc)
{
    if (last && last->uc == uc)
        return last;
    for (int i = 0; i < used; i++)
        if (engines[i] && engines[i]->uc == uc)
            return last = engines[i];
    return NULL;
}

/* Installed in place of Unicorn's lookup.  An engine without a cache (its cache freed while it
 * is being closed) gets Unicorn's own answer. */
void *mapcache_lookup(void *uc, uint64_t addr)
{
    struct mapcache *s = find(uc);
    if (!s)
        return original(uc, addr);
    if (s->bypass)
        return s->lookup(uc, addr);
    uint64_t page = addr >> PAGE_BITS;
    struct entry *e = &s->e[page & (ENTRIES - 1)];
    if (e->generation == s->generation && e->page == page) {
        s->hits++;
        return e->mr;
    }
    s->misses++;
    void *mr = s->lookup(uc, addr);
    e->page = page;
    e->mr = mr;
    e->generation = s->generation;
    return mr;
}

static void forget(struct mapcache *s)
{
    for (int i = 0; i < used; i++)
        if (engines[i] == s)
            engines[i] = NULL;
    if (last == s)
        last = NULL;
}

void mapcache_free(struct mapcache *s)
{
    forget(s);
    free(s);
}

/* A cache for engine `uc` whose own lookup is `lookup`, or NULL (no memory, or MAX_ENGINES
 * engines with caches).  A cache left behind by a closed engine at the same address (its
 * memory reused) leaves the table first (its owner still frees it). */
struct mapcache *mapcache_new(void *uc, lookup_fn lookup)
{
    struct mapcache *old = find(uc);
    if (old)
        forget(old);              /* its owner still frees it */
    for (int i = 0; i < MAX_ENGINES; i++)
        if (!engines[i]) {
            struct mapcache *s = calloc(1, sizeof *s);
            if (!s)
                return NULL;
            s->uc = uc;
            s->lookup = original = lookup;
            s->generation = 1;
            engines[i] = s;
            if (i >= used)
                used = i + 1;
            return s;
        }
    return NULL;
}
