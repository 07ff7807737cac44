"""COM1 output flushing: with a clock the UART pushes output to the host per line and when the
guest stops writing, not per byte; no byte is ever held back inside the UART, so nothing is
lost at exit or at a fatal stop."""

import io

from asm import PM32_PROLOGUE, build_machine

from machine.clock import VirtualClock
from machine.devices.serial import FLUSH_AFTER_NS, Uart16550
from machine.irq import IrqLine


class CountingOutput(io.BytesIO):
    """Records how often it was flushed and what had arrived by the last flush."""

    def __init__(self):
        super().__init__()
        self.flushes = 0
        self.flushed = b""

    def flush(self):
        self.flushes += 1
        self.flushed = self.getvalue()


def send(uart, text: bytes) -> None:
    for b in text:
        uart.write(0, 1, b)


def test_without_a_clock_every_byte_is_flushed():
    out = CountingOutput()
    uart = Uart16550(IrqLine(), out)
    send(uart, b"ab")
    assert out.flushes == 2 and out.flushed == b"ab"


def test_with_a_clock_output_is_flushed_per_line_and_when_the_guest_stops_writing():
    clock = VirtualClock()
    out = CountingOutput()
    uart = Uart16550(IrqLine(), out, clock=clock)
    send(uart, b"hello\nwor")
    assert out.getvalue() == b"hello\nwor"           # every byte reached the host stream at once
    assert out.flushes == 1 and out.flushed == b"hello\n"
    assert clock.next_deadline() == FLUSH_AFTER_NS
    clock.advance_to(FLUSH_AFTER_NS - 1)
    assert out.flushed == b"hello\n"
    clock.advance_to(FLUSH_AFTER_NS)                 # the guest went quiet: "wor" shows
    assert out.flushes == 2 and out.flushed == b"hello\nwor"
    assert clock.next_deadline() is None
    send(uart, b"ld\n")                              # the newline flush disarms the timer
    assert out.flushed == b"hello\nworld\n" and clock.next_deadline() is None


def test_reset_and_a_new_output_flush_what_was_written():
    clock = VirtualClock()
    first, second = CountingOutput(), CountingOutput()
    uart = Uart16550(IrqLine(), first, clock=clock)
    send(uart, b"x")
    uart.output = second
    assert first.flushed == b"x"
    send(uart, b"y")
    uart.reset()
    assert second.flushed == b"y"


def test_a_closed_host_stream_drops_output_without_errors():
    clock = VirtualClock()
    out = CountingOutput()
    uart = Uart16550(IrqLine(), out, clock=clock)
    send(uart, b"a")
    out.close()
    send(uart, b"b\n")
    clock.advance_to(10 * FLUSH_AFTER_NS)
    assert uart.output is None


COM2 = 0x2F8


def machine_with_buffered_com2(tmp_path, program):
    m = build_machine(tmp_path, program, prologue=PM32_PROLOGUE)
    out = io.BytesIO()
    m.io.add("com2", COM2, 8, Uart16550(IrqLine(), out, clock=m.clock))
    return m, out


def test_output_is_complete_at_exit(tmp_path):
    m, out = machine_with_buffered_com2(tmp_path, f"""
    main:
        mov ${COM2:#x}, %dx
        mov $'o', %al
        out %al, %dx
        mov $'k', %al
        out %al, %dx
        EXIT 0
    """)
    assert m.run(100_000) == 1
    assert out.getvalue() == b"ok"


def test_output_is_complete_at_a_fatal_stop(tmp_path):
    m, out = machine_with_buffered_com2(tmp_path, f"""
    main:
        mov ${COM2:#x}, %dx
        mov $'!', %al
        out %al, %dx
        lidt bad_idt
        ud2                             # no usable IDT: the machine stops with a fault report
    bad_idt:
        .word 0
        .long 0
    """)
    assert m.run(100_000) != 0
    assert m.stop_reason.kind == "fault"
    assert out.getvalue() == b"!"
