#include "acpi.h"
#include "debugcon.h"
#include "fwcfg.h"
#include "memmap.h"
#include "pci.h"

/* Command layout of etc/table-loader: 128-byte entries, a u32 command and its arguments. */
#define LOADER_FILE        "etc/table-loader"
#define CMD_SIZE           128
#define CMD_MAX            64
#define NAME_LEN           56
#define CMD_ALLOCATE       1
#define CMD_ADD_POINTER    2
#define CMD_ADD_CHECKSUM   3
#define ZONE_HIGH          1
#define ZONE_FSEG          2

struct cmd {
    uint32_t command;
    union {
        struct { char file[NAME_LEN]; uint32_t align; uint8_t zone; } __attribute__((packed)) alloc;
        struct { char dest[NAME_LEN]; char src[NAME_LEN]; uint32_t offset; uint8_t size; }
            __attribute__((packed)) pointer;
        struct { char file[NAME_LEN]; uint32_t offset, start, length; } __attribute__((packed)) cksum;
        uint8_t pad[CMD_SIZE - 4];
    };
} __attribute__((packed));

_Static_assert(sizeof(struct cmd) == CMD_SIZE, "table-loader command size");

/* The F segment's lower half, 0xE0000-0xEFFFF, is shadow RAM the firmware opens for writing
 * through the i440FX PAM5/PAM6 registers (its upper half is the ROM's alias). */
#define FSEG_START         0xE0000u
#define FSEG_END           0xF0000u
#define I440FX_BDF         0x0000
#define PAM5               0x5E
#define PAM6               0x5F
#define PAM_READ_WRITE     0x33
#define PAM_READ_ONLY      0x11

#define MAX_FILES          8

struct blob {
    char name[NAME_LEN];
    uint32_t addr, size;
};

static struct cmd cmds[CMD_MAX];
static struct blob blobs[MAX_FILES];
static uint32_t nblobs;
static uint32_t high_top, high_bottom, fseg_next;

uint32_t acpi_rsdp_addr;

static struct blob *find_blob(const char *name)
{
    for (uint32_t i = 0; i < nblobs; i++)
        if (!memcmp(blobs[i].name, name, NAME_LEN))
            return &blobs[i];
    return 0;
}

static bool allocate(const struct cmd *c)
{
    char name[NAME_LEN + 1];
    memcpy(name, c->alloc.file, NAME_LEN);
    name[NAME_LEN] = 0;
    uint32_t align = c->alloc.align ? c->alloc.align : 1, size;
    uint16_t key = fwcfg_find_file(name, &size);
    if (!key || nblobs == MAX_FILES || (align & (align - 1)) || !size) {
        dbg_printf("acpi: cannot allocate '%s'\n", name);
        return false;
    }
    uint32_t addr;
    if (c->alloc.zone == ZONE_FSEG) {
        addr = (fseg_next + align - 1) & ~(align - 1);
        if (addr < fseg_next || addr + size > FSEG_END || addr + size < addr) {
            dbg_printf("acpi: '%s' (%u bytes) does not fit in the F segment\n", name, size);
            return false;
        }
        fseg_next = addr + size;
    } else {
        if (size > high_top || c->alloc.zone != ZONE_HIGH) {
            dbg_printf("acpi: '%s': zone %u or size %u refused\n", name, c->alloc.zone, size);
            return false;
        }
        addr = (high_top - size) & ~(align - 1);
        if (addr < 0x100000 || !memmap_is_ram(addr, high_top)) {
            dbg_printf("acpi: no RAM below 0x%x for '%s'\n", high_top, name);
            return false;
        }
        high_top = high_bottom = addr;
    }
    fwcfg_select(key);
    fwcfg_read((void *)addr, size);
    struct blob *b = &blobs[nblobs++];
    memcpy(b->name, c->alloc.file, NAME_LEN);
    b->addr = addr;
    b->size = size;
    return true;
}

static bool add_pointer(const struct cmd *c)
{
    struct blob *dest = find_blob(c->pointer.dest), *src = find_blob(c->pointer.src);
    uint32_t off = c->pointer.offset, size = c->pointer.size;
    if (!dest || !src || (size != 1 && size != 2 && size != 4 && size != 8) || off > dest->size ||
        size > dest->size - off) {
        dbg_printf("acpi: bad ADD_POINTER\n");
        return false;
    }
    uint8_t *p = (uint8_t *)dest->addr + off;
    uint64_t value = 0;
    memcpy(&value, p, size);
    value += src->addr;
    memcpy(p, &value, size);            /* little-endian: the low `size` bytes */
    return true;
}

static bool add_checksum(const struct cmd *c)
{
    struct blob *b = find_blob(c->cksum.file);
    uint32_t off = c->cksum.offset, start = c->cksum.start, len = c->cksum.length;
    if (!b || off >= b->size || start > b->size || len > b->size - start) {
        dbg_printf("acpi: bad ADD_CHECKSUM\n");
        return false;
    }
    uint8_t *data = (uint8_t *)b->addr, sum = 0;
    for (uint32_t i = 0; i < len; i++)
        sum += data[start + i];
    data[off] -= sum;
    return true;
}

static bool run_loader(uint32_t ncmds)
{
    for (uint32_t i = 0; i < ncmds; i++) {
        const struct cmd *c = &cmds[i];
        bool ok = true;
        switch (c->command) {
        case CMD_ALLOCATE:     ok = allocate(c); break;
        case CMD_ADD_POINTER:  ok = add_pointer(c); break;
        case CMD_ADD_CHECKSUM: ok = add_checksum(c); break;
        default:               break;   /* newer commands (WRITE_POINTER ...) need no action here */
        }
        if (!ok)
            return false;
    }
    return true;
}

void acpi_setup(void)
{
    uint32_t size;
    uint16_t key = fwcfg_find_file(LOADER_FILE, &size);
    if (!key) {
        dbg_printf("acpi: no %s, no tables\n", LOADER_FILE);
        return;
    }
    if (size % CMD_SIZE || size > sizeof(cmds)) {
        dbg_printf("acpi: %s of %u bytes refused\n", LOADER_FILE, size);
        return;
    }
    fwcfg_select(key);
    fwcfg_read(cmds, size);

    high_top = high_bottom = (uint32_t)memmap_low_ram_top();
    uint32_t top = high_top;
    fseg_next = FSEG_START;
    pci_config_writeb(I440FX_BDF, PAM5, PAM_READ_WRITE);
    pci_config_writeb(I440FX_BDF, PAM6, PAM_READ_WRITE);
    bool ok = run_loader(size / CMD_SIZE);
    /* Tables below 1 MiB are read-only from now on, as a BIOS leaves its F segment. */
    pci_config_writeb(I440FX_BDF, PAM5, PAM_READ_ONLY);
    pci_config_writeb(I440FX_BDF, PAM6, PAM_READ_ONLY);
    if (high_bottom < top)
        memmap_reserve(high_bottom & ~0xFFFu, top - (high_bottom & ~0xFFFu), E820_RESERVED);  /* whole pages */
    if (!ok) {
        dbg_printf("acpi: table loader failed, no tables\n");
        return;
    }
    for (uint32_t a = FSEG_START; a + 20 <= fseg_next; a += 16)
        if (!memcmp((const void *)a, "RSD PTR ", 8)) {
            acpi_rsdp_addr = a;
            break;
        }
    dbg_printf("acpi: RSDP at 0x%x, tables 0x%x-0x%x\n", acpi_rsdp_addr, high_bottom, top - 1);
}
