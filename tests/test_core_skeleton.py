"""The shared building blocks every device stands on: RAM bounds, address spaces, registers, time."""

import pytest

from machine.clock import VirtualClock
from machine.irq import IrqLine, SharedLine
from machine.memory import GuestMemory, GuestMemoryError, IoSpace, MemoryMap, pc_ram_layout
from machine.regs import Reg, RegisterBank


def test_ram_layout_leaves_pc_holes():
    ranges = pc_ram_layout(128 << 20)
    assert [(r.gpa, r.end) for r in ranges] == [(0, 0xA0000), (0x100000, 128 << 20)]
    big = pc_ram_layout(4 << 30)
    assert big[1].end == 0xC0000000 and big[2].gpa == 1 << 32 and big[2].size == (4 << 30) - 0xC0000000


def test_guest_memory_checks_every_range():
    mem = GuestMemory(16 << 20)
    mem.write_u32(0x100000, 0x11223344)
    assert mem.read(0x100000, 4) == b"\x44\x33\x22\x11"
    for gpa, n in [(0x9FFFE, 4), (0xA0000, 1), (16 << 20, 1), ((16 << 20) - 2, 4), (-1, 1), (0, -1)]:
        with pytest.raises(GuestMemoryError):
            mem.view(gpa, n)
    seen = []
    mem.add_write_listener(lambda gpa, n: seen.append((gpa, n)))
    mem.write(0x2000, b"abc")
    assert seen == [(0x2000, 3)]


class Recorder:
    def __init__(self, value=0x1234):
        self.value, self.writes = value, []

    def read(self, off, size):
        return self.value

    def write(self, off, size, value):
        self.writes.append((off, size, value))


def test_io_space_unclaimed_reads_ones_and_ranges_restore():
    io = IoSpace()
    assert io.read(0x3F8, 1) == 0xFF and io.read(0x3F8, 4) == 0xFFFFFFFF
    low, high = Recorder(1), Recorder(2)
    a = io.add("a", 0x100, 0x10, low)
    b = io.add("b", 0x108, 0x10, high)
    assert io.read(0x104, 1) == 1 and io.read(0x10C, 1) == 2
    io.remove(b)
    assert io.read(0x10C, 1) == 1 and io.read(0x112, 1) == 0xFF
    io.write(0x101, 2, 0x1ABCD)
    assert low.writes == [(1, 2, 0xABCD)]
    io.remove(a)
    assert io.read(0x101, 1) == 0xFF


def test_memory_map_refuses_overlaps_until_they_clear():
    mem = GuestMemory(16 << 20)
    mm = MemoryMap(mem)
    over_ram = mm.add("over-ram", 0x200000, 0x1000, Recorder())
    assert not over_ram.active and mm.read(0x200000, 4) == 0xFFFFFFFF
    first = mm.add("first", 0xFE000000, 0x2000, Recorder(7))
    second = mm.add("second", 0xFE001000, 0x1000, Recorder(9))
    assert first.active and not second.active
    assert mm.read(0xFE001000, 4) == 7
    mm.remove(first)
    assert second.active and mm.read(0xFE001000, 4) == 9
    assert mm.read(0xFE000000, 2) == 0xFFFF


class Dev:
    def __init__(self):
        self.ctrl = 0x11223344
        self.log = []


def test_register_bank_dispatch():
    dev = Dev()
    bank = RegisterBank(dev, [
        Reg(0, 4, "ctrl", read="ctrl", write="ctrl", partial_write=True),
        Reg(4, 2, "ro", read=lambda d: 0xBEEF),
        Reg(6, 1, "cmd", write=lambda d, v: d.log.append(v)),
    ])
    assert bank.read(0, 4) == 0x11223344 and bank.read(1, 1) == 0x33 and bank.read(2, 2) == 0x1122
    bank.write(1, 1, 0xAA)
    assert dev.ctrl == 0x1122AA44
    bank.write(4, 2, 1)                  # read-only: ignored
    assert bank.read(4, 2) == 0xBEEF
    bank.write(6, 1, 5)
    assert dev.log == [5]
    assert bank.read(3, 2) == 0xEF11     # straddles two registers
    assert bank.read(0x40, 4) == 0       # no register: default


def test_clock_fires_timers_in_order_and_skips_cancelled():
    clk = VirtualClock()
    fired = []
    a = clk.timer(lambda: fired.append("a"))
    b = clk.timer(lambda: fired.append("b"))
    c = clk.timer(lambda: fired.append("c"))
    a.arm(300); b.arm(100); c.arm(200); c.cancel()
    assert clk.next_deadline() == 100
    clk.advance_to(250)
    assert fired == ["b"] and clk.now == 250
    a.arm(260)                           # re-arm replaces the old deadline
    clk.advance_to(1000)
    assert fired == ["b", "a"] and clk.next_deadline() is None


def test_shared_line_is_wired_or():
    seen = []
    shared = SharedLine(lambda lvl: seen.append(lvl))
    x, y = shared.input("x"), shared.input("y")
    x.raise_(); y.raise_(); x.lower()
    assert seen == [True] and shared.level
    y.lower()
    assert seen == [True, False]
    line = IrqLine("l")
    line.raise_()
    got = []
    line.connect(got.append)
    assert got == [True]


def test_clock_runs_each_timer_at_its_own_deadline():
    clk = VirtualClock()
    seen = []

    def tick():
        seen.append(clk.now)
        t.arm(clk.now + 100)             # periodic: re-arm from "now"

    t = clk.timer(tick)
    t.arm(100)
    clk.advance_to(450)
    assert seen == [100, 200, 300, 400] and clk.now == 450 and t.deadline == 500
