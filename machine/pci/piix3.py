"""PIIX3 (82371SB) function 0, the PCI-to-ISA bridge, and its PIRQ interrupt routing.

PCI INTx pins are not wired to the PIC directly. The board wires every slot's INTA#-INTD# onto
four PIRQ lines, rotating by slot so that devices spread over them; the PIIX3's PIRQRC[A-D]
registers (config 0x60-0x63) then steer each PIRQ to an ISA IRQ of the 8259:

    bit 7     IRQROUTEN: 1 = routing disabled (reset value 0x80)
    bits 3:0  IRQ number; 3-7, 9-12, 14 and 15 are legal, 0-2, 8 and 13 are reserved

Board wiring (the one QEMU's i440FX `pc` machine uses, which SeaBIOS's $PIR / ACPI _PRT assume):

    PIRQ index = (slot + pin - 2) & 3         pin 1..4 = INTA..INTD

so slot 1 INTA -> PIRQA, slot 2 INTA -> PIRQB, slot 2 INTB -> PIRQC, ...

Level-triggered INTx lines are wired-OR: every (device, pin) on a PIRQ is one input of a
SharedLine, and several PIRQs steered to the same ISA IRQ are ORed again before the PIC sees it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from .. import trace, vmstate
from ..irq import IrqLine, SharedLine
from .device import QEMU_SUBSYSTEM_ID, QEMU_SUBSYSTEM_VENDOR_ID, PciDevice

if TYPE_CHECKING:
    from ..memory import IoSpace, MemoryMap
    from .bus import PciBus

PIRQRC = 0x60                 # PIRQRC[A..D] at 0x60..0x63
NUM_PIRQS = 4
PIRQ_DISABLE = 0x80
PIRQ_WMASK = 0x8F
PIRQ_IRQ_MASK = 0x0F
LEGAL_ISA_IRQS = frozenset({3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15})


def pirq_index(slot: int, pin: int) -> int:
    """Which PIRQ line slot `slot`'s INTx pin `pin` (1 = INTA) is wired to on the board."""
    return (slot + pin - 2) & 3


class Piix3(PciDevice):
    """PIIX3 function 00:01.0 (8086:7000), a multifunction PCI-to-ISA bridge. It becomes the
    bus's INTx router when plugged. `pic_irq(n)` returns the PIC's input line n."""

    def __init__(self, pic_irq: Callable[[int], IrqLine]):
        super().__init__("piix3", 0x8086, 0x7000, 0x060100, header_type=0x80,
                         subsystem_vendor_id=QEMU_SUBSYSTEM_VENDOR_ID, subsystem_id=QEMU_SUBSYSTEM_ID)
        self._pic_irq = pic_irq
        for i in range(NUM_PIRQS):
            self.set_writable(PIRQRC + i, 1, PIRQ_WMASK, reset=PIRQ_DISABLE)
        self._pirqs = [SharedLine(lambda level, i=i: self._pirq_changed(i)) for i in range(NUM_PIRQS)]
        self._inputs: dict[int, IrqLine] = {}              # (devfn << 3 | pin) -> input of a PIRQ
        self._routes: list[int | None] = [None] * NUM_PIRQS  # ISA IRQ each PIRQ goes to now
        self._raised: set[int] = set()                     # ISA IRQs this bridge holds high

    # The PIRQ routing in force, the ISA IRQs the bridge drives, and each INTx input's level.
    VMSTATE = vmstate.Description("piix3", 1, PciDevice.VMSTATE_FIELDS + (
        vmstate.Field("_routes", vmstate.List(vmstate.Optional(vmstate.U8), NUM_PIRQS, NUM_PIRQS)),
        vmstate.Field("_raised", vmstate.List(vmstate.U8, 16)),
        vmstate.Field("intx_inputs", vmstate.List(vmstate.Tuple(vmstate.U16, vmstate.BOOL), 256 * 8))))

    @property
    def intx_inputs(self) -> tuple:
        return tuple(sorted((key, line.level) for key, line in self._inputs.items()))

    @intx_inputs.setter
    def intx_inputs(self, items) -> None:
        for key, level in items:
            line = self._inputs.get(key)
            if line is None:
                idx = pirq_index((key >> 3) >> 3, key & 7)
                line = self._pirqs[idx].input(f"PIRQ{'ABCD'[idx]}:{key >> 6:02x}.{(key >> 3) & 7}")
                self._inputs[key] = line
            line.level = level
        present = {key for key, _ in items}
        for key, line in self._inputs.items():
            if key not in present:
                line.level = False
        for pirq in self._pirqs:
            pirq.resync()

    def post_load(self) -> None:
        super().post_load()
        # The bridge's own outputs: high exactly on the ISA IRQs it raised (their wired-ORs
        # are recomputed by the board).
        for irq in range(16):
            self._pic_irq(irq).level = irq in self._raised

    def vmstate_check(self, values: dict) -> None:
        for key, _ in values["intx_inputs"]:
            if not 1 <= key & 7 <= 4:
                raise vmstate.VMStateError(f"piix3: INTx input {key:#x} has no pin A-D")
        for irq in values["_routes"]:
            if irq is not None and irq not in LEGAL_ISA_IRQS:
                raise vmstate.VMStateError(f"piix3: a PIRQ routed to IRQ {irq}")
        if any(irq > 15 for irq in values["_raised"]):
            raise vmstate.VMStateError("piix3: raised IRQ out of range")

    def attach(self, bus: PciBus, devfn: int, io: IoSpace, memory_map: MemoryMap,
               intx: IrqLine | None) -> None:
        super().attach(bus, devfn, io, memory_map, intx)
        bus.set_intx_router(self.route_intx)

    # -- INTx in --------------------------------------------------------------------------------
    def route_intx(self, devfn: int, pin: int, level: bool) -> None:
        """The bus's INTx router: `pin` (1..4) of function `devfn` changed level."""
        key = (devfn << 3) | pin
        line = self._inputs.get(key)
        if line is None:
            idx = pirq_index(devfn >> 3, pin)
            line = self._pirqs[idx].input(f"PIRQ{'ABCD'[idx]}:{devfn >> 3:02x}.{devfn & 7}")
            self._inputs[key] = line
        line.set(level)

    def pirq_level(self, index: int) -> bool:
        return self._pirqs[index].level

    # -- routing --------------------------------------------------------------------------------
    def _decode_route(self, index: int) -> int | None:
        value = self.config[PIRQRC + index]
        if value & PIRQ_DISABLE:
            return None
        irq = value & PIRQ_IRQ_MASK
        if irq not in LEGAL_ISA_IRQS:
            trace.guest_error(f"piix3: PIRQ{'ABCD'[index]} routed to reserved IRQ {irq}: not delivered")
            return None
        return irq

    def _pirq_changed(self, index: int) -> None:
        irq = self._routes[index]
        if irq is not None:
            self._update_isa_irq(irq)

    def _update_isa_irq(self, irq: int) -> None:
        level = any(self._routes[k] == irq and self._pirqs[k].level for k in range(NUM_PIRQS))
        if level:
            self._raised.add(irq)
            self._pic_irq(irq).set(True)
        elif irq in self._raised:
            # Only lower lines this bridge raised: an IRQ it never drove belongs to someone else.
            self._raised.discard(irq)
            self._pic_irq(irq).set(False)

    def _reroute(self) -> None:
        affected: set[int] = set()
        for k in range(NUM_PIRQS):
            new = self._decode_route(k)
            old = self._routes[k]
            if new != old:
                self._routes[k] = new
                affected.update(x for x in (old, new) if x is not None)
        for irq in sorted(affected):
            self._update_isa_irq(irq)

    # -- config space -----------------------------------------------------------------------------
    def config_write(self, offset: int, size: int, value: int) -> None:
        super().config_write(offset, size, value)
        if offset < PIRQRC + NUM_PIRQS and offset + size > PIRQRC:
            self._reroute()

    def reset(self) -> None:
        super().reset()
        self._reroute()
