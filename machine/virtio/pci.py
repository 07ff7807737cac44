"""The virtio-pci transport (VIRTIO 1.2 section 4.1): maps a VirtioDevice onto a PciDevice.

Layout, as QEMU's `pc` machine gives it:
  * modern interface: five vendor capabilities (COMMON_CFG, ISR_CFG, DEVICE_CFG, NOTIFY_CFG and
    the PCI_CFG access window) pointing into one 16 KiB 64-bit prefetchable memory BAR 4, one
    4 KiB page per structure: common @0x0000, ISR @0x1000, device @0x2000, notify @0x3000;
  * legacy interface: I/O BAR 0 with the 0.9.5 header (4.1.4.10) followed by device config;
  * transitional (the default): both, with the legacy IDs (1af4:1000+id, revision 0);
  * MSI-X (`vectors`, default num-queues + 1): table and PBA in 32-bit memory BAR 1, its
    capability at the head of the list (pci/msix.py does the generic part).
Registers are Reg tables. The config and per-queue vector registers map notifications to MSI-X
vectors; while MSI-X is enabled the legacy header grows to 24 bytes (the device config moves
from offset 20 to 24) and notifications go to the mapped vector (none for NO_VECTOR). While it
is off, interrupts are INTx pin A, level = ISR != 0.
"""

from __future__ import annotations

import struct
from typing import Callable

from .. import trace, vmstate
from ..config import ConfigError
from ..pci.device import QEMU_SUBSYSTEM_ID, PciDevice
from ..pci.msix import Msix
from ..regs import Reg, RegisterBank
from .device import VirtioDevice, bit
from .queue import is_power_of_2
from .spec import DRIVER_OK, VIRTIO_F_ANY_LAYOUT, VIRTIO_F_RING_RESET

VIRTIO_PCI_VENDOR = 0x1AF4
PCI_CAP_ID_VNDR = 0x09
PCI_CLASS_STORAGE_SCSI = 0x010000       # class/subclass/prog-if, as QEMU gives virtio-blk

# Capability cfg_type values (4.1.4)
VIRTIO_PCI_CAP_COMMON_CFG = 1
VIRTIO_PCI_CAP_NOTIFY_CFG = 2
VIRTIO_PCI_CAP_ISR_CFG = 3
VIRTIO_PCI_CAP_DEVICE_CFG = 4
VIRTIO_PCI_CAP_PCI_CFG = 5

VIRTIO_MSI_NO_VECTOR = 0xFFFF

MODERN_BAR = 4
MODERN_BAR_SIZE = 0x4000
COMMON_OFF, ISR_OFF, DEVICE_OFF, NOTIFY_OFF = 0x0000, 0x1000, 0x2000, 0x3000
REGION_SIZE = 0x1000
NOTIFY_MULT = 4                         # notify_off_multiplier: queue n is kicked at NOTIFY_OFF + 4n
LEGACY_BAR = 0
LEGACY_HEADER = 20                      # 24 when MSI-X is enabled (two vector registers)
LEGACY_HEADER_MSIX = 24
MSIX_BAR = 1

EV_NOTIFY_WRITE = trace.Event("virtio_pci_notify_write")
EV_NOTIFY_WRITE_PIO = trace.Event("virtio_pci_notify_write_pio")

_CAP = struct.Struct("<BBBBxxII")       # cap_len, cfg_type, bar, id, padding[2], offset, length


def _cap_body(cfg_type: int, offset: int, length: int, extra: bytes = b"") -> bytes:
    return _CAP.pack(2 + _CAP.size + len(extra), cfg_type, MODERN_BAR, 0, offset, length) + extra


# ------------------------------------------------------------------------------------------------
# Register tables. Readers/writers take the transport (`t`); the queue registers act on the
# selected queue and do nothing for a selector past the last queue (queue_size then reads 0).
# ------------------------------------------------------------------------------------------------

def _selected(t: "VirtioPciDevice"):
    qs = t.vdev.queues
    return qs[t.queue_sel] if t.queue_sel < len(qs) else None


def _queue_writable(t: "VirtioPciDevice", what: str):
    """The selected queue if its configuration may still change, else None (frozen once the queue
    is enabled or the driver is running: the CVE-2026-5747 lesson; with VIRTIO_F_RING_RESET a
    queue the driver reset may be set up again while the device runs, 2.6.1)."""
    q = _selected(t)
    if q is None:
        trace.guest_error(f"{t.name}: {what} write for queue {t.queue_sel} which does not exist")
        return None
    running = t.vdev.status & DRIVER_OK and not t.vdev.has_feature(VIRTIO_F_RING_RESET)
    if q.enabled or running:
        trace.guest_error(f"{t.name}: {what} write to queue {q.index} after enable ignored")
        return None
    return q


def _r_device_feature(t) -> int:
    if t.dfselect > 1:
        return 0
    return (t.vdev.host_features >> (32 * t.dfselect)) & 0xFFFFFFFF


def _r_driver_feature(t) -> int:
    if t.gfselect > 1:
        return 0
    return (t.vdev.guest_features >> (32 * t.gfselect)) & 0xFFFFFFFF


def _w_driver_feature(t, v: int) -> None:
    if t.gfselect > 1:
        trace.guest_error(f"{t.name}: driver_feature write with select {t.gfselect} ignored")
        return
    # The two halves as written (QEMU keeps them the same way); the device masks what it never
    # offered, and the register reads back what the device took.
    t.gf_written[t.gfselect] = v
    t.vdev.set_guest_features(t.gf_written[0] | t.gf_written[1] << 32)


def _w_status(t, v: int) -> None:
    t.vdev.set_status(v, modern=True)
    if v == 0:
        t.transport_reset()


def _r_queue_size(t) -> int:
    q = _selected(t)
    return 0 if q is None else q.size


def _w_queue_size(t, v: int) -> None:
    q = _queue_writable(t, "queue_size")
    if q is None:
        return
    # Split rings are powers of 2 (2.7); packed ones any size up to the maximum (2.8).
    if not (1 <= v if q.state().packed else is_power_of_2(v)) or v > q.max_size:
        trace.guest_error(f"{t.name}: queue_size {v} for queue {q.index} refused (max {q.max_size})")
        return
    q.size = v


def _r_queue_enable(t) -> int:
    q = _selected(t)
    return int(q is not None and q.enabled)


def _w_queue_enable(t, v: int) -> None:
    if v != 1:
        trace.guest_error(f"{t.name}: queue_enable={v} ignored (only 1 is defined)")
        return
    q = _queue_writable(t, "queue_enable")
    if q is not None:
        t.vdev.enable_queue(q)


def _w_queue_reset(t, v: int) -> None:
    """1 resets the selected queue (4.1.4.3); it reads 0 again once done, i.e. at once. As QEMU
    7.2, the write works whether or not VIRTIO_F_RING_RESET was negotiated."""
    q = _selected(t)
    if v != 1 or q is None:
        trace.guest_error(f"{t.name}: queue_reset={v} for queue {t.queue_sel} ignored")
        return
    t.vdev.reset_queue(q)
    t.queue_vectors[q.index] = VIRTIO_MSI_NO_VECTOR


def _r_notify_off(t) -> int:
    return t.queue_sel if _selected(t) is not None else 0


def _addr_half(field: str, high: bool):
    def read(t) -> int:
        q = _selected(t)
        if q is None:
            return 0
        return (getattr(q, field) >> 32 if high else getattr(q, field)) & 0xFFFFFFFF

    def write(t, v: int) -> None:
        q = _queue_writable(t, field)
        if q is None:
            return
        old = getattr(q, field)
        new = (old & 0xFFFFFFFF) | (v << 32) if high else (old & ~0xFFFFFFFF) | v
        setattr(q, field, new)
    return read, write


def _vector(t, v: int) -> int:
    """What a vector register keeps: the vector if the MSI-X table has it, else NO_VECTOR, so a
    driver reading back sees that the mapping failed (4.1.5.1.2). No MSI-X: always NO_VECTOR."""
    if t.msix is not None and v < t.msix.nvectors:
        return v
    if v != VIRTIO_MSI_NO_VECTOR:
        trace.guest_error(f"{t.name}: MSI-X vector {v:#x} does not exist; mapped to NO_VECTOR")
    return VIRTIO_MSI_NO_VECTOR


def _w_config_vector(t, v: int) -> None:
    t.config_vector = _vector(t, v)


def _r_queue_vector(t) -> int:
    return t.queue_vectors[t.queue_sel] if _selected(t) is not None else VIRTIO_MSI_NO_VECTOR


def _w_queue_vector(t, v: int) -> None:
    if _selected(t) is None:
        trace.guest_error(f"{t.name}: queue_msix_vector write for queue {t.queue_sel} which does not exist")
        return
    t.queue_vectors[t.queue_sel] = _vector(t, v)


COMMON_CFG = [
    Reg(0x00, 4, "device_feature_select", "dfselect", "dfselect"),
    Reg(0x04, 4, "device_feature", _r_device_feature, None),
    Reg(0x08, 4, "driver_feature_select", "gfselect", "gfselect"),
    Reg(0x0C, 4, "driver_feature", _r_driver_feature, _w_driver_feature),
    Reg(0x10, 2, "config_msix_vector", "config_vector", _w_config_vector),
    Reg(0x12, 2, "num_queues", lambda t: len(t.vdev.queues), None),
    Reg(0x14, 1, "device_status", lambda t: t.vdev.status, _w_status),
    Reg(0x15, 1, "config_generation", lambda t: t.vdev.config_generation, None),
    Reg(0x16, 2, "queue_select", "queue_sel", "queue_sel"),
    Reg(0x18, 2, "queue_size", _r_queue_size, _w_queue_size),
    Reg(0x1A, 2, "queue_msix_vector", _r_queue_vector, _w_queue_vector),
    Reg(0x1C, 2, "queue_enable", _r_queue_enable, _w_queue_enable),
    Reg(0x1E, 2, "queue_notify_off", _r_notify_off, None),
    Reg(0x20, 4, "queue_desc_lo", *_addr_half("desc_addr", False)),
    Reg(0x24, 4, "queue_desc_hi", *_addr_half("desc_addr", True)),
    Reg(0x28, 4, "queue_driver_lo", *_addr_half("avail_addr", False)),
    Reg(0x2C, 4, "queue_driver_hi", *_addr_half("avail_addr", True)),
    Reg(0x30, 4, "queue_device_lo", *_addr_half("used_addr", False)),
    Reg(0x34, 4, "queue_device_hi", *_addr_half("used_addr", True)),
    Reg(0x38, 2, "queue_notify_data", lambda t: 0, None),    # VIRTIO_F_NOTIFICATION_DATA is not offered
    Reg(0x3A, 2, "queue_reset", lambda t: 0, _w_queue_reset),
]


def _r_legacy_pfn(t) -> int:
    q = _selected(t)
    return q.desc_addr >> 12 if q is not None and q.enabled else 0


def _w_legacy_pfn(t, v: int) -> None:
    """Legacy: the queue lives at pfn * 4096 in the fixed 4096-aligned layout (4.1.5.1.3.1).
    Writing 0 resets the whole device, as legacy drivers use it on teardown."""
    if v == 0:
        t.vdev.reset()
        t.transport_reset()
        return
    q = _queue_writable(t, "queue_pfn")
    if q is None:
        return
    n = q.size
    q.desc_addr = v << 12
    q.avail_addr = q.desc_addr + 16 * n
    q.used_addr = (q.avail_addr + 6 + 2 * n + 4095) & ~4095
    t.vdev.enable_queue(q)


def _w_legacy_notify(t, v: int) -> None:
    if EV_NOTIFY_WRITE_PIO.enabled:
        EV_NOTIFY_WRITE_PIO.emit(addr=0x10, val=v, size=2)
    t.vdev.queue_notify(v)


def _w_legacy_status(t, v: int) -> None:
    t.vdev.set_status(v, modern=False)
    if v == 0:
        t.transport_reset()


def _r_legacy_features(t) -> int:
    return (t.vdev.host_features | t.legacy_only_features) & 0xFFFFFFFF


def _w_legacy_features(t, v: int) -> None:
    t.vdev.set_legacy_features(v, t.legacy_only_features)


LEGACY_HEADER_REGS = [
    Reg(0x00, 4, "host_features", _r_legacy_features, None),
    Reg(0x04, 4, "guest_features", lambda t: t.vdev.guest_features & 0xFFFFFFFF, _w_legacy_features),
    Reg(0x08, 4, "queue_pfn", _r_legacy_pfn, _w_legacy_pfn),
    Reg(0x0C, 2, "queue_num", _r_queue_size, None),
    Reg(0x0E, 2, "queue_sel", "queue_sel", "queue_sel"),
    Reg(0x10, 2, "queue_notify", lambda t: 0, _w_legacy_notify),
    Reg(0x12, 1, "status", lambda t: t.vdev.status, _w_legacy_status),
    Reg(0x13, 1, "isr", lambda t: t.vdev.read_isr(), None),
    # Present only while MSI-X is enabled (LegacyBar moves the device config behind them).
    Reg(0x14, 2, "config_vector", "config_vector", _w_config_vector),
    Reg(0x16, 2, "queue_vector", _r_queue_vector, _w_queue_vector),
]


class ModernBar:
    """BAR 4: four 4 KiB structures. Accesses outside them read 0 and are ignored."""

    def __init__(self, t: "VirtioPciDevice"):
        self.t = t
        self.common = RegisterBank(t, COMMON_CFG, name=f"{t.name}.common")

    def read(self, offset: int, size: int) -> int:
        self.t.vdev.native_sync()
        page, off = offset & ~0xFFF, offset & 0xFFF
        if page == COMMON_OFF:
            return self.common.read(off, size)
        if page == ISR_OFF:
            return self.t.vdev.read_isr() if off == 0 else 0
        if page == DEVICE_OFF:
            return self.t.vdev.config_read(off, size)
        return 0      # notify structure reads (and anything else) as 0

    def write(self, offset: int, size: int, value: int) -> None:
        self.t.vdev.native_sync()
        page, off = offset & ~0xFFF, offset & 0xFFF
        if page == NOTIFY_OFF:
            self.t.notify_write(off, size, value)
        elif page == COMMON_OFF:
            self.common.write(off, size, value)
        elif page == DEVICE_OFF:
            self.t.vdev.config_write(off, size, value)
        else:
            trace.guest_error(f"{self.t.name}: write to read-only BAR{MODERN_BAR} offset {offset:#x} ignored")

    def native_write_front(self, fallback: int) -> tuple[int, int] | None:
        """The device's native write for this BAR, if it has one: (function, user data) that
        serves notifies alone where it can and calls `fallback` (this object's write, as the
        CPU layer wraps it) for everything else (VirtioDevice.native_front)."""
        return self.t.vdev.native_front(fallback, NOTIFY_OFF, NOTIFY_MULT)


class LegacyBar:
    """I/O BAR 0: the legacy header, then the device config (guest-endian = little endian)."""

    def __init__(self, t: "VirtioPciDevice"):
        self.t = t
        self.header = RegisterBank(t, LEGACY_HEADER_REGS, name=f"{t.name}.legacy")

    def read(self, offset: int, size: int) -> int:
        self.t.vdev.native_sync()
        header = self.t.legacy_header_size()
        if offset >= header:
            return self.t.vdev.config_read(offset - header, size)
        return self.header.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.t.vdev.native_sync()
        header = self.t.legacy_header_size()
        if offset >= header:
            self.t.vdev.config_write(offset - header, size, value)
        else:
            self.header.write(offset, size, value)


class VirtioPciDevice(PciDevice):
    """A VirtioDevice behind a PCI function. `legacy`/`modern` pick the interfaces."""

    def __init__(self, vdev: VirtioDevice, *, legacy: bool = True, modern: bool = True,
                 class_code: int = PCI_CLASS_STORAGE_SCSI, vectors: int = 0,
                 msi_send: Callable[[int, int], object] | None = None):
        if not legacy and not modern:
            raise ConfigError("device cannot work as neither modern nor legacy mode is enabled")
        if legacy:                # legacy-only and transitional: 0.9.5 IDs (4.1.2.3)
            ids = dict(device_id=0x1000 + vdev.device_id - 1, revision=0,
                       subsystem_vendor_id=VIRTIO_PCI_VENDOR, subsystem_id=vdev.device_id)
        else:                     # modern-only: 0x1040 + device id, revision 1 (4.1.2.1)
            ids = dict(device_id=0x1040 + vdev.device_id, revision=1,
                       subsystem_vendor_id=VIRTIO_PCI_VENDOR, subsystem_id=QEMU_SUBSYSTEM_ID)
        super().__init__(f"{vdev.name}-pci", VIRTIO_PCI_VENDOR, class_code=class_code,
                         interrupt_pin=1, **ids)
        self.vdev = vdev
        self.legacy = legacy
        self.modern = modern
        self.legacy_only_features = bit(VIRTIO_F_ANY_LAYOUT)   # offered on the legacy interface only
        self.dfselect = self.gfselect = self.queue_sel = 0
        self.gf_written = [0, 0]
        self.pci_cfg_cap = 0
        self.config_vector = VIRTIO_MSI_NO_VECTOR
        self.queue_vectors = [VIRTIO_MSI_NO_VECTOR] * len(vdev.queues)
        vdev.plug(self)

        if legacy:
            header = LEGACY_HEADER_MSIX if vectors else LEGACY_HEADER
            size = 1 << max(2, (header + len(vdev.config) - 1).bit_length())
            self.add_io_bar(LEGACY_BAR, size, LegacyBar(self))
        self._modern_ops = ModernBar(self) if modern else None
        if modern:
            self.add_mem_bar(MODERN_BAR, MODERN_BAR_SIZE, self._modern_ops, is64=True, prefetchable=True)
            self.add_capability(PCI_CAP_ID_VNDR, _cap_body(VIRTIO_PCI_CAP_COMMON_CFG, COMMON_OFF, REGION_SIZE))
            self.add_capability(PCI_CAP_ID_VNDR, _cap_body(VIRTIO_PCI_CAP_ISR_CFG, ISR_OFF, REGION_SIZE))
            self.add_capability(PCI_CAP_ID_VNDR, _cap_body(VIRTIO_PCI_CAP_DEVICE_CFG, DEVICE_OFF, REGION_SIZE))
            self.add_capability(PCI_CAP_ID_VNDR, _cap_body(VIRTIO_PCI_CAP_NOTIFY_CFG, NOTIFY_OFF, REGION_SIZE,
                                                           struct.pack("<I", NOTIFY_MULT)))
            # PCI_CFG: bar/offset/length/data are driver-writable; data accesses reach the BAR.
            cap = self.add_capability(PCI_CAP_ID_VNDR, _CAP.pack(20, VIRTIO_PCI_CAP_PCI_CFG, 0, 0, 0, 0) + bytes(4))
            self.pci_cfg_cap = cap
            self.set_writable(cap + 4, 1)            # cap.bar
            self.set_writable(cap + 8, 4)            # cap.offset
            self.set_writable(cap + 12, 4)           # cap.length
            self.set_writable(cap + 16, 4)           # pci_cfg_data
        if vectors:
            # Last, as QEMU does: MSI-X heads the capability list. No sink: messages go nowhere.
            self.add_msix(vectors, MSIX_BAR, msi_send or (lambda address, data: False))

    # -- saved state: PCI function, selectors, vector mappings, MSI-X table and PBA ------------------
    VMSTATE = vmstate.Description("virtio-pci", 1, PciDevice.VMSTATE_FIELDS + (
        vmstate.Field("dfselect", vmstate.U32), vmstate.Field("gfselect", vmstate.U32),
        vmstate.Field("queue_sel", vmstate.U16),
        vmstate.Field("gf_written", vmstate.List(vmstate.U32, 2, 2)),
        vmstate.Field("config_vector", vmstate.U16),
        vmstate.Field("queue_vectors", vmstate.List(vmstate.U16, 1024)),
        vmstate.Field("msix", vmstate.Optional(vmstate.Struct(Msix.VMSTATE)))))

    def vmstate_check(self, values: dict) -> None:
        if len(values["queue_vectors"]) != len(self.queue_vectors):
            raise vmstate.VMStateError(f"{self.name}: {len(values['queue_vectors'])} queue vectors, "
                                       f"this device has {len(self.queue_vectors)}")
        if (values["msix"] is None) != (self.msix is None):
            raise vmstate.VMStateError(f"{self.name}: MSI-X present in only one of the snapshot and this machine")
        if self.msix is not None:
            vmstate.check(self.msix, Msix.VMSTATE, values["msix"], f"{self.name}.msix")

    # -- the device's Transport ---------------------------------------------------------------------
    def _msix_on(self) -> bool:
        return self.msix is not None and self.msix.enabled

    def interrupt_changed(self) -> None:
        """INTx follows ISR (asserted while any ISR bit is set, dropped by the ISR read) while
        MSI-X is off; with MSI-X on the pin stays deasserted."""
        self.set_irq(bool(self.vdev.isr) and not self._msix_on())

    def send_interrupt(self, queue: int | None) -> None:
        """A queue (index) or config (None) notification: the vector the driver mapped it to
        when MSI-X is on (none for NO_VECTOR), else INTx."""
        if self._msix_on():
            vector = self.config_vector if queue is None else self.queue_vectors[queue]
            if vector != VIRTIO_MSI_NO_VECTOR:
                self.msix.notify(vector)
        else:
            self.interrupt_changed()

    def msix_changed(self) -> None:
        self.interrupt_changed()           # enabling MSI-X deasserts INTx (as QEMU)

    def legacy_header_size(self) -> int:
        """The legacy header grows by the two vector registers while MSI-X is enabled."""
        return LEGACY_HEADER_MSIX if self._msix_on() else LEGACY_HEADER

    def dma_allowed(self) -> bool:
        return self.bus_master

    # -- notify ----------------------------------------------------------------------------------------
    def notify_write(self, off: int, size: int, value: int) -> None:
        if EV_NOTIFY_WRITE.enabled:
            EV_NOTIFY_WRITE.emit(addr=NOTIFY_OFF + off, val=value, size=size)
        if off % NOTIFY_MULT:
            trace.guest_error(f"{self.name}: notify at unaligned offset {off:#x} ignored")
            return
        # The queue is the one whose notify address was written (QEMU does the same); the value
        # would only matter with VIRTIO_F_NOTIFICATION_DATA, which we do not offer.
        self.vdev.queue_notify(off // NOTIFY_MULT)
        if not EV_NOTIFY_WRITE.enabled:
            self.vdev.native_arm(off // NOTIFY_MULT)      # its next kicks natively, if it can

    # -- reset ---------------------------------------------------------------------------------------
    def transport_reset(self) -> None:
        """Device reset: selectors and the vector mappings (the MSI-X table is PCI state and
        stays, as on QEMU)."""
        self.dfselect = self.gfselect = self.queue_sel = 0
        self.config_vector = VIRTIO_MSI_NO_VECTOR
        self.queue_vectors = [VIRTIO_MSI_NO_VECTOR] * len(self.vdev.queues)
        self.gf_written = [0, 0]

    def reset(self) -> None:
        """PCI reset (power-on / bus reset) resets the virtio device too."""
        super().reset()
        self.vdev.reset()
        self.transport_reset()

    # -- the PCI_CFG access window (4.1.4.9) ------------------------------------------------------------
    def _window(self) -> tuple[int, int] | None:
        c, cap = self.config, self.pci_cfg_cap
        bar = c[cap + 4]
        off = int.from_bytes(c[cap + 8:cap + 12], "little")
        length = int.from_bytes(c[cap + 12:cap + 16], "little")
        if bar != MODERN_BAR or length not in (1, 2, 4) or off % length or off + length > MODERN_BAR_SIZE:
            trace.guest_error(f"{self.name}: PCI_CFG window bar={bar} offset={off:#x} length={length} ignored")
            return None
        return off, length

    def _touches_data(self, offset: int, size: int) -> bool:
        d = self.pci_cfg_cap + 16
        return bool(self.pci_cfg_cap) and size in (1, 2, 4) and offset < d + 4 and offset + size > d

    def config_read(self, offset: int, size: int) -> int:
        self.vdev.native_sync()
        if self._touches_data(offset, size):
            w = self._window()
            if w is not None:
                value = self._modern_ops.read(w[0], w[1])
                d = self.pci_cfg_cap + 16
                self.config[d:d + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
        return super().config_read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        self.vdev.native_sync()
        super().config_write(offset, size, value)
        if self._touches_data(offset, size):
            w = self._window()
            if w is not None:
                d = self.pci_cfg_cap + 16
                data = int.from_bytes(self.config[d:d + 4], "little")
                self._modern_ops.write(w[0], w[1], data & ((1 << (8 * w[1])) - 1))
