"""ACPI power management I/O block (the PIIX4 PM registers QEMU's `pc` has at I/O 0x600).

    +0  PM1_STS  16  TMR_STS 0, BM_STS 4, GBL_STS 5, PWRBTN_STS 8, SLPBTN_STS 9, RTC_STS 10,
                     WAK_STS 15; write 1 to clear
    +2  PM1_EN   16  TMR_EN 0, GBL_EN 5, PWRBTN_EN 8, RTC_EN 10
    +4  PM1_CNT  16  SCI_EN 0 (always 1: the machine is in ACPI mode from power-on, so the FADT
                     has no SMI_CMD), BM_RLD 1, GBL_RLS 2, SLP_TYP 12:10, SLP_EN 13 (write-only)
    +8  PM_TMR   32  24-bit counter at 3.579545 MHz, from the virtual clock (read-only)

Sleep: SLP_EN with SLP_TYP 0 (the DSDT's \\_S5) or 2 (S4, which QEMU also treats as off)
powers the machine off; other sleep types are not offered (no \\_S1-\\_S3) and are ignored.
The SCI (IRQ 9, level) is asserted while an enabled status bit is set. TMR_STS is set each time
bit 23 of the counter changes. Registers, offsets and widths are QEMU's (its PM1 block is
4 + 2 bytes plus the 4-byte timer); the rest of the 64-byte block reads as zero.
"""

from __future__ import annotations

from typing import Callable

from .. import trace
from .. import vmstate
from ..vmstate import LINE, U16
from ..clock import VirtualClock
from ..irq import IrqLine
from ..regs import Reg, RegisterBank

BASE = 0x600
SIZE = 0x40
PM1_EVT_OFFSET, PM1_CNT_OFFSET, PM_TMR_OFFSET = 0x0, 0x4, 0x8
PM1_EVT_LEN, PM1_CNT_LEN, PM_TMR_LEN = 4, 2, 4
SCI_IRQ = 9

PM_TIMER_HZ = 3_579_545
NS_PER_S = 1_000_000_000
TIMER_BITS = 24

TMR_STS, BM_STS, GBL_STS, PWRBTN_STS, SLPBTN_STS, RTC_STS, WAK_STS = 1, 0x10, 0x20, 0x100, 0x200, 0x400, 0x8000
STS_BITS = TMR_STS | BM_STS | GBL_STS | PWRBTN_STS | SLPBTN_STS | RTC_STS | WAK_STS
TMR_EN, GBL_EN, PWRBTN_EN, RTC_EN = 1, 0x20, 0x100, 0x400
EN_BITS = TMR_EN | GBL_EN | PWRBTN_EN | RTC_EN
SCI_EN, BM_RLD, GBL_RLS = 1, 2, 4
SLP_TYP_SHIFT, SLP_TYP_MASK, SLP_EN = 10, 0x1C00, 0x2000
CNT_WRITABLE = BM_RLD | SLP_TYP_MASK     # GBL_RLS and SLP_EN act, they are not kept
SLP_TYP_S5 = 0                           # the value the DSDT's \_S5 package gives
SLP_TYP_S4 = 2                           # QEMU's PIIX4 S4 value: also power-off

EV_SLEEP = trace.Event("acpi_pm_sleep")


def pm_timer_ticks(ns: int) -> int:
    """PM timer ticks in `ns` virtual nanoseconds (not wrapped)."""
    return ns * PM_TIMER_HZ // NS_PER_S


def _ns_at_tick(tick: int) -> int:
    """The first virtual nanosecond at which the timer reads `tick` (the inverse, rounded up)."""
    return -(-tick * NS_PER_S // PM_TIMER_HZ)


class AcpiPm:
    VMSTATE = vmstate.Description("acpi-pm", 1, (
        vmstate.Field("sts", U16),
        vmstate.Field("en", U16),
        vmstate.Field("cnt", U16),
        vmstate.Field("sci", LINE)))

    BASE = BASE
    SIZE = SIZE

    def __init__(self, clock: VirtualClock, sci: IrqLine, on_power_off: Callable[[], None]):
        self.clock = clock
        self.sci = sci
        self.on_power_off = on_power_off
        self._bank = RegisterBank(self, _REGS, "acpi-pm", default=0)
        self._overflow = clock.timer(self._on_timer_msb, "pm-timer")
        self.reset()

    def reset(self) -> None:
        self.sts = 0
        self.en = 0
        self.cnt = SCI_EN
        self._overflow.cancel()
        self._update_sci()

    # -- ops ------------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        return self._bank.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self._bank.write(offset, size, value)

    # -- the timer -------------------------------------------------------------------------
    def timer_value(self) -> int:
        return pm_timer_ticks(self.clock.now) & ((1 << TIMER_BITS) - 1)

    def _arm_overflow(self) -> None:
        """TMR_STS is set when bit 23 changes: at the next multiple of 2^23 ticks."""
        if not self.en & TMR_EN:
            self._overflow.cancel()
            return
        step = 1 << (TIMER_BITS - 1)
        next_tick = (pm_timer_ticks(self.clock.now) // step + 1) * step
        self._overflow.arm(_ns_at_tick(next_tick))

    def _on_timer_msb(self) -> None:
        self.sts |= TMR_STS
        self._update_sci()
        self._arm_overflow()

    def power_button(self) -> None:
        """The fixed-feature power button is pressed (the monitor's system_powerdown): PWRBTN_STS,
        and an SCI when the OS enabled it; the OS decides what to do."""
        self.sts |= PWRBTN_STS
        self._update_sci()

    # -- SCI --------------------------------------------------------------------------------
    def _update_sci(self) -> None:
        self.sci.set(bool(self.cnt & SCI_EN and self.sts & self.en & EN_BITS))

    # -- registers ----------------------------------------------------------------------------
    def _write_sts(self, value: int) -> None:
        self.sts &= ~(value & STS_BITS)
        self._update_sci()

    def _write_en(self, value: int) -> None:
        self.en = value & EN_BITS
        self._update_sci()
        self._arm_overflow()

    def _write_cnt(self, value: int) -> None:
        self.cnt = SCI_EN | (value & CNT_WRITABLE)
        if value & SLP_EN:
            typ = (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT
            if EV_SLEEP.enabled:
                EV_SLEEP.emit(typ=typ)
            if typ in (SLP_TYP_S5, SLP_TYP_S4):
                self.on_power_off()
            else:
                trace.log("unimp", f"acpi-pm: sleep type {typ} is not offered; SLP_EN ignored")


_REGS = [
    Reg(0x0, 2, "PM1_STS", "sts", AcpiPm._write_sts),
    Reg(0x2, 2, "PM1_EN", "en", AcpiPm._write_en),
    Reg(0x4, 2, "PM1_CNT", "cnt", AcpiPm._write_cnt, partial_write=True),
    Reg(0x8, 4, "PM_TMR", AcpiPm.timer_value, None),
]
