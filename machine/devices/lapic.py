"""Local APIC of the single CPU (xAPIC register page, mapped at 0xFEE00000).

Registers are 32 bits wide at 16-byte strides; any other access width or alignment reads 0 and is
ignored (logged under guest_errors), as on an xAPIC. Interrupts the APIC itself generates (the
timer, fixed-mode LVT entries, self-IPIs through the ICR) go into IRR; `pending()` and
`acknowledge()` are the CPU's view, honouring TPR and ISR priority classes. The INIT/SIPI IPIs that
firmware broadcasts to find other CPUs reach nobody here.

Interrupts from outside (MSI writes, the IOAPIC's messages) arrive through `deliver()` after
`accepts_destination()` says the message addresses this APIC (msi.py does the decoding). The EOI
of a level-triggered vector is broadcast to `eoi_listeners` (the IOAPIC clears Remote IRR).

The timer counts the 1 GHz bus clock (one tick per virtual nanosecond, QEMU's APIC bus rate)
divided by the divide configuration. TSC-deadline mode is not offered (LVT timer bit 18 reads 0).

PIC interrupts reach the CPU through LINT0 in ExtINT mode ("virtual wire"); `lint0_extint()` tells
the board whether they pass: LINT0 unmasked in ExtINT mode, or the APIC disabled (software, by
SVR bit 8, or hardware, by the board through `hw_enabled` = IA32_APIC_BASE bit 11). After reset
LINT0 is in ExtINT mode and unmasked (as QEMU sets up the boot CPU), so the PIC works whether or
not firmware programs the APIC.
"""

from __future__ import annotations

from typing import Callable

from .. import trace
from .. import vmstate
from ..vmstate import BOOL, I64, U8, U32
from ..clock import VirtualClock
from ..irq import IrqLine
from ..regs import Reg, RegisterBank

VERSION = 0x00050014            # version 0x14, max LVT entry 5 (six LVT entries, no CMCI)

SVR_ENABLE = 0x100
SVR_WRITABLE = 0x3FF            # vector, software enable, focus processor check

LVT_MASKED = 0x10000
LVT_LEVEL = 0x8000
LVT_REMOTE_IRR = 0x4000
LVT_DELIVERY_MODE = 0x700
TIMER_PERIODIC = 0x20000

DM_FIXED = 0x000
DM_NMI = 0x400
DM_EXTINT = 0x700

LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR = range(6)
# What each LVT entry keeps of a write: vector, delivery mode, polarity, trigger, mask, timer mode.
_LVT_WRITABLE = (0x300FF, 0x107FF, 0x107FF, 0x1A7FF, 0x1A7FF, 0x100FF)
_LVT_RESET = (LVT_MASKED, LVT_MASKED, LVT_MASKED, DM_EXTINT, LVT_MASKED, LVT_MASKED)

ESR_SEND_ILLEGAL = 0x20
ESR_RECV_ILLEGAL = 0x40
ESR_ILLEGAL_REGISTER = 0x80

ICR_WRITABLE = 0x000CCFFF       # vector, delivery mode, dest mode, level, trigger, shorthand
ICR_SHORTHAND = 0xC0000
SH_NONE, SH_SELF, SH_ALL, SH_OTHERS = 0x00000, 0x40000, 0x80000, 0xC0000

BUS_NS_PER_TICK = 1

# Divide configuration register bits 3,1,0 -> divisor
_DIVIDE = {0b000: 2, 0b001: 4, 0b010: 8, 0b011: 16, 0b100: 32, 0b101: 64, 0b110: 128, 0b111: 1}

EV_LOCAL_DELIVER = trace.Event("apic_local_deliver")
EV_MEM_WRITE = trace.Event("apic_mem_writel")
EV_DELIVER_IRQ = trace.Event("apic_deliver_irq")


def _highest(bits: int) -> int:
    return bits.bit_length() - 1


class LocalApic:
    VMSTATE = vmstate.Description("apic", 1, (
        vmstate.Field("hw_enabled", BOOL),
        vmstate.Field("id", U32),
        vmstate.Field("tpr", U8),
        vmstate.Field("ldr", U32),
        vmstate.Field("dfr", U32),
        vmstate.Field("svr", U32),
        vmstate.Field("irr", vmstate.UInt(256)),
        vmstate.Field("isr", vmstate.UInt(256)),
        vmstate.Field("tmr", vmstate.UInt(256)),
        vmstate.Field("esr", U32),
        vmstate.Field("esr_pending", U32),
        vmstate.Field("icr_lo", U32),
        vmstate.Field("icr_hi", U32),
        vmstate.Field("lvt", vmstate.List(U32, len(_LVT_RESET), len(_LVT_RESET))),
        vmstate.Field("initial_count", U32),
        vmstate.Field("divide_conf", vmstate.UInt(4)),
        vmstate.Field("_start", I64),
        vmstate.Field("_lint", vmstate.LineList(2))))

    BASE = 0xFEE00000
    SIZE = 0x1000

    def __init__(self, clock: VirtualClock, irq_out: Callable[[], None] | None = None):
        self.clock = clock
        self.irq_out = irq_out
        self.hw_enabled = True
        self._timer = clock.timer(self._on_timer, "apic-timer")
        self._bank = RegisterBank(self, _REGS, "lapic", default=0)
        self._lint = [IrqLine(f"lint{i}", self._lint_sink(i)) for i in range(2)]
        self.eoi_listeners: list[Callable[[int], None]] = []   # f(vector) on a level EOI
        self.reset()

    def reset(self) -> None:
        self.id = 0
        self.tpr = 0
        self.ldr = 0
        self.dfr = 0xFFFFFFFF
        self.svr = 0xFF
        self.irr = 0
        self.isr = 0
        self.tmr = 0
        self.esr = 0                    # what the guest reads
        self.esr_pending = 0            # errors since the last ESR write
        self.icr_lo = 0
        self.icr_hi = 0
        self.lvt = list(_LVT_RESET)
        self.initial_count = 0
        self.divide_conf = 0
        self._divisor = 2
        self._start = 0                 # virtual ns at which the current count began
        self._timer.cancel()

    def post_load(self) -> None:
        self._divisor = _DIVIDE[(self.divide_conf & 3) | ((self.divide_conf >> 1) & 4)]

    # -- ops -------------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if size != 4 or offset & 0xF:
            trace.guest_error(f"lapic: {size}-byte read at {offset:#x} (only aligned 32-bit)")
            return 0
        if self._bank.lookup(offset) is None:
            self._error(ESR_ILLEGAL_REGISTER)
            return 0
        return self._bank.read(offset, 4)

    def write(self, offset: int, size: int, value: int) -> None:
        if EV_MEM_WRITE.enabled:
            EV_MEM_WRITE.emit(addr=offset, val=value)
        if size != 4 or offset & 0xF:
            trace.guest_error(f"lapic: {size}-byte write at {offset:#x} ignored (only aligned 32-bit)")
            return
        if self._bank.lookup(offset) is None:
            self._error(ESR_ILLEGAL_REGISTER)
            return
        self._bank.write(offset, 4, value)

    # -- CPU side ----------------------------------------------------------------------------
    @property
    def sw_enabled(self) -> bool:
        return bool(self.svr & SVR_ENABLE)

    def ppr(self) -> int:
        isrv = _highest(self.isr) if self.isr else 0
        if (self.tpr & 0xF0) >= (isrv & 0xF0):
            return self.tpr & 0xFF
        return isrv & 0xF0

    def pending(self) -> bool:
        """An IRR vector in a priority class above the processor priority."""
        if not self.irr or not self.hw_enabled:
            return False
        return (_highest(self.irr) & 0xF0) > (self.ppr() & 0xF0)

    def acknowledge(self) -> int | None:
        """INTA: the highest deliverable vector moves from IRR to ISR; None if nothing is."""
        if not self.pending():
            return None
        v = _highest(self.irr)
        self.irr &= ~(1 << v)
        self.isr |= 1 << v
        return v

    def lint0_extint(self) -> bool:
        """Whether the PIC's INTR reaches the CPU (virtual wire through LINT0, or APIC disabled)."""
        if not self.hw_enabled or not self.sw_enabled:
            return True
        lint0 = self.lvt[LVT_LINT0]
        return not lint0 & LVT_MASKED and lint0 & LVT_DELIVERY_MODE == DM_EXTINT

    def lint_line(self, pin: int) -> IrqLine:
        """LINT0/LINT1 input pins (for fixed-mode delivery; ExtINT is answered by lint0_extint)."""
        return self._lint[pin]

    # -- interrupts from the system bus (MSI, IOAPIC) ------------------------------------------
    def accepts_destination(self, dest: int, logical: bool) -> bool:
        """Whether a message for destination `dest` (8 bits) reaches this APIC: physical mode
        matches the APIC ID or 0xFF (broadcast); logical mode matches LDR under the flat model
        (DFR 0xF...) or the cluster model (DFR 0x0...)."""
        if not logical:
            return dest == 0xFF or dest == self.id >> 24
        if dest == 0xFF:
            return True
        ldr = self.ldr >> 24
        if self.dfr >> 28 == 0xF:                       # flat: one bit per APIC
            return bool(dest & ldr)
        return dest >> 4 == ldr >> 4 and bool(dest & ldr & 0xF)   # cluster: id, then bits

    def deliver(self, vector: int, level_triggered: bool = False) -> None:
        """A fixed (or lowest-priority: there is one CPU) interrupt from the bus: into IRR, and
        into TMR when level-triggered so that its EOI is broadcast. Ignored while the APIC is
        disabled in hardware, as such an APIC takes no messages."""
        if not self.hw_enabled:
            return
        self._accept(vector & 0xFF, level=level_triggered)

    # -- interrupt acceptance ----------------------------------------------------------------
    def _accept(self, vector: int, level: bool = False) -> None:
        if vector < 16:
            self._error(ESR_RECV_ILLEGAL)
            return
        bit = 1 << vector
        self.irr |= bit
        if level:
            self.tmr |= bit
        else:
            self.tmr &= ~bit
        if self.irq_out is not None and self.pending():
            self.irq_out()

    def _fire_lvt(self, index: int) -> None:
        entry = self.lvt[index]
        if entry & LVT_MASKED or not self.hw_enabled:
            return
        mode = entry & LVT_DELIVERY_MODE
        if EV_LOCAL_DELIVER.enabled:
            EV_LOCAL_DELIVER.emit(vector=index, lvt=entry)
        if mode == DM_FIXED:
            self._accept(entry & 0xFF, level=index in (LVT_LINT0, LVT_LINT1) and bool(entry & LVT_LEVEL))
        else:
            trace.log("unimp", f"lapic: LVT {index} delivery mode {mode >> 8} not delivered")

    def _error(self, bits: int) -> None:
        new = bits & ~self.esr_pending
        self.esr_pending |= bits
        if new:
            self._fire_lvt(LVT_ERROR)

    def _lint_sink(self, pin: int):
        def sink(level: bool) -> None:
            entry = self.lvt[LVT_LINT0 + pin]
            if level and entry & LVT_DELIVERY_MODE == DM_FIXED:
                if entry & LVT_LEVEL:
                    if entry & LVT_REMOTE_IRR:
                        return          # still being serviced
                    if not entry & LVT_MASKED:
                        self.lvt[LVT_LINT0 + pin] |= LVT_REMOTE_IRR
                self._fire_lvt(LVT_LINT0 + pin)
        return sink

    # -- timer ----------------------------------------------------------------------------------
    def _period_ns(self) -> int:
        return self.initial_count * self._divisor * BUS_NS_PER_TICK

    def current_count(self) -> int:
        initial = self.initial_count
        if not initial:
            return 0
        ticks = (self.clock.now - self._start) // (self._divisor * BUS_NS_PER_TICK)
        if self.lvt[LVT_TIMER] & TIMER_PERIODIC:
            return initial - ticks % initial
        return max(0, initial - ticks)

    def _arm_timer(self) -> None:
        if not self.initial_count:
            self._timer.cancel()
            return
        period = self._period_ns()
        elapsed = self.clock.now - self._start
        if self.lvt[LVT_TIMER] & TIMER_PERIODIC:
            self._timer.arm(self._start + (elapsed // period + 1) * period)
        elif elapsed < period:
            self._timer.arm(self._start + period)
        else:
            self._timer.cancel()

    def _on_timer(self) -> None:
        self._fire_lvt(LVT_TIMER)
        if self.lvt[LVT_TIMER] & TIMER_PERIODIC:
            self._arm_timer()

    # -- register handlers ---------------------------------------------------------------------------
    def _write_id(self, value: int) -> None:
        self.id = value & 0xFF000000

    def _write_tpr(self, value: int) -> None:
        self.tpr = value & 0xFF
        if self.irq_out is not None and self.pending():
            self.irq_out()

    def _write_eoi(self, value: int) -> None:
        if not self.isr:
            return
        v = _highest(self.isr)
        self.isr &= ~(1 << v)
        if self.tmr & (1 << v):
            self.tmr &= ~(1 << v)
            for i in (LVT_LINT0, LVT_LINT1):        # level LINT sources may request again
                if self.lvt[i] & 0xFF == v:
                    self.lvt[i] &= ~LVT_REMOTE_IRR
            for listener in self.eoi_listeners:     # the EOI message to the IOAPIC(s)
                listener(v)
        if self.irq_out is not None and self.pending():
            self.irq_out()

    def _write_ldr(self, value: int) -> None:
        self.ldr = value & 0xFF000000

    def _write_dfr(self, value: int) -> None:
        self.dfr = value | 0x0FFFFFFF

    def _write_svr(self, value: int) -> None:
        self.svr = value & SVR_WRITABLE
        if not self.svr & SVR_ENABLE:
            # Software disable masks every LVT entry; they stay masked until re-enabled and rewritten.
            self.lvt = [entry | LVT_MASKED for entry in self.lvt]

    def _write_esr(self, value: int) -> None:
        self.esr, self.esr_pending = self.esr_pending, 0

    def _write_icr_lo(self, value: int) -> None:
        self.icr_lo = value & ICR_WRITABLE      # delivery status (bit 12) always reads idle
        shorthand = value & ICR_SHORTHAND
        mode = value & LVT_DELIVERY_MODE
        if EV_DELIVER_IRQ.enabled:
            EV_DELIVER_IRQ.emit(dest=self.icr_hi >> 24, dest_mode=value >> 11 & 1, delivery_mode=mode >> 8, vector=value & 0xFF, trigger_mode=value >> 15 & 1)
        to_self = shorthand in (SH_SELF, SH_ALL) or (
            shorthand == SH_NONE and not value & 0x800 and (self.icr_hi >> 24) in (self.id >> 24, 0xFF))
        if mode == DM_FIXED:
            if (value & 0xFF) < 16:
                self._error(ESR_SEND_ILLEGAL)
                return
            if to_self:
                self._accept(value & 0xFF, level=False)
        # INIT, SIPI, NMI, ... to other CPUs: there are none.

    def _write_icr_hi(self, value: int) -> None:
        self.icr_hi = value & 0xFF000000

    def _write_initial_count(self, value: int) -> None:
        self.initial_count = value
        self._start = self.clock.now
        self._arm_timer()

    def _write_divide(self, value: int) -> None:
        current = self.current_count() if self._timer.armed else None
        self.divide_conf = value & 0xB
        self._divisor = _DIVIDE[(value & 3) | ((value >> 1) & 4)]
        if current is not None and self.initial_count:
            # Keep the count where it is; it continues at the new rate.
            done = self.initial_count - current
            self._start = self.clock.now - done * self._divisor * BUS_NS_PER_TICK
            self._arm_timer()


def _lvt_writer(index: int) -> Callable[[LocalApic, int], None]:
    def write(self: LocalApic, value: int) -> None:
        value &= _LVT_WRITABLE[index]
        if not self.sw_enabled:
            value |= LVT_MASKED
        old = self.lvt[index]
        self.lvt[index] = value | (old & LVT_REMOTE_IRR if index in (LVT_LINT0, LVT_LINT1) else 0)
        if index == LVT_TIMER and (old ^ value) & TIMER_PERIODIC:
            self._arm_timer()
    return write


def _lvt_reader(index: int) -> Callable[[LocalApic], int]:
    return lambda self: self.lvt[index]


def _bits_reader(name: str, word: int) -> Callable[[LocalApic], int]:
    """One 32-bit word of a 256-bit IRR/ISR/TMR bitmap."""
    return lambda self: (getattr(self, name) >> (32 * word)) & 0xFFFFFFFF


def _ignore(apic: LocalApic, value: int) -> None:
    trace.guest_error(f"lapic: write {value:#x} to a read-only register ignored")


_REGS = [
    Reg(0x020, 4, "ID", "id", LocalApic._write_id),
    Reg(0x030, 4, "VERSION", lambda a: VERSION, _ignore),
    Reg(0x080, 4, "TPR", "tpr", LocalApic._write_tpr),
    Reg(0x090, 4, "APR", lambda a: 0, _ignore),
    Reg(0x0A0, 4, "PPR", LocalApic.ppr, _ignore),
    Reg(0x0B0, 4, "EOI", lambda a: 0, LocalApic._write_eoi),
    Reg(0x0C0, 4, "RRD", lambda a: 0, _ignore),
    Reg(0x0D0, 4, "LDR", "ldr", LocalApic._write_ldr),
    Reg(0x0E0, 4, "DFR", "dfr", LocalApic._write_dfr),
    Reg(0x0F0, 4, "SVR", "svr", LocalApic._write_svr),
    *[Reg(0x100 + 0x10 * i, 4, f"ISR{i}", _bits_reader("isr", i), _ignore) for i in range(8)],
    *[Reg(0x180 + 0x10 * i, 4, f"TMR{i}", _bits_reader("tmr", i), _ignore) for i in range(8)],
    *[Reg(0x200 + 0x10 * i, 4, f"IRR{i}", _bits_reader("irr", i), _ignore) for i in range(8)],
    Reg(0x280, 4, "ESR", "esr", LocalApic._write_esr),
    Reg(0x300, 4, "ICR_LO", "icr_lo", LocalApic._write_icr_lo),
    Reg(0x310, 4, "ICR_HI", "icr_hi", LocalApic._write_icr_hi),
    *[Reg(0x320 + 0x10 * i, 4, f"LVT{i}", _lvt_reader(i), _lvt_writer(i)) for i in range(6)],
    Reg(0x380, 4, "TIMER_INITIAL", "initial_count", LocalApic._write_initial_count),
    Reg(0x390, 4, "TIMER_CURRENT", LocalApic.current_count, _ignore),
    Reg(0x3E0, 4, "TIMER_DIVIDE", "divide_conf", LocalApic._write_divide),
]
