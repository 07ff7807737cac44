"""QEMU's isa-debug-exit: a port that ends the run with a status the guest chooses.

A write of value v, of any width, anywhere in the window, asks for exit status (v << 1) | 1, so a
guest can never make the emulator exit 0 by accident and the test harness can tell "guest said
done" from "emulator failed". The device only records the request through `on_exit`; the board
turns it into a clean stop at the next instruction boundary.
"""

from __future__ import annotations

from typing import Callable

from ..memory import ones


class DebugExit:
    BASE = 0x501        # QEMU's default iobase; tests use iobase=0xf4
    SIZE = 4            # the default iosize of this constructor (an instance carries its own)

    def __init__(self, on_exit: Callable[[int], None], iosize: int = 4):
        if not 1 <= iosize <= 4:
            raise ValueError("isa-debug-exit iosize must be 1, 2 or 4")
        self.on_exit = on_exit
        self.SIZE = iosize

    def reset(self) -> None:
        pass            # no state

    def read(self, offset: int, size: int) -> int:
        return ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.on_exit(((value & ones(size)) << 1) | 1)
