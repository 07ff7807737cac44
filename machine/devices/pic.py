"""Two cascaded 8259A programmable interrupt controllers (master 0x20, slave 0xA0 on master IR2)
plus the PIIX edge/level control registers (ELCR, 0x4D0/0x4D1).

Per chip: IRR (requests), ISR (in service), IMR (mask). Priority is rotating: `lowest` is the
input with the lowest priority (7 after initialisation); priority order starts at lowest + 1.

Triggering follows the PIIX: the ELCR bit selects level mode per input (ICW1.LTIM is ignored, as
on the PIIX). Edge mode latches a rising edge in IRR until it is acknowledged; level mode makes
IRR follow the line. A request that has gone away by the INTA cycle gives the spurious IR7 vector
with no ISR bit set (on the slave: IR15, with the master's IR2 in service, as on real hardware).

CPU side: `pending()` is the INTR pin, `acknowledge()` the INTA cycle.
"""

from __future__ import annotations

from typing import Callable

from .. import trace
from .. import vmstate
from ..irq import IrqLine
from ..vmstate import BOOL, U8
from ..regs import Reg, RegisterBank
from .isa import ByteWideOps

EV_INTERRUPT = trace.Event("pic_interrupt")
EV_SET_IRQ = trace.Event("pic_set_irq")

ICW1_IC4 = 0x01
ICW1_SNGL = 0x02
ICW1_INIT = 0x10
ICW4_AEOI = 0x02
ICW4_SFNM = 0x10
OCW3_SELECT = 0x08
OCW3_POLL = 0x04
OCW3_READ_REG = 0x02
OCW3_READ_ISR = 0x01
OCW3_SET_SMM = 0x60
OCW3_RESET_SMM = 0x40

CASCADE_IRQ = 2


def _priority(chip: "Pic8259", bits: int) -> int:
    """Priority rank (0 = highest) of the best input in `bits`, or 8 when none."""
    if not bits:
        return 8
    start = (chip.lowest + 1) & 7
    for rank in range(8):
        if bits & (1 << ((start + rank) & 7)):
            return rank
    return 8


class Pic8259:
    """One 8259A; its ops cover the command (+0) and data (+1) ports at `BASE`."""
    SIZE = 2

    def __init__(self, name: str, elcr_mask: int, is_master: bool, base: int):
        self.BASE = base
        self.name = name
        self.elcr_mask = elcr_mask
        self.is_master = is_master
        self.elcr = 0
        # The cascade input follows the slave's INT level: a slave request withdrawn before INTA
        # takes the master's IR2 request with it (the 8259's "input must stay high until INTA").
        self.level_inputs = 1 << CASCADE_IRQ if is_master else 0
        self.lines = 0                  # current input levels
        self.on_change = None           # set by DualPic: re-evaluate the cascade
        self._ops = ByteWideOps(RegisterBank(self, _CHIP_REGS, name, default=0xFF), 2)
        self.reset()

    def reset(self) -> None:
        """Power-on: everything masked until the guest initialises the chip (ICW1 unmasks), so
        an uninitialised PIC never delivers an interrupt with a meaningless vector."""
        self._initialise()
        self.imr = 0xFF
        self.init_step = 0

    def _initialise(self) -> None:
        """The ICW1 reset: edge sense, IMR, ISR and priority cleared, IRR selected for reads."""
        self.irr = 0
        self.isr = 0
        self.imr = 0
        self.lowest = 7
        self.vector_base = 0
        self.read_isr = False
        self.poll = False
        self.special_mask = False
        self.auto_eoi = False
        self.rotate_on_aeoi = False
        self.special_fully_nested = False
        self.init_step = 0              # 0: running; 2, 3, 4: waiting for that ICW
        self.single = False
        self.icw4_needed = False
        self.irr = self.lines & (self.elcr | self.level_inputs)

    # -- ops -----------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        return self._ops.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self._ops.write(offset, size, value)

    # -- inputs --------------------------------------------------------------------------
    def set_input(self, n: int, level: bool) -> None:
        if EV_SET_IRQ.enabled and bool(self.lines >> n & 1) != bool(level):     # changes only
            EV_SET_IRQ.emit(master=self.is_master, irq=n if self.is_master else n + 8, level=level)
        bit = 1 << n
        level_mode = (self.elcr | self.level_inputs) & bit
        if level:
            if not self.lines & bit or level_mode:
                self.irr |= bit         # rising edge, or level held
            self.lines |= bit
        else:
            self.lines &= ~bit
            if level_mode:
                self.irr &= ~bit        # level mode: the request goes with the line
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # -- priority resolution ---------------------------------------------------------------
    def best_request(self) -> int:
        """The input that would interrupt now, or -1."""
        requests = self.irr & ~self.imr
        if not requests:
            return -1
        rank = _priority(self, requests)
        in_service = self.isr
        if self.special_mask:
            in_service &= ~self.imr     # masked inputs in service do not block lower ones
        if self.special_fully_nested and self.is_master:
            in_service &= ~(1 << CASCADE_IRQ)   # more slave requests may nest (SFNM)
        if rank < _priority(self, in_service):
            return (self.lowest + 1 + rank) & 7
        return -1

    def ack(self, n: int) -> None:
        """INTA for input n: IRR -> ISR (or straight to done with automatic EOI)."""
        bit = 1 << n
        if not (self.elcr | self.level_inputs) & bit:
            self.irr &= ~bit            # an edge request is consumed; a level one stays while held
        if self.auto_eoi:
            if self.rotate_on_aeoi:
                self.lowest = n
        else:
            self.isr |= bit

    def _eoi(self, n: int, rotate: bool) -> None:
        self.isr &= ~(1 << n)
        if rotate:
            self.lowest = n

    def _highest_in_service(self) -> int:
        rank = _priority(self, self.isr)
        return -1 if rank == 8 else (self.lowest + 1 + rank) & 7

    # -- registers -------------------------------------------------------------------------
    def _read_command(self) -> int:
        if self.poll:
            self.poll = False
            n = self.best_request()
            if n < 0:
                return 0x00
            self.ack(n)
            self._changed()
            return 0x80 | n
        return self.isr if self.read_isr else self.irr

    def _write_command(self, value: int) -> None:
        if value & ICW1_INIT:
            self._icw1(value)
        elif value & OCW3_SELECT:
            self._ocw3(value)
        else:
            self._ocw2(value)
        self._changed()

    def _icw1(self, value: int) -> None:
        self._initialise()
        self.single = bool(value & ICW1_SNGL)
        self.icw4_needed = bool(value & ICW1_IC4)
        self.init_step = 2

    def _ocw2(self, value: int) -> None:
        op = value >> 5
        level = value & 7
        if op == 0b001:                 # non-specific EOI
            n = self._highest_in_service()
            if n >= 0:
                self._eoi(n, rotate=False)
        elif op == 0b011:               # specific EOI
            self._eoi(level, rotate=False)
        elif op == 0b101:               # rotate on non-specific EOI
            n = self._highest_in_service()
            if n >= 0:
                self._eoi(n, rotate=True)
        elif op == 0b111:               # rotate on specific EOI
            self._eoi(level, rotate=True)
        elif op == 0b100:
            self.rotate_on_aeoi = True
        elif op == 0b000:
            self.rotate_on_aeoi = False
        elif op == 0b110:               # set priority: `level` becomes the lowest
            self.lowest = level
        # 0b010: no operation

    def _ocw3(self, value: int) -> None:
        if value & OCW3_POLL:
            self.poll = True
        if value & OCW3_READ_REG:
            self.read_isr = bool(value & OCW3_READ_ISR)
        if value & OCW3_SET_SMM == OCW3_SET_SMM:
            self.special_mask = True
        elif value & OCW3_SET_SMM == OCW3_RESET_SMM:
            self.special_mask = False

    def _read_data(self) -> int:
        if self.poll:
            return self._read_command()
        return self.imr

    def _write_data(self, value: int) -> None:
        step = self.init_step
        if step == 0:
            self.imr = value                        # OCW1
        elif step == 2:
            self.vector_base = value & 0xF8         # ICW2
            self.init_step = 3 if not self.single else (4 if self.icw4_needed else 0)
        elif step == 3:
            # ICW3 (cascade wiring) is fixed by the board: master IR2 <- slave ID 2.
            self.init_step = 4 if self.icw4_needed else 0
        elif step == 4:
            self.auto_eoi = bool(value & ICW4_AEOI)
            self.special_fully_nested = bool(value & ICW4_SFNM)
            self.init_step = 0
        self._changed()

    def set_elcr(self, value: int) -> None:
        self.elcr = value & self.elcr_mask
        # Inputs switched to level mode request while high; switched to edge they keep what they latched.
        self.irr |= self.lines & self.elcr
        self._changed()


_CHIP_REGS = (
    Reg(0, 1, "command", Pic8259._read_command, Pic8259._write_command),
    Reg(1, 1, "data", Pic8259._read_data, Pic8259._write_data),
)


class _ElcrOps:
    """0x4D0 (master inputs 0-7) and 0x4D1 (slave inputs 8-15)."""
    BASE = 0x4D0
    SIZE = 2

    def __init__(self, pic: "DualPic"):
        self._pic = pic
        self._ops = ByteWideOps(RegisterBank(self, (
            Reg(0, 1, "elcr1", lambda o: o._pic.master.elcr, lambda o, v: o._pic.master.set_elcr(v)),
            Reg(1, 1, "elcr2", lambda o: o._pic.slave.elcr, lambda o, v: o._pic.slave.set_elcr(v)),
        ), "elcr", default=0xFF), self.SIZE)

    def read(self, offset: int, size: int) -> int:
        return self._ops.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self._ops.write(offset, size, value)


_CHIP_STATE = vmstate.Description("i8259", 1, tuple(vmstate.Field(n, k) for n, k in (
    ("elcr", U8), ("lines", U8), ("irr", U8), ("isr", U8), ("imr", U8), ("lowest", vmstate.UInt(3)),
    ("vector_base", U8), ("read_isr", BOOL), ("poll", BOOL), ("special_mask", BOOL),
    ("auto_eoi", BOOL), ("rotate_on_aeoi", BOOL), ("special_fully_nested", BOOL),
    ("init_step", U8), ("single", BOOL), ("icw4_needed", BOOL))))


class DualPic:
    # Both chips and the input lines' levels (the chips' `lines` say the same from their side).
    VMSTATE = vmstate.Description("pic", 1, (
        vmstate.Field("master", vmstate.Struct(_CHIP_STATE)),
        vmstate.Field("slave", vmstate.Struct(_CHIP_STATE)),
        vmstate.Field("_lines", vmstate.LineList(16))))

    MASTER_BASE = 0x20
    SLAVE_BASE = 0xA0
    ELCR_BASE = 0x4D0
    SIZE = 2
    BASE = MASTER_BASE

    def __init__(self):
        # IRQ0, 1, 2 (master) and 8, 13 (slave) are edge-only on the PIIX: their ELCR bits are fixed 0.
        self.master = Pic8259("pic-master", elcr_mask=0xF8, is_master=True, base=self.MASTER_BASE)
        self.slave = Pic8259("pic-slave", elcr_mask=0xDE, is_master=False, base=self.SLAVE_BASE)
        self.slave.on_change = self._cascade
        self.master.on_change = self._master_changed
        # The board may set this to hear when INTR may have risen (e.g. to end an idle wait early).
        self.on_intr: Callable[[], None] | None = None
        self.master_ops = self.master
        self.slave_ops = self.slave
        self.elcr_ops = _ElcrOps(self)
        self._lines = [IrqLine(f"irq{n}", self._sink(n)) for n in range(16)]

    def _sink(self, n: int):
        chip, pin = (self.master, n) if n < 8 else (self.slave, n - 8)
        return lambda level: chip.set_input(pin, level)

    def _master_changed(self) -> None:
        if self.on_intr is not None and self.master.best_request() >= 0:
            self.on_intr()

    def _cascade(self) -> None:
        self.master.set_input(CASCADE_IRQ, self.slave.best_request() >= 0)

    def vmstate_check(self, values: dict) -> None:
        for chip in ("master", "slave"):
            if values[chip]["init_step"] not in (0, 2, 3, 4):
                raise vmstate.VMStateError(f"pic.{chip}: init_step {values[chip]['init_step']} is not 0, 2, 3 or 4")

    def irq_line(self, n: int) -> IrqLine:
        if not 0 <= n < 16:
            raise ValueError(f"PIC input {n} out of range")
        return self._lines[n]

    def reset(self) -> None:
        for chip in (self.master, self.slave):
            chip.elcr = 0
            chip.reset()
        self._cascade()

    # -- CPU side ----------------------------------------------------------------------------
    def pending(self) -> bool:
        """The INTR pin: the master has a request above everything in service."""
        return self.master.best_request() >= 0

    def acknowledge(self) -> int | None:
        """The INTA cycle: the vector to deliver (a spurious IR7/IR15 one if the request vanished)."""
        master, slave = self.master, self.slave
        n = master.best_request()
        if n < 0:
            irq, vector = 7, master.vector_base + 7             # spurious: no ISR bit
        else:
            master.ack(n)
            if n == CASCADE_IRQ:
                s = slave.best_request()
                if s < 0:
                    irq, vector = 15, slave.vector_base + 7     # spurious on the slave
                else:
                    slave.ack(s)
                    irq, vector = 8 + s, slave.vector_base + s
                self._cascade()
            else:
                irq, vector = n, master.vector_base + n
        if EV_INTERRUPT.enabled:
            EV_INTERRUPT.emit(irq=irq, intno=vector)
        return vector
