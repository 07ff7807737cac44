"""What the ISA bus does to a wide access aimed at a byte-wide device.

The legacy PC devices (UART, CMOS, 8259, 8254, ...) have 8-bit registers on consecutive ports. The
bus splits a 16- or 32-bit IN/OUT into byte cycles, low byte first, on consecutive ports, so an
`outw 0x70, ax` writes the CMOS index (AL) and then the data port (AH). `ByteWideOps` gives a
`RegisterBank` of 1-byte registers that behaviour; bytes that fall past the device's window read
as open bus (0xFF) and are dropped on write (they belong to whatever decodes the next port).
"""

from __future__ import annotations

from ..regs import RegisterBank


class ByteWideOps:
    __slots__ = ("bank", "size")

    def __init__(self, bank: RegisterBank, size: int):
        self.bank = bank
        self.size = size

    def read(self, offset: int, size: int) -> int:
        bank = self.bank
        if size == 1:
            return bank.read(offset, 1)
        value = 0
        for i in range(size):
            o = offset + i
            value |= (bank.read(o, 1) if o < self.size else 0xFF) << (8 * i)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        bank = self.bank
        if size == 1:
            bank.write(offset, 1, value & 0xFF)
            return
        for i in range(size):
            o = offset + i
            if o < self.size:
                bank.write(o, 1, (value >> (8 * i)) & 0xFF)
