/* The virtio-over-PCI transport (VIRTIO 1.2 section 4.1): finding the device, its modern
 * capability structures (4.1.4) or its legacy I/O header (4.1.4.8), and the handful of
 * operations a driver needs from a transport: status, features, queue set-up, notify, ISR and
 * device-specific configuration. Nothing here knows about block devices. */
#ifndef GUEST_VIRTIO_PCI_H
#define GUEST_VIRTIO_PCI_H

#include <stdbool.h>
#include <stdint.h>
#include "pci.h"

#define VIRTIO_PCI_VENDOR        0x1AF4

/* Device status bits, 2.1. */
#define VIRTIO_STATUS_ACKNOWLEDGE        1
#define VIRTIO_STATUS_DRIVER             2
#define VIRTIO_STATUS_DRIVER_OK          4
#define VIRTIO_STATUS_FEATURES_OK        8
#define VIRTIO_STATUS_DEVICE_NEEDS_RESET 64
#define VIRTIO_STATUS_FAILED             128

/* Reserved (device-independent) feature bits, 6. */
#define VIRTIO_F_INDIRECT_DESC   28
#define VIRTIO_F_EVENT_IDX       29
#define VIRTIO_F_VERSION_1       32
#define VIRTIO_F_ACCESS_PLATFORM 33
#define VIRTIO_F_RING_PACKED     34

/* ISR status bits, 4.1.4.5. */
#define VIRTIO_ISR_QUEUE         1
#define VIRTIO_ISR_CONFIG        2

#define VIRTIO_PCI_MAX_QUEUES    16      /* the most queues this driver tracks */

enum virtio_transport { TRANSPORT_AUTO, TRANSPORT_MODERN, TRANSPORT_LEGACY };

struct virtio_pci {
    struct pci_dev pci;
    bool modern;                 /* which interface is in use */
    uint8_t irq_line;            /* INTx routed to this PIC input (config offset 0x3C) */

    /* Modern interface: each structure lives in a memory BAR at the offset its capability gives
     * (4.1.4); we keep the resulting addresses. */
    uintptr_t common;            /* struct virtio_pci_common_cfg, 4.1.4.3 */
    uintptr_t notify_base;       /* notification area, 4.1.4.4 */
    uint32_t notify_off_multiplier;
    uintptr_t isr;               /* ISR status byte, 4.1.4.5 */
    uintptr_t device_cfg;        /* device-specific configuration, 4.1.4.6 */
    uint32_t device_cfg_len;
    uint16_t queue_notify_off[VIRTIO_PCI_MAX_QUEUES];

    /* Legacy interface: the header at the start of I/O BAR0 (4.1.4.8). */
    uint16_t io_base;

    /* MSI-X (4.1.5.3 / PCI 3.0 6.8.2), when vpci_enable_msix turned it on. */
    bool msix;
    uint16_t msix_vectors;       /* table entries we programmed */
};

#define VIRTIO_MSI_NO_VECTOR     0xFFFF

/* Finds the first virtio-blk function and maps the interface `want` asks for (AUTO: modern
 * when the device has it, legacy otherwise). Enables I/O, memory and bus mastering.
 * Returns 0, or a negative value after printing a "# ..." diagnostic line. `device_ids`
 * lists the PCI device IDs to accept (transitional first, then modern). */
int vpci_probe(struct virtio_pci *vp, const uint16_t *device_ids, int nids,
               enum virtio_transport want);

/* Device status register. vpci_reset writes 0 and waits until the device reads back 0
 * (4.1.4.3.2: the reset is not complete before that); returns false if it never does. */
uint8_t vpci_get_status(struct virtio_pci *vp);
void vpci_set_status(struct virtio_pci *vp, uint8_t status);
bool vpci_reset(struct virtio_pci *vp);

/* Feature bits. The legacy interface only has bits 0..31. */
uint64_t vpci_get_device_features(struct virtio_pci *vp);
void vpci_set_driver_features(struct virtio_pci *vp, uint64_t features);
uint64_t vpci_get_driver_features(struct virtio_pci *vp);

/* Queues. num_queues is only known with the modern interface; legacy returns 0 (ask the
 * device type, or probe queue sizes). max_size 0 means the queue does not exist. */
uint16_t vpci_num_queues(struct virtio_pci *vp);
uint16_t vpci_queue_max_size(struct virtio_pci *vp, uint16_t q);
/* Tells the device where queue q's rings are and enables it. Legacy: the rings must be the
 * one contiguous 4096-aligned block of 2.7.2 legacy layout, with size == max size. */
bool vpci_queue_enable(struct virtio_pci *vp, uint16_t q, uint16_t size,
                       uint64_t desc, uint64_t avail, uint64_t used);
void vpci_notify(struct virtio_pci *vp, uint16_t q);
/* Whether the device considers queue q live: queue_enable (modern) or a non-zero QUEUE_PFN
 * (legacy). A reset must clear it. */
bool vpci_queue_enabled(struct virtio_pci *vp, uint16_t q);

/* MSI-X: programs table entry i (i < the table size, at most `max`) to send vector
 * first_vector + i to the local APIC `apic_id`, unmasked, then enables MSI-X on the function
 * (INTx is off from then on). Returns the number of entries programmed; 0 (after a "# ..."
 * line) when the function has no usable MSI-X capability. */
uint16_t vpci_enable_msix(struct virtio_pci *vp, uint8_t apic_id, uint8_t first_vector, uint16_t max);
/* Maps config changes / queue q to MSI-X table entry `entry` (VIRTIO_MSI_NO_VECTOR: none).
 * False when the device read back something else (4.1.5.1.2: it could not map it). */
bool vpci_set_config_vector(struct virtio_pci *vp, uint16_t entry);
bool vpci_set_queue_vector(struct virtio_pci *vp, uint16_t q, uint16_t entry);

/* Reads and thereby clears the ISR status (4.1.4.5.1); deasserts the INTx line. */
uint8_t vpci_read_isr(struct virtio_pci *vp);

/* Device-specific configuration. Multi-byte fields are read with their natural width; a field
 * wider than 32 bits is read as 32-bit halves under the config_generation loop (4.1.4.3.1, 2.5.1
 * "driver MUST NOT assume reads from fields greater than 32 bits are atomic"). */
uint8_t vpci_cfg_read8(struct virtio_pci *vp, uint32_t off);
uint16_t vpci_cfg_read16(struct virtio_pci *vp, uint32_t off);
uint32_t vpci_cfg_read32(struct virtio_pci *vp, uint32_t off);
uint64_t vpci_cfg_read64(struct virtio_pci *vp, uint32_t off);

#endif
