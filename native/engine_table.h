/* A table of per-engine states keyed by a pointer (the engine, or its CPU), for native helpers
 * that Unicorn calls with that pointer only: mapcache.c, storepath.c.  A state's key is its
 * first field.  One table per helper (static in the including file); the CPU thread alone
 * uses it. */

#ifndef ENGINE_TABLE_H
#define ENGINE_TABLE_H

#define ENGINE_TABLE_MAX 1024           /* engines alive at once (tests build many) */

struct engine_table {
    void *slot[ENGINE_TABLE_MAX];
    void *last;                         /* the last state found */
    int used;                           /* slots in use are below this */
};

static inline void *const *engine_key(void *state)
{
    return (void *const *)state;
}

static inline void *table_find(struct engine_table *t, void *key)
{
    if (t->last && *engine_key(t->last) == key)
        return t->last;
    for (int i = 0; i < t->used; i++)
        if (t->slot[i] && *engine_key(t->slot[i]) == key)
            return t->last = t->slot[i];
    return 0;
}

static inline void table_forget(struct engine_table *t, void *state)
{
    for (int i = 0; i < t->used; i++)
        if (t->slot[i] == state)
            t->slot[i] = 0;
    if (t->last == state)
        t->last = 0;
}

/* Add `state`; a state left with the same key by a closed engine whose address was reused
 * leaves the table first (its owner still frees it).  0, or -1 when the table is full. */
static inline int table_add(struct engine_table *t, void *state)
{
    void *old = table_find(t, *engine_key(state));
    if (old)
        table_forget(t, old);
    for (int i = 0; i < ENGINE_TABLE_MAX; i++)
        if (!t->slot[i]) {
            t->slot[i] = state;
            if (i >= t->used)
                t->used = i + 1;
            return 0;
        }
    return -1;
}

#endif
