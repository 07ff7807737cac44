"""The 8042 keyboard controller (ports 0x60/0x64) with a PS/2 keyboard and no mouse, as far as
firmware and operating systems probe and use them.

Port 0x64 read: status. Bit 0 OBF (a byte waits at 0x60), 1 IBF (always 0: we take bytes at
once), 2 system flag (set by the self-test / CTR bit 2), 3 last write was a command, 4 keyboard
not inhibited, 5 the waiting byte is from the auxiliary (mouse) port, 6 timeout (a byte for the
mouse, which is absent).
Port 0x64 write: a controller command; port 0x60 write: that command's parameter, or else a
byte for the keyboard. Port 0x60 read: the waiting byte (the last one again when empty).

Controller commands (8042 / PS/2 conventions): 0x20 read and 0x60 write the command byte (CTR:
bit 0 keyboard IRQ1, bit 1 mouse IRQ12, bit 2 system flag, bit 4 keyboard clock off, bit 5
mouse clock off, bit 6 scan code translation); 0xA7/0xA8 mouse port off/on, 0xA9 mouse port
test, 0xAA self-test (0x55), 0xAB keyboard port test, 0xAD/0xAE keyboard port off/on, 0xC0
input port, 0xD0/0xD1 read/write the output port (bit 0 low = system reset, bit 1 A20),
0xD2/0xD3 echo a byte as if from the keyboard/mouse, 0xD4 send a byte to the mouse, 0xF0-0xFF
pulse output port bits low (bit 0: reset the system).

Keyboard commands: 0xFF reset (ACK, then 0xAA: self-test passed), 0xF5/0xF4 scanning off/on,
0xF6 defaults, 0xF2 identify (AB 83), 0xF0 scan code set, 0xED LEDs, 0xF3 typematic, 0xEE echo;
anything else gets RESEND (0xFE). The keyboard has no keys wired to the host (COM1 is the
console): it only answers.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from .. import trace, vmstate
from ..irq import IrqLine
from ..vmstate import BOOL, LINE, U8
from ..memory import ones

ST_OBF = 0x01
ST_SYS = 0x04
ST_CMD = 0x08
ST_UNLOCKED = 0x10
ST_AUX = 0x20
ST_TIMEOUT = 0x40

CTR_KBD_INT = 0x01
CTR_AUX_INT = 0x02
CTR_SYS = 0x04
CTR_KBD_OFF = 0x10
CTR_AUX_OFF = 0x20
CTR_XLATE = 0x40
CTR_RESET = CTR_KBD_INT | CTR_AUX_INT | CTR_XLATE      # what a PC BIOS leaves, as QEMU starts

OUT_RESET = 0x01          # output port bit 0: 0 holds the CPU in reset
OUT_A20 = 0x02
OUT_PORT_RESET = OUT_RESET | OUT_A20

ACK, RESEND, BAT_OK, ECHO = 0xFA, 0xFE, 0xAA, 0xEE
SELF_TEST_OK = 0x55
PORT_TEST_OK = 0x00

KBD, AUX = "kbd", "aux"
QUEUE_MAX = 16            # the keyboard's own buffer; more is dropped, as the device would


class I8042:
    # A command waiting for its parameter byte is saved as its command byte.
    VMSTATE = vmstate.Description("i8042", 1, (
        vmstate.Field("queue", vmstate.List(vmstate.Tuple(U8, vmstate.Choice(KBD, AUX)), QUEUE_MAX)),
        vmstate.Field("last", U8), vmstate.Field("status", U8), vmstate.Field("ctr", U8),
        vmstate.Field("output_port", U8),
        vmstate.Field("pending_command", vmstate.Optional(U8)),
        vmstate.Field("kbd_pending_command", vmstate.Optional(U8)),
        vmstate.Field("scanning", BOOL), vmstate.Field("scancode_set", U8),
        vmstate.Field("irq1", LINE), vmstate.Field("irq12", LINE)))

    DATA = 0x60
    STATUS = 0x64

    def __init__(self, irq1: IrqLine, irq12: IrqLine, on_reset: Callable[[], None]):
        self.irq1 = irq1
        self.irq12 = irq12
        self.on_reset = on_reset
        self.data_ops = _Port(self.read_data, self.write_data)
        self.cmd_ops = _Port(self.read_status, self.write_command)
        # controller commands: byte -> (handler, takes a parameter byte at 0x60)
        self._commands: dict[int, tuple[Callable[..., None], bool]] = {
            0x20: (lambda: self._reply(self.ctr), False),
            0x60: (self._set_ctr, True),
            0xA7: (lambda: self._ctr_bits(CTR_AUX_OFF, True), False),
            0xA8: (lambda: self._ctr_bits(CTR_AUX_OFF, False), False),
            0xA9: (lambda: self._reply(PORT_TEST_OK), False),
            0xAA: (self._self_test, False),
            0xAB: (lambda: self._reply(PORT_TEST_OK), False),
            0xAD: (lambda: self._ctr_bits(CTR_KBD_OFF, True), False),
            0xAE: (lambda: self._ctr_bits(CTR_KBD_OFF, False), False),
            0xC0: (lambda: self._reply(0x00), False),
            0xD0: (lambda: self._reply(self.output_port), False),
            0xD1: (self._set_output_port, True),
            0xD2: (lambda b: self._push(b, KBD), True),
            0xD3: (lambda b: self._push(b, AUX), True),
            0xD4: (self._to_mouse, True),
        }
        # keyboard commands: byte -> (handler, takes a parameter byte)
        self._kbd_commands: dict[int, tuple[Callable[..., None], bool]] = {
            0xFF: (self._kbd_reset, False),
            0xF6: (self._kbd_defaults, False),
            0xF5: (lambda: self._kbd_scan(False), False),
            0xF4: (lambda: self._kbd_scan(True), False),
            0xF2: (lambda: self._kbd_reply(ACK, 0xAB, 0x83), False),
            0xEE: (lambda: self._kbd_reply(ECHO), False),
            0xF0: (self._kbd_scancode_set, True),
            0xED: (lambda b: self._kbd_reply(ACK), True),
            0xF3: (lambda b: self._kbd_reply(ACK), True),
        }
        self.reset()

    def reset(self) -> None:
        self.queue: deque[tuple[int, str]] = deque()
        self.last = 0
        self.status = ST_UNLOCKED
        self.ctr = CTR_RESET
        self.output_port = OUT_PORT_RESET
        self.pending: Callable[[int], None] | None = None     # a controller command's parameter
        self.kbd_pending: Callable[[int], None] | None = None  # a keyboard command's parameter
        self.scanning = True
        self.scancode_set = 2
        self._update_irq()

    # -- saved state: a pending parameter handler by its command byte ------------------------
    @staticmethod
    def _command_of(table: dict, handler) -> int | None:
        if handler is None:
            return None
        return next(cmd for cmd, (fn, _) in table.items() if fn is handler)

    @property
    def pending_command(self) -> int | None:
        return self._command_of(self._commands, self.pending)

    @pending_command.setter
    def pending_command(self, cmd: int | None) -> None:
        self.pending = None if cmd is None else self._commands[cmd][0]

    @property
    def kbd_pending_command(self) -> int | None:
        return self._command_of(self._kbd_commands, self.kbd_pending)

    @kbd_pending_command.setter
    def kbd_pending_command(self, cmd: int | None) -> None:
        self.kbd_pending = None if cmd is None else self._kbd_commands[cmd][0]

    def vmstate_check(self, values: dict) -> None:
        for field, table in (("pending_command", self._commands), ("kbd_pending_command", self._kbd_commands)):
            cmd = values[field]
            if cmd is not None and not table.get(cmd, (None, False))[1]:
                raise vmstate.VMStateError(f"i8042: {cmd:#x} is not a command that takes a parameter")

    # -- output buffer and interrupts -------------------------------------------------------
    def _push(self, byte: int, source: str) -> None:
        if len(self.queue) >= QUEUE_MAX:
            trace.guest_error("i8042: output buffer overrun, byte dropped")
            return
        self.queue.append((byte & 0xFF, source))
        self._update_irq()

    def _reply(self, byte: int) -> None:
        """A controller answer: it goes ahead of nothing, it is simply the next byte."""
        self._push(byte, KBD)

    def _update_irq(self) -> None:
        source = self.queue[0][1] if self.queue else None
        self.irq1.set(source == KBD and bool(self.ctr & CTR_KBD_INT))
        self.irq12.set(source == AUX and bool(self.ctr & CTR_AUX_INT))

    # -- ports --------------------------------------------------------------------------------
    def read_status(self) -> int:
        status = self.status & ~(ST_OBF | ST_AUX)
        if self.queue:
            status |= ST_OBF | (ST_AUX if self.queue[0][1] == AUX else 0)
        return status

    def read_data(self) -> int:
        if self.queue:
            self.last = self.queue.popleft()[0]
            self._update_irq()
        return self.last

    def write_command(self, value: int) -> None:
        self.status |= ST_CMD
        self.pending = None
        if 0xF0 <= value <= 0xFF:                 # pulse output port bits low for ~6 us
            if not value & OUT_RESET:
                self.on_reset()
            return
        entry = self._commands.get(value)
        if entry is None:
            trace.guest_error(f"i8042: unknown controller command {value:#04x} ignored")
            return
        handler, wants_param = entry
        if wants_param:
            self.pending = handler
        else:
            handler()

    def write_data(self, value: int) -> None:
        self.status &= ~ST_CMD
        if self.pending is not None:
            handler, self.pending = self.pending, None
            handler(value)
            return
        self._to_keyboard(value)

    # -- controller commands --------------------------------------------------------------------
    def _set_ctr(self, value: int) -> None:
        self.ctr = value
        self.status = (self.status & ~ST_SYS) | (ST_SYS if value & CTR_SYS else 0)
        self._update_irq()

    def _ctr_bits(self, bits: int, on: bool) -> None:
        self.ctr = (self.ctr | bits) if on else (self.ctr & ~bits)
        self._update_irq()

    def _self_test(self) -> None:
        self.status |= ST_SYS
        self.ctr |= CTR_SYS
        self._reply(SELF_TEST_OK)

    def _set_output_port(self, value: int) -> None:
        self.output_port = value
        if not value & OUT_A20:
            trace.log("unimp", "i8042: A20 disabled by the guest; this machine keeps A20 on")
        if not value & OUT_RESET:
            self.on_reset()

    def _to_mouse(self, value: int) -> None:
        # No mouse on the auxiliary port: the byte times out, as on a PC without one.
        self.status |= ST_TIMEOUT

    # -- the keyboard ---------------------------------------------------------------------------
    def _kbd_reply(self, *data: int) -> None:
        for byte in data:
            self._push(byte, KBD)

    def _to_keyboard(self, value: int) -> None:
        self.status &= ~ST_TIMEOUT
        if self.kbd_pending is not None:
            handler, self.kbd_pending = self.kbd_pending, None
            handler(value)
            return
        entry = self._kbd_commands.get(value)
        if entry is None:
            self._kbd_reply(RESEND)
            return
        handler, wants_param = entry
        if wants_param:
            self._kbd_reply(ACK)
            self.kbd_pending = handler
        else:
            handler()

    def _kbd_reset(self) -> None:
        self._kbd_defaults(ack=False)
        self.queue = deque(item for item in self.queue if item[1] != KBD)
        self._kbd_reply(ACK, BAT_OK)

    def _kbd_defaults(self, ack: bool = True) -> None:
        self.scanning = True
        self.scancode_set = 2
        if ack:
            self._kbd_reply(ACK)

    def _kbd_scan(self, on: bool) -> None:
        self.scanning = on
        self._kbd_reply(ACK)

    def _kbd_scancode_set(self, value: int) -> None:
        if value == 0:
            self._kbd_reply(ACK, self.scancode_set)
        elif value in (1, 2, 3):
            self.scancode_set = value
            self._kbd_reply(ACK)
        else:
            self._kbd_reply(RESEND)


class _Port:
    """Device ops for one of the two ports (each a single byte; wider accesses see the
    neighbouring ports as nothing)."""
    SIZE = 1

    def __init__(self, read: Callable[[], int], write: Callable[[int], None]):
        self._read = read
        self._write = write

    def read(self, offset: int, size: int) -> int:
        return self._read() | (ones(size) & ~0xFF)

    def write(self, offset: int, size: int, value: int) -> None:
        self._write(value & 0xFF)
