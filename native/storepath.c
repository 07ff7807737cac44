/* Guest stores to RAM pages that hold no translated code on Unicorn's TLB fast path, for
 * machine/store_path.py.
 *
 * QEMU tracks which RAM pages hold translated code (its DIRTY_MEMORY_CODE bitmap): a store to a
 * page without code takes the TLB fast path, and when code is first translated on a page every
 * TLB entry that maps it is sent back to the slow path, where stores invalidate the code they
 * overwrite.  Unicorn 2.1.4 stubs the bitmap out and keeps every store through a TLB entry that
 * also maps the page for execution on the slow path ("not dirty": two region lookups and a
 * code-page check per store), which is nearly every store of a firmware, a kernel decompressor
 * or an early kernel (mappings without NX).
 *
 * Unicorn calls tlb_set_page_with_attrs (a TLB fill) and tb_gen_code (a translation) through
 * its PLT, so this file puts wrappers in their GOT slots (process-wide; for an engine without a
 * registered state they only call through):
 *  - after a fill of a writable entry for a page of guest RAM on which no code was ever
 *    translated, the entry is marked dirty (Unicorn's tlb_set_dirty): its stores take the fast
 *    path from the first one on;
 *  - after a translation, a page that had no code until then is marked as holding code, for
 *    good, and every TLB entry mapping it, by host address, whatever its virtual address, goes
 *    back to the slow path (Unicorn's tlb_reset_dirty), as QEMU's tlb_protect_code does.
 * So no entry that maps a page with code is ever left dirty by us, and the first translation on
 * a page also re-arms entries Unicorn itself marked dirty (its NX aliases). */

#define _GNU_SOURCE
#include <elf.h>
#include <link.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine_table.h"

#define PAGE_BITS   12
#define PAGE_SIZE   (1ull << PAGE_BITS)
#define PAGE_WRITE  0x0002                  /* QEMU's page protection bit */
#define MAX_RANGES  4

typedef struct { uint32_t bits; } MemTxAttrs;   /* QEMU's bit-field struct: 32 bits, by value */
typedef void (*set_page_fn)(void *cpu, uint64_t vaddr, uint64_t paddr, MemTxAttrs attrs,
                            int prot, int mmu_idx, uint64_t size);
typedef void *(*gen_code_fn)(void *cpu, uint64_t pc, uint64_t cs_base, uint32_t flags,
                             int cflags);
typedef void (*set_dirty_fn)(void *cpu, uint64_t vaddr);
typedef void (*reset_dirty_fn)(void *cpu, uint64_t host_start, uint64_t length);
typedef void *(*ram_ptr_fn)(void *uc, void *ram_block, uint64_t ram_addr);

/* Unicorn's functions and the TB layout, set once by storepath_install. */
static set_page_fn set_page;
static gen_code_fn gen_code;
static set_dirty_fn set_dirty;
static reset_dirty_fn reset_dirty;
static ram_ptr_fn ram_ptr;
static size_t tb_page_addr;                 /* offsetof(TranslationBlock, page_addr) */

/* Read and written by Python (ctypes Structure in machine/store_path.py): keep in step. */
struct range { uint64_t gpa, size, offset; };
struct storepath {
    void *cpu;                    /* the engine's CPUState */
    void *uc;
    uint8_t *ram;                 /* guest RAM: host buffer and size */
    uint64_t ram_size;
    struct range range[MAX_RANGES];   /* guest-physical RAM ranges -> offsets in the buffer */
    uint32_t nranges;
    uint32_t enabled;             /* Python clears it while a memory hook may cover RAM */
    uint64_t cleaned, code_pages; /* statistics: entries made dirty, pages that got code */
    uint8_t *code;                /* per RAM page: code was translated there (never cleared) */
};

/* What the wrappers saw last (the start-up self-test learns layouts from them). */
struct storepath_seen { void *cpu; void *tb; uint64_t pc; uint64_t fills, translations; };
struct storepath_seen storepath_seen;

static struct engine_table engines;

static void wrapped_set_page(void *cpu, uint64_t vaddr, uint64_t paddr, MemTxAttrs attrs,
                             int prot, int mmu_idx, uint64_t size)
{
    set_page(cpu, vaddr, paddr, attrs, prot, mmu_idx, size);
    storepath_seen.cpu = cpu;
    storepath_seen.fills++;
    if (!(prot & PAGE_WRITE))
        return;
    struct storepath *s = table_find(&engines, cpu);
    if (!s || !s->enabled)
        return;
    for (uint32_t i = 0; i < s->nranges; i++) {
        const struct range *r = &s->range[i];
        if (paddr - r->gpa < r->size) {
            if (!s->code[(r->offset + paddr - r->gpa) >> PAGE_BITS]) {
                set_dirty(cpu, vaddr);
                s->cleaned++;
            }
            return;
        }
    }
}

static void *wrapped_gen_code(void *cpu, uint64_t pc, uint64_t cs_base, uint32_t flags,
                              int cflags)
{
    void *tb = gen_code(cpu, pc, cs_base, flags, cflags);
    storepath_seen.tb = tb;
    storepath_seen.pc = pc;
    storepath_seen.translations++;
    struct storepath *s = table_find(&engines, cpu);
    if (!tb || !s)
        return tb;
    for (int i = 0; i < 2; i++) {
        uint64_t ram_addr = ((uint64_t *)((char *)tb + tb_page_addr))[i];
        if (ram_addr == (uint64_t)-1)
            continue;
        uint8_t *host = ram_ptr(s->uc, NULL, ram_addr & ~(PAGE_SIZE - 1));
        if (!host || host < s->ram || host >= s->ram + s->ram_size)
            continue;
        uint8_t *code = &s->code[(uint64_t)(host - s->ram) >> PAGE_BITS];
        if (!*code) {
            *code = 1;
            s->code_pages++;
            reset_dirty(cpu, (uint64_t)(uintptr_t)host, PAGE_SIZE);
        }
    }
    return tb;
}

/* ---- the GOT ------------------------------------------------------------------------- */

struct got_search { const void *in_object; const char *names[2]; void **slots[2]; };

static uint64_t dyn_ptr(uint64_t value, uint64_t base)
{
    return value < base ? value + base : value;     /* ld.so relocates these in place */
}

static int search_object(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct got_search *g = data;
    const ElfW(Dyn) *dyn = NULL;
    int inside = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uint64_t start = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_LOAD && (uint64_t)(uintptr_t)g->in_object - start < ph->p_memsz)
            inside = 1;
        if (ph->p_type == PT_DYNAMIC)
            dyn = (const ElfW(Dyn) *)(uintptr_t)start;
    }
    if (!inside || !dyn)
        return 0;
    uint64_t base = info->dlpi_addr, jmprel = 0, pltrelsz = 0, symtab = 0, strtab = 0;
    for (; dyn->d_tag != DT_NULL; dyn++) {
        switch (dyn->d_tag) {
        case DT_JMPREL:   jmprel = dyn_ptr(dyn->d_un.d_ptr, base); break;
        case DT_PLTRELSZ: pltrelsz = dyn->d_un.d_val; break;
        case DT_SYMTAB:   symtab = dyn_ptr(dyn->d_un.d_ptr, base); break;
        case DT_STRTAB:   strtab = dyn_ptr(dyn->d_un.d_ptr, base); break;
        }
    }
    if (!jmprel || !symtab || !strtab)
        return 1;
    const ElfW(Rela) *rel = (const ElfW(Rela) *)(uintptr_t)jmprel;
    for (size_t k = 0; k < pltrelsz / sizeof *rel; k++) {
        if (ELF64_R_TYPE(rel[k].r_info) != R_X86_64_JUMP_SLOT)
            continue;
        const ElfW(Sym) *sym = (const ElfW(Sym) *)(uintptr_t)symtab + ELF64_R_SYM(rel[k].r_info);
        const char *name = (const char *)(uintptr_t)strtab + sym->st_name;
        for (int n = 0; n < 2; n++)
            if (!strcmp(name, g->names[n]))
                g->slots[n] = (void **)(uintptr_t)(base + rel[k].r_offset);
    }
    return 1;
}

/* Put the wrappers in libunicorn's GOT.  The arguments are Unicorn's own functions (their
 * addresses, from dlsym) and offsetof(TranslationBlock, page_addr).  0 on success, -1 when a
 * slot is not found; installing twice changes nothing. */
int storepath_install(void *set_page_fn_, void *gen_code_fn_, void *set_dirty_fn_,
                      void *reset_dirty_fn_, void *ram_ptr_fn_, uint64_t tb_page_addr_offset)
{
    if (set_page)
        return 0;
    struct got_search g = { set_page_fn_, { "tlb_set_page_with_attrs_x86_64", "tb_gen_code_x86_64" },
                            { NULL, NULL } };
    dl_iterate_phdr(search_object, &g);
    if (!g.slots[0] || !g.slots[1])
        return -1;
    set_page = (set_page_fn)set_page_fn_;
    gen_code = (gen_code_fn)gen_code_fn_;
    set_dirty = (set_dirty_fn)set_dirty_fn_;
    reset_dirty = (reset_dirty_fn)reset_dirty_fn_;
    ram_ptr = (ram_ptr_fn)ram_ptr_fn_;
    tb_page_addr = tb_page_addr_offset;
    *g.slots[0] = (void *)wrapped_set_page;
    *g.slots[1] = (void *)wrapped_gen_code;
    return 0;
}

/* ---- engines ------------------------------------------------------------------------- */

void storepath_free(struct storepath *s)
{
    table_forget(&engines, s);
    free(s->code);
    free(s);
}

/* A state for the engine whose CPUState is `cpu`, RAM `ram` of `ram_size` bytes (ranges set by
 * the caller, `enabled` 0 until then); NULL when out of memory or table space.  A state left
 * behind by a closed engine whose CPUState address was reused leaves the table first. */
struct storepath *storepath_new(void *cpu, void *uc, uint8_t *ram, uint64_t ram_size)
{
    struct storepath *s = calloc(1, sizeof *s);
    uint8_t *code = calloc((ram_size >> PAGE_BITS) + 1, 1);
    if (!s || !code) {
        free(s);
        free(code);
        return NULL;
    }
    s->cpu = cpu;
    s->uc = uc;
    s->ram = ram;
    s->ram_size = ram_size;
    s->code = code;
    if (table_add(&engines, s) != 0) {
        storepath_free(s);
        return NULL;
    }
    return s;
}
