/* The physical memory map: fw_cfg's etc/e820 (or RAM_SIZE when it is absent), with the legacy
 * hole 0xA0000-0xFFFFF cut out of RAM, since VGA memory and the ROMs answer there. */
#ifndef FW_MEMMAP_H
#define FW_MEMMAP_H

#include "io.h"

#define E820_RAM       1
#define E820_RESERVED  2
#define E820_ACPI      3

struct e820_entry {
    uint64_t addr;
    uint64_t len;
    uint32_t type;
} __attribute__((packed));

#define MEMMAP_MAX 32

struct memmap {
    uint32_t count;
    struct e820_entry entry[MEMMAP_MAX];
};

extern struct memmap memmap;

void memmap_init(uint64_t ram_size);
/* True when [start, end) is RAM throughout (possibly spanning adjacent RAM entries). */
bool memmap_is_ram(uint64_t start, uint64_t end);
/* End of the RAM that contains `addr` (contiguous RAM entries merged), or `addr` if none. */
uint64_t memmap_ram_end(uint64_t addr);
/* Take [addr, addr + len) out of RAM and describe it as `type` instead (firmware data the OS
 * must keep, such as ACPI tables). */
void memmap_reserve(uint64_t addr, uint64_t len, uint32_t type);
/* Highest end of RAM below 4 GiB: PCI memory BARs go above it. */
uint64_t memmap_low_ram_top(void);

#endif
