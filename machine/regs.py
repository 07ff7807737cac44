"""Registers described as data.

A device lists its registers once, as a table of `Reg(offset, size, name, read, write)`, and a
`RegisterBank` does the dispatch: exact-width accesses go to the register, narrower accesses
inside a register read (or, where the register allows it, read-modify-write) the containing
bytes, and accesses that hit no register read as `default` and are ignored on write (reported
under `-d guest_errors`).

`read` is an attribute name on the owner, or a callable `f(owner) -> int`.
`write` is an attribute name (plain store), a callable `f(owner, value)`, or None (read-only:
writes are ignored, as the spec asks of read-only fields).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Union

from . import trace

Reader = Union[str, Callable[[Any], int], None]
Writer = Union[str, Callable[[Any, int], None], None]


@dataclass(frozen=True)
class Reg:
    offset: int
    size: int
    name: str
    read: Reader = None
    write: Writer = None
    # Allow 1/2-byte writes into a wider register (read-modify-write). Off by default: most
    # device registers take effect on a write of their full width only.
    partial_write: bool = False

    @property
    def end(self) -> int:
        return self.offset + self.size


class RegisterBank:
    def __init__(self, owner: Any, regs: Iterable[Reg], name: str = "", default: int = 0):
        self.owner = owner
        self.name = name or type(owner).__name__
        self.default = default
        self.regs = sorted(regs, key=lambda r: r.offset)
        self._by_byte: dict[int, Reg] = {}
        for r in self.regs:
            for b in range(r.offset, r.end):
                if b in self._by_byte:
                    raise ValueError(f"{self.name}: {r.name} overlaps {self._by_byte[b].name}")
                self._by_byte[b] = r
        self._exact = {(r.offset, r.size): r for r in self.regs}

    def _get(self, reg: Reg) -> int:
        rd = reg.read
        if rd is None:
            return 0
        if isinstance(rd, str):
            return int(getattr(self.owner, rd))
        return int(rd(self.owner))

    def _put(self, reg: Reg, value: int) -> None:
        wr = reg.write
        if wr is None:
            trace.guest_error(f"{self.name}: write {value:#x} to read-only {reg.name} ignored")
        elif isinstance(wr, str):
            setattr(self.owner, wr, value)
        else:
            wr(self.owner, value)

    def read(self, offset: int, size: int) -> int:
        reg = self._exact.get((offset, size))
        if reg is not None:
            return self._get(reg) & ((1 << (8 * size)) - 1)
        reg = self._by_byte.get(offset)
        if reg is not None and offset + size <= reg.end:
            shift = 8 * (offset - reg.offset)
            return (self._get(reg) >> shift) & ((1 << (8 * size)) - 1)
        # Straddling or unknown: assemble byte by byte so neighbouring registers still answer.
        value = 0
        for i in range(size):
            r = self._by_byte.get(offset + i)
            byte = self.default & 0xFF if r is None else (self._get(r) >> (8 * (offset + i - r.offset))) & 0xFF
            value |= byte << (8 * i)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        reg = self._exact.get((offset, size))
        if reg is not None:
            self._put(reg, value & ((1 << (8 * size)) - 1))
            return
        reg = self._by_byte.get(offset)
        if reg is not None and offset + size <= reg.end and reg.partial_write:
            shift = 8 * (offset - reg.offset)
            mask = ((1 << (8 * size)) - 1) << shift
            self._put(reg, (self._get(reg) & ~mask) | ((value << shift) & mask))
            return
        where = reg.name if reg is not None else "no register"
        trace.guest_error(f"{self.name}: {size}-byte write {value:#x} at {offset:#x} ({where}) ignored")

    def lookup(self, offset: int) -> Reg | None:
        return self._by_byte.get(offset)
