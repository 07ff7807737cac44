"""I/O APIC (82093AA, version 0x20 as on QEMU's `pc`), 24 input pins, at 0xFEC00000.

Direct registers (32-bit): IOREGSEL at +0x00 selects an indirect register, IOWIN at +0x10 reads
and writes it, and the EOI register at +0x40 (new in version 0x20) ends a level-triggered
vector the way the LAPIC's EOI broadcast does. Indirect registers:

    0x00        ID (bits 27:24)
    0x01        version: max redirection entry 23 in bits 23:16, version 0x20
    0x02        arbitration ID (the ID)
    0x10+2n     redirection entry n, low dword: vector 7:0, delivery mode 10:8, destination mode
                11, delivery status 12 (RO, always idle: delivery is immediate), polarity 13,
                remote IRR 14 (RO), trigger mode 15 (1 = level), mask 16
    0x11+2n     high dword: destination 31:24 (bits 63:56 of the entry)

Each pin's interrupt is sent as an MSI-style message (destination, vector, delivery and trigger
mode) through the board's MsiSink, so it reaches the LAPIC by the same path as a device's MSI.

Edge pins latch a rising edge (also while masked, delivered when unmasked, as QEMU does); level
pins request while the line is high: a delivered level interrupt sets remote IRR and is not sent
again until an EOI for its vector (LAPIC broadcast or this EOI register) clears it, then again if
the line is still high. The board's lines are asserted-high and the polarity bit is kept but
does not invert them, as on QEMU's model (the firmware's tables describe every line as what the
guest programs). Switching an entry to edge clears its remote IRR, which old kernels use as an
EOI (QEMU does the same).
"""

from __future__ import annotations

from typing import Callable

from .. import trace
from .. import vmstate
from ..vmstate import U8, U64
from ..irq import IrqLine
from ..regs import Reg, RegisterBank
from .msi import MsiMessage

NUM_PINS = 24
VERSION = 0x20
VERSION_REG = (NUM_PINS - 1) << 16 | VERSION

REG_ID, REG_VERSION, REG_ARB, REG_REDTBL = 0x00, 0x01, 0x02, 0x10

RTE_VECTOR = 0xFF
RTE_DELIVERY_MODE = 0x700
RTE_DEST_LOGICAL = 0x800
RTE_DELIVERY_STATUS = 0x1000
RTE_POLARITY_LOW = 0x2000
RTE_REMOTE_IRR = 0x4000
RTE_LEVEL = 0x8000
RTE_MASKED = 0x10000
RTE_LOW_WRITABLE = RTE_VECTOR | RTE_DELIVERY_MODE | RTE_DEST_LOGICAL | RTE_POLARITY_LOW | RTE_LEVEL | RTE_MASKED
RTE_DEST_SHIFT = 56

EV_SET_IRQ = trace.Event("ioapic_set_irq")
EV_EOI = trace.Event("ioapic_eoi_broadcast")
EV_DELIVER = trace.Event("ioapic_service")


class IoApic:
    VMSTATE = vmstate.Description("ioapic", 1, (
        vmstate.Field("id", vmstate.UInt(4)),
        vmstate.Field("regsel", U8),
        vmstate.Field("irr", vmstate.UInt(NUM_PINS)),
        vmstate.Field("redtbl", vmstate.List(U64, NUM_PINS, NUM_PINS)),
        vmstate.Field("lines", vmstate.UInt(NUM_PINS)),
        vmstate.Field("_pins", vmstate.LineList(NUM_PINS))))

    BASE = 0xFEC00000
    SIZE = 0x1000

    def __init__(self, send: Callable[[MsiMessage], object]):
        """`send(message)` puts an interrupt message on the bus (the board's MsiSink.deliver)."""
        self._send = send
        self._bank = RegisterBank(self, _REGS, "ioapic", default=0)
        self._pins = [IrqLine(f"ioapic{n}", self._pin_sink(n)) for n in range(NUM_PINS)]
        self.lines = 0          # current input levels
        self.reset()

    def reset(self) -> None:
        self.id = 0
        self.regsel = 0
        self.irr = 0            # latched edges not yet delivered
        self.redtbl = [RTE_MASKED] * NUM_PINS

    def pin(self, n: int) -> IrqLine:
        """Input pin n (a GSI), for the board to wire."""
        return self._pins[n]

    # -- ops ------------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        return self._bank.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self._bank.write(offset, size, value)

    # -- indirect registers ------------------------------------------------------------------
    def _read_window(self) -> int:
        index = self.regsel
        if index == REG_ID or index == REG_ARB:
            return self.id << 24
        if index == REG_VERSION:
            return VERSION_REG
        pin, high = divmod(index - REG_REDTBL, 2)
        if 0 <= pin < NUM_PINS:
            entry = self.redtbl[pin]
            return (entry >> 32) & 0xFFFFFFFF if high else entry & 0xFFFFFFFF
        return 0

    def _write_window(self, value: int) -> None:
        index = self.regsel
        if index == REG_ID:
            self.id = (value >> 24) & 0xF
            return
        pin, high = divmod(index - REG_REDTBL, 2)
        if not 0 <= pin < NUM_PINS:
            trace.guest_error(f"ioapic: write {value:#x} to read-only or missing register {index:#x} ignored")
            return
        entry = self.redtbl[pin]
        if high:
            entry = (entry & 0xFFFFFFFF) | (value & 0xFF000000) << 32
        else:
            entry = (entry & ~0xFFFFFFFF) | (entry & RTE_REMOTE_IRR) | (value & RTE_LOW_WRITABLE)
            if not entry & RTE_LEVEL:
                entry &= ~RTE_REMOTE_IRR
        self.redtbl[pin] = entry
        self._service()

    def _write_regsel(self, value: int) -> None:
        self.regsel = value & 0xFF

    def _write_eoi(self, value: int) -> None:
        self.eoi(value & 0xFF)

    # -- inputs -------------------------------------------------------------------------------
    def _pin_sink(self, n: int) -> Callable[[bool], None]:
        def sink(level: bool) -> None:
            if EV_SET_IRQ.enabled:
                EV_SET_IRQ.emit(vector=n, level=int(level))
            bit = 1 << n
            rising = level and not self.lines & bit
            self.lines = self.lines | bit if level else self.lines & ~bit
            if rising and not self.redtbl[n] & RTE_LEVEL:
                self.irr |= bit
            if level:
                self._service()
        return sink

    def eoi(self, vector: int) -> None:
        """End of a level-triggered `vector` (the LAPIC's broadcast, or the EOI register)."""
        if EV_EOI.enabled:
            EV_EOI.emit(vector=vector)
        for n, entry in enumerate(self.redtbl):
            if entry & RTE_LEVEL and entry & RTE_REMOTE_IRR and entry & RTE_VECTOR == vector:
                self.redtbl[n] = entry & ~RTE_REMOTE_IRR
        self._service()

    def _service(self) -> None:
        """Send every unmasked request: latched edges, and level lines not already in service."""
        for n in range(NUM_PINS):
            bit = 1 << n
            entry = self.redtbl[n]
            if entry & RTE_MASKED:
                continue
            if entry & RTE_LEVEL:
                if not self.lines & bit or entry & RTE_REMOTE_IRR:
                    continue
                self.redtbl[n] = entry | RTE_REMOTE_IRR
            else:
                if not self.irr & bit:
                    continue
                self.irr &= ~bit
            self._deliver(n, entry)

    def _deliver(self, pin: int, entry: int) -> None:
        msg = MsiMessage(dest=(entry >> RTE_DEST_SHIFT) & 0xFF, logical=bool(entry & RTE_DEST_LOGICAL),
                         vector=entry & RTE_VECTOR, delivery_mode=(entry & RTE_DELIVERY_MODE) >> 8,
                         level_triggered=bool(entry & RTE_LEVEL))
        if EV_DELIVER.enabled:
            EV_DELIVER.emit(pin=pin, vector=msg.vector, dest=msg.dest)
        self._send(msg)


_REGS = [
    Reg(0x00, 4, "IOREGSEL", "regsel", IoApic._write_regsel, partial_write=True),
    Reg(0x10, 4, "IOWIN", IoApic._read_window, IoApic._write_window),
    Reg(0x40, 4, "EOI", lambda a: 0, IoApic._write_eoi),
]
