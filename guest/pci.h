/* PCI configuration space through configuration mechanism #1 (ports 0xCF8/0xCFC),
 * PCI Local Bus 3.0 section 3.2.2.3.2. */
#ifndef GUEST_PCI_H
#define GUEST_PCI_H

#include <stdbool.h>
#include <stdint.h>

struct pci_dev {
    uint8_t bus, dev, fn;
    uint16_t vendor, device;
};

/* Standard header offsets used here (type 0 header). */
#define PCI_VENDOR_ID       0x00
#define PCI_DEVICE_ID       0x02
#define PCI_COMMAND         0x04
#define PCI_STATUS          0x06
#define PCI_REVISION_ID     0x08
#define PCI_HEADER_TYPE     0x0E
#define PCI_BAR0            0x10
#define PCI_SUBSYS_ID       0x2E
#define PCI_CAP_PTR         0x34
#define PCI_INTERRUPT_LINE  0x3C
#define PCI_INTERRUPT_PIN   0x3D

#define PCI_CMD_IO          0x0001
#define PCI_CMD_MEMORY      0x0002
#define PCI_CMD_BUS_MASTER  0x0004
#define PCI_CMD_INTX_OFF    0x0400
#define PCI_STATUS_CAP_LIST 0x0010

uint8_t  pci_read8(const struct pci_dev *d, uint8_t off);
uint16_t pci_read16(const struct pci_dev *d, uint8_t off);
uint32_t pci_read32(const struct pci_dev *d, uint8_t off);
void pci_write16(const struct pci_dev *d, uint8_t off, uint16_t v);
void pci_write32(const struct pci_dev *d, uint8_t off, uint32_t v);

/* First function whose vendor matches and whose device ID is one of `ids`. */
bool pci_find(uint16_t vendor, const uint16_t *ids, int nids, struct pci_dev *out);

struct pci_bar {
    bool present;       /* implemented and assigned (non-zero) */
    bool is_io;
    bool above_4g;      /* a 64-bit memory BAR placed above 4 GiB: unreachable without paging */
    uint64_t base;
};
/* Decodes BAR `index` (0..5) as the firmware left it. */
struct pci_bar pci_bar(const struct pci_dev *d, int index);

/* Walks the capability list (bounded: a malformed list cannot loop forever). Calls
 * fn(dev, offset, ctx) for each capability with the given ID. */
void pci_for_each_cap(const struct pci_dev *d, uint8_t cap_id,
                      void (*fn)(const struct pci_dev *, uint8_t, void *), void *ctx);

#endif
