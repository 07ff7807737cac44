"""IOAPIC: indirect registers, redirection entries, edge/level delivery with remote IRR and EOI,
and the board wiring (ISA IRQs and PCI INTx reach its pins; its messages reach the LAPIC)."""

import pytest

from asm import rom_image
from machine.clock import VirtualClock
from machine.config import CharDev, MachineConfig
from machine.devices.ioapic import IoApic
from machine.devices.lapic import LocalApic
from machine.devices.msi import MsiSink
from machine.pc import Machine

SEL, WIN, EOI_REG = 0x00, 0x10, 0x40
LAPIC_EOI, LAPIC_SVR, LAPIC_TMR0 = 0xB0, 0xF0, 0x180


def rd(io, index):
    io.write(SEL, 4, index)
    return io.read(WIN, 4)


def wr(io, index, value):
    io.write(SEL, 4, index)
    io.write(WIN, 4, value)


def program(io, pin, low, dest=0):
    wr(io, 0x11 + 2 * pin, dest << 24)
    wr(io, 0x10 + 2 * pin, low)


@pytest.fixture
def sent():
    messages = []
    io = IoApic(messages.append)
    io.sent = messages
    return io


def test_id_version_and_reset_state(sent):
    io = sent
    assert rd(io, 0x01) == 0x00170020
    assert rd(io, 0x00) == 0
    wr(io, 0x00, 0x0A000000)
    assert rd(io, 0x00) == 0x0A000000 and rd(io, 0x02) == 0x0A000000
    assert all(rd(io, 0x10 + 2 * n) == 0x10000 for n in range(24))
    assert io.read(SEL, 4) == 0x10 + 2 * 23         # IOREGSEL reads back
    wr(io, 0x01, 0)                                     # read-only
    assert rd(io, 0x01) == 0x00170020
    io.reset()
    assert rd(io, 0x00) == 0


def test_redirection_entry_keeps_writable_bits_only(sent):
    io = sent
    wr(io, 0x10, 0xFFFFFFFF)
    assert rd(io, 0x10) == 0x1AFFF               # no delivery status, no remote IRR
    wr(io, 0x11, 0xFFFFFFFF)
    assert rd(io, 0x11) == 0xFF000000
    assert rd(io, 0x10 + 2 * 24) == 0            # past the last pin


def test_edge_pin_delivers_once_per_rising_edge(sent):
    io = sent
    program(io, 4, 0x34, dest=0)
    io.pin(4).set(True)
    io.pin(4).set(True)
    io.pin(4).set(False)
    io.pin(4).set(True)
    assert [(m.vector, m.level_triggered, m.dest) for m in io.sent] == [(0x34, False, 0)] * 2


def test_masked_edge_is_latched_and_delivered_on_unmask(sent):
    io = sent
    program(io, 3, 0x10033)
    io.pin(3).pulse()
    assert io.sent == []
    program(io, 3, 0x33)
    assert [m.vector for m in io.sent] == [0x33]
    program(io, 3, 0x33)
    assert len(io.sent) == 1


def test_level_pin_waits_for_eoi_and_reasserts(sent):
    io = sent
    program(io, 10, 0xA039, dest=0)              # level, active low, vector 0x39
    io.pin(10).set(True)
    assert [(m.vector, m.level_triggered) for m in io.sent] == [(0x39, True)]
    assert rd(io, 0x10 + 20) & 0x4000            # remote IRR
    io.eoi(0x38)                                 # another vector: nothing
    assert len(io.sent) == 1
    io.eoi(0x39)                                 # line still high: sent again
    assert len(io.sent) == 2
    io.pin(10).set(False)
    io.write(EOI_REG, 4, 0x39)                   # the EOI register does the same
    assert not rd(io, 0x10 + 20) & 0x4000
    assert len(io.sent) == 2


def test_switching_to_edge_clears_remote_irr(sent):
    io = sent
    program(io, 9, 0x8041)
    io.pin(9).set(True)
    assert rd(io, 0x10 + 18) & 0x4000
    program(io, 9, 0x0041 | 0x10000)
    assert not rd(io, 0x10 + 18) & 0x4000


def test_unmasking_a_high_level_line_delivers(sent):
    io = sent
    program(io, 11, 0x18042)
    io.pin(11).set(True)
    assert io.sent == []
    program(io, 11, 0x8042)
    assert [m.vector for m in io.sent] == [0x42]


def test_logical_destination_and_delivery_mode_are_sent(sent):
    io = sent
    program(io, 5, 0x0950, dest=0x03)            # lowest priority, logical
    io.pin(5).pulse()
    m = io.sent[0]
    assert (m.dest, m.logical, m.delivery_mode) == (3, True, 1)


def test_level_interrupt_through_lapic_and_eoi_broadcast():
    apic = LocalApic(VirtualClock())
    apic.write(LAPIC_SVR, 4, 0x1FF)
    io = IoApic(MsiSink(apic).deliver)
    apic.eoi_listeners.append(io.eoi)
    program(io, 9, 0x8061)
    io.pin(9).set(True)
    assert apic.acknowledge() == 0x61
    assert apic.read(LAPIC_TMR0 + 0x30, 4) & 2   # vector 0x61 in TMR
    apic.write(LAPIC_EOI, 4, 0)                  # broadcast: still high, so again
    assert apic.acknowledge() == 0x61
    io.pin(9).set(False)
    apic.write(LAPIC_EOI, 4, 0)
    assert not apic.pending()
    assert not rd(io, 0x10 + 18) & 0x4000


# -- on the board -------------------------------------------------------------------------------

@pytest.fixture
def board(tmp_path):
    rom = tmp_path / "rom.bin"
    rom.write_bytes(rom_image("reset:\n    cli\n    hlt\n"))
    m = Machine(MachineConfig(bios=rom, serial=CharDev("null")))
    m.lapic.write(LAPIC_SVR, 4, 0x1FF)
    yield m
    m.close()


def test_board_maps_the_ioapic(board):
    assert board.memory_map.read(0xFEC00000 + SEL, 4) == 0     # through the physical address space
    board.memory_map.write(0xFEC00000 + SEL, 4, 1)
    assert board.memory_map.read(0xFEC00000 + WIN, 4) == 0x00170020


def test_isa_irqs_reach_pic_and_ioapic_irq0_on_pin_2(board):
    io = board.ioapic
    program(io, 2, 0x30)
    program(io, 4, 0x34)
    board.isa_irqs[0].input().set(True)
    board.isa_irqs[4].input().set(True)
    assert board.lapic.acknowledge() == 0x34
    board.lapic.write(LAPIC_EOI, 4, 0)
    assert board.lapic.acknowledge() == 0x30
    assert board.pic.master.lines & 0b10001 == 0b10001         # the 8259s see them too


def test_pci_intx_through_pirq_reaches_the_ioapic_pin(board):
    io = board.ioapic
    piix3 = board.devices["piix3"]
    program(io, 11, 0x8049)
    piix3.config_write(0x60, 4, 0x0B0B0A0A)                     # PIRQA-D -> 10, 10, 11, 11
    piix3.route_intx(3 << 3, 1, True)                          # slot 3 INTA -> PIRQC -> IRQ 11
    assert board.lapic.acknowledge() == 0x49
    piix3.route_intx(3 << 3, 1, False)
    board.lapic.write(LAPIC_EOI, 4, 0)
    assert not rd(io, 0x10 + 22) & 0x4000 and not board.lapic.pending()


PIT_THROUGH_IOAPIC_ROM = """
reset:
    xor %ax, %ax
    mov %ax, %ds
    movw $handler, 0x30 * 4          # IVT entry of vector 0x30: F000:handler
    movw $0xf000, 0x30 * 4 + 2
    mov %ax, %ss
    mov $0x7000, %sp
    mov $0x34, %al                   # PIT channel 0, mode 2, lobyte/hibyte
    out %al, $0x43
    mov $0x00, %al
    out %al, $0x40
    mov $0x10, %al                   # 4096 ticks: about 3.4 ms
    out %al, $0x40
    sti
idle:
    hlt
    jmp idle
handler:
    mov $0x30, %al
    out %al, $0xf4                   # isa-debug-exit: (0x30 << 1) | 1
"""


def test_pit_interrupt_reaches_the_cpu_through_ioapic_and_lapic(tmp_path):
    from asm import rom_machine
    m = rom_machine(tmp_path, PIT_THROUGH_IOAPIC_ROM)
    try:
        m.lapic.write(LAPIC_SVR, 4, 0x1FF)
        m.lapic.write(0x350, 4, 0x10700)             # LINT0 masked: the 8259s do not reach the CPU
        m.memory_map.write(IoApic.BASE + SEL, 4, 0x10 + 2 * 2)
        m.memory_map.write(IoApic.BASE + WIN, 4, 0x30)   # pin 2 (IRQ0), edge, vector 0x30
        assert m.run(max_instructions=5_000_000) == (0x30 << 1) | 1
    finally:
        m.close()


def test_isa_irq_is_a_wired_or_of_its_sources(board):
    """The SCI and a PIRQ steered to the same IRQ 9: one going low keeps the line up."""
    io = board.ioapic
    piix3 = board.devices["piix3"]
    pm = board.devices["acpi-pm"]
    piix3.config_write(0x60, 1, 9)                              # PIRQA -> IRQ 9
    piix3.route_intx(1 << 3, 1, True)                          # slot 1 INTA -> PIRQA
    pm.sts = 0x100
    pm.write(2, 2, 0x100)                                      # SCI up too
    piix3.route_intx(1 << 3, 1, False)
    assert io.lines & (1 << 9) and board.pic.slave.lines & 2
    pm.write(0, 2, 0x100)                                      # the SCI's status cleared
    assert not io.lines & (1 << 9) and not board.pic.slave.lines & 2
