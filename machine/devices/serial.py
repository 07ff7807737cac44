"""16550A UART (COM1).

Transmission is instantaneous: a byte written to THR goes straight to the host output, so THR and
the transmitter are always empty (LSR.THRE and LSR.TEMT read 1) and the "THR empty" interrupt is
re-armed by every THR write, as on a real chip once the byte has moved to the shift register.

Received bytes come from the host (`feed_input`) into a host-side queue and move into the receive
FIFO (16 bytes, or the 1-byte holding register with the FIFO off) as it drains: the host side
never overruns the guest. In loopback (MCR bit 4) the transmitter feeds the receiver instead, and
a full FIFO overruns (LSR.OE), as on the chip.

Interrupt identification follows the 16550 priorities: receiver line status (6) > received data
available (4) or character timeout (0xC) > THR empty (2) > modem status (0). With the FIFO on and
fewer bytes than the trigger level, the chip reports a character timeout once the line has been
idle for four character times; our line is idle at once, so we report the timeout immediately.
MCR.OUT2 does not gate the interrupt (as in QEMU), so guests written for QEMU behave the same.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, BinaryIO

from .. import trace
from .. import vmstate
from ..vmstate import BOOL, LINE, U8, U16
from ..irq import IrqLine
from ..regs import Reg, RegisterBank
from .isa import ByteWideOps

if TYPE_CHECKING:
    from ..clock import VirtualClock

# IER bits
IER_ERBFI = 0x01        # received data available
IER_ETBEI = 0x02        # THR empty
IER_ELSI = 0x04         # receiver line status
IER_EDSSI = 0x08        # modem status

# IIR interrupt ids
IIR_NONE = 0x01
IIR_LINE_STATUS = 0x06
IIR_RX_DATA = 0x04
IIR_RX_TIMEOUT = 0x0C
IIR_THRE = 0x02
IIR_MODEM = 0x00
IIR_FIFO_ON = 0xC0

# FCR bits
FCR_ENABLE = 0x01
FCR_CLEAR_RX = 0x02
FCR_CLEAR_TX = 0x04

LCR_DLAB = 0x80

MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10

LSR_DR = 0x01
LSR_OE = 0x02
LSR_ERRORS = 0x1E       # OE, PE, FE, BI: cleared by reading LSR
LSR_THRE = 0x20
LSR_TEMT = 0x40
LSR_FIFO_ERR = 0x80

# MSR: deltas in the low nibble, line states in the high nibble
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80
MSR_TERI = 0x04
# Not in loopback the host side is "connected": carrier, data set ready and clear to send.
MSR_CONNECTED = MSR_DCD | MSR_DSR | MSR_CTS

FIFO_DEPTH = 16
RX_TRIGGER = (1, 4, 8, 14)          # FCR bits 7:6
# With a clock, output is pushed to the host (flush) at each newline and otherwise once the
# guest has not finished a line for this long (virtual time: a prompt shows as soon as the
# guest stops writing, even when it then halts). A flush per byte is a system call per byte.
FLUSH_AFTER_NS = 100_000
HOST_QUEUE_LIMIT = 1 << 16          # bytes of host input held back while the guest is not reading

EV_READ = trace.Event("serial_read")
EV_WRITE = trace.Event("serial_write")


def _modem_lines(mcr: int) -> int:
    """MSR line states (high nibble) as seen with the current MCR."""
    if not mcr & MCR_LOOP:
        return MSR_CONNECTED
    # Loopback wires the modem outputs back to the inputs: RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD.
    return (((mcr & MCR_RTS) and MSR_CTS) | ((mcr & MCR_DTR) and MSR_DSR)
            | ((mcr & MCR_OUT1) and MSR_RI) | ((mcr & MCR_OUT2) and MSR_DCD))


_BYTES = [bytes((b,)) for b in range(256)]


class Uart16550:
    # What the guest sees, plus the host input not yet taken into the FIFO and whether output
    # waits for its flush timer (a timer is part of the machine's timing).
    VMSTATE = vmstate.Description("serial", 1, (
        vmstate.Field("ier", U8),
        vmstate.Field("lcr", U8),
        vmstate.Field("mcr", U8),
        vmstate.Field("scr", U8),
        vmstate.Field("fcr", U8),
        vmstate.Field("divisor", U16),
        vmstate.Field("lsr_errors", U8),
        vmstate.Field("rx", vmstate.List(U8, 1 << 20)),
        vmstate.Field("last_rx", U8),
        vmstate.Field("thr_ipending", BOOL),
        vmstate.Field("msr_delta", U8),
        vmstate.Field("_host_rx", vmstate.List(U8, 1 << 20)),
        vmstate.Field("_unflushed", BOOL),
        vmstate.Field("irq", LINE)))

    BASE = 0x3F8
    SIZE = 8
    IRQ = 4

    def __init__(self, irq: IrqLine, output: BinaryIO | None = None, clock: "VirtualClock | None" = None):
        """`output` gets every transmitted byte. Without `clock` each byte is flushed at once;
        with it, at each newline and FLUSH_AFTER_NS after an unfinished line (and by flush())."""
        self.irq = irq
        self._output = output
        self._flush_timer = clock.timer(self.flush, "serial-flush") if clock is not None else None
        self._unflushed = False
        self._host_rx: deque[int] = deque()
        self._ops = ByteWideOps(RegisterBank(self, _REGS, "serial", default=0xFF), self.SIZE)
        self.reset()

    @property
    def output(self) -> BinaryIO | None:
        return self._output

    @output.setter
    def output(self, out: BinaryIO | None) -> None:
        self.flush()                           # what the old output was given stays there
        self._output = out

    def flush(self) -> None:
        """Push transmitted bytes out to the host now (also called before exit and reports)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        if not self._unflushed:
            return
        self._unflushed = False
        try:
            self._output.flush()
        except (OSError, ValueError, AttributeError):     # host side closed: like a cut cable
            self._output = None

    def reset(self) -> None:
        self.flush()
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.scr = 0
        self.fcr = 0
        self.divisor = 12               # 9600 baud from 1.8432 MHz, what QEMU powers up with
        self.lsr_errors = 0
        self.rx: deque[int] = deque()
        self.last_rx = 0
        self.thr_ipending = False       # the THR-empty interrupt latch
        self.msr_delta = 0
        self._fill()
        self._update()

    # -- ops ------------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        value = self._ops.read(offset, size)
        if EV_READ.enabled:
            EV_READ.emit(addr=offset, value=value)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        if EV_WRITE.enabled:
            EV_WRITE.emit(addr=offset, value=value)
        self._ops.write(offset, size, value)

    # -- host side ----------------------------------------------------------------------------
    def feed_input(self, data: bytes) -> None:
        """Bytes typed on the host (-serial stdio) arrive at the receiver."""
        room = HOST_QUEUE_LIMIT - len(self._host_rx)
        if room < len(data):
            trace.log("unimp", f"serial: host input beyond {HOST_QUEUE_LIMIT} queued bytes dropped")
            data = data[:max(0, room)]
        self._host_rx.extend(data)
        self._fill()
        self._update()

    # -- internals ---------------------------------------------------------------------------
    @property
    def fifo_enabled(self) -> bool:
        return bool(self.fcr & FCR_ENABLE)

    def _capacity(self) -> int:
        return FIFO_DEPTH if self.fcr & FCR_ENABLE else 1

    def _fill(self) -> None:
        """Move waiting host bytes into the receiver (not in loopback: the line is disconnected)."""
        if self.mcr & MCR_LOOP:
            return
        host, rx, cap = self._host_rx, self.rx, self._capacity()
        while host and len(rx) < cap:
            rx.append(host.popleft())

    def _interrupt_id(self) -> int:
        ier = self.ier
        if ier & IER_ELSI and self.lsr_errors:
            return IIR_LINE_STATUS
        if ier & IER_ERBFI and self.rx:
            if self.fcr & FCR_ENABLE and len(self.rx) < RX_TRIGGER[self.fcr >> 6]:
                return IIR_RX_TIMEOUT
            return IIR_RX_DATA
        if ier & IER_ETBEI and self.thr_ipending:
            return IIR_THRE
        if ier & IER_EDSSI and self.msr_delta:
            return IIR_MODEM
        return IIR_NONE

    def _update(self) -> None:
        self.irq.set(self._interrupt_id() != IIR_NONE)

    def _transmit(self, byte: int) -> None:
        if self.mcr & MCR_LOOP:
            if len(self.rx) < self._capacity():
                self.rx.append(byte)
            else:
                self.lsr_errors |= LSR_OE      # the byte in the shift register is lost
        elif self._output is not None:
            try:
                self._output.write(_BYTES[byte])
                if self._flush_timer is None or byte == 0x0A:
                    self._unflushed = True
                    self.flush()
                elif not self._unflushed:
                    self._unflushed = True
                    self._flush_timer.arm_in(FLUSH_AFTER_NS)
            except (OSError, ValueError):      # host side closed: the byte is gone, like a cut cable
                self._output = None
        self.thr_ipending = True               # THR emptied at once

    # -- register handlers (named by what they do, dispatched from _REGS) -----------------------
    def _read_rbr(self) -> int:
        if self.lcr & LCR_DLAB:
            return self.divisor & 0xFF
        if self.rx:
            self.last_rx = self.rx.popleft()
            self._fill()
            self._update()
        return self.last_rx                    # an empty receiver keeps showing the last byte

    def _write_thr(self, value: int) -> None:
        if self.lcr & LCR_DLAB:
            self.divisor = (self.divisor & 0xFF00) | value
            return
        self._transmit(value)
        self._update()

    def _read_ier(self) -> int:
        return self.divisor >> 8 if self.lcr & LCR_DLAB else self.ier

    def _write_ier(self, value: int) -> None:
        if self.lcr & LCR_DLAB:
            self.divisor = (self.divisor & 0xFF) | (value << 8)
            return
        turned_on = value & ~self.ier
        self.ier = value & 0x0F
        if turned_on & IER_ETBEI:
            self.thr_ipending = True           # enabling ETBEI with THR empty interrupts at once
        self._update()

    def _read_iir(self) -> int:
        ident = self._interrupt_id()
        if ident == IIR_THRE:
            self.thr_ipending = False          # reading IIR with THRE as the source clears it
            self._update()
        return ident | (IIR_FIFO_ON if self.fcr & FCR_ENABLE else 0)

    def _write_fcr(self, value: int) -> None:
        if (value ^ self.fcr) & FCR_ENABLE:
            self.rx.clear()                    # switching the FIFOs on or off empties them
        elif value & FCR_CLEAR_RX:
            self.rx.clear()
        self.fcr = value & 0xC9                # enable, DMA mode, trigger level; clear bits self-reset
        self._fill()
        self._update()

    def _write_mcr(self, value: int) -> None:
        before = _modem_lines(self.mcr)
        self.mcr = value & 0x1F
        after = _modem_lines(self.mcr)
        changed = before ^ after
        delta = (changed >> 4) & 0x0B          # DCTS, DDSR, DDCD follow any change
        if before & MSR_RI and not after & MSR_RI:
            delta |= MSR_TERI                  # TERI: trailing edge of RI only
        self.msr_delta |= delta
        self._fill()
        self._update()

    def _read_lsr(self) -> int:
        lsr = LSR_THRE | LSR_TEMT | self.lsr_errors
        if self.rx:
            lsr |= LSR_DR
        if self.lsr_errors and self.fcr & FCR_ENABLE:
            lsr |= LSR_FIFO_ERR
        if self.lsr_errors:
            self.lsr_errors = 0
            self._update()
        return lsr

    def _read_msr(self) -> int:
        value = _modem_lines(self.mcr) | self.msr_delta
        if self.msr_delta:
            self.msr_delta = 0
            self._update()
        return value


def _set_lcr(uart: Uart16550, value: int) -> None:
    uart.lcr = value


_REGS = (
    Reg(0, 1, "RBR/THR/DLL", Uart16550._read_rbr, Uart16550._write_thr),
    Reg(1, 1, "IER/DLM", Uart16550._read_ier, Uart16550._write_ier),
    Reg(2, 1, "IIR/FCR", Uart16550._read_iir, Uart16550._write_fcr),
    Reg(3, 1, "LCR", "lcr", _set_lcr),
    Reg(4, 1, "MCR", "mcr", Uart16550._write_mcr),
    Reg(5, 1, "LSR", Uart16550._read_lsr, lambda uart, value: None),   # factory test register: ignored
    Reg(6, 1, "MSR", Uart16550._read_msr, lambda uart, value: None),
    Reg(7, 1, "SCR", "scr", "scr"),
)
