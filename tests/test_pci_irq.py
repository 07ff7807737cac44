"""INTx through the PIIX3 PIRQ routers to PIC inputs: board wiring, sharing, re-routing."""

import pytest

from machine.irq import IrqLine
from machine.memory import IoSpace, MemoryMap
from machine.pci import PciBus, PciConfigIo, PciDevice, Piix3
from machine.pci.piix3 import pirq_index


class Board:
    def __init__(self):
        self.io = IoSpace()
        self.bus = PciBus(MemoryMap(), self.io)
        self.io.add("pci-conf", PciConfigIo.BASE, PciConfigIo.SIZE, PciConfigIo(self.bus))
        self.edges = []
        self.pic = [IrqLine(f"irq{i}", lambda level, i=i: self.edges.append((i, level))) for i in range(16)]
        self.isa = Piix3(lambda n: self.pic[n])
        self.bus.plug(self.isa, 1)

    def device(self, slot, pin=1, fn=0):
        dev = PciDevice(f"dev{slot}.{fn}", 0x1AF4, 0x1000 + slot, 0xFF0000, interrupt_pin=pin)
        self.bus.plug(dev, slot, fn)
        return dev

    def wr(self, slot, reg, size, value):
        self.io.write(0xCF8, 4, 0x80000000 | slot << 11 | (reg & 0xFC))
        self.io.write(0xCFC + (reg & 3), size, value)

    def route(self, a, b_, c, d):
        self.wr(1, 0x60, 4, a | b_ << 8 | c << 16 | d << 24)

    def levels(self):
        return {i for i, line in enumerate(self.pic) if line.level}


@pytest.fixture
def b():
    return Board()


def test_board_wiring_formula():
    # (pin - 1 + slot - 1) & 3: slot 1 INTA is PIRQA, each slot shifts by one.
    assert pirq_index(1, 1) == 0
    assert pirq_index(2, 1) == 1 and pirq_index(2, 2) == 2 and pirq_index(2, 4) == 0
    assert pirq_index(3, 1) == 2 and pirq_index(4, 1) == 3 and pirq_index(5, 1) == 0
    assert pirq_index(0, 1) == 3


def test_no_delivery_while_routing_disabled(b):
    dev = b.device(2)
    dev.set_irq(True)
    assert b.levels() == set()
    assert b.isa.pirq_level(1)
    b.route(0x0A, 0x0A, 0x0B, 0x0B)               # enabling the route delivers the held level
    assert b.levels() == {10}


def test_seabios_routing_virtio_slot2_gets_irq10(b):
    b.route(0x0A, 0x0A, 0x0B, 0x0B)
    dev = b.device(2)
    dev.set_irq(True)
    assert b.levels() == {10}
    dev.set_irq(False)
    assert b.levels() == set()
    assert b.edges == [(10, True), (10, False)]


def test_sharing_one_pirq_is_wired_or(b):
    b.route(0x0A, 0x0B, 0x0C, 0x0E)
    d2 = b.device(2)                               # INTA -> PIRQB
    d6 = b.device(6)                               # INTA -> PIRQB as well ((6-1+0)&3 = 1)
    d2.set_irq(True)
    d6.set_irq(True)
    assert b.levels() == {11}
    d2.set_irq(False)
    assert b.levels() == {11}                      # d6 still holds it
    d6.set_irq(False)
    assert b.levels() == set()
    assert b.edges == [(11, True), (11, False)]


def test_two_pirqs_on_one_isa_irq_are_wired_or(b):
    b.route(0x0A, 0x0A, 0x0B, 0x0B)
    d1 = b.device(5)                               # PIRQA
    d2 = b.device(2)                               # PIRQB
    d1.set_irq(True)
    d2.set_irq(True)
    d1.set_irq(False)
    assert b.levels() == {10}
    d2.set_irq(False)
    assert b.levels() == set()


def test_multiple_pins_and_functions(b):
    b.route(0x03, 0x04, 0x05, 0x06)
    f0 = b.device(3, pin=1)                        # PIRQC
    f1 = b.device(3, pin=2, fn=1)                  # PIRQD
    f0.set_irq(True)
    f1.set_irq(True)
    assert b.levels() == {5, 6}


def test_live_rerouting(b):
    b.route(0x0A, 0x0A, 0x0B, 0x0B)
    dev = b.device(2)                              # PIRQB
    dev.set_irq(True)
    assert b.levels() == {10}
    b.wr(1, 0x61, 1, 0x0E)                         # PIRQB -> IRQ 14 while asserted
    assert b.levels() == {14}
    b.wr(1, 0x61, 1, 0x8E)                         # disable: the line drops
    assert b.levels() == set()
    b.wr(1, 0x61, 1, 0x05)
    assert b.levels() == {5}
    dev.set_irq(False)
    assert b.levels() == set()


def test_rerouting_keeps_other_pirq_on_shared_irq(b):
    b.route(0x0A, 0x0A, 0x80, 0x80)
    d1 = b.device(5)                               # PIRQA
    d2 = b.device(2)                               # PIRQB
    d1.set_irq(True)
    d2.set_irq(True)
    b.wr(1, 0x61, 1, 0x0B)                         # move PIRQB away from 10
    assert b.levels() == {10, 11}


def test_reserved_irq_numbers_are_not_delivered(b):
    dev = b.device(2)
    dev.set_irq(True)
    for irq in (0, 1, 2, 8, 13):
        b.wr(1, 0x61, 1, irq)
        assert b.levels() == set()
    b.wr(1, 0x61, 1, 9)
    assert b.levels() == {9}


def test_untouched_irqs_are_left_alone(b):
    b.pic[10].set(True)                            # some other source holds IRQ 10
    b.route(0x0A, 0x0A, 0x0B, 0x0B)
    b.wr(1, 0x60, 1, 0x80)                         # rerouting PIRQA away never lowered it
    assert b.pic[10].level


def test_intx_disable_through_config(b):
    b.route(0x0A, 0x0A, 0x0B, 0x0B)
    dev = b.device(2)
    dev.set_irq(True)
    b.wr(2, 0x04, 2, 0x0400)
    assert b.levels() == set()
    b.wr(2, 0x04, 2, 0x0000)
    assert b.levels() == {10}


def test_piix3_reset_disables_routing(b):
    b.route(0x0A, 0x0A, 0x0B, 0x0B)
    dev = b.device(2)
    dev.set_irq(True)
    b.isa.reset()
    assert b.levels() == set()
    b.route(0x0A, 0x0A, 0x0B, 0x0B)
    assert b.levels() == {10}


def test_router_registered_after_devices():
    io = IoSpace()
    bus = PciBus(MemoryMap(), io)
    dev = PciDevice("early", 1, 2, 0, interrupt_pin=1)
    bus.plug(dev, 2)
    dev.set_irq(True)
    pic = [IrqLine() for _ in range(16)]
    isa = Piix3(lambda n: pic[n])
    bus.plug(isa, 1)
    isa.config_write(0x61, 1, 0x0A)
    assert pic[10].level


def test_irq_lines_deliver_exact_levels_and_late_connections_see_the_current_one():
    from machine.irq import SharedLine
    got = []
    line = IrqLine("l", got.append)
    line.pulse()
    line.raise_()
    line.raise_()                                  # no change, nothing sent
    line.lower()
    assert got == [True, False, True, False] and all(type(v) is bool for v in got)
    assert line.level is False

    late = IrqLine("late")
    late.raise_()
    seen = []
    late.connect(seen.append)                      # a raised line tells its new sink at once
    IrqLine("quiet").connect(seen.append)          # a low one does not
    assert seen == [True]
    late.lower()
    late.raise_()                                  # and the new sink hears what follows
    assert seen == [True, False, True]
    seen[:] = [True]
    late.connect(None)
    late.lower()                                   # no sink: nothing to tell
    assert seen == [True] and late.level is False

    shared = SharedLine()
    a = shared.input("a")
    a.raise_()
    wired = []
    shared.connect(wired.append)
    shared.connect(None)
    a.lower()
    assert wired == [True] and shared.level is False
    shared.connect(wired.append)
    assert wired == [True, False] and type(wired[-1]) is bool

    b, c = shared.input("b"), shared.input("c")   # wired-OR: only the first raise and last lower count
    b.raise_()
    c.raise_()
    b.lower()
    c.lower()
    assert wired == [True, False, True, False] and shared.input().name == "shared"


def test_a_new_line_is_low_and_lowering_it_calls_nobody():
    seen = []
    line = IrqLine("l", seen.append)
    line.lower()
    line.pulse()
    assert seen == [True, False]                    # only the pulse's two edges


def test_a_shared_line_resyncs_from_its_inputs_without_calling_the_sink():
    from machine.irq import SharedLine
    seen = []
    shared = SharedLine(seen.append)
    a, b = shared.input("a"), shared.input("b")
    a.raise_()
    assert seen == [True]
    shared._asserted = set()                        # as a snapshot restore leaves it
    shared.resync()
    assert shared.level and seen == [True]
    a.lower()
    assert seen == [True, False] and not shared.level
    b.level = True                                  # restored level, then resync
    shared.resync()
    assert shared.level and seen == [True, False]
