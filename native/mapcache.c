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

#include "engine_table.h"

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

static struct engine_table engines;
static lookup_fn original;        /* Unicorn's lookup (the same function for every engine) */

/* Installed in place of Unicorn's lookup.  An engine without a cache (its cache freed while it
 * is being closed) gets Unicorn's own answer. */
void *mapcache_lookup(void *uc, uint64_t addr)
{
    struct mapcache *s = table_find(&engines, uc);
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

void mapcache_free(struct mapcache *s)
{
    table_forget(&engines, s);
    free(s);
}

/* A cache for engine `uc` whose own lookup is `lookup`, or NULL (no memory, or a full table).
 * A cache left behind by a closed engine at the same address leaves the table first. */
struct mapcache *mapcache_new(void *uc, lookup_fn lookup)
{
    struct mapcache *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->uc = uc;
    s->lookup = original = lookup;
    s->generation = 1;
    if (table_add(&engines, s) != 0) {
        free(s);
        return NULL;
    }
    return s;
}
