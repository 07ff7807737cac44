"""QEMU's isa-debugcon at port 0x402: the firmware's console (SeaBIOS debug output).

A write appends the byte to the host output; a read returns 0xE9, the value firmware probes for
before it trusts the port (the Bochs "port e9 hack" convention)."""

from __future__ import annotations

from typing import BinaryIO

READBACK = 0xE9


class DebugCon:
    BASE = 0x402
    SIZE = 1

    def __init__(self, output: BinaryIO | None = None):
        self.output = output

    def reset(self) -> None:
        pass

    def read(self, offset: int, size: int) -> int:
        return READBACK

    def write(self, offset: int, size: int, value: int) -> None:
        out = self.output
        if out is None:
            return
        try:
            out.write(bytes((value & 0xFF,)))
            out.flush()
        except (OSError, ValueError):       # host side closed: drop output, never fail the guest
            self.output = None
