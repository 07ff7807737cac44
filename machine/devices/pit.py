"""8254 programmable interval timer (ports 0x40-0x43) and the PC's port 0x61 (NMI status and
control: channel 2 gate, speaker enable, refresh toggle, channel 2 output).

The counters never tick. Each counting channel remembers the input-clock tick at which it started
(`start`) and derives its count and OUT pin from the current virtual time, at 1.193182 MHz:
ticks(now) = now_ns * 1193182 // 1e9. Only channel 0's OUT is wired to an interrupt (IRQ0), so only
channel 0 arms a Timer, for its next OUT edge. Channel 2's OUT shows in port 0x61 bit 5 (firmware
TSC calibration spins on it), channel 1 is the DRAM refresh clock (port 0x61 bit 4 toggles every
15.085 us of virtual time).

A new count written to a running mode 2/3 counter takes effect at the end of the current period,
as on the chip. Simplifications, invisible to software that follows the datasheet's programming
rules: the mode 3 count for odd values decrements evenly; a counter that has been given a control
word but no count yet holds its last value.
"""

from __future__ import annotations

from ..clock import NS_PER_SEC, VirtualClock
from .. import vmstate
from ..irq import IrqLine
from ..vmstate import BOOL, I64, LINE, OPT_I64, U8, U16, U32
from ..memory import ones
from ..regs import Reg, RegisterBank
from .isa import ByteWideOps

PIT_HZ = 1_193_182
REFRESH_NS = 15_085                 # channel 1 as the BIOS programs it (count 18)

RW_LATCH, RW_LSB, RW_MSB, RW_WORD = 0, 1, 2, 3
SC_READBACK = 3
RB_NO_COUNT = 0x20
RB_NO_STATUS = 0x10


def ns_to_ticks(ns: int) -> int:
    return ns * PIT_HZ // NS_PER_SEC


def ticks_to_ns(ticks: int) -> int:
    """The first nanosecond at which `ticks` input clocks have elapsed."""
    return -((-ticks * NS_PER_SEC) // PIT_HZ)


def _to_bcd(v: int) -> int:
    return int(str(v % 10000), 16)


def _from_bcd(v: int) -> int:
    return ((v >> 12) & 0xF) * 1000 + ((v >> 8) & 0xF) * 100 + ((v >> 4) & 0xF) * 10 + (v & 0xF)


class Channel:
    __slots__ = ("index", "mode", "rw", "bcd", "reload", "n", "armed", "start", "paused_at",
                 "triggered", "gate", "idle_count", "write_low", "low_byte", "read_high",
                 "latched", "latch_high", "status", "next_n", "switch_at")

    def __init__(self, index: int):
        self.index = index
        self.reset()

    def reset(self) -> None:
        # The power-on mode is undefined; mode 3 with OUT high (as QEMU) means that programming
        # the usual periodic modes makes no spurious OUT edge.
        self.mode = 3
        self.rw = RW_WORD
        self.bcd = False
        self.reload = 0             # the count register as written (BCD digits in BCD mode)
        self.n = 0x10000            # the count as a number of ticks
        self.armed = False          # a count has been loaded
        self.start = 0              # tick at which counting began
        self.paused_at: int | None = None   # elapsed ticks, while the gate holds the count
        self.triggered = False      # modes 1/5: a gate edge has started the count
        self.gate = self.index != 2
        self.idle_count = 0
        self.write_low = False      # word access: the low byte has been written
        self.low_byte = 0
        self.read_high = False      # word access flip-flop for live reads
        self.latched: int | None = None
        self.latch_high = False
        self.status: int | None = None
        self.next_n = 0
        self.switch_at: int | None = None   # modes 2/3: tick at which a newly written count takes over

    # -- derived state -------------------------------------------------------------------
    def elapsed(self, now: int) -> int | None:
        """Ticks counted so far, or None while not counting (no count, or waiting for a trigger)."""
        if not self.armed or (self.mode in (1, 5) and not self.triggered):
            return None
        if self.switch_at is not None and now >= self.switch_at:
            self.start, self.n, self.switch_at = self.switch_at, self.next_n, None
        if self.paused_at is not None:
            return self.paused_at
        return now - self.start

    def count(self, now: int) -> int:
        d = self.elapsed(now)
        if d is None:
            return self.idle_count if not self.armed else self.reload
        n = self.n
        mode = self.mode
        if mode == 2:
            value = n - d % n
        elif mode == 3:
            value = n - (2 * d) % n
        else:
            value = (n - d) % (10000 if self.bcd else 0x10000)
        return _to_bcd(value) if self.bcd else value & 0xFFFF

    def out(self, now: int) -> bool:
        mode = self.mode
        if not self.armed:
            return mode != 0
        d = self.elapsed(now)
        if d is None:
            return True                 # modes 1/5 before their trigger
        n = self.n
        if mode in (2, 3) and not self.gate:
            return True
        if mode in (0, 1):
            return d >= n
        if mode == 2:
            return d % n != n - 1
        if mode == 3:
            return d % n < (n + 1) // 2
        return d != n                   # modes 4/5: one-clock strobe at terminal count

    def null_count(self, now: int) -> bool:
        d = self.elapsed(now)
        return d is None or (self.paused_at is None and d <= 0)

    def status_byte(self, now: int) -> int:
        return ((0x80 if self.out(now) else 0) | (0x40 if self.null_count(now) else 0)
                | (self.rw << 4) | (self.mode << 1) | int(self.bcd))

    # -- programming -----------------------------------------------------------------------
    def control(self, rw: int, mode: int, bcd: bool, now: int) -> None:
        if self.armed:
            self.idle_count = self.count(now)
        self.rw = rw
        self.mode = mode if mode < 6 else mode - 4      # 6 and 7 are aliases of 2 and 3
        self.bcd = bcd
        self.armed = False
        self.triggered = False
        self.paused_at = None
        self.switch_at = None
        self.write_low = False
        self.read_high = False
        self.latched = None
        self.latch_high = False
        self.status = None

    def load(self, value: int, now: int) -> None:
        self.reload = value
        n = (_from_bcd(value) if self.bcd else value) or (10000 if self.bcd else 0x10000)
        d = self.elapsed(now)
        if self.mode in (2, 3) and d is not None and self.paused_at is None:
            # Running periodic counter: the new count is loaded at the end of this period.
            self.next_n = n
            self.switch_at = self.start + (d // self.n + 1) * self.n
            return
        self.n = n
        self.switch_at = None
        self.armed = True
        self.start = now
        self.paused_at = None
        if self.mode in (1, 5):
            self.triggered = False      # the count waits for a gate rising edge
        elif not self.gate:
            self.paused_at = 0          # 0/4: held by the gate; 2/3: wait for the gate to rise

    def set_gate(self, level: bool, now: int) -> None:
        if level == self.gate:
            return
        d = self.elapsed(now)
        self.gate = level
        if not self.armed:
            return
        mode = self.mode
        if mode in (0, 4):
            if not level:
                self.paused_at = d      # counting suspended
            elif self.paused_at is not None:
                self.start = now - self.paused_at
                self.paused_at = None
        elif mode in (1, 5):
            if level:                   # a rising edge (re)starts the count
                self.triggered = True
                self.start = now
        else:
            if not level:
                self.paused_at = 0
            else:                       # a rising edge reloads and restarts
                if self.switch_at is not None:
                    self.n, self.switch_at = self.next_n, None
                self.start = now
                self.paused_at = None

    def latch(self, now: int) -> None:
        if self.latched is None:
            self.latched = self.count(now)
            self.latch_high = False

    def latch_status(self, now: int) -> None:
        if self.status is None:
            self.status = self.status_byte(now)

    def read_byte(self, now: int) -> int:
        if self.status is not None:
            value, self.status = self.status, None
            return value
        rw = self.rw
        if self.latched is not None:
            value = self.latched
            if rw == RW_WORD and not self.latch_high:
                self.latch_high = True
                return value & 0xFF
            self.latched = None
            return (value >> 8) & 0xFF if rw != RW_LSB else value & 0xFF
        value = self.count(now)
        if rw == RW_LSB:
            return value & 0xFF
        if rw == RW_MSB:
            return (value >> 8) & 0xFF
        self.read_high = not self.read_high
        return value & 0xFF if self.read_high else (value >> 8) & 0xFF

    def write_byte(self, value: int, now: int) -> None:
        rw = self.rw
        if rw == RW_LSB:
            self.load(value, now)
        elif rw == RW_MSB:
            self.load(value << 8, now)
        elif not self.write_low:
            self.write_low = True
            self.low_byte = value
            if self.mode == 0 and self.armed:
                # Mode 0: writing the first byte stops the count (OUT goes low until the second).
                self.idle_count = self.count(now)
                self.armed = False
        else:
            self.write_low = False
            self.load(self.low_byte | (value << 8), now)

    def next_edge(self, now: int) -> int | None:
        """Tick of the next OUT edge that matters for an interrupt (a rise), or None."""
        d = self.elapsed(now)
        if d is None or self.paused_at is not None:
            return None
        n = self.n
        if self.mode in (2, 3):
            return self.start + (d // n + 1) * n
        if d < n:
            return self.start + n
        return None


class _Port61:
    """Port 0x61 as seen through the PIT: bits 0-3 stored (bit 0 = channel 2 gate, bit 1 =
    speaker data), bit 4 refresh toggle, bit 5 channel 2 OUT; bits 6-7 (parity/IOCHK) read 0."""
    BASE = 0x61
    SIZE = 1

    def __init__(self, pit: "Pit"):
        self._pit = pit

    def read(self, offset: int, size: int) -> int:
        pit = self._pit
        now_ns = pit.clock.now
        value = pit.port61 & 0x0F
        if (now_ns // REFRESH_NS) & 1:
            value |= 0x10
        if pit.channels[2].out(ns_to_ticks(now_ns)):
            value |= 0x20
        return value | (ones(size) & ~0xFF)     # wider reads: the next ports are not ours

    def write(self, offset: int, size: int, value: int) -> None:
        pit = self._pit
        pit.port61 = value & 0x0F
        pit.channels[2].set_gate(bool(value & 1), ns_to_ticks(pit.clock.now))


_CHANNEL_STATE = vmstate.Description("pit-channel", 1, tuple(vmstate.Field(n, k) for n, k in (
    ("mode", vmstate.UInt(3)), ("rw", vmstate.UInt(2)), ("bcd", BOOL), ("reload", U16),
    ("n", U32), ("armed", BOOL), ("start", I64), ("paused_at", OPT_I64), ("triggered", BOOL),
    ("gate", BOOL), ("idle_count", U32), ("write_low", BOOL), ("low_byte", U8),
    ("read_high", BOOL), ("latched", vmstate.Optional(U32)), ("latch_high", BOOL),
    ("status", vmstate.Optional(U8)), ("next_n", U32), ("switch_at", OPT_I64))))


class Pit:
    # The channels, port 0x61's stored bits and the IRQ0 level; the timer is the clock's.
    VMSTATE = vmstate.Description("pit", 1, (
        vmstate.Field("channels", vmstate.StructList(_CHANNEL_STATE, 3)),
        vmstate.Field("port61", vmstate.UInt(4)),
        vmstate.Field("irq0", LINE)))

    BASE = 0x40
    SIZE = 4
    IRQ = 0

    def __init__(self, irq0: IrqLine, clock: VirtualClock):
        self.irq0 = irq0
        self.clock = clock
        self.channels = [Channel(i) for i in range(3)]
        self.port61 = 0
        self.port61_ops = _Port61(self)
        self._timer = clock.timer(self._on_timer, "pit")
        self._ops = ByteWideOps(RegisterBank(self, _PORTS, "pit", default=0xFF), self.SIZE)
        self.reset()

    def reset(self) -> None:
        for ch in self.channels:
            ch.reset()
        self.port61 = 0
        self._timer.cancel()
        self.irq0.set(self.channels[0].out(self.now_ticks()))

    def read(self, offset: int, size: int) -> int:
        return self._ops.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self._ops.write(offset, size, value)

    def vmstate_check(self, values: dict) -> None:
        for i, ch in enumerate(values["channels"]):
            if ch["mode"] > 5 or not 1 <= ch["n"] <= 0x10000 or not 0 <= ch["next_n"] <= 0x10000 \
                    or ch["rw"] == 0 or ch["idle_count"] > 0xFFFF:
                raise vmstate.VMStateError(f"pit: channel {i} has an impossible mode or count")

    def now_ticks(self) -> int:
        return ns_to_ticks(self.clock.now)

    # -- channel 0 -> IRQ0 --------------------------------------------------------------
    def _ch0_changed(self) -> None:
        ch = self.channels[0]
        now = self.now_ticks()
        self.irq0.set(ch.out(now))
        edge = ch.next_edge(now)
        if edge is None:
            self._timer.cancel()
        else:
            self._timer.arm(ticks_to_ns(edge))

    def _on_timer(self) -> None:
        ch = self.channels[0]
        if ch.mode in (0, 1):
            self.irq0.set(True)             # OUT rises at terminal count and stays high
        else:
            self.irq0.set(False)            # periodic / strobe: a low-to-high edge each period
            self.irq0.set(True)
        now = self.now_ticks()
        edge = ch.next_edge(now)
        if edge is not None:
            self._timer.arm(ticks_to_ns(edge))

    # -- ports ------------------------------------------------------------------------------
    def _read_counter(self, i: int) -> int:
        return self.channels[i].read_byte(self.now_ticks())

    def _write_counter(self, i: int, value: int) -> None:
        self.channels[i].write_byte(value, self.now_ticks())
        if i == 0:
            self._ch0_changed()

    def _write_control(self, value: int) -> None:
        now = self.now_ticks()
        sc = value >> 6
        if sc == SC_READBACK:
            for i in range(3):
                if value & (2 << i):
                    if not value & RB_NO_STATUS:
                        self.channels[i].latch_status(now)
                    if not value & RB_NO_COUNT:
                        self.channels[i].latch(now)
            return
        ch = self.channels[sc]
        rw = (value >> 4) & 3
        if rw == RW_LATCH:
            ch.latch(now)
            return
        ch.control(rw, (value >> 1) & 7, bool(value & 1), now)
        if sc == 0:
            self._ch0_changed()


_PORTS = (
    Reg(0, 1, "counter0", lambda p: p._read_counter(0), lambda p, v: p._write_counter(0, v)),
    Reg(1, 1, "counter1", lambda p: p._read_counter(1), lambda p, v: p._write_counter(1, v)),
    Reg(2, 1, "counter2", lambda p: p._read_counter(2), lambda p, v: p._write_counter(2, v)),
    Reg(3, 1, "control", lambda p: 0xFF, Pit._write_control),      # write-only: reads float
)
