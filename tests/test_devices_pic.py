"""Cascaded 8259A pair and the ELCR."""

import io
import sys

import pytest

from machine import trace
from machine.devices.pic import DualPic


def init(pic, master_base=0x08, slave_base=0x70, icw4=0x01):
    """SeaBIOS's pic_setup sequence."""
    for ops, base, icw3 in ((pic.master_ops, master_base, 0x04), (pic.slave_ops, slave_base, 0x02)):
        ops.write(0, 1, 0x11)
        ops.write(1, 1, base)
        ops.write(1, 1, icw3)
        ops.write(1, 1, icw4)
    pic.master_ops.write(1, 1, 0xFB)
    pic.slave_ops.write(1, 1, 0xFF)


@pytest.fixture
def pic():
    p = DualPic()
    init(p)
    return p


def eoi(pic, slave=False):
    if slave:
        pic.slave_ops.write(0, 1, 0x20)
    pic.master_ops.write(0, 1, 0x20)


def test_init_sets_vector_base_and_masks(pic):
    assert pic.master_ops.read(1, 1) == 0xFB and pic.slave_ops.read(1, 1) == 0xFF
    pic.irq_line(0).raise_()
    assert not pic.pending()                       # masked by 0xFB
    pic.master_ops.write(1, 1, 0xFA)
    assert pic.pending()
    assert pic.acknowledge() == 0x08
    assert not pic.pending()


def test_edge_request_latches_until_acknowledged(pic):
    pic.master_ops.write(1, 1, 0x00)
    line = pic.irq_line(1)
    line.pulse()
    assert pic.master_ops.read(0, 1) == 0x02       # IRR (default read register)
    assert pic.acknowledge() == 0x09
    pic.master_ops.write(0, 1, 0x0B)               # OCW3: read ISR
    assert pic.master_ops.read(0, 1) == 0x02
    line.pulse()                                   # a new edge while in service: held in IRR
    assert not pic.pending()
    eoi(pic)
    assert pic.master_ops.read(0, 1) == 0x00
    assert pic.pending() and pic.acknowledge() == 0x09


def test_priority_and_nesting(pic):
    pic.master_ops.write(1, 1, 0x00)
    pic.irq_line(4).pulse()
    pic.irq_line(3).pulse()
    assert pic.acknowledge() == 0x0B               # IRQ3 beats IRQ4
    assert not pic.pending()                       # IRQ4 is below the one in service
    pic.irq_line(0).pulse()
    assert pic.pending() and pic.acknowledge() == 0x08   # IRQ0 nests above IRQ3
    eoi(pic)                                       # non-specific: clears IRQ0
    eoi(pic)                                       # then IRQ3
    assert pic.acknowledge() == 0x0C


def test_specific_eoi_and_rotation(pic):
    pic.master_ops.write(1, 1, 0x00)
    pic.irq_line(5).pulse()
    assert pic.acknowledge() == 0x0D
    pic.master_ops.write(0, 1, 0x60 | 5)           # specific EOI for IR5
    pic.master_ops.write(0, 1, 0x0B)
    assert pic.master_ops.read(0, 1) == 0
    pic.master_ops.write(0, 1, 0xC0 | 3)           # set priority: IR3 lowest, IR4 highest
    pic.irq_line(3).pulse()
    pic.irq_line(4).pulse()
    assert pic.acknowledge() == 0x0C
    pic.master_ops.write(0, 1, 0xA0)               # rotate on non-specific EOI: IR4 becomes lowest
    pic.irq_line(4).pulse()
    assert pic.acknowledge() == 0x0B               # now IR3 beats IR4


def test_cascade_through_irq2(pic):
    pic.slave_ops.write(1, 1, 0x00)
    pic.irq_line(14).pulse()
    assert pic.pending()
    assert pic.acknowledge() == 0x76
    pic.master_ops.write(0, 1, 0x0B)
    pic.slave_ops.write(0, 1, 0x0B)
    assert pic.master_ops.read(0, 1) == 0x04 and pic.slave_ops.read(0, 1) == 0x40
    pic.irq_line(8).pulse()                        # higher on the slave, but master IR2 is in service
    assert not pic.pending()
    eoi(pic, slave=True)
    assert pic.pending() and pic.acknowledge() == 0x70


def test_level_mode_follows_the_line(pic):
    pic.elcr_ops.write(1, 1, 0x0C)                 # IRQ10/11 level (SeaBIOS's PCI setup)
    assert pic.elcr_ops.read(0, 2) == 0x0C00
    pic.slave_ops.write(1, 1, 0x00)
    line = pic.irq_line(10)
    line.raise_()
    assert pic.acknowledge() == 0x72
    eoi(pic, slave=True)
    assert pic.pending()                           # still asserted: requests again
    line.lower()
    assert not pic.pending()
    line.raise_()
    line.lower()                                   # gone before INTA: no request
    assert not pic.pending()


def test_elcr_fixed_edge_bits():
    pic = DualPic()
    pic.elcr_ops.write(0, 2, 0xFFFF)
    assert pic.elcr_ops.read(0, 1) == 0xF8 and pic.elcr_ops.read(1, 1) == 0xDE


def test_spurious_irq7_and_irq15(pic):
    pic.elcr_ops.write(0, 1, 0x20)                 # IRQ5 level
    pic.elcr_ops.write(1, 1, 0x08)                 # IRQ11 level
    pic.master_ops.write(1, 1, 0x00)
    pic.slave_ops.write(1, 1, 0x00)
    pic.irq_line(5).raise_()
    assert pic.pending()
    pic.irq_line(5).lower()                        # withdrawn between INTR and INTA
    assert pic.acknowledge() == 0x0F
    pic.master_ops.write(0, 1, 0x0B)
    assert pic.master_ops.read(0, 1) == 0          # spurious: nothing in service
    pic.irq_line(11).raise_()
    assert pic.pending()
    pic.irq_line(11).lower()                       # slave request gone: the master's IR2 goes too
    assert not pic.pending() and pic.acknowledge() == 0x0F
    # Withdrawn between the master's and the slave's INTA pulse (only reachable by poking
    # the master's latch here): the slave answers IR15 and the master's IR2 is in service.
    pic.master.irr |= 0x04
    assert pic.acknowledge() == 0x77
    pic.slave_ops.write(0, 1, 0x0B)
    assert pic.slave_ops.read(0, 1) == 0 and pic.master_ops.read(0, 1) == 0x04


def test_auto_eoi(pic):
    init(pic, icw4=0x03)
    pic.master_ops.write(1, 1, 0x00)
    pic.irq_line(3).pulse()
    assert pic.acknowledge() == 0x0B
    pic.master_ops.write(0, 1, 0x0B)
    assert pic.master_ops.read(0, 1) == 0


def test_poll_mode(pic):
    pic.master_ops.write(1, 1, 0x00)
    pic.master_ops.write(0, 1, 0x0C)               # OCW3 poll
    assert pic.master_ops.read(0, 1) == 0x00
    pic.irq_line(6).pulse()
    pic.master_ops.write(0, 1, 0x0C)
    assert pic.master_ops.read(0, 1) == 0x86
    pic.master_ops.write(0, 1, 0x0B)
    assert pic.master_ops.read(0, 1) == 0x40


def test_special_mask_mode(pic):
    pic.master_ops.write(1, 1, 0x00)
    pic.irq_line(3).pulse()
    assert pic.acknowledge() == 0x0B
    pic.master_ops.write(1, 1, 0x08)               # mask IR3 (in service) ...
    pic.master_ops.write(0, 1, 0x68)               # ... and enter special mask mode
    pic.irq_line(5).pulse()
    assert pic.acknowledge() == 0x0D               # lower priority gets through


def test_reinit_clears_state_and_trace(pic):
    pic.master_ops.write(1, 1, 0x00)
    pic.irq_line(1).pulse()
    init(pic, master_base=0x20)
    assert pic.master_ops.read(0, 1) == 0 and not pic.pending()
    seen = []
    listener = lambda name, fields: seen.append((name, fields))  # noqa: E731
    trace.add_listener(listener)
    trace.set_output(io.StringIO())
    try:
        trace.enable("pic_interrupt")
        pic.master_ops.write(1, 1, 0x00)
        pic.irq_line(0).pulse()
        assert pic.acknowledge() == 0x20
    finally:
        trace.disable_all()
        trace.set_output(sys.stderr)
        trace.remove_listener(listener)
    assert seen == [("pic_interrupt", {"irq": 0, "intno": 0x20})]


def test_reset_and_bad_access():
    pic = DualPic()
    init(pic)
    pic.elcr_ops.write(1, 1, 0x0C)
    pic.reset()
    assert pic.elcr_ops.read(1, 1) == 0 and pic.master_ops.read(1, 1) == 0xFF
    pic.irq_line(3).pulse()
    assert not pic.pending()                       # uninitialised: everything masked
    assert pic.master_ops.read(0, 4) & 0xFFFF0000 == 0xFFFF0000
    with pytest.raises(ValueError):
        pic.irq_line(16)
