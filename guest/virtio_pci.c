/* virtio over PCI: VIRTIO 1.2 section 4.1.
 *
 * A virtio PCI function exposes either or both of two register layouts:
 *  - modern (4.1.4): vendor-specific PCI capabilities (ID 0x09) each point at a structure
 *    inside one of the memory BARs: common configuration, notification area, ISR status,
 *    device-specific configuration;
 *  - legacy (4.1.4.8): a fixed header at the start of I/O BAR0 followed by the device
 *    configuration. Only transitional devices (device IDs 0x1000..0x103F) have it.
 */
#include "virtio_pci.h"
#include "io.h"
#include "printf.h"

/* --- Modern interface: capability types and the common configuration layout ----------------- */

#define PCI_CAP_ID_VNDR          0x09

#define VIRTIO_PCI_CAP_COMMON_CFG 1
#define VIRTIO_PCI_CAP_NOTIFY_CFG 2
#define VIRTIO_PCI_CAP_ISR_CFG    3
#define VIRTIO_PCI_CAP_DEVICE_CFG 4
#define VIRTIO_PCI_CAP_PCI_CFG    5

/* struct virtio_pci_cap, 4.1.4: offsets within the capability. */
#define CAP_CFG_TYPE   3
#define CAP_BAR        4
#define CAP_OFFSET     8
#define CAP_LENGTH     12
#define CAP_NOTIFY_OFF_MULTIPLIER 16     /* struct virtio_pci_notify_cap only */

/* struct virtio_pci_common_cfg, 4.1.4.3: offsets within the structure. */
#define COMMON_DFSELECT      0x00   /* le32 device_feature_select */
#define COMMON_DF            0x04   /* le32 device_feature (RO) */
#define COMMON_GFSELECT      0x08   /* le32 driver_feature_select */
#define COMMON_GF            0x0C   /* le32 driver_feature */
#define COMMON_MSIX          0x10   /* le16 config_msix_vector */
#define COMMON_NUMQ          0x12   /* le16 num_queues (RO) */
#define COMMON_STATUS        0x14   /* u8 device_status */
#define COMMON_CFGGENERATION 0x15   /* u8 config_generation (RO) */
#define COMMON_Q_SELECT      0x16   /* le16 queue_select */
#define COMMON_Q_SIZE        0x18   /* le16 queue_size */
#define COMMON_Q_MSIX        0x1A   /* le16 queue_msix_vector */
#define COMMON_Q_ENABLE      0x1C   /* le16 queue_enable */
#define COMMON_Q_NOFF        0x1E   /* le16 queue_notify_off (RO) */
#define COMMON_Q_DESCLO      0x20   /* le64 queue_desc */
#define COMMON_Q_DESCHI      0x24
#define COMMON_Q_AVAILLO     0x28   /* le64 queue_driver */
#define COMMON_Q_AVAILHI     0x2C
#define COMMON_Q_USEDLO      0x30   /* le64 queue_device */
#define COMMON_Q_USEDHI      0x34

/* --- Legacy interface: the header in I/O BAR0, 4.1.4.8 ---------------------------------------- */

#define LEGACY_HOST_FEATURES  0x00  /* le32, RO */
#define LEGACY_GUEST_FEATURES 0x04  /* le32 */
#define LEGACY_QUEUE_PFN      0x08  /* le32: ring address >> 12 */
#define LEGACY_QUEUE_SIZE     0x0C  /* le16, RO */
#define LEGACY_QUEUE_SELECT   0x0E  /* le16 */
#define LEGACY_QUEUE_NOTIFY   0x10  /* le16 */
#define LEGACY_STATUS         0x12  /* u8 */
#define LEGACY_ISR            0x13  /* u8, read clears */
#define LEGACY_MSIX_CONFIG    0x14  /* le16, only while MSI-X is enabled */
#define LEGACY_MSIX_QUEUE     0x16  /* le16, only while MSI-X is enabled */
/* The device config follows the header: at 20, or at 24 while MSI-X is enabled (4.1.4.10). */
#define LEGACY_DEVICE_CFG     (vp->msix ? 0x18 : 0x14)

/* MSI-X capability (PCI 3.0 6.8.2) */
#define PCI_CAP_ID_MSIX       0x11
#define MSIX_CONTROL          2      /* le16: table size - 1 (10:0), function mask (14), enable (15) */
#define MSIX_TABLE            4      /* le32: BIR (2:0), offset */
#define MSIX_CTRL_ENABLE      0x8000
#define MSIX_CTRL_MASKALL     0x4000
#define MSIX_ENTRY_SIZE       16
#define LEGACY_QUEUE_ALIGN    4096  /* 2.7.2 legacy: used ring starts on this boundary */

/* --- Probing ------------------------------------------------------------------------------- */

struct cap_scan {
    struct virtio_pci *vp;
    bool found[6];              /* per cfg_type: took the first usable one (4.1.4.1: the
                                   device lists the preferred structure first) */
    bool bar_above_4g;
};

/* Resolves (bar, offset) to an address we can access, or 0 if not possible. */
static uintptr_t cap_address(const struct pci_dev *d, uint8_t cap, struct cap_scan *scan)
{
    uint8_t bar_index = pci_read8(d, cap + CAP_BAR);
    uint32_t offset = pci_read32(d, cap + CAP_OFFSET);
    if (bar_index > 5)          /* 4.1.4: values 0x6..0xFF reserved: ignore the capability */
        return 0;
    struct pci_bar bar = pci_bar(d, bar_index);
    if (!bar.present)
        return 0;
    if (bar.is_io)              /* allowed by the spec, but we drive modern structures via MMIO only */
        return 0;
    if (bar.above_4g) {         /* no paging here: a BAR above 4 GiB is out of reach */
        scan->bar_above_4g = true;
        return 0;
    }
    uint64_t a = bar.base + offset;
    if (a >> 32)
        return 0;
    return (uintptr_t)a;
}

static void on_vendor_cap(const struct pci_dev *d, uint8_t cap, void *ctx)
{
    struct cap_scan *scan = ctx;
    struct virtio_pci *vp = scan->vp;
    uint8_t type = pci_read8(d, cap + CAP_CFG_TYPE);
    if (type < VIRTIO_PCI_CAP_COMMON_CFG || type > VIRTIO_PCI_CAP_DEVICE_CFG || scan->found[type])
        return;
    uintptr_t addr = cap_address(d, cap, scan);
    if (!addr)
        return;
    scan->found[type] = true;
    switch (type) {
    case VIRTIO_PCI_CAP_COMMON_CFG:
        vp->common = addr;
        break;
    case VIRTIO_PCI_CAP_NOTIFY_CFG:
        vp->notify_base = addr;
        vp->notify_off_multiplier = pci_read32(d, cap + CAP_NOTIFY_OFF_MULTIPLIER);
        break;
    case VIRTIO_PCI_CAP_ISR_CFG:
        vp->isr = addr;
        break;
    case VIRTIO_PCI_CAP_DEVICE_CFG:
        vp->device_cfg = addr;
        vp->device_cfg_len = pci_read32(d, cap + CAP_LENGTH);
        break;
    }
}

int vpci_probe(struct virtio_pci *vp, const uint16_t *device_ids, int nids,
               enum virtio_transport want)
{
    struct virtio_pci empty = { 0 };
    *vp = empty;
    if (!pci_find(VIRTIO_PCI_VENDOR, device_ids, nids, &vp->pci)) {
        kprintf("# no virtio device found on PCI\n");
        return -1;
    }
    struct pci_dev *d = &vp->pci;

    /* The firmware assigned the BARs; we switch decoding and DMA on ourselves rather than rely
     * on it having done so (4.1.5.1: bus mastering is the driver's job). INTx stays enabled. */
    uint16_t cmd = pci_read16(d, PCI_COMMAND);
    cmd |= PCI_CMD_IO | PCI_CMD_MEMORY | PCI_CMD_BUS_MASTER;
    cmd &= ~PCI_CMD_INTX_OFF;
    pci_write16(d, PCI_COMMAND, cmd);
    vp->irq_line = pci_read8(d, PCI_INTERRUPT_LINE);

    /* Modern structures: need at least common, notify and ISR (4.1.4: device config only when
     * the device type has one). */
    struct cap_scan scan = { .vp = vp };
    pci_for_each_cap(d, PCI_CAP_ID_VNDR, on_vendor_cap, &scan);
    bool have_modern = scan.found[VIRTIO_PCI_CAP_COMMON_CFG] &&
                       scan.found[VIRTIO_PCI_CAP_NOTIFY_CFG] &&
                       scan.found[VIRTIO_PCI_CAP_ISR_CFG];
    if (scan.bar_above_4g)
        kprintf("# virtio: a modern BAR is above 4 GiB (unreachable without paging)%s\n",
                have_modern ? "" : "; falling back to legacy if possible");

    /* Legacy header: transitional device IDs only (4.1.2.1), I/O BAR0. */
    struct pci_bar bar0 = pci_bar(d, 0);
    bool have_legacy = d->device >= 0x1000 && d->device <= 0x103F && bar0.present &&
                       bar0.is_io && bar0.base <= 0xFFFF;
    if (have_legacy)
        vp->io_base = (uint16_t)bar0.base;

    kprintf("# virtio: %02x:%02x.%u %04x:%04x irq %u modern=%s legacy=%s\n", d->bus, d->dev,
            d->fn, d->vendor, d->device, vp->irq_line, have_modern ? "yes" : "no",
            have_legacy ? "yes" : "no");

    if (want == TRANSPORT_MODERN || (want == TRANSPORT_AUTO && have_modern)) {
        if (!have_modern) {
            kprintf("# virtio: transport=modern asked for, but the device has no usable "
                    "modern interface\n");
            return -2;
        }
        vp->modern = true;
        return 0;
    }
    if (!have_legacy) {
        kprintf("# virtio: no usable legacy interface (device %04x, BAR0 %s)\n", d->device,
                bar0.present ? (bar0.is_io ? "I/O" : "memory") : "unassigned");
        return -3;
    }
    vp->modern = false;
    return 0;
}

/* --- Status and reset ----------------------------------------------------------------------- */

uint8_t vpci_get_status(struct virtio_pci *vp)
{
    return vp->modern ? mmio_read8(vp->common + COMMON_STATUS)
                      : inb(vp->io_base + LEGACY_STATUS);
}

void vpci_set_status(struct virtio_pci *vp, uint8_t status)
{
    if (vp->modern)
        mmio_write8(vp->common + COMMON_STATUS, status);
    else
        outb(vp->io_base + LEGACY_STATUS, status);
}

bool vpci_reset(struct virtio_pci *vp)
{
    vpci_set_status(vp, 0);
    /* 4.1.4.3.2: "After writing 0 to device_status, the driver MUST wait for a read of
     * device_status to return 0 before reinitializing the device." Bounded, so a broken device
     * fails the test instead of hanging it. (Legacy devices reset synchronously, 4.1.4.8.) */
    for (uint32_t i = 0; i < 10000000u; i++) {
        if (vpci_get_status(vp) == 0)
            return true;
        cpu_relax();
    }
    return false;
}

/* --- Features ------------------------------------------------------------------------------- */

uint64_t vpci_get_device_features(struct virtio_pci *vp)
{
    if (!vp->modern)
        return inl(vp->io_base + LEGACY_HOST_FEATURES);
    /* The 64 bits are read as two 32-bit windows chosen by device_feature_select. */
    mmio_write32(vp->common + COMMON_DFSELECT, 0);
    uint32_t lo = mmio_read32(vp->common + COMMON_DF);
    mmio_write32(vp->common + COMMON_DFSELECT, 1);
    uint32_t hi = mmio_read32(vp->common + COMMON_DF);
    return ((uint64_t)hi << 32) | lo;
}

void vpci_set_driver_features(struct virtio_pci *vp, uint64_t features)
{
    if (!vp->modern) {
        outl(vp->io_base + LEGACY_GUEST_FEATURES, (uint32_t)features);
        return;
    }
    mmio_write32(vp->common + COMMON_GFSELECT, 0);
    mmio_write32(vp->common + COMMON_GF, (uint32_t)features);
    mmio_write32(vp->common + COMMON_GFSELECT, 1);
    mmio_write32(vp->common + COMMON_GF, (uint32_t)(features >> 32));
}

uint64_t vpci_get_driver_features(struct virtio_pci *vp)
{
    if (!vp->modern)
        return inl(vp->io_base + LEGACY_GUEST_FEATURES);
    mmio_write32(vp->common + COMMON_GFSELECT, 0);
    uint32_t lo = mmio_read32(vp->common + COMMON_GF);
    mmio_write32(vp->common + COMMON_GFSELECT, 1);
    uint32_t hi = mmio_read32(vp->common + COMMON_GF);
    return ((uint64_t)hi << 32) | lo;
}

/* --- Queues --------------------------------------------------------------------------------- */

uint16_t vpci_num_queues(struct virtio_pci *vp)
{
    return vp->modern ? mmio_read16(vp->common + COMMON_NUMQ) : 0;
}

uint16_t vpci_queue_max_size(struct virtio_pci *vp, uint16_t q)
{
    if (!vp->modern) {
        outw(vp->io_base + LEGACY_QUEUE_SELECT, q);
        return inw(vp->io_base + LEGACY_QUEUE_SIZE);
    }
    mmio_write16(vp->common + COMMON_Q_SELECT, q);
    /* 4.1.4.3.1: reading queue_size after selecting gives the maximum; 0 = no such queue. */
    return mmio_read16(vp->common + COMMON_Q_SIZE);
}

bool vpci_queue_enable(struct virtio_pci *vp, uint16_t q, uint16_t size,
                       uint64_t desc, uint64_t avail, uint64_t used)
{
    if (q >= VIRTIO_PCI_MAX_QUEUES)
        return false;
    if (!vp->modern) {
        /* 4.1.4.8: legacy queues have the device's fixed size and one physical block whose
         * page frame number is written to QUEUE_PFN; writing it activates the queue. */
        outw(vp->io_base + LEGACY_QUEUE_SELECT, q);
        if (inw(vp->io_base + LEGACY_QUEUE_SIZE) != size || (desc & (LEGACY_QUEUE_ALIGN - 1)))
            return false;
        outl(vp->io_base + LEGACY_QUEUE_PFN, (uint32_t)(desc / LEGACY_QUEUE_ALIGN));
        return true;
    }
    /* 4.1.5.1.3 "Virtqueue Configuration": select, size, addresses, then queue_enable = 1. */
    uintptr_t c = vp->common;
    mmio_write16(c + COMMON_Q_SELECT, q);
    if (mmio_read16(c + COMMON_Q_ENABLE))       /* already live: must reset the device first */
        return false;
    mmio_write16(c + COMMON_Q_SIZE, size);
    mmio_write32(c + COMMON_Q_DESCLO, (uint32_t)desc);
    mmio_write32(c + COMMON_Q_DESCHI, (uint32_t)(desc >> 32));
    mmio_write32(c + COMMON_Q_AVAILLO, (uint32_t)avail);
    mmio_write32(c + COMMON_Q_AVAILHI, (uint32_t)(avail >> 32));
    mmio_write32(c + COMMON_Q_USEDLO, (uint32_t)used);
    mmio_write32(c + COMMON_Q_USEDHI, (uint32_t)(used >> 32));
    /* 4.1.4.4: this queue's doorbell is at notify_base + queue_notify_off * multiplier. */
    vp->queue_notify_off[q] = mmio_read16(c + COMMON_Q_NOFF);
    mmio_write16(c + COMMON_Q_ENABLE, 1);
    return mmio_read16(c + COMMON_Q_SIZE) == size;
}

void vpci_notify(struct virtio_pci *vp, uint16_t q)
{
    if (!vp->modern) {
        outw(vp->io_base + LEGACY_QUEUE_NOTIFY, q);
        return;
    }
    /* Without VIRTIO_F_NOTIFICATION_DATA the driver writes the 16-bit queue index (4.1.5.2). */
    uintptr_t a = vp->notify_base + (uintptr_t)vp->queue_notify_off[q % VIRTIO_PCI_MAX_QUEUES] *
                                    vp->notify_off_multiplier;
    mmio_write16(a, q);
}

bool vpci_queue_enabled(struct virtio_pci *vp, uint16_t q)
{
    if (!vp->modern) {
        outw(vp->io_base + LEGACY_QUEUE_SELECT, q);
        return inl(vp->io_base + LEGACY_QUEUE_PFN) != 0;
    }
    mmio_write16(vp->common + COMMON_Q_SELECT, q);
    return mmio_read16(vp->common + COMMON_Q_ENABLE) != 0;
}

/* --- MSI-X ----------------------------------------------------------------------------------- */

static void on_msix_cap(const struct pci_dev *d, uint8_t cap, void *ctx)
{
    uint8_t *found = ctx;
    if (!*found)
        *found = cap;
}

uint16_t vpci_enable_msix(struct virtio_pci *vp, uint8_t apic_id, uint8_t first_vector, uint16_t max)
{
    const struct pci_dev *d = &vp->pci;
    uint8_t cap = 0;
    pci_for_each_cap(d, PCI_CAP_ID_MSIX, on_msix_cap, &cap);
    if (!cap) {
        kprintf("# virtio: irq=msix asked for, but the device has no MSI-X capability\n");
        return 0;
    }
    uint16_t ctrl = pci_read16(d, cap + MSIX_CONTROL);
    uint32_t table = pci_read32(d, cap + MSIX_TABLE);
    struct pci_bar bar = pci_bar(d, table & 7);
    if (!bar.present || bar.is_io || bar.base > 0xFFFFFFFFull - 0xFFF) {
        kprintf("# virtio: MSI-X table BAR%u is not a mapped memory BAR below 4 GiB\n", table & 7);
        return 0;
    }
    uintptr_t base = (uintptr_t)bar.base + (table & ~7u);
    uint16_t n = (ctrl & 0x7FF) + 1;
    if (n > max)
        n = max;
    /* Program while the function is masked, then enable (PCI 3.0 6.8.3.4). */
    pci_write16(d, cap + MSIX_CONTROL, MSIX_CTRL_MASKALL);
    for (uint16_t i = 0; i < n; i++) {
        uintptr_t e = base + (uintptr_t)i * MSIX_ENTRY_SIZE;
        mmio_write32(e + 0, 0xFEE00000u | (uint32_t)apic_id << 12);   /* physical destination */
        mmio_write32(e + 4, 0);
        mmio_write32(e + 8, (uint32_t)(first_vector + i));             /* fixed, edge */
        mmio_write32(e + 12, 0);                                         /* unmasked */
    }
    pci_write16(d, cap + MSIX_CONTROL, MSIX_CTRL_ENABLE);
    vp->msix = true;
    vp->msix_vectors = n;
    return n;
}

bool vpci_set_config_vector(struct virtio_pci *vp, uint16_t entry)
{
    if (vp->modern) {
        mmio_write16(vp->common + COMMON_MSIX, entry);
        return mmio_read16(vp->common + COMMON_MSIX) == entry;
    }
    outw(vp->io_base + LEGACY_MSIX_CONFIG, entry);
    return inw(vp->io_base + LEGACY_MSIX_CONFIG) == entry;
}

bool vpci_set_queue_vector(struct virtio_pci *vp, uint16_t q, uint16_t entry)
{
    if (vp->modern) {
        mmio_write16(vp->common + COMMON_Q_SELECT, q);
        mmio_write16(vp->common + COMMON_Q_MSIX, entry);
        return mmio_read16(vp->common + COMMON_Q_MSIX) == entry;
    }
    outw(vp->io_base + LEGACY_QUEUE_SELECT, q);
    outw(vp->io_base + LEGACY_MSIX_QUEUE, entry);
    return inw(vp->io_base + LEGACY_MSIX_QUEUE) == entry;
}

uint8_t vpci_read_isr(struct virtio_pci *vp)
{
    return vp->modern ? mmio_read8(vp->isr) : inb(vp->io_base + LEGACY_ISR);
}

/* --- Device-specific configuration ------------------------------------------------------------ */

uint8_t vpci_cfg_read8(struct virtio_pci *vp, uint32_t off)
{
    return vp->modern ? mmio_read8(vp->device_cfg + off) : inb(vp->io_base + LEGACY_DEVICE_CFG + off);
}

uint16_t vpci_cfg_read16(struct virtio_pci *vp, uint32_t off)
{
    return vp->modern ? mmio_read16(vp->device_cfg + off) : inw(vp->io_base + LEGACY_DEVICE_CFG + off);
}

uint32_t vpci_cfg_read32(struct virtio_pci *vp, uint32_t off)
{
    return vp->modern ? mmio_read32(vp->device_cfg + off) : inl(vp->io_base + LEGACY_DEVICE_CFG + off);
}

uint64_t vpci_cfg_read64(struct virtio_pci *vp, uint32_t off)
{
    uint32_t lo, hi;
    if (!vp->modern) {
        /* Legacy has no config_generation (4.1.4.8): read until two passes agree. */
        uint32_t lo2, hi2;
        for (int tries = 0; tries < 100; tries++) {
            lo = vpci_cfg_read32(vp, off);
            hi = vpci_cfg_read32(vp, off + 4);
            lo2 = vpci_cfg_read32(vp, off);
            hi2 = vpci_cfg_read32(vp, off + 4);
            if (lo == lo2 && hi == hi2)
                break;
        }
        return ((uint64_t)hi << 32) | lo;
    }
    /* 2.5.1 / 4.1.4.3.1: re-read while config_generation changed under us. */
    uint8_t gen_before, gen_after;
    int tries = 0;
    do {
        gen_before = mmio_read8(vp->common + COMMON_CFGGENERATION);
        lo = vpci_cfg_read32(vp, off);
        hi = vpci_cfg_read32(vp, off + 4);
        gen_after = mmio_read8(vp->common + COMMON_CFGGENERATION);
    } while (gen_before != gen_after && ++tries < 100);
    return ((uint64_t)hi << 32) | lo;
}
