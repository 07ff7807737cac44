"""Debugger services of the CPU layer: registers by name, virtual memory through the page
tables (refusing MMIO), stops requested from device callbacks, and fatal faults that must end
in a report rather than an exception."""

import pytest

from asm import PM32_PROLOGUE, PROGRAM_BASE, build_machine, result
from machine.cpu import MemoryAccessError

PAGING_4M = """
    PD_CLEAR
    movl $0x83, 0x50000             # virtual 0-4M -> physical 0-4M
    movl $0x00000083, 0x50000 + 4 * 0x300   # virtual 0xC0000000 -> physical 0
    PSE_PAGING_ON
"""


class Mmio:
    def __init__(self, on_write=None):
        self.writes = []
        self.on_write = on_write

    def read(self, offset, size):
        return 0x11223344 & ((1 << (8 * size)) - 1)

    def write(self, offset, size, value):
        self.writes.append((offset, size, value))
        if self.on_write:
            self.on_write()


def test_virtual_memory_through_page_tables(tmp_path):
    m = build_machine(tmp_path, "main:\n" + PAGING_4M + """
        movl $0xfeedface, 0xc0003000    # via the high mapping = physical 0x3000
    stop:
        hlt
    """, prologue=PM32_PROLOGUE)
    m.cpu.add_breakpoint(PROGRAM_BASE + m.cpu.read_virtual(PROGRAM_BASE, 0x200).rindex(b"\xf4"))
    m.run(100_000)
    assert m.stop_reason.kind == "breakpoint"
    assert m.cpu.mode == "protected" and m.cpu.paging
    assert m.cpu.translate(0xC0003000) == 0x3000
    assert m.cpu.translate(0x80000000) is None
    assert m.cpu.read_virtual(0xC0003000, 4) == bytes.fromhex("cefaedfe")
    m.cpu.write_virtual(0xC0003FFE, b"\x01\x02\x03\x04")      # crosses a page: fine, both RAM
    assert m.mem.read(0x3FFE, 4) == b"\x01\x02\x03\x04"
    with pytest.raises(MemoryAccessError):
        m.cpu.read_virtual(0x80000000, 4)


def test_debugger_never_touches_mmio(tmp_path):
    m = build_machine(tmp_path, "hlt\n")
    dev = Mmio()
    m.memory_map.add("dev", 0xFE000000, 0x1000, dev)
    with pytest.raises(MemoryAccessError):
        m.cpu.read_virtual(0xFE000000, 4)
    with pytest.raises(MemoryAccessError):
        m.cpu.write_virtual(0xFE000000, b"1234")
    assert dev.writes == []
    assert m.cpu.read_virtual(0xFFFFFFF0, 1) == b"\xea"       # the ROM is readable


def test_registers_by_name(tmp_path):
    m = build_machine(tmp_path, "hlt\n")
    m.cpu.write_register("eax", 0x12345678)
    m.cpu.write_register("rbx", 0x1_0000_0001)
    m.cpu.write_register("ds", 0x40)                           # real mode: base = 0x400
    regs = m.cpu.read_registers()
    assert regs["eax"] == regs["rax"] == 0x12345678
    assert regs["rbx"] == 0x1_0000_0001 and regs["ebx"] == 1
    assert regs["ds"] == 0x40 and m.cpu.segment("ds")[1] == 0x400
    with pytest.raises(KeyError):
        m.cpu.write_register("xyz", 1)


def test_stop_from_an_mmio_callback_does_not_replay(tmp_path):
    m = build_machine(tmp_path, """
    main:
        mov $5, %ecx
    1:  movl %ecx, 0xfe000000           # each write asks the machine to stop
        incl RESULTS                    # would count twice if the store replayed
        loop 1b
        EXIT 0
    """, prologue=PM32_PROLOGUE)
    m.cpu.set_dynamic_hooks(True)                              # exact stops
    dev = Mmio(on_write=lambda: m.request_stop("device"))
    m.memory_map.add("dev", 0xFE000000, 0x1000, dev)
    stops = 0
    while m.run(100_000) == 0 and m.stop_reason.kind == "interrupt":
        assert m.stop_reason.message == "device"
        stops += 1
        assert len(dev.writes) == stops and result(m, 0) == stops - 1
    assert m.stop_reason.kind == "exited"
    assert stops == 5 and [v for _, _, v in dev.writes] == [5, 4, 3, 2, 1]
    assert result(m, 0) == 5


def test_executing_unassigned_memory_is_a_fatal_report(tmp_path, capsys):
    m = build_machine(tmp_path, """
    main:
        mov $0xd0000000, %eax
        jmp *%eax
    """, prologue=PM32_PROLOGUE)
    assert m.run(100_000) == 2
    err = capsys.readouterr().err
    assert "fetched an instruction from unassigned physical memory" in err
    assert "protected mode, 32-bit code; CS:EIP = 0008:d0000000" in err
