"""The guest's own symbol table, read from its ELF file (ELF32 and ELF64, little-endian): names
for the Python API, the debugger and the -d logs (`0x00101234 <vblk_init+0x14>`)."""

from __future__ import annotations

import struct
from pathlib import Path


class UnknownSymbol(LookupError):
    """A name the guest's symbol table does not have."""


SHT_SYMTAB = 2
STT_OBJECT, STT_FUNC = 1, 2


class ElfSymbols:
    """name -> (address, size) for the functions and objects of an ELF file."""

    def __init__(self, data: bytes):
        self.symbols: dict[str, tuple[int, int]] = {}
        self._cache: dict[int, str | None] = {}
        if data[:4] != b"\x7fELF" or data[5] != 1:
            raise ValueError("not a little-endian ELF file")
        is64 = data[4] == 2
        if is64:
            shoff, = struct.unpack_from("<Q", data, 0x28)
            shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
        else:
            shoff, = struct.unpack_from("<I", data, 0x20)
            shentsize, shnum = struct.unpack_from("<HH", data, 0x2E)
        sections = []
        for i in range(shnum):
            off = shoff + i * shentsize
            if off + shentsize > len(data):
                break
            if is64:
                _, stype, _, _, soff, ssize, link, _, _, entsize = struct.unpack_from("<IIQQQQIIQQ", data, off)
            else:
                _, stype, _, _, soff, ssize, link, _, _, entsize = struct.unpack_from("<IIIIIIIIII", data, off)
            sections.append((stype, soff, ssize, link, entsize))
        for stype, soff, ssize, link, entsize in sections:
            if stype != SHT_SYMTAB or link >= len(sections):
                continue
            _, stroff, strsize, _, _ = sections[link]
            strtab = data[stroff:stroff + strsize]
            entsize = entsize or (24 if is64 else 16)
            for pos in range(soff, min(soff + ssize, len(data)) - entsize + 1, entsize):
                if is64:
                    name, info, _, shndx, value, size = struct.unpack_from("<IBBHQQ", data, pos)
                else:
                    name, value, size, info, _, shndx = struct.unpack_from("<IIIBBH", data, pos)
                if shndx == 0 or info & 0xF not in (STT_OBJECT, STT_FUNC, 0) or not name:
                    continue
                end = strtab.find(b"\0", name)
                text = strtab[name:end if end >= 0 else len(strtab)].decode("utf-8", "replace")
                if text and not text.startswith("."):
                    # Global definitions win over local ones of the same name.
                    if text not in self.symbols or info >> 4 == 1:
                        self.symbols[text] = (value, size)

    @classmethod
    def from_file(cls, path: str | Path) -> "ElfSymbols":
        return cls(Path(path).read_bytes())

    def __contains__(self, name: str) -> bool:
        return name in self.symbols

    def address(self, name: str) -> int:
        try:
            return self.symbols[name][0]
        except KeyError:
            raise UnknownSymbol(f"no symbol '{name}' in the guest") from None

    def size(self, name: str) -> int:
        return self.symbols[name][1]

    def lookup(self, addr: int) -> str | None:
        """'func+0x12' for an address inside a known symbol (answers are cached: the -d logs ask
        for the same block addresses over and over)."""
        cache = self._cache
        if addr in cache:
            return cache[addr]
        name = cache[addr] = self._lookup(addr)
        return name

    def _lookup(self, addr: int) -> str | None:
        best = None
        for name, (value, size) in self.symbols.items():
            if value <= addr < value + max(size, 1) and (best is None or value > best[1]):
                best = (name, value)
        if best is None:
            return None
        return best[0] if addr == best[1] else f"{best[0]}+{addr - best[1]:#x}"
