"""The numbers VIRTIO 1.2 defines, in one place: device status bits (2.1), transport and ring
feature bits (6), ISR bits (4.1.4.5), ring flags (2.7), device IDs (5), and virtio-blk's feature
bits, request types and status values (5.2). The name tables are what debuggers print (QEMU's
names and descriptions). Data only: no module here depends on another."""

from __future__ import annotations

# -- device status (2.1) --------------------------------------------------------------------------
ACKNOWLEDGE = 1
DRIVER = 2
DRIVER_OK = 4
FEATURES_OK = 8
DEVICE_NEEDS_RESET = 64
FAILED = 128

STATUS_NAMES = [(ACKNOWLEDGE, "ACKNOWLEDGE"), (DRIVER, "DRIVER"), (FEATURES_OK, "FEATURES_OK"),
                (DRIVER_OK, "DRIVER_OK"), (DEVICE_NEEDS_RESET, "DEVICE_NEEDS_RESET"), (FAILED, "FAILED")]

# -- transport and ring feature bits (6) ----------------------------------------------------------
VIRTIO_F_NOTIFY_ON_EMPTY = 24      # legacy only
VIRTIO_F_ANY_LAYOUT = 27           # legacy only; always true for modern devices
VIRTIO_F_INDIRECT_DESC = 28
VIRTIO_F_EVENT_IDX = 29
VIRTIO_F_BAD_FEATURE = 30          # legacy: a driver that sets it is broken
VIRTIO_F_VERSION_1 = 32

FEATURE_NAMES = {
    VIRTIO_F_NOTIFY_ON_EMPTY: ("NOTIFY_ON_EMPTY", "Notify when the driver has no more buffers (legacy)"),
    VIRTIO_F_ANY_LAYOUT: ("ANY_LAYOUT", "Device accepts arbitrary descriptor layouts (legacy)"),
    VIRTIO_F_INDIRECT_DESC: ("RING_INDIRECT_DESC", "Indirect descriptors supported"),
    VIRTIO_F_EVENT_IDX: ("RING_EVENT_IDX", "Used & avail. event fields enabled"),
    VIRTIO_F_VERSION_1: ("VERSION_1", "Device compliant for v1 spec (legacy)"),
    33: ("ACCESS_PLATFORM", "Device can be used on a platform with IOMMU"),
    34: ("RING_PACKED", "Packed virtqueue layout"),
    35: ("IN_ORDER", "Buffers used in the order they were made available"),
    36: ("ORDER_PLATFORM", "Memory accesses ordered by platform"),
    37: ("SR_IOV", "Single root I/O virtualization"),
    38: ("NOTIFICATION_DATA", "Extra data in driver notifications"),
    39: ("NOTIF_CONFIG_DATA", "Driver uses config-provided notification data"),
    40: ("RING_RESET", "Individual virtqueue reset"),
}

# -- ISR (4.1.4.5) ------------------------------------------------------------------------------
ISR_QUEUE = 1
ISR_CONFIG = 2

# -- split virtqueue flags (2.7) ----------------------------------------------------------------
VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_USED_F_NO_NOTIFY = 1

# -- device IDs (5) -----------------------------------------------------------------------------
VIRTIO_ID_BLOCK = 2
DEVICE_NAMES = {1: "virtio-net", 2: "virtio-blk", 3: "virtio-console", 4: "virtio-rng",
                5: "virtio-balloon", 8: "virtio-scsi", 9: "virtio-9p", 16: "virtio-gpu",
                18: "virtio-input", 19: "virtio-vsock"}

# -- virtio-blk (5.2) ---------------------------------------------------------------------------
VIRTIO_BLK_F_SIZE_MAX = 1
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_GEOMETRY = 4
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_F_BLK_SIZE = 6
VIRTIO_BLK_F_FLUSH = 9
VIRTIO_BLK_F_TOPOLOGY = 10
VIRTIO_BLK_F_CONFIG_WCE = 11
VIRTIO_BLK_F_MQ = 12
VIRTIO_BLK_F_DISCARD = 13
VIRTIO_BLK_F_WRITE_ZEROES = 14

BLK_FEATURE_NAMES = {
    0: ("BARRIER", "Request barriers supported (legacy)"),
    VIRTIO_BLK_F_SIZE_MAX: ("SIZE_MAX", "Max segment size is size_max"),
    VIRTIO_BLK_F_SEG_MAX: ("SEG_MAX", "Max segments in a request is seg_max"),
    VIRTIO_BLK_F_GEOMETRY: ("GEOMETRY", "Legacy geometry available"),
    VIRTIO_BLK_F_RO: ("RO", "Device is read-only"),
    VIRTIO_BLK_F_BLK_SIZE: ("BLK_SIZE", "Block size of disk available"),
    7: ("SCSI", "SCSI packet commands supported (legacy)"),
    VIRTIO_BLK_F_FLUSH: ("FLUSH", "Flush command supported"),
    VIRTIO_BLK_F_TOPOLOGY: ("TOPOLOGY", "Topology information available"),
    VIRTIO_BLK_F_CONFIG_WCE: ("CONFIG_WCE", "Writeback mode available in config"),
    VIRTIO_BLK_F_MQ: ("MQ", "Multiqueue supported"),
    VIRTIO_BLK_F_DISCARD: ("DISCARD", "Discard command supported"),
    VIRTIO_BLK_F_WRITE_ZEROES: ("WRITE_ZEROES", "Write zeroes command supported"),
    15: ("LIFETIME", "Device lifetime information available"),
    16: ("SECURE_ERASE", "Secure erase supported"),
    17: ("ZONED", "Zoned block device"),
}

VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_T_GET_LIFETIME = 10
VIRTIO_BLK_T_DISCARD = 11
VIRTIO_BLK_T_WRITE_ZEROES = 13
VIRTIO_BLK_T_SECURE_ERASE = 14

BLK_REQUEST_NAMES = {VIRTIO_BLK_T_IN: "in", VIRTIO_BLK_T_OUT: "out", VIRTIO_BLK_T_FLUSH: "flush",
                     VIRTIO_BLK_T_GET_ID: "get-id", VIRTIO_BLK_T_GET_LIFETIME: "get-lifetime",
                     VIRTIO_BLK_T_DISCARD: "discard", VIRTIO_BLK_T_WRITE_ZEROES: "write-zeroes",
                     VIRTIO_BLK_T_SECURE_ERASE: "secure-erase"}

VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2

VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1
VIRTIO_BLK_ID_BYTES = 20
