"""Message-signalled interrupts: a memory write into 0xFEE00000-0xFEEFFFFF becomes an interrupt
in the local APIC (Intel SDM vol. 3, "Message Signalled Interrupts").

Address (32 bits):
    31:20  0xFEE                  the window; a write elsewhere is an ordinary memory write
    19:12  destination ID         APIC ID (physical) or logical destination
    3      redirection hint       lowest-priority redirection: one CPU here, nothing to choose
    2      destination mode       0 physical, 1 logical
Data (32 bits, the upper 16 reserved):
    7:0    vector
    10:8   delivery mode          0 fixed, 1 lowest priority, 2 SMI, 4 NMI, 5 INIT, 7 ExtINT
    14     level                  assert (only meaningful for level-triggered messages)
    15     trigger mode           0 edge, 1 level

A PCI device (MSI or MSI-X) and the IOAPIC both send their interrupts as such messages; the board
hands them one `MsiSink`, which decodes a message and delivers it to the LAPIC. The CPU's own
accesses to 0xFEE00000 are the LAPIC's registers, not messages: only bus masters call this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import trace

if TYPE_CHECKING:
    from .lapic import LocalApic

MSI_BASE = 0xFEE00000
MSI_SIZE = 0x100000

DM_FIXED, DM_LOWEST, DM_SMI, DM_NMI, DM_INIT, DM_EXTINT = 0, 1, 2, 4, 5, 7

EV_MSI = trace.Event("msi_deliver")


@dataclass(frozen=True)
class MsiMessage:
    dest: int
    logical: bool
    vector: int
    delivery_mode: int
    level_triggered: bool

    def encode(self) -> tuple[int, int]:
        """(address, data) of this message, as a device or the IOAPIC puts it on the bus."""
        address = MSI_BASE | (self.dest & 0xFF) << 12 | (4 if self.logical else 0)
        data = (self.vector & 0xFF) | (self.delivery_mode & 7) << 8 | 0x4000 \
            | (0x8000 if self.level_triggered else 0)
        return address, data


def in_window(address: int) -> bool:
    return MSI_BASE <= address < MSI_BASE + MSI_SIZE


def decode(address: int, data: int) -> MsiMessage:
    return MsiMessage(dest=(address >> 12) & 0xFF, logical=bool(address & 4), vector=data & 0xFF,
                      delivery_mode=(data >> 8) & 7, level_triggered=bool(data & 0x8000))


class MsiSink:
    """Where the board's bus masters send interrupt messages: `send(address, data)`."""

    def __init__(self, lapic: LocalApic):
        self.lapic = lapic

    def send(self, address: int, data: int) -> bool:
        """Deliver one message; False when it interrupts nobody (outside the window, another
        destination, a delivery mode this single-CPU board does not take)."""
        address &= 0xFFFFFFFF
        if not in_window(address):
            trace.guest_error(f"msi: write of {data:#x} to {address:#x}, outside the MSI window, dropped")
            return False
        msg = decode(address, data)
        return self.deliver(msg)

    def deliver(self, msg: MsiMessage) -> bool:
        if EV_MSI.enabled:
            EV_MSI.emit(dest=msg.dest, dest_mode=int(msg.logical), delivery_mode=msg.delivery_mode,
                        vector=msg.vector, trigger_mode=int(msg.level_triggered))
        if not self.lapic.accepts_destination(msg.dest, msg.logical):
            return False
        if msg.delivery_mode in (DM_FIXED, DM_LOWEST):
            self.lapic.deliver(msg.vector, msg.level_triggered)
            return True
        trace.log("unimp", f"msi: delivery mode {msg.delivery_mode} (vector {msg.vector:#x}) not delivered")
        return False
