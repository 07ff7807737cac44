"""isa-debug-exit."""

from machine.devices.debug_exit import DebugExit
from machine.memory import IoSpace


def test_exit_status_arithmetic_any_width():
    seen = []
    dev = DebugExit(seen.append, iosize=4)
    io_space = IoSpace()
    io_space.add("isa-debug-exit", 0xF4, dev.SIZE, dev)
    io_space.write(0xF4, 1, 0x10)
    io_space.write(0xF4, 2, 0x0)
    io_space.write(0xF6, 1, 0x7F)
    io_space.write(0xF4, 4, 0x12345678)
    assert seen == [0x21, 0x1, 0xFF, (0x12345678 << 1) | 1]
    assert io_space.read(0xF4, 4) == 0xFFFFFFFF


def test_iosize_is_the_window():
    dev = DebugExit(lambda s: None, iosize=2)
    assert dev.SIZE == 2 and DebugExit.BASE == 0x501
