"""A Multiboot ELF32 kernel whose .bss lies over bytes the loader wrote first: it exits (through
isa-debug-exit at 0xf4) with 9 when the loader zeroed its .bss, 5 when not.

Segments, loaded in file order by the firmware: the code at 1 MiB; `size` bytes of 0xAA at
BSS_BASE; then, at the same address, a segment with no file bytes and `size` bytes of memory:
its .bss. The code checks the first, middle and last word."""

from __future__ import annotations

import struct

MB_MAGIC = 0x1BADB002
BSS_BASE = 0x200000
CODE_BASE = 0x100000
EXIT_ZEROED, EXIT_DIRTY = 9, 5


def bss_kernel(size: int) -> bytes:
    code_off = 52 + 3 * 32 + 12
    mid, last = BSS_BASE + size // 2, BSS_BASE + size - 4
    code = (b"\xa1" + struct.pack("<I", BSS_BASE)                 # mov eax, [BSS_BASE]
            + b"\x0b\x05" + struct.pack("<I", mid)                # or eax, [mid]
            + b"\x0b\x05" + struct.pack("<I", last)               # or eax, [last]
            + b"\x75\x08"                                         # jnz dirty
            + b"\xb8" + struct.pack("<I", EXIT_ZEROED) + b"\xe7\xf4\xf4"    # exit 9
            + b"\xb8" + struct.pack("<I", EXIT_DIRTY) + b"\xe7\xf4\xf4")    # dirty: exit 5
    code_size = code_off + len(code)
    fill_off = 0x1000
    ehdr = b"\x7fELF\x01\x01\x01" + bytes(9) + struct.pack(
        "<HHIIIIIHHHHHH", 2, 3, 1, CODE_BASE + code_off, 52, 0, 0, 52, 32, 3, 0, 0, 0)
    phdrs = (struct.pack("<8I", 1, 0, CODE_BASE, CODE_BASE, code_size, code_size, 7, 0x1000)
             + struct.pack("<8I", 1, fill_off, BSS_BASE, BSS_BASE, size, size, 6, 0x1000)
             + struct.pack("<8I", 1, fill_off + size, BSS_BASE, BSS_BASE, 0, size, 6, 0x1000))
    mb = struct.pack("<3I", MB_MAGIC, 0x3, -(MB_MAGIC + 0x3) & 0xFFFFFFFF)
    head = ehdr + phdrs + mb + code
    return head + bytes(fill_off - len(head)) + b"\xaa" * size
