"""The 8042 keyboard controller and its PS/2 keyboard, as firmware probes them (SeaBIOS's
ps2port setup sequence) and as operating systems reboot through them."""

from machine.devices.i8042 import I8042
from machine.irq import IrqLine


def make():
    resets = []
    irq1, irq12 = IrqLine("irq1"), IrqLine("irq12")
    kbc = I8042(irq1, irq12, lambda: resets.append(1))
    return kbc, irq1, irq12, resets


def cmd(kbc, value, param=None):
    kbc.cmd_ops.write(0, 1, value)
    if param is not None:
        kbc.data_ops.write(0, 1, param)


def drain(kbc):
    out = []
    while kbc.cmd_ops.read(0, 1) & 0x01:
        out.append(kbc.data_ops.read(0, 1))
    return out


def test_seabios_probe_sequence():
    kbc, irq1, _, _ = make()
    cmd(kbc, 0x60, 0x30)                       # CTR: both ports off, no IRQs (as firmware does)
    cmd(kbc, 0xAD)
    cmd(kbc, 0xA7)
    assert drain(kbc) == []                    # flush finds nothing
    cmd(kbc, 0xAA)
    assert drain(kbc) == [0x55]
    assert kbc.cmd_ops.read(0, 1) & 0x04       # system flag after the self-test
    cmd(kbc, 0xAB)
    assert drain(kbc) == [0x00]
    cmd(kbc, 0xAE)
    kbc.data_ops.write(0, 1, 0xFF)             # keyboard reset: ACK then BAT passed
    assert drain(kbc) == [0xFA, 0xAA]
    kbc.data_ops.write(0, 1, 0xF5)
    kbc.data_ops.write(0, 1, 0xF0)
    kbc.data_ops.write(0, 1, 0x02)
    assert drain(kbc) == [0xFA, 0xFA, 0xFA]
    kbc.data_ops.write(0, 1, 0xF0)
    kbc.data_ops.write(0, 1, 0x00)             # which set? 2
    assert drain(kbc) == [0xFA, 0xFA, 0x02]    # each byte acknowledged, then the set
    kbc.data_ops.write(0, 1, 0xF2)
    assert drain(kbc) == [0xFA, 0xAB, 0x83]
    kbc.data_ops.write(0, 1, 0x42)             # not a command: resend
    assert drain(kbc) == [0xFE]
    cmd(kbc, 0x20)
    assert drain(kbc) == [0x24]                # mouse port still off, keyboard on, system flag
    assert not irq1.level


def test_irq1_follows_the_output_buffer_when_enabled():
    kbc, irq1, irq12, _ = make()
    cmd(kbc, 0x60, 0x01)                       # keyboard interrupt on
    kbc.data_ops.write(0, 1, 0xEE)             # echo
    assert irq1.level and not irq12.level
    assert kbc.data_ops.read(0, 1) == 0xEE
    assert not irq1.level
    assert kbc.data_ops.read(0, 1) == 0xEE     # an empty buffer reads the last byte again
    cmd(kbc, 0xD3, 0x99)                       # as if from the mouse: IRQ12 when enabled
    assert not irq12.level and kbc.cmd_ops.read(0, 1) & 0x21 == 0x21
    cmd(kbc, 0x60, 0x03)
    assert kbc.data_ops.read(0, 1) == 0x99
    assert not irq12.level


def test_no_mouse_means_timeout():
    kbc, *_ = make()
    cmd(kbc, 0xD4, 0xFF)
    assert kbc.cmd_ops.read(0, 1) & 0x40 and drain(kbc) == []


def test_reset_through_the_controller():
    kbc, _, _, resets = make()
    cmd(kbc, 0xFE)                             # pulse output port bit 0
    assert resets == [1]
    cmd(kbc, 0xFF)                             # pulses nothing
    assert resets == [1]
    cmd(kbc, 0xD1, 0x03)                       # A20 on, reset line high: nothing
    assert resets == [1]
    cmd(kbc, 0xD0)
    assert drain(kbc) == [0x03]
    cmd(kbc, 0xD1, 0x02)                       # reset line low
    assert resets == [1, 1]


def test_any_byte_anywhere_is_safe_and_bounded():
    kbc, *_ = make()
    for a in range(256):
        for b in (0x00, 0x02, 0xD2, 0xFF):
            kbc.cmd_ops.write(0, 1, a)
            kbc.data_ops.write(0, 2, b)
            kbc.data_ops.write(0, 1, a)
        assert len(kbc.queue) <= 16
        assert kbc.cmd_ops.read(0, 2) >> 8 == 0xFF   # wider reads: the next port is not ours
    kbc.reset()
    assert drain(kbc) == []
