#include "memmap.h"
#include "fwcfg.h"
#include "debugcon.h"

#define LEGACY_HOLE_START 0xA0000ull
#define LEGACY_HOLE_END   0x100000ull
/* Without etc/e820, RAM beyond 3 GiB is assumed to be moved above 4 GiB (the PCI hole). */
#define LOW_RAM_MAX       0xC0000000ull
#define FOUR_GIB          0x100000000ull

struct memmap memmap;

static void add(uint64_t addr, uint64_t len, uint32_t type)
{
    if (!len)
        return;
    if (memmap.count == MEMMAP_MAX) {
        dbg_printf("memmap: more than %u entries, dropping 0x%llx+0x%llx\n", MEMMAP_MAX,
                   addr, len);
        return;
    }
    memmap.entry[memmap.count++] = (struct e820_entry){ addr, len, type };
}

/* Add an entry; RAM is clipped around the legacy hole. */
static void add_clipped(uint64_t addr, uint64_t len, uint32_t type)
{
    uint64_t end = addr + len;
    if (type != E820_RAM || end <= LEGACY_HOLE_START || addr >= LEGACY_HOLE_END) {
        add(addr, len, type);
        return;
    }
    if (addr < LEGACY_HOLE_START)
        add(addr, LEGACY_HOLE_START - addr, type);
    if (end > LEGACY_HOLE_END)
        add(LEGACY_HOLE_END, end - LEGACY_HOLE_END, type);
}

void memmap_init(uint64_t ram_size)
{
    uint32_t size;
    uint16_t key = fwcfg_find_file("etc/e820", &size);
    memmap.count = 0;
    if (key && size >= sizeof(struct e820_entry)) {
        fwcfg_select(key);
        for (uint32_t i = 0; i < size / sizeof(struct e820_entry); i++) {
            struct e820_entry e;
            fwcfg_read(&e, sizeof(e));
            add_clipped(e.addr, e.len, e.type);
        }
    } else {
        dbg_printf("memmap: no etc/e820, using RAM_SIZE\n");
        uint64_t low = ram_size < LOW_RAM_MAX ? ram_size : LOW_RAM_MAX;
        add_clipped(0, low, E820_RAM);
        if (ram_size > low)
            add(FOUR_GIB, ram_size - low, E820_RAM);
    }
    for (uint32_t i = 0; i < memmap.count; i++) {
        struct e820_entry *e = &memmap.entry[i];
        dbg_printf("e820: 0x%016llx-0x%016llx type %u\n", e->addr, e->addr + e->len - 1, e->type);
    }
}

uint64_t memmap_ram_end(uint64_t addr)
{
    bool progressed = true;
    while (progressed) {
        progressed = false;
        for (uint32_t i = 0; i < memmap.count; i++) {
            struct e820_entry *e = &memmap.entry[i];
            if (e->type == E820_RAM && e->addr <= addr && addr < e->addr + e->len) {
                addr = e->addr + e->len;
                progressed = true;
            }
        }
    }
    return addr;
}

bool memmap_is_ram(uint64_t start, uint64_t end)
{
    if (start >= end)
        return true;
    if (memmap_ram_end(start) < end)
        return false;
    /* A reserved entry may be carved out of a larger RAM entry. */
    for (uint32_t i = 0; i < memmap.count; i++) {
        struct e820_entry *e = &memmap.entry[i];
        if (e->type != E820_RAM && e->addr < end && start < e->addr + e->len)
            return false;
    }
    return true;
}

uint64_t memmap_low_ram_top(void)
{
    uint64_t top = 0;
    for (uint32_t i = 0; i < memmap.count; i++) {
        struct e820_entry *e = &memmap.entry[i];
        uint64_t end = e->addr + e->len;
        if (e->type == E820_RAM && e->addr < FOUR_GIB)
            top = end > top ? (end > FOUR_GIB ? FOUR_GIB : end) : top;
    }
    return top;
}

static void sort_entries(void)
{
    for (uint32_t i = 1; i < memmap.count; i++)
        for (uint32_t j = i; j > 0 && memmap.entry[j - 1].addr > memmap.entry[j].addr; j--) {
            struct e820_entry t = memmap.entry[j];
            memmap.entry[j] = memmap.entry[j - 1];
            memmap.entry[j - 1] = t;
        }
}

void memmap_reserve(uint64_t addr, uint64_t len, uint32_t type)
{
    uint64_t end = addr + len;
    uint32_t n = memmap.count;
    for (uint32_t i = 0; i < n; i++) {
        struct e820_entry *e = &memmap.entry[i];
        uint64_t e_end = e->addr + e->len;
        if (e->type != E820_RAM || e_end <= addr || end <= e->addr)
            continue;
        /* Keep the part below; the part above becomes a new entry. */
        if (e_end > end)
            add(end, e_end - end, E820_RAM);
        e->len = addr > e->addr ? addr - e->addr : 0;
    }
    /* Drop entries emptied by the cut. */
    uint32_t k = 0;
    for (uint32_t i = 0; i < memmap.count; i++)
        if (memmap.entry[i].len)
            memmap.entry[k++] = memmap.entry[i];
    memmap.count = k;
    add(addr, len, type);
    sort_entries();
    dbg_printf("e820: 0x%016llx-0x%016llx type %u (firmware data)\n", addr, end - 1, type);
}
