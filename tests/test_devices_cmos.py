"""MC146818 RTC and CMOS memory, on virtual time."""

import calendar

import pytest

from machine.clock import VirtualClock
from machine.devices.cmos import Cmos
from machine.irq import IrqLine

from clocktools import RiseRecorder, run_until

START = calendar.timegm((2024, 3, 15, 13, 45, 30, 0, 0, 0))   # a Friday
SEC = 1_000_000_000


def make(ram=128 << 20, cpus=1, start=START):
    clock = VirtualClock()
    rec = RiseRecorder(clock)
    irq = IrqLine("irq8", rec)
    return Cmos(irq, clock, ram, cpus, start_time=start), clock, irq, rec


def rd(dev, index):
    dev.write(0, 1, 0x80 | index)                 # firmware always sets NMI-disable
    return dev.read(1, 1)


def wr(dev, index, value):
    dev.write(0, 1, index)
    dev.write(1, 1, value)


def test_memory_bytes_128mib():
    dev, *_ = make(128 << 20)
    assert (rd(dev, 0x15), rd(dev, 0x16)) == (0x80, 0x02)              # 640 KiB base memory
    assert (rd(dev, 0x17), rd(dev, 0x18)) == (0xFF, 0xFF)              # 127 MiB in KiB, capped
    assert (rd(dev, 0x30), rd(dev, 0x31)) == (0xFF, 0xFF)
    assert (rd(dev, 0x34), rd(dev, 0x35)) == (0x00, 0x07)              # 112 MiB / 64 KiB
    assert [rd(dev, i) for i in (0x5B, 0x5C, 0x5D)] == [0, 0, 0]
    assert rd(dev, 0x5F) == 0 and rd(dev, 0x10) == 0
    assert rd(dev, 0x08) != 0xFF                                       # SeaBIOS's "CMOS present"


def test_memory_bytes_4gib_and_cpus():
    dev, *_ = make(4 << 30, cpus=4)
    below = (0xC0000000 - (16 << 20)) >> 16                            # up to the PCI hole
    assert rd(dev, 0x34) | rd(dev, 0x35) << 8 == below
    above = rd(dev, 0x5B) | rd(dev, 0x5C) << 8 | rd(dev, 0x5D) << 16
    assert above == ((4 << 30) - 0xC0000000) >> 16
    assert rd(dev, 0x5F) == 3


def test_small_machine_extended_memory():
    dev, *_ = make(8 << 20)
    assert rd(dev, 0x17) | rd(dev, 0x18) << 8 == 7 * 1024
    assert rd(dev, 0x34) | rd(dev, 0x35) << 8 == 0


def test_bcd_and_binary_and_12_hour():
    dev, clock, *_ = make()
    assert [rd(dev, i) for i in (0, 2, 4, 6, 7, 8, 9, 0x32)] == [0x30, 0x45, 0x13, 0x06, 0x15, 0x03, 0x24, 0x20]
    assert rd(dev, 0x0B) == 0x02 and rd(dev, 0x0D) == 0x80
    wr(dev, 0x0B, 0x06)                                               # binary, 24h
    assert [rd(dev, i) for i in (0, 2, 4, 9, 0x32)] == [30, 45, 13, 24, 20]
    wr(dev, 0x0B, 0x04)                                               # binary, 12h: 1 PM
    assert rd(dev, 4) == 0x81
    wr(dev, 0x0B, 0x00)                                               # BCD, 12h
    assert rd(dev, 4) == 0x81


def test_time_advances_with_virtual_time_only():
    dev, clock, *_ = make()
    assert rd(dev, 0) == 0x30
    clock.advance(SEC - 1)
    assert rd(dev, 0) == 0x30
    clock.advance(1)
    assert rd(dev, 0) == 0x31
    clock.advance(30 * SEC)
    assert (rd(dev, 0), rd(dev, 2)) == (0x01, 0x46)


def test_setting_the_clock_with_set_bit():
    dev, clock, *_ = make()
    wr(dev, 0x0B, 0x82)                                               # SET: updates stop
    wr(dev, 4, 0x23)
    wr(dev, 2, 0x59)
    wr(dev, 0, 0x58)
    wr(dev, 7, 0x31)
    wr(dev, 8, 0x12)
    wr(dev, 9, 0x99)
    wr(dev, 0x32, 0x19)
    clock.advance(5 * SEC)
    assert rd(dev, 0) == 0x58                                         # held while SET
    wr(dev, 0x0B, 0x02)
    clock.advance(2 * SEC)
    assert [rd(dev, i) for i in (0, 2, 4, 7, 8, 9, 0x32)] == [0x00, 0x00, 0x00, 0x01, 0x01, 0x00, 0x20]
    wr(dev, 8, 0x13)                                                  # invalid month: ignored
    assert rd(dev, 8) == 0x01
    wr(dev, 6, 0x03)                                                  # day of week is its own counter
    assert rd(dev, 6) == 0x03


def test_register_c_read_to_clear_and_periodic_irq_timing():
    dev, clock, irq, rec = make(start=float(START))
    wr(dev, 0x0A, 0x26)                                               # 1024 Hz
    wr(dev, 0x0B, 0x42)                                               # PIE
    period = SEC / 1024
    for k in range(1, 6):
        run_until(clock, int(k * period) + 2)
        assert irq.level
        c = rd(dev, 0x0C)
        assert c & 0xC0 == 0xC0                                       # IRQF | PF
        assert not irq.level and rd(dev, 0x0C) == 0                   # read-to-clear
    assert [t - k * period for k, t in enumerate(rec.rises, 1)] == [0.5, 0, 0.5, 0, 0.5]   # whole ns
    # Without reading C, IRQ8 stays asserted: one rising edge only.
    clock.advance(10 * int(period))
    assert len(rec.rises) == 6 and irq.level
    wr(dev, 0x0B, 0x02)
    rd(dev, 0x0C)
    clock.advance(SEC)
    assert len(rec.rises) == 6


def test_rate_change_sets_new_period():
    dev, clock, irq, rec = make()
    wr(dev, 0x0A, 0x2F)                                               # 2 Hz
    wr(dev, 0x0B, 0x42)
    run_until(clock, SEC // 4)
    assert rec.rises == []
    run_until(clock, SEC)
    rd(dev, 0x0C)
    wr(dev, 0x0A, 0x2E)                                               # 4 Hz from here on
    run_until(clock, 2 * SEC)
    rd(dev, 0x0C)
    assert rec.rises == [SEC // 2, 5 * SEC // 4]


def test_pf_is_set_without_pie_but_no_interrupt():
    dev, clock, irq, rec = make()
    clock.advance(SEC // 100)
    assert rd(dev, 0x0C) == 0x40                                      # PF alone, no IRQF
    assert rec.rises == []


def test_update_ended_interrupt_once_a_second_and_uip():
    dev, clock, irq, rec = make(start=START + 0.25)
    wr(dev, 0x0B, 0x12)                                               # UIE
    for k in range(3):
        run_until(clock, (k + 1) * SEC)
        assert rd(dev, 0x0C) & 0x90 == 0x90
    assert rec.rises == [750_000_000, 1_750_000_000, 2_750_000_000]
    clock.advance_to(3_750_000_000 - 100_000)
    assert rd(dev, 0x0A) & 0x80                                       # update about to happen
    clock.advance_to(3_750_000_000 + 3_000_000)
    assert not rd(dev, 0x0A) & 0x80
    assert rd(dev, 0x0A) == 0x26


def test_alarm_interrupt():
    dev, clock, irq, rec = make()
    wr(dev, 1, 0x35)
    wr(dev, 3, 0xC0)                                                  # don't care
    wr(dev, 5, 0xFF)
    wr(dev, 0x0B, 0x22)                                               # AIE
    run_until(clock, 10 * SEC)
    assert rec.rises == [5 * SEC]
    assert rd(dev, 0x0C) & 0xA0 == 0xA0


def test_reset_clears_enables_but_keeps_memory_and_index_port_reads_ff():
    dev, clock, irq, rec = make()
    wr(dev, 0x40, 0x5A)
    wr(dev, 0x0B, 0x52)
    dev.reset()
    assert rd(dev, 0x0B) == 0x02 and rd(dev, 0x40) == 0x5A and not irq.level
    assert dev.read(0, 1) == 0xFF
    dev.write(0, 2, 0x5A40)                                           # outw: index then data
    assert rd(dev, 0x40) == 0x5A
    wr(dev, 0x0D, 0)                                                  # read-only
    assert rd(dev, 0x0D) == 0x80


@pytest.mark.parametrize("value", [0xFF, 0x9A, 0x00])
def test_garbage_time_writes_never_raise(value):
    dev, *_ = make()
    wr(dev, 0x0B, 0x82)
    for index in (0, 2, 4, 6, 7, 8, 9, 0x32):
        wr(dev, index, value)
    wr(dev, 0x0B, 0x00)
    for index in range(128):
        rd(dev, index)


# ---- -rtc base= on the command line ------------------------------------------------------------

def rtc_of(argv):
    from machine.cli import parse_args
    from machine.pc import Machine
    m = Machine(parse_args(argv))
    try:
        return [rd(m.devices["cmos"], i) for i in (0, 2, 4, 7, 8, 9, 0x32)]
    finally:
        m.close()


def test_rtc_base_date_is_what_the_guest_reads():
    # BCD seconds, minutes, hours, day, month, year, century of 2006-06-17 16:01:21
    assert rtc_of(["-rtc", "base=2006-06-17T16:01:21"]) == [0x21, 0x01, 0x16, 0x17, 0x06, 0x06, 0x20]
    assert rtc_of(["-rtc", "base=2006-06-17,clock=vm,driftfix=slew"]) == [0, 0, 0, 0x17, 0x06, 0x06, 0x20]


def test_rtc_base_fixed_makes_two_machines_alike():
    # Host time (the default) enters at power-on, with its fraction of a second: only a fixed
    # base lets two runs of a guest that reads the RTC repeat exactly.
    from machine.cli import parse_args
    from machine.pc import Machine
    a, b = (Machine(parse_args(["-rtc", "base=2024-01-01T00:00:00"])) for _ in range(2))
    try:
        for m in (a, b):
            m.clock.advance(2_500_000_000)
        assert [rd(a.devices["cmos"], i) for i in (0, 0x0A)] == [rd(b.devices["cmos"], i) for i in (0, 0x0A)]
        assert a.devices["cmos"].div_base == b.devices["cmos"].div_base == 0
    finally:
        a.close()
        b.close()


def test_rtc_base_utc_and_localtime():
    from machine.cli import rtc_base
    assert rtc_base("utc") is None                                  # the board reads the host clock
    now = 1_700_000_000.25
    import time
    assert rtc_base("localtime", now) == now + time.localtime(now).tm_gmtoff
    assert rtc_base("2006-06-17") == calendar.timegm((2006, 6, 17, 0, 0, 0, 0, 0, 0))


@pytest.mark.parametrize("arg,message", [
    ("base=2006-13-01", "invalid datetime format '2006-13-01'"),
    ("base=yesterday", "invalid datetime format"),
    ("clock=wall", "invalid option value 'wall'"),
    ("driftfix=fast", "invalid option value 'fast'"),
    ("speed=1", "Invalid parameter 'speed'"),
])
def test_bad_rtc_options_are_one_error_line(capsys, arg, message):
    from machine.cli import main
    assert main(["-rtc", arg]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"machine: -rtc {arg}: ") and message in err[0], err
