#include "pci.h"
#include "io.h"

#define PCI_CONFIG_ADDRESS 0xCF8
#define PCI_CONFIG_DATA    0xCFC

static void select_reg(const struct pci_dev *d, uint8_t off)
{
    outl(PCI_CONFIG_ADDRESS, 0x80000000u | ((uint32_t)d->bus << 16) | ((uint32_t)d->dev << 11) |
                             ((uint32_t)d->fn << 8) | (off & 0xFC));
}

uint32_t pci_read32(const struct pci_dev *d, uint8_t off)
{
    select_reg(d, off);
    return inl(PCI_CONFIG_DATA);
}

uint16_t pci_read16(const struct pci_dev *d, uint8_t off)
{
    select_reg(d, off);
    return inw(PCI_CONFIG_DATA + (off & 2));
}

uint8_t pci_read8(const struct pci_dev *d, uint8_t off)
{
    select_reg(d, off);
    return inb(PCI_CONFIG_DATA + (off & 3));
}

void pci_write16(const struct pci_dev *d, uint8_t off, uint16_t v)
{
    select_reg(d, off);
    outw(PCI_CONFIG_DATA + (off & 2), v);
}

void pci_write32(const struct pci_dev *d, uint8_t off, uint32_t v)
{
    select_reg(d, off);
    outl(PCI_CONFIG_DATA, v);
}

bool pci_find(uint16_t vendor, const uint16_t *ids, int nids, struct pci_dev *out)
{
    for (unsigned bus = 0; bus < 256; bus++) {
        for (unsigned dev = 0; dev < 32; dev++) {
            for (unsigned fn = 0; fn < 8; fn++) {
                struct pci_dev d = { (uint8_t)bus, (uint8_t)dev, (uint8_t)fn, 0, 0 };
                uint32_t id = pci_read32(&d, PCI_VENDOR_ID);
                if ((id & 0xFFFF) == 0xFFFF) {
                    if (fn == 0)
                        break;          /* no device here at all */
                    continue;
                }
                d.vendor = id & 0xFFFF;
                d.device = id >> 16;
                for (int i = 0; i < nids; i++) {
                    if (d.vendor == vendor && d.device == ids[i]) {
                        *out = d;
                        return true;
                    }
                }
                /* Header type bit 7: the device has functions 1..7 too. */
                if (fn == 0 && !(pci_read8(&d, PCI_HEADER_TYPE) & 0x80))
                    break;
            }
        }
    }
    return false;
}

struct pci_bar pci_bar(const struct pci_dev *d, int index)
{
    struct pci_bar bar = { false, false, false, 0 };
    if (index < 0 || index > 5)
        return bar;
    uint32_t lo = pci_read32(d, PCI_BAR0 + 4 * index);
    if (lo & 1) {                       /* I/O space BAR: bits 31..2 are the address */
        bar.is_io = true;
        bar.base = lo & ~3u;
    } else {
        bar.base = lo & ~0xFu;
        if (((lo >> 1) & 3) == 2 && index < 5)      /* type 10b: 64-bit, high half in next BAR */
            bar.base |= (uint64_t)pci_read32(d, PCI_BAR0 + 4 * (index + 1)) << 32;
        bar.above_4g = (bar.base >> 32) != 0;
    }
    bar.present = bar.base != 0;
    return bar;
}

void pci_for_each_cap(const struct pci_dev *d, uint8_t cap_id,
                      void (*fn)(const struct pci_dev *, uint8_t, void *), void *ctx)
{
    if (!(pci_read16(d, PCI_STATUS) & PCI_STATUS_CAP_LIST))
        return;
    uint8_t off = pci_read8(d, PCI_CAP_PTR) & 0xFC;
    /* At most 48 capabilities fit in the 192 bytes after the header. */
    for (int n = 0; n < 48 && off >= 0x40; n++) {
        if (pci_read8(d, off) == cap_id)
            fn(d, off, ctx);
        off = pci_read8(d, off + 1) & 0xFC;
    }
}
