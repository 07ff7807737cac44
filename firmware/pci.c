#include "pci.h"
#include "memmap.h"
#include "debugcon.h"

#define PCI_CONFIG_ADDRESS 0xCF8
#define PCI_CONFIG_DATA    0xCFC

/* Type 0 configuration header offsets */
#define PCI_VENDOR_ID      0x00
#define PCI_DEVICE_ID      0x02
#define PCI_COMMAND        0x04
#define PCI_HEADER_TYPE    0x0E
#define PCI_BAR0           0x10
#define PCI_ROM_TYPE0      0x30
#define PCI_ROM_TYPE1      0x38
#define PCI_INTERRUPT_LINE 0x3C
#define PCI_INTERRUPT_PIN  0x3D

#define PCI_COMMAND_IO     (1u << 0)
#define PCI_COMMAND_MEMORY (1u << 1)
#define PCI_COMMAND_MASTER (1u << 2)

#define BAR_IO             0x1u
#define BAR_MEM_TYPE_MASK  0x6u
#define BAR_MEM_TYPE_64    0x4u
#define BAR_MEM_PREFETCH   0x8u
#define ROM_ADDRESS_MASK   0xFFFFF800u

/* Address windows: I/O from 0xC000 up; memory top-down below the I/O APIC at 0xFEC00000. */
#define IO_WINDOW_START    0xC000u
#define IO_WINDOW_END      0x10000u
#define MEM_WINDOW_END     0xFEC00000u
/* Memory BARs get at least a page each, so no two devices share a page (emulators and
 * hypervisors map MMIO page by page). */
#define MEM_MIN_SPAN       0x1000u

/* PIIX3 PCI-to-ISA bridge: PIRQ[A-D] route control registers and the ELCR ports. */
#define PIIX3_VENDOR       0x8086
#define PIIX3_DEVICE       0x7000
#define PIIX3_PIRQRC       0x60
#define ELCR1              0x4D0
#define ELCR2              0x4D1
static const uint8_t pirq_irq[4] = { 10, 10, 11, 11 };

enum bar_kind { BAR_KIND_IO, BAR_KIND_MEM32, BAR_KIND_MEM64, BAR_KIND_ROM };
static const char *const bar_kind_name[] = { "io", "mem", "mem64", "rom" };

struct pci_func {
    uint16_t bdf;               /* bus 0: device << 3 | function */
    uint16_t vendor, device;
    uint8_t header_type;
    uint8_t pin, irq;
};

struct pci_bar {
    uint16_t func;              /* index into funcs[] */
    uint8_t index;              /* 0-5, or 6 for the expansion ROM */
    uint8_t kind;
    uint8_t prefetch;
    uint8_t assigned;
    uint32_t size;
    uint32_t span;              /* address space reserved: size, or a page for small memory BARs */
    uint32_t addr;
};

#define MAX_FUNCS 256
#define MAX_BARS  (MAX_FUNCS * 2)

static struct pci_func funcs[MAX_FUNCS];
static struct pci_bar bars[MAX_BARS];
static uint32_t nfuncs, nbars;

static void cfg_address(uint16_t bdf, uint8_t off)
{
    outl(PCI_CONFIG_ADDRESS, 0x80000000u | (uint32_t)bdf << 8 | (off & 0xFC));
}

static uint32_t cfg_read32(uint16_t bdf, uint8_t off)
{
    cfg_address(bdf, off);
    return inl(PCI_CONFIG_DATA);
}

static uint16_t cfg_read16(uint16_t bdf, uint8_t off)
{
    cfg_address(bdf, off);
    return inw(PCI_CONFIG_DATA + (off & 2));
}

static uint8_t cfg_read8(uint16_t bdf, uint8_t off)
{
    cfg_address(bdf, off);
    return inb(PCI_CONFIG_DATA + (off & 3));
}

static void cfg_write32(uint16_t bdf, uint8_t off, uint32_t v)
{
    cfg_address(bdf, off);
    outl(PCI_CONFIG_DATA, v);
}

static void cfg_write16(uint16_t bdf, uint8_t off, uint16_t v)
{
    cfg_address(bdf, off);
    outw(PCI_CONFIG_DATA + (off & 2), v);
}

static void cfg_write8(uint16_t bdf, uint8_t off, uint8_t v)
{
    cfg_address(bdf, off);
    outb(PCI_CONFIG_DATA + (off & 3), v);
}

/* Write all-ones, read back the writable address bits, restore.  Returns the read-back. */
void pci_config_writeb(uint16_t bdf, uint8_t off, uint8_t v)
{
    cfg_write8(bdf, off, v);
}

static uint32_t probe_bar(uint16_t bdf, uint8_t off, uint32_t ones)
{
    uint32_t old = cfg_read32(bdf, off);
    cfg_write32(bdf, off, ones);
    uint32_t v = cfg_read32(bdf, off);
    cfg_write32(bdf, off, old);
    return v;
}

static void add_bar(uint16_t func, uint8_t index, uint8_t kind, uint8_t prefetch, uint32_t mask)
{
    if (!mask || nbars == MAX_BARS)
        return;
    /* The size is the lowest writable address bit (I/O BARs may hard-wire the top 16 bits). */
    uint32_t size = mask & -mask;
    uint32_t span = kind != BAR_KIND_IO && size < MEM_MIN_SPAN ? MEM_MIN_SPAN : size;
    bars[nbars++] = (struct pci_bar){ .func = func, .index = index, .kind = kind,
                                      .prefetch = prefetch, .size = size, .span = span };
}

/* Size every BAR of one function.  Decoding is off meanwhile, so the all-ones probe value never
 * claims addresses. */
static void size_bars(uint16_t fi)
{
    uint16_t bdf = funcs[fi].bdf;
    uint8_t type = funcs[fi].header_type & 0x7F;
    int nbar = type == 0 ? 6 : type == 1 ? 2 : 0;
    for (int i = 0; i < nbar; i++) {
        uint8_t off = PCI_BAR0 + 4 * i;
        uint32_t old = cfg_read32(bdf, off);
        uint32_t v = probe_bar(bdf, off, 0xFFFFFFFF);
        if (!v)
            continue;
        if (old & BAR_IO) {
            add_bar(fi, i, BAR_KIND_IO, 0, v & ~3u);
        } else if ((old & BAR_MEM_TYPE_MASK) == BAR_MEM_TYPE_64 && i + 1 < nbar) {
            uint32_t hi = probe_bar(bdf, off + 4, 0xFFFFFFFF);
            uint32_t mask = v & ~15u;
            if (!mask && hi)
                dbg_printf("pci: 00:%02x.%u BAR%d needs 4 GiB or more: left unassigned\n",
                           bdf >> 3, bdf & 7, i);
            else
                add_bar(fi, i, BAR_KIND_MEM64, !!(old & BAR_MEM_PREFETCH), mask);
            i++;            /* the high half is not a BAR of its own */
        } else {
            add_bar(fi, i, BAR_KIND_MEM32, !!(old & BAR_MEM_PREFETCH), v & ~15u);
        }
    }
    if (type <= 1) {
        uint8_t off = type == 0 ? PCI_ROM_TYPE0 : PCI_ROM_TYPE1;
        add_bar(fi, 6, BAR_KIND_ROM, 0, probe_bar(bdf, off, ROM_ADDRESS_MASK) & ROM_ADDRESS_MASK);
    }
}

static void scan_bus0(void)
{
    for (uint16_t slot = 0; slot < 32; slot++) {
        for (uint16_t fn = 0; fn < 8; fn++) {
            uint16_t bdf = slot << 3 | fn;
            uint16_t vendor = cfg_read16(bdf, PCI_VENDOR_ID);
            if (vendor == 0xFFFF || vendor == 0) {
                if (fn == 0)
                    break;      /* no function 0: the slot is empty */
                continue;
            }
            uint8_t header_type = cfg_read8(bdf, PCI_HEADER_TYPE);
            if (nfuncs < MAX_FUNCS) {
                struct pci_func *f = &funcs[nfuncs];
                *f = (struct pci_func){ .bdf = bdf, .vendor = vendor,
                                        .device = cfg_read16(bdf, PCI_DEVICE_ID),
                                        .header_type = header_type,
                                        .pin = cfg_read8(bdf, PCI_INTERRUPT_PIN) };
                uint16_t cmd = cfg_read16(bdf, PCI_COMMAND);
                cfg_write16(bdf, PCI_COMMAND, cmd & ~(PCI_COMMAND_IO | PCI_COMMAND_MEMORY));
                size_bars(nfuncs);
                nfuncs++;
            }
            if (fn == 0 && !(header_type & 0x80))
                break;          /* single-function device */
        }
    }
}

/* Index of the largest unassigned BAR of the given class (I/O or memory), or -1. */
static int largest_unassigned(bool io)
{
    int best = -1;
    for (uint32_t i = 0; i < nbars; i++) {
        if (bars[i].assigned || (bars[i].kind == BAR_KIND_IO) != io)
            continue;
        if (best < 0 || bars[i].span > bars[best].span)
            best = i;
    }
    return best;
}

static void log_no_space(const struct pci_bar *b, const char *space)
{
    const struct pci_func *f = &funcs[b->func];
    dbg_printf("pci: no %s space for 00:%02x.%u ", space, f->bdf >> 3, f->bdf & 7);
    if (b->kind == BAR_KIND_ROM)
        dbg_printf("ROM");
    else
        dbg_printf("BAR%u", b->index);
    dbg_printf(" (0x%x bytes)\n", b->size);
}

/* Largest first keeps every BAR naturally aligned with no gaps between power-of-two sizes. */
static void assign_bars(void)
{
    uint32_t io = IO_WINDOW_START;
    int i;
    while ((i = largest_unassigned(true)) >= 0) {
        struct pci_bar *b = &bars[i];
        uint32_t addr = (io + b->span - 1) & -b->span;
        b->assigned = 1;
        if (addr + b->span > IO_WINDOW_END || addr < io) {
            log_no_space(b, "I/O");
            continue;
        }
        b->addr = addr;
        io = addr + b->span;
    }

    uint64_t low = memmap_low_ram_top();
    uint32_t mem = MEM_WINDOW_END;
    while ((i = largest_unassigned(false)) >= 0) {
        struct pci_bar *b = &bars[i];
        uint32_t addr = (mem - b->span) & -b->span;
        b->assigned = 1;
        if (b->span > mem || addr < low || !addr) {
            log_no_space(b, "memory");
            continue;
        }
        b->addr = addr;
        mem = addr;
    }
}

static void program_bars(void)
{
    for (uint32_t i = 0; i < nbars; i++) {
        struct pci_bar *b = &bars[i];
        if (!b->addr)
            continue;
        struct pci_func *f = &funcs[b->func];
        if (b->kind == BAR_KIND_ROM) {
            /* Placed but left disabled: enabling a ROM is up to whoever runs it. */
            uint8_t off = (f->header_type & 0x7F) == 0 ? PCI_ROM_TYPE0 : PCI_ROM_TYPE1;
            cfg_write32(f->bdf, off, b->addr);
            continue;
        }
        uint8_t off = PCI_BAR0 + 4 * b->index;
        cfg_write32(f->bdf, off, b->addr);
        if (b->kind == BAR_KIND_MEM64)
            cfg_write32(f->bdf, off + 4, 0);  /* our guests run in 32-bit mode */
    }
}

/* PIRQ A-D -> IRQ 10, 10, 11, 11 in the PIIX3, and those IRQs level-triggered in the ELCR
 * (PCI interrupts are level-triggered and shareable). */
static void route_pirqs(void)
{
    const struct pci_func *isa = 0;
    for (uint32_t i = 0; i < nfuncs; i++)
        if (funcs[i].vendor == PIIX3_VENDOR && funcs[i].device == PIIX3_DEVICE)
            isa = &funcs[i];
    if (!isa) {
        dbg_printf("pci: no PIIX3 ISA bridge, PIRQ routing left alone\n");
        return;
    }
    uint16_t elcr = 0;
    for (int i = 0; i < 4; i++) {
        cfg_write8(isa->bdf, PIIX3_PIRQRC + i, pirq_irq[i]);    /* bit 7 clear: routing on */
        elcr |= 1u << pirq_irq[i];
    }
    outb(ELCR1, inb(ELCR1) | (elcr & 0xFF));
    outb(ELCR2, inb(ELCR2) | (elcr >> 8));
    dbg_printf("pci: PIRQ A-D -> IRQ %u %u %u %u (level)\n",
               pirq_irq[0], pirq_irq[1], pirq_irq[2], pirq_irq[3]);
}

/* The board swizzles INTx: PIRQ index = (slot - 1 + pin - 1) mod 4, with pin 1 = INTA. */
static void set_irq_and_enable(struct pci_func *f)
{
    if (f->pin >= 1 && f->pin <= 4) {
        f->irq = pirq_irq[((f->bdf >> 3) - 1 + f->pin - 1) & 3];
        cfg_write8(f->bdf, PCI_INTERRUPT_LINE, f->irq);
    }
    /* A BAR left at 0 for lack of space must not decode: keep that space type off. */
    uint16_t enable = PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
    for (uint32_t i = 0; i < nbars; i++) {
        const struct pci_bar *b = &bars[i];
        if (&funcs[b->func] == f && !b->addr && b->kind != BAR_KIND_ROM)
            enable &= b->kind == BAR_KIND_IO ? ~PCI_COMMAND_IO : ~PCI_COMMAND_MEMORY;
    }
    cfg_write16(f->bdf, PCI_COMMAND, cfg_read16(f->bdf, PCI_COMMAND) | enable);
}

static void log_func(const struct pci_func *f, uint32_t fi)
{
    dbg_printf("%02x:%02x.%u %04x:%04x", 0, f->bdf >> 3, f->bdf & 7, f->vendor, f->device);
    for (uint32_t i = 0; i < nbars; i++) {
        const struct pci_bar *b = &bars[i];
        if (b->func != fi)
            continue;
        if (b->kind == BAR_KIND_ROM)
            dbg_printf(" ROM");
        else
            dbg_printf(" BAR%u", b->index);
        dbg_printf(" %s 0x%x+0x%x", bar_kind_name[b->kind],
                   b->addr, b->size);
    }
    if (f->pin)
        dbg_printf(" pin %c irq %u", 'A' + f->pin - 1, f->irq);
    dbg_printf("\n");
}

void pci_setup(void)
{
    scan_bus0();
    assign_bars();
    program_bars();
    route_pirqs();
    for (uint32_t i = 0; i < nfuncs; i++) {
        set_irq_and_enable(&funcs[i]);
        log_func(&funcs[i], i);
    }
}
