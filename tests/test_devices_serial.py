"""16550A UART driven through its ports."""

import io

from machine.devices.serial import Uart16550
from machine.irq import IrqLine

THR = RBR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR, MCR, LSR, MSR, SCR = 3, 4, 5, 6, 7


def make():
    out = io.BytesIO()
    irq = IrqLine("irq4")
    return Uart16550(irq, out), irq, out


def test_transmit_goes_to_output_and_lsr_is_always_ready():
    uart, irq, out = make()
    for b in b"hi\n":
        uart.write(THR, 1, b)
    assert out.getvalue() == b"hi\n"
    assert uart.read(LSR, 1) == 0x60
    assert not irq.level


def test_divisor_latch_hides_data_registers():
    uart, _, out = make()
    uart.write(IER, 1, 0x05)
    uart.write(LCR, 1, 0x83)          # DLAB, 8N1
    uart.write(DLL, 1, 0x01)
    uart.write(DLM, 1, 0x00)
    assert (uart.read(DLL, 1), uart.read(DLM, 1)) == (0x01, 0x00)
    assert uart.divisor == 1 and out.getvalue() == b""
    uart.write(LCR, 1, 0x03)
    assert uart.read(IER, 1) == 0x05 and uart.read(LCR, 1) == 0x03


def test_scratch_register_and_seabios_detection():
    uart, _, _ = make()
    uart.write(SCR, 1, 0x5A)
    assert uart.read(SCR, 1) == 0x5A
    uart.write(IER, 1, 0x02)
    assert uart.read(IER, 1) == 0x02
    assert uart.read(IIR, 1) & 0x3F == 0x02       # SeaBIOS's detect_serial check
    uart.write(IER, 1, 0)


def test_loopback_receives_own_bytes_and_wires_modem_lines():
    uart, irq, out = make()
    uart.write(MCR, 1, 0x10)
    uart.read(MSR, 1)
    uart.write(THR, 1, 0xAE)
    assert out.getvalue() == b""
    assert uart.read(LSR, 1) & 0x01
    assert uart.read(RBR, 1) == 0xAE
    assert not uart.read(LSR, 1) & 0x01
    uart.write(MCR, 1, 0x10 | 0x0F)               # DTR RTS OUT1 OUT2 -> DSR CTS RI DCD
    msr = uart.read(MSR, 1)
    assert msr & 0xF0 == 0xF0 and msr & 0x0B == 0x0B
    assert uart.read(MSR, 1) & 0x0F == 0          # deltas clear on read
    uart.write(MCR, 1, 0x10 | 0x0B)               # RI falls: trailing edge
    assert uart.read(MSR, 1) & 0x04


def test_loopback_overrun_sets_oe_and_line_status_interrupt():
    uart, irq, _ = make()
    uart.write(MCR, 1, 0x10)
    uart.write(IER, 1, 0x04)
    uart.write(THR, 1, 1)
    uart.write(THR, 1, 2)                         # no FIFO: holding register already full
    assert irq.level and uart.read(IIR, 1) == 0x06
    assert uart.read(LSR, 1) & 0x02
    assert uart.read(LSR, 1) & 0x02 == 0          # cleared by reading LSR
    assert not irq.level
    assert uart.read(RBR, 1) == 1


def test_thre_interrupt_rules():
    uart, irq, _ = make()
    uart.write(IER, 1, 0x02)                      # enabling ETBEI with THR empty interrupts at once
    assert irq.level
    assert uart.read(IIR, 1) == 0x02
    assert not irq.level                          # reading IIR cleared it
    assert uart.read(IIR, 1) == 0x01
    uart.write(THR, 1, ord("x"))                  # THR empties again: interrupt again
    assert irq.level
    uart.write(IER, 1, 0)
    assert not irq.level


def test_iir_priorities():
    uart, irq, _ = make()
    uart.write(MCR, 1, 0x10)
    uart.write(IER, 1, 0x0F)
    uart.write(THR, 1, 7)                         # RX data + THRE pending
    uart.write(THR, 1, 8)                         # + overrun
    uart.write(MCR, 1, 0x11)                      # + modem status delta
    assert uart.read(IIR, 1) == 0x06              # line status first
    uart.read(LSR, 1)
    assert uart.read(IIR, 1) == 0x04              # then received data
    uart.read(RBR, 1)
    assert uart.read(IIR, 1) == 0x02              # then THR empty (cleared by this read)
    assert uart.read(IIR, 1) == 0x00              # then modem status
    uart.read(MSR, 1)
    assert uart.read(IIR, 1) == 0x01 and not irq.level


def test_fifo_trigger_level_and_host_input():
    uart, irq, _ = make()
    uart.write(FCR, 1, 0x81)                      # FIFO on, trigger 8
    uart.write(IER, 1, 0x01)
    assert uart.read(IIR, 1) == 0xC1
    uart.feed_input(b"abc")
    assert irq.level and uart.read(IIR, 1) == 0xCC   # below trigger: character timeout
    uart.feed_input(b"defghijklmnopqrstu")            # 21 bytes: 16 in the FIFO, 5 wait
    assert uart.read(IIR, 1) == 0xC4
    got = bytes(uart.read(RBR, 1) for _ in range(21))
    assert got == b"abcdefghijklmnopqrstu"
    assert not uart.read(LSR, 1) & 1 and not irq.level


def test_fcr_clears_receive_fifo_and_reset():
    uart, irq, _ = make()
    uart.write(FCR, 1, 0x01)
    uart.write(MCR, 1, 0x10)
    uart.write(THR, 1, 1)
    uart.write(FCR, 1, 0x03)
    assert not uart.read(LSR, 1) & 1
    uart.write(IER, 1, 0x02)
    uart.reset()
    assert uart.read(IER, 1) == 0 and uart.read(IIR, 1) == 0x01 and not irq.level


def test_wide_access_splits_into_bytes():
    uart, _, _ = make()
    uart.write(LCR, 2, 0x1003)                    # LCR = 3, MCR = 0x10
    assert uart.read(LCR, 2) == 0x1003
    assert uart.read(7, 2) == 0xFF00              # SCR, then a port that is not ours


def test_closed_output_does_not_raise():
    out = io.BytesIO()
    uart = Uart16550(IrqLine(), out)
    out.close()
    uart.write(THR, 1, 0x41)
    assert uart.read(LSR, 1) == 0x60
