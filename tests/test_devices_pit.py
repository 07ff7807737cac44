"""8254 PIT counts, outputs and IRQ0 against virtual time, and port 0x61."""

import pytest

from machine.clock import VirtualClock
from machine.devices.pit import PIT_HZ, Pit, ticks_to_ns
from machine.irq import IrqLine

from clocktools import RiseRecorder, run_until

CTRL = 3


@pytest.fixture
def setup():
    clock = VirtualClock()
    edges = RiseRecorder(clock)
    irq = IrqLine("irq0", edges)
    pit = Pit(irq, clock)
    assert irq.level                                   # idle OUT is high
    edges.rises.clear()
    return pit, clock, irq, edges


def program(pit, ch, mode, count, rw=3):
    pit.write(CTRL, 1, (ch << 6) | (rw << 4) | (mode << 1))
    if rw in (1, 3):
        pit.write(ch, 1, count & 0xFF)
    if rw in (2, 3):
        pit.write(ch, 1, count >> 8)


def read_count(pit, ch):
    pit.write(CTRL, 1, ch << 6)                        # counter latch
    return pit.read(ch, 1) | pit.read(ch, 1) << 8


def at_ticks(clock, ticks):
    run_until(clock, ticks_to_ns(ticks))


def test_mode0_counts_down_and_raises_irq0_once(setup):
    pit, clock, irq, edges = setup
    program(pit, 0, 0, 1000)
    assert not irq.level
    at_ticks(clock, 400)
    assert read_count(pit, 0) == 600
    at_ticks(clock, 999)
    assert not irq.level
    at_ticks(clock, 1000)
    assert irq.level and edges.rises == [ticks_to_ns(1000)]
    at_ticks(clock, 1010)
    assert read_count(pit, 0) == 0xFFFF - 9            # wraps and keeps counting
    at_ticks(clock, 100000)
    assert len(edges.rises) == 1 and irq.level
    program(pit, 0, 0, 10)                             # a new control word drops OUT
    assert not irq.level


def test_mode2_rate_generator_period(setup):
    pit, clock, irq, edges = setup
    start = clock.now
    program(pit, 0, 2, 100)
    at_ticks(clock, 30)
    assert read_count(pit, 0) == 70
    at_ticks(clock, 1000)
    assert edges.rises == [ticks_to_ns(100 * k) for k in range(1, 11)]
    assert start == 0


def test_mode3_square_wave_and_irq_period(setup):
    pit, clock, irq, edges = setup
    program(pit, 0, 3, 0)                              # 65536: the BIOS's 18.2 Hz tick
    run_until(clock, 1_000_000_000)
    periods = [b - a for a, b in zip(edges.rises, edges.rises[1:])]
    assert len(edges.rises) == 18
    assert all(abs(p - 65536 * 1e9 / PIT_HZ) <= 1 for p in periods)
    program(pit, 2, 3, 10)
    pit.port61_ops.write(0, 1, 0x01)                   # gate on
    t0 = pit.now_ticks()
    at_ticks(clock, t0 + 2)
    assert read_count(pit, 2) == 6                     # mode 3 counts by two
    assert pit.port61_ops.read(0, 1) & 0x20            # first half: high
    at_ticks(clock, t0 + 6)
    assert not pit.port61_ops.read(0, 1) & 0x20        # second half: low


def test_latch_holds_value_and_readback(setup):
    pit, clock, *_ = setup
    program(pit, 0, 2, 5000)
    at_ticks(clock, 100)
    pit.write(CTRL, 1, 0x00)                           # latch
    at_ticks(clock, 200)
    assert pit.read(0, 1) | pit.read(0, 1) << 8 == 4900
    assert read_count(pit, 0) == 4800
    pit.write(CTRL, 1, 0xC2)                           # read-back count and status of ch0
    status = pit.read(0, 1)
    assert status == 0x80 | 0x30 | (2 << 1)            # OUT high, lo/hi, mode 2, count loaded
    assert pit.read(0, 1) | pit.read(0, 1) << 8 == 4800
    pit.write(CTRL, 1, 0xE2)                           # status only
    assert pit.read(0, 1) == status
    pit.write(CTRL, 1, 0x34)                           # new control word: null count until loaded
    pit.write(CTRL, 1, 0xE2)
    assert pit.read(0, 1) & 0x40


def test_byte_access_modes_and_flip_flop(setup):
    pit, clock, *_ = setup
    program(pit, 1, 2, 0x50, rw=1)                     # LSB only
    assert pit.read(1, 1) == 0x50
    program(pit, 1, 2, 0x3400, rw=2)                   # MSB only
    assert pit.read(1, 1) == 0x34
    program(pit, 1, 2, 0x1234)
    assert (pit.read(1, 1), pit.read(1, 1)) == (0x34, 0x12)


def test_bcd_counting(setup):
    pit, clock, *_ = setup
    pit.write(CTRL, 1, 0x31)                           # ch0, lo/hi, mode 0, BCD
    pit.write(0, 1, 0x00)
    pit.write(0, 1, 0x10)                              # 1000 decimal
    at_ticks(clock, 1)
    assert read_count(pit, 0) == 0x0999


def test_channel2_gate_and_port61_calibration(setup):
    pit, clock, *_ = setup
    port61 = pit.port61_ops
    port61.write(0, 1, 0x00)
    program(pit, 2, 0, 0x800)                          # SeaBIOS's TSC calibration
    at_ticks(clock, 0x900)
    assert read_count(pit, 2) == 0x800                 # gate low: not counting
    port61.write(0, 1, 0x01)
    t0 = pit.now_ticks()
    assert not port61.read(0, 1) & 0x20
    at_ticks(clock, t0 + 0x7FF)
    assert not port61.read(0, 1) & 0x20
    at_ticks(clock, t0 + 0x800)
    assert port61.read(0, 1) & 0x20
    assert port61.read(0, 1) & 0x0F == 0x01


def test_gate_pauses_mode0(setup):
    pit, clock, *_ = setup
    pit.port61_ops.write(0, 1, 0x01)
    program(pit, 2, 0, 1000)
    t0 = pit.now_ticks()
    at_ticks(clock, t0 + 100)
    pit.port61_ops.write(0, 1, 0x00)
    at_ticks(clock, t0 + 500)
    assert read_count(pit, 2) == 900
    pit.port61_ops.write(0, 1, 0x01)
    at_ticks(clock, t0 + 600)
    assert read_count(pit, 2) == 800


def test_refresh_bit_toggles_with_virtual_time(setup):
    pit, clock, *_ = setup
    seen = set()
    for i in range(8):
        clock.advance(7_000)
        seen.add(pit.port61_ops.read(0, 1) & 0x10)
    assert seen == {0, 0x10}


def test_mode4_strobe_and_mode1_waits_for_gate(setup):
    pit, clock, irq, edges = setup
    program(pit, 0, 4, 50)
    at_ticks(clock, 200)
    assert edges.rises == [ticks_to_ns(50)]
    program(pit, 2, 1, 20)
    assert pit.port61_ops.read(0, 1) & 0x20            # mode 1: high until triggered
    pit.port61_ops.write(0, 1, 0x01)                   # rising gate triggers
    t0 = pit.now_ticks()
    assert not pit.port61_ops.read(0, 1) & 0x20
    at_ticks(clock, t0 + 20)
    assert pit.port61_ops.read(0, 1) & 0x20


def test_reset_stops_irq0(setup):
    pit, clock, irq, edges = setup
    program(pit, 0, 2, 100)
    pit.reset()
    edges.rises.clear()
    at_ticks(clock, 1000)
    assert edges.rises == [] and irq.level             # idle, OUT high
    assert pit.read(CTRL, 1) == 0xFF


def test_new_count_in_mode2_takes_effect_at_the_end_of_the_period(setup):
    pit, clock, irq, edges = setup
    program(pit, 0, 2, 100)
    at_ticks(clock, 30)
    pit.write(0, 1, 50)
    pit.write(0, 1, 0)                                 # new count 50 while running
    assert read_count(pit, 0) == 70                    # the current period continues
    at_ticks(clock, 260)
    assert edges.rises == [ticks_to_ns(t) for t in (100, 150, 200, 250)]
    assert read_count(pit, 0) == 40
