"""MC146818 real-time clock and the PC's CMOS memory, ports 0x70 (index) / 0x71 (data).

Time is kept as "seconds since the epoch (UTC) at the divider epoch" plus virtual time: the chip's
once-a-second update cycle happens at `div_base + k * 1 s`, so the time registers, the update-ended
flag and the UIP pulse all derive from `VirtualClock.now`, never from the host (except the initial
date, `start_time`, which tests fix). The periodic-interrupt divider runs in step with the same
epoch, at 32768 Hz >> (RS - 1).

Status flags (register C) are computed lazily from virtual time when C is read; a Timer is armed
only while an interrupt is enabled (PIE/UIE/AIE) to raise IRQ8 at the right moment. IRQ8 stays
asserted until the guest reads C, so a guest that never reads C gets exactly one interrupt, as on
a PC. Alarm matching (with "don't care" values 0xC0-0xFF) is checked at each update the device
observes; a guest that leaves the clock unread for many seconds with AIE off sees AF only if the
alarm matches the latest second.

CMOS memory (battery-backed) keeps its contents across a guest reset; only the RTC's RESET-pin
state (interrupt enables, flags) is cleared then.
"""

from __future__ import annotations

import time

from .. import trace
from .. import vmstate
from ..vmstate import BOOL, I64, LINE, OPT_I64
from ..clock import NS_PER_SEC, VirtualClock
from ..irq import IrqLine
from ..memory import FOUR_GIB, pc_ram_layout
from ..regs import Reg, RegisterBank
from .isa import ByteWideOps

# Register indices
SECONDS, ALARM_SECONDS, MINUTES, ALARM_MINUTES, HOURS, ALARM_HOURS = 0, 1, 2, 3, 4, 5
DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR = 6, 7, 8, 9
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
CENTURY = 0x32

A_UIP = 0x80
A_DIVIDER_RESET = 0x60              # DV2:DV1 both set holds the divider chain in reset
A_RATE = 0x0F
B_SET = 0x80
B_PIE = 0x40
B_AIE = 0x20
B_UIE = 0x10
B_SQWE = 0x08
B_DM_BINARY = 0x04
B_24H = 0x02
C_IRQF = 0x80
C_PF = 0x40
C_AF = 0x20
C_UF = 0x10
D_VRT = 0x80

UIP_BEFORE_NS = 244_000             # UIP rises 244 us before the update ...
UPDATE_NS = 1_984_000               # ... and the update itself takes 1984 us (32.768 kHz base)
DIVIDER_RESTART_NS = 500_000_000    # leaving divider reset: the first update comes 0.5 s later

# CMOS memory map as PC firmware reads it
CMOS_SHUTDOWN = 0x0F
CMOS_FLOPPY = 0x10
CMOS_EQUIPMENT = 0x14
CMOS_BASE_MEM = 0x15                # KiB, 2 bytes
CMOS_EXT_MEM = 0x17                 # KiB above 1 MiB, 2 bytes
CMOS_CHECKSUM = 0x2E                # big-endian sum of 0x10..0x2D
CMOS_EXT_MEM2 = 0x30                # copy of 0x17/0x18
CMOS_BOOT_FLAGS = 0x38
CMOS_BOOT_ORDER = 0x3D
CMOS_MEM_ABOVE_16M = 0x34           # 64 KiB units, 2 bytes
CMOS_MEM_ABOVE_4G = 0x5B            # 64 KiB units, 3 bytes
CMOS_CPUS = 0x5F                    # number of CPUs minus one

SIXTEEN_MIB = 16 << 20


def _period_ns_num(rate: int) -> int:
    """Periodic rate RS (1..15) as a shift: the period is 2**(shift) / 32768 s."""
    if rate in (1, 2):
        rate += 7                   # RS=1,2 repeat the 256/128 Hz rates (a 32.768 kHz quirk)
    return rate - 1


def memory_bytes(ram_size: int, cpus: int = 1) -> dict[int, int]:
    """The CMOS bytes describing memory and CPUs, as SeaBIOS and other PC firmware read them."""
    layout = pc_ram_layout(ram_size)
    below_4g = max(r.end for r in layout if r.gpa < FOUR_GIB)
    above_4g = sum(r.size for r in layout if r.gpa >= FOUR_GIB)
    ext_kib = min(0xFFFF, (below_4g - 0x100000) // 1024)
    above_16m = min(0xFFFF, max(0, below_4g - SIXTEEN_MIB) // 0x10000)
    high = min(0xFFFFFF, above_4g // 0x10000)
    out = {
        CMOS_BASE_MEM: 640 & 0xFF, CMOS_BASE_MEM + 1: 640 >> 8,
        CMOS_EXT_MEM: ext_kib & 0xFF, CMOS_EXT_MEM + 1: ext_kib >> 8,
        CMOS_EXT_MEM2: ext_kib & 0xFF, CMOS_EXT_MEM2 + 1: ext_kib >> 8,
        CMOS_MEM_ABOVE_16M: above_16m & 0xFF, CMOS_MEM_ABOVE_16M + 1: above_16m >> 8,
        CMOS_MEM_ABOVE_4G: high & 0xFF, CMOS_MEM_ABOVE_4G + 1: (high >> 8) & 0xFF,
        CMOS_MEM_ABOVE_4G + 2: high >> 16,
        CMOS_CPUS: max(0, min(255, cpus - 1)),
    }
    return out


def _to_bcd(v: int) -> int:
    return ((v // 10) << 4) | (v % 10)


def _from_bcd(v: int) -> int | None:
    hi, lo = v >> 4, v & 0x0F
    return None if hi > 9 or lo > 9 else hi * 10 + lo


class Cmos:
    VMSTATE = vmstate.Description("mc146818rtc", 1, (
        vmstate.Field("cmos", vmstate.Bytes(128, 128)),
        vmstate.Field("index", vmstate.UInt(7)),
        vmstate.Field("nmi_masked", BOOL),
        vmstate.Field("div_base", I64),
        vmstate.Field("epoch_at_base", I64),
        vmstate.Field("frozen", OPT_I64),
        vmstate.Field("dow_adjust", vmstate.UInt(3)),
        vmstate.Field("_u_seen", I64),
        vmstate.Field("_p_seen", I64),
        vmstate.Field("irq", LINE)))

    BASE = 0x70
    SIZE = 2
    IRQ = 8

    def __init__(self, irq: IrqLine, clock: VirtualClock, ram_size: int, cpus: int = 1,
                 start_time: float | None = None):
        self.irq = irq
        self.clock = clock
        self.cmos = bytearray(128)
        if start_time is None:
            start_time = time.time()        # the one host-time input: the date at power-on
        whole = int(start_time // 1)
        frac_ns = int((start_time - whole) * NS_PER_SEC)
        self.div_base = clock.now - frac_ns     # the last update happened frac seconds ago
        self.epoch_at_base = whole
        self.frozen: int | None = None          # epoch seconds while SET or divider reset holds the clock
        self.dow_adjust = 0
        self._timer = clock.timer(self._on_timer, "rtc")
        self._ops = ByteWideOps(RegisterBank(self, _PORTS, "cmos", default=0xFF), self.SIZE)
        c = self.cmos
        c[REG_A] = 0x26                         # 32.768 kHz time base, 1024 Hz periodic rate
        c[REG_B] = B_24H                        # BCD, 24-hour
        c[REG_D] = D_VRT
        c[CMOS_FLOPPY] = 0x00                   # no floppy drives
        c[CMOS_EQUIPMENT] = 0x06                # FPU present, PS/2 mouse port (QEMU's value)
        # Boot order as QEMU's default -boot order=cad: one nibble per device (1 floppy, 2 hard
        # disk, 3 CD), first in 0x3D's low nibble, second in its high one, third in 0x38's high
        # nibble; 0x38 bit 0 clear keeps the floppy boot-signature check.
        c[CMOS_BOOT_ORDER] = 0x12
        c[CMOS_BOOT_FLAGS] = 0x30
        for idx, val in memory_bytes(ram_size, cpus).items():
            c[idx] = val
        checksum = sum(c[0x10:0x2E])
        c[CMOS_CHECKSUM], c[CMOS_CHECKSUM + 1] = checksum >> 8, checksum & 0xFF
        self.index = 0
        self.nmi_masked = False
        self._u_seen = self._updates()
        self._p_seen = self._periods()
        self.reset()

    # -- ops --------------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        return self._ops.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self._ops.write(offset, size, value)

    def reset(self) -> None:
        """The RTC's RESET pin: interrupt enables and flags clear; time and CMOS memory survive."""
        self._sync_flags()
        self.cmos[REG_B] &= ~(B_PIE | B_AIE | B_UIE | B_SQWE)
        self.cmos[REG_C] = 0
        self.index = 0
        self.nmi_masked = False
        self._timer.cancel()
        self.irq.set(False)

    # -- time ---------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.frozen is None

    def _updates(self) -> int:
        """Update cycles completed since the divider epoch."""
        return (self.clock.now - self.div_base) // NS_PER_SEC

    def _periods(self) -> int:
        rate = self.cmos[REG_A] & A_RATE
        if not rate:
            return 0
        return ((self.clock.now - self.div_base) * 32768 >> _period_ns_num(rate)) // NS_PER_SEC

    def now_epoch(self) -> int:
        """The clock's current time, seconds since 1970 (UTC)."""
        if self.frozen is not None:
            return self.frozen
        return self.epoch_at_base + self._updates()

    def _set_epoch(self, epoch: int) -> None:
        if self.frozen is not None:
            self.frozen = epoch
        else:
            self.epoch_at_base = epoch - self._updates()

    def _fields(self) -> time.struct_time:
        return time.gmtime(self.now_epoch())

    def _encode(self, value: int) -> int:
        return value if self.cmos[REG_B] & B_DM_BINARY else _to_bcd(value)

    def _decode(self, value: int) -> int | None:
        return value if self.cmos[REG_B] & B_DM_BINARY else _from_bcd(value)

    def _encode_hour(self, hour: int) -> int:
        if self.cmos[REG_B] & B_24H:
            return self._encode(hour)
        return self._encode(hour % 12 or 12) | (0x80 if hour >= 12 else 0)

    def _decode_hour(self, value: int) -> int | None:
        if self.cmos[REG_B] & B_24H:
            return self._decode(value)
        h = self._decode(value & 0x7F)
        if h is None or not 1 <= h <= 12:
            return None
        return (h % 12) + (12 if value & 0x80 else 0)

    def _time_register(self, index: int) -> int:
        t = self._fields()
        if index == SECONDS:
            return self._encode(t.tm_sec)
        if index == MINUTES:
            return self._encode(t.tm_min)
        if index == HOURS:
            return self._encode_hour(t.tm_hour)
        if index == DAY_OF_WEEK:
            return self._encode((t.tm_wday + 1 + self.dow_adjust) % 7 + 1)   # Sunday = 1
        if index == DAY_OF_MONTH:
            return self._encode(t.tm_mday)
        if index == MONTH:
            return self._encode(t.tm_mon)
        if index == YEAR:
            return self._encode(t.tm_year % 100)
        return self._encode(t.tm_year // 100)   # CENTURY

    def _write_time_register(self, index: int, value: int) -> None:
        t = self._fields()
        if index == DAY_OF_WEEK:
            dow = self._decode(value)
            if dow is None or not 1 <= dow <= 7:
                trace.guest_error(f"cmos: day of week {value:#x} ignored")
                return
            self.dow_adjust = (dow - 1 - (t.tm_wday + 1)) % 7
            return
        f = [t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec]
        decoded = self._decode_hour(value) if index == HOURS else self._decode(value)
        limits = {SECONDS: (5, 0, 59), MINUTES: (4, 0, 59), HOURS: (3, 0, 23), DAY_OF_MONTH: (2, 1, 31),
                  MONTH: (1, 1, 12), YEAR: (0, 0, 99), CENTURY: (0, 0, 99)}
        slot, lo, hi = limits[index]
        if decoded is None or not lo <= decoded <= hi:
            trace.guest_error(f"cmos: time register {index:#x} value {value:#x} ignored")
            return
        if index == YEAR:
            decoded += f[0] - f[0] % 100
        elif index == CENTURY:
            decoded = decoded * 100 + f[0] % 100
        f[slot] = decoded
        if f[0] < 1970:
            trace.guest_error(f"cmos: year {f[0]} before 1970 not supported, ignored")
            return
        # Day 31 in a 30-day month rolls over (timegm normalises). The day of week is its own
        # counter on the chip: a date write leaves its offset from the computed weekday alone.
        import calendar         # only a guest setting the clock needs it: kept off start-up
        self._set_epoch(calendar.timegm((f[0], f[1], f[2], f[3], f[4], f[5], 0, 0, 0)))

    def _uip(self) -> bool:
        if self.frozen is not None:
            return False
        phase = (self.clock.now - self.div_base) % NS_PER_SEC
        return phase >= NS_PER_SEC - UIP_BEFORE_NS or (phase < UPDATE_NS and self._updates() > 0)

    # -- flags and interrupts ---------------------------------------------------------------
    def _alarm_matches(self) -> bool:
        t = self._fields()
        c = self.cmos
        for idx, now in ((ALARM_SECONDS, self._encode(t.tm_sec)), (ALARM_MINUTES, self._encode(t.tm_min)),
                         (ALARM_HOURS, self._encode_hour(t.tm_hour))):
            if c[idx] & 0xC0 == 0xC0:
                continue                            # "don't care"
            if c[idx] != now:
                return False
        return True

    def _sync_flags(self) -> None:
        """Fold the updates and periodic ticks that virtual time has passed into register C."""
        c = self.cmos
        if self.frozen is None:
            u = self._updates()
            if u != self._u_seen:
                self._u_seen = u
                c[REG_C] |= C_UF
                if self._alarm_matches():
                    c[REG_C] |= C_AF
            p = self._periods()
            if p != self._p_seen:
                self._p_seen = p
                if c[REG_A] & A_RATE:
                    c[REG_C] |= C_PF
        b = c[REG_B]
        if c[REG_C] & (b & (B_PIE | B_AIE | B_UIE)):
            c[REG_C] |= C_IRQF
        self.irq.set(bool(c[REG_C] & C_IRQF))

    def _rearm(self) -> None:
        """Arm the timer for the next event that can interrupt (none: stay quiet)."""
        c = self.cmos
        b = c[REG_B]
        if self.frozen is not None or not b & (B_PIE | B_AIE | B_UIE):
            self._timer.cancel()
            return
        rel = self.clock.now - self.div_base
        deadlines = []
        if b & (B_AIE | B_UIE):
            deadlines.append((rel // NS_PER_SEC + 1) * NS_PER_SEC)
        rate = c[REG_A] & A_RATE
        if b & B_PIE and rate:
            shift = _period_ns_num(rate)
            k = (rel * 32768 >> shift) // NS_PER_SEC + 1
            # First instant at which _periods() reaches k.
            deadlines.append(-((-k * NS_PER_SEC << shift) // 32768))
        if deadlines:
            self._timer.arm(self.div_base + min(deadlines))
        else:
            self._timer.cancel()

    def _on_timer(self) -> None:
        self._sync_flags()
        self._rearm()

    # -- registers ----------------------------------------------------------------------------
    def _write_index(self, value: int) -> None:
        self.index = value & 0x7F
        self.nmi_masked = bool(value & 0x80)

    def _read_data(self) -> int:
        i = self.index
        if i <= YEAR and i not in (ALARM_SECONDS, ALARM_MINUTES, ALARM_HOURS) or i == CENTURY:
            return self._time_register(i)
        if i == REG_A:
            return (self.cmos[REG_A] & 0x7F) | (A_UIP if self._uip() else 0)
        if i == REG_C:
            self._sync_flags()
            value = self.cmos[REG_C]
            self.cmos[REG_C] = 0                    # read-to-clear, and IRQ8 drops
            self.irq.set(False)
            self._rearm()
            return value
        return self.cmos[i]

    def _write_data(self, value: int) -> None:
        i = self.index
        c = self.cmos
        if i <= YEAR and i not in (ALARM_SECONDS, ALARM_MINUTES, ALARM_HOURS) or i == CENTURY:
            self._write_time_register(i, value)
        elif i == REG_A:
            self._sync_flags()
            was_reset = c[REG_A] & A_DIVIDER_RESET == A_DIVIDER_RESET
            c[REG_A] = value & 0x7F                 # UIP is read-only
            now_reset = value & A_DIVIDER_RESET == A_DIVIDER_RESET
            self._set_hold(c[REG_B] & B_SET or now_reset, restart=was_reset and not now_reset)
            self._p_seen = self._periods()
            self._rearm()
        elif i == REG_B:
            self._sync_flags()
            if value & B_SET:
                value &= ~B_UIE                     # SET clears UIE (datasheet)
            c[REG_B] = value
            self._set_hold(value & B_SET or c[REG_A] & A_DIVIDER_RESET == A_DIVIDER_RESET)
            self._sync_flags()
            self._rearm()
        elif i in (REG_C, REG_D):
            trace.guest_error(f"cmos: write {value:#x} to read-only register {i:#x} ignored")
        else:
            c[i] = value

    def _set_hold(self, hold: bool, restart: bool = False) -> None:
        """Stop the clock (SET, or divider in reset) or let it run again."""
        if hold and self.frozen is None:
            self.frozen = self.now_epoch()
        elif not hold and self.frozen is not None:
            epoch = self.frozen
            self.frozen = None
            if restart:
                self.div_base = self.clock.now + DIVIDER_RESTART_NS - NS_PER_SEC
            self.epoch_at_base = epoch - self._updates()
            self._u_seen = self._updates()
            self._p_seen = self._periods()


_PORTS = (
    Reg(0, 1, "index", lambda dev: 0xFF, Cmos._write_index),    # the index port is write-only
    Reg(1, 1, "data", Cmos._read_data, Cmos._write_data),
)
