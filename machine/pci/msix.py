"""MSI-X (PCI Local Bus 3.0 section 6.8.2): a capability any PciDevice can have, with its table
and pending bit array (PBA) in a memory BAR of their own, laid out as QEMU's
msix_init_exclusive_bar does: table at offset 0, PBA at half the BAR (or right after a table too
big for that), the BAR a power of two of at least 4 KiB, 32-bit and non-prefetchable.

The device calls `notify(vector)`. A masked vector (its own mask bit or the function mask) sets
its pending bit instead; unmasking sends what is pending. A message is a DWORD memory write of
the entry's data to its address, which the board's `send(address, data)` turns into an
interrupt (the 0xFEE00000 window) or drops with a guest_errors line. The device must be a bus
master to send anything (as on a real bus, and QEMU): a message sent with bus mastering off is
lost, not pending.

Table and PBA take aligned 4-byte accesses (8-byte ones arrive as two halves); other widths
read 0 and are ignored, as on QEMU. Every guest value is stored as written (the reserved bits of
vector control too, as QEMU); only bit 0 of vector control means anything.
"""

from __future__ import annotations

import struct
from typing import Callable, Protocol

from .. import trace, vmstate


class Function(Protocol):
    """What MSI-X needs of the PCI function it belongs to (device.py's PciDevice)."""
    name: str
    config: bytearray

    @property
    def bus_master(self) -> bool: ...
    def add_capability(self, cap_id: int, body: bytes) -> int: ...
    def set_writable(self, offset: int, size: int, mask: int | None = None, reset: int = 0) -> None: ...
    def add_mem_bar(self, index: int, size: int, ops, *, is64: bool = False, prefetchable: bool = False) -> None: ...

PCI_CAP_ID_MSIX = 0x11
MSIX_MAX_VECTORS = 2048               # Table Size is an 11-bit field (N - 1)
ENTRY_SIZE = 16
CTRL_ENABLE = 0x8000                  # Message Control bits
CTRL_FUNCTION_MASK = 0x4000
VECTOR_MASKED = 1                     # Vector Control bit 0

EV_WRITE_CONFIG = trace.Event("msix_write_config")
EV_NOTIFY = trace.Event("msix_notify")


def bar_layout(nvectors: int) -> tuple[int, int]:
    """(BAR size, PBA offset) for `nvectors` entries, as QEMU lays out an exclusive BAR."""
    size = 4096
    pba = size // 2
    pba_size = (nvectors + 63) // 64 * 8
    if nvectors * ENTRY_SIZE > pba:
        pba = nvectors * ENTRY_SIZE
    if pba + pba_size > size:
        size = pba + pba_size
    return 1 << (size - 1).bit_length(), pba


class Msix:
    """The MSI-X state of one function. Build it with `PciDevice.add_msix()`."""

    def __init__(self, dev: Function, nvectors: int, bar: int, send: Callable[[int, int], object]):
        if not 1 <= nvectors <= MSIX_MAX_VECTORS:
            raise ValueError(f"{dev.name}: {nvectors} MSI-X vectors (1..{MSIX_MAX_VECTORS})")
        self.dev = dev
        self.nvectors = nvectors
        self.send = send
        self.bar_size, self.pba_offset = bar_layout(nvectors)
        self.table = bytearray(ENTRY_SIZE * nvectors)
        self.pending = bytearray((nvectors + 63) // 64 * 8)
        self.cap = dev.add_capability(PCI_CAP_ID_MSIX, struct.pack("<HII", nvectors - 1, bar, self.pba_offset | bar))
        self.control_offset = self.cap + 2
        dev.set_writable(self.control_offset + 1, 1, (CTRL_ENABLE | CTRL_FUNCTION_MASK) >> 8)
        dev.add_mem_bar(bar, self.bar_size, self)
        self.reset()

    # -- state -----------------------------------------------------------------------------------
    @property
    def control(self) -> int:
        c = self.dev.config
        return c[self.control_offset] | c[self.control_offset + 1] << 8

    @property
    def enabled(self) -> bool:
        return bool(self.control & CTRL_ENABLE)

    @property
    def function_masked(self) -> bool:
        return bool(self.control & CTRL_FUNCTION_MASK)

    def entry(self, vector: int) -> tuple[int, int, int]:
        """(address, data, vector control) of table entry `vector`."""
        lo, hi, data, ctrl = struct.unpack_from("<IIII", self.table, ENTRY_SIZE * vector)
        return lo | hi << 32, data, ctrl

    def vector_masked(self, vector: int) -> bool:
        return bool(self.table[ENTRY_SIZE * vector + 12] & VECTOR_MASKED)

    VMSTATE = vmstate.Description("msix", 1, (
        vmstate.Field("table", vmstate.Bytes(ENTRY_SIZE * 2048)),
        vmstate.Field("pending", vmstate.Bytes(2048 // 8))))

    def vmstate_check(self, values: dict) -> None:
        if len(values["table"]) != len(self.table) or len(values["pending"]) != len(self.pending):
            raise vmstate.VMStateError(f"msix: {self.dev.name} has {self.nvectors} vectors, the snapshot another count")

    def is_pending(self, vector: int) -> bool:
        return bool(self.pending[vector >> 3] >> (vector & 7) & 1)

    def _set_pending(self, vector: int, on: bool) -> None:
        if on:
            self.pending[vector >> 3] |= 1 << (vector & 7)
        else:
            self.pending[vector >> 3] &= ~(1 << (vector & 7)) & 0xFF

    def reset(self) -> None:
        """Power-on: every vector masked with a zero message, nothing pending (the control
        word's enable and function mask go back to 0 with the rest of config space)."""
        self.table[:] = bytes(len(self.table))
        for v in range(self.nvectors):
            self.table[ENTRY_SIZE * v + 12] = VECTOR_MASKED
        self.pending[:] = bytes(len(self.pending))

    # -- sending ---------------------------------------------------------------------------------
    def notify(self, vector: int) -> None:
        """The device signals `vector` (callers only do so while MSI-X is enabled)."""
        if not 0 <= vector < self.nvectors:
            return
        masked = self.function_masked or self.vector_masked(vector)
        if EV_NOTIFY.enabled:
            EV_NOTIFY.emit(dev=self.dev.name, vector=vector, pending=masked)
        if masked:
            self._set_pending(vector, True)
            return
        self._send(vector)

    def _send(self, vector: int) -> None:
        if not self.dev.bus_master:
            trace.guest_error(f"{self.dev.name}: MSI-X vector {vector} raised while bus mastering is off; lost")
            return
        address, data, _ctrl = self.entry(vector)
        if address >> 32:
            trace.guest_error(f"{self.dev.name}: MSI-X vector {vector} address {address:#x} is above 4 GiB; dropped")
            return
        self.send(address, data)

    def _flush_pending(self) -> None:
        """Send every pending vector that is no longer masked (PCI 3.0 6.8.2.9)."""
        if not self.enabled or self.function_masked:
            return
        for v in range(self.nvectors):
            if self.is_pending(v) and not self.vector_masked(v):
                self._set_pending(v, False)
                self._send(v)

    def control_written(self) -> None:
        """The guest wrote Message Control (PciDevice.config_write calls this)."""
        if EV_WRITE_CONFIG.enabled:
            EV_WRITE_CONFIG.emit(dev=self.dev.name, enabled=self.enabled, masked=self.function_masked)
        self._flush_pending()

    # -- the BAR: table, then PBA ------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if size != 4 or offset % 4:
            trace.guest_error(f"{self.dev.name}: {size}-byte MSI-X read at {offset:#x}; reads 0")
            return 0
        if offset < len(self.table):
            return int.from_bytes(self.table[offset:offset + 4], "little")
        if self.pba_offset <= offset < self.pba_offset + len(self.pending):
            o = offset - self.pba_offset
            return int.from_bytes(self.pending[o:o + 4], "little")
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 4 or offset % 4 or offset >= len(self.table):
            trace.guest_error(f"{self.dev.name}: {size}-byte MSI-X write {value:#x} at {offset:#x} ignored")
            return
        self.table[offset:offset + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
        if offset % ENTRY_SIZE == 12:                      # vector control: unmasking sends what is pending
            self._flush_pending()

    def describe(self) -> str:
        """One line for `info pci`: state and every vector's message and mask."""
        state = f"MSI-X: {'enabled' if self.enabled else 'disabled'}, {self.nvectors} vectors"
        if self.function_masked:
            state += ", function masked"
        parts = []
        for v in range(self.nvectors):
            addr, data, _ = self.entry(v)
            flags = ("M" if self.vector_masked(v) else "") + ("P" if self.is_pending(v) else "")
            parts.append(f"{v}:{addr:#x}/{data:#x}{'/' + flags if flags else ''}")
        return state + ": " + " ".join(parts)
