"""A small AML encoder: the terms a static DSDT needs (ACPI 6.5, chapter 20 "ACPI Machine
Language Specification"; resource descriptors from section 6.4).

Every function returns the encoded bytes of one term, so a namespace is written as nested calls:

    scope("\\\\_SB", device("PCI0", name("_HID", eisa_id("PNP0A03")), ...))

Integers pick the shortest encoding (ZeroOp, OneOp, Byte/Word/DWord/QWordPrefix); names are
NameStrings ("\\\\_SB.PCI0", "^ISA", "COM1"), each segment padded to four characters with '_'.
"""

from __future__ import annotations

import struct

ZERO_OP, ONE_OP = b"\x00", b"\x01"
BYTE_PREFIX, WORD_PREFIX, DWORD_PREFIX, STRING_PREFIX, QWORD_PREFIX = 0x0A, 0x0B, 0x0C, 0x0D, 0x0E
NAME_OP, SCOPE_OP, BUFFER_OP, PACKAGE_OP, METHOD_OP, RETURN_OP = 0x08, 0x10, 0x11, 0x12, 0x14, 0xA4
EXT_OP_PREFIX, DEVICE_OP = 0x5B, 0x82
DUAL_NAME_PREFIX, MULTI_NAME_PREFIX = 0x2E, 0x2F
ROOT_CHAR, PARENT_PREFIX = b"\\", b"^"

_LEAD_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NAME_CHARS = _LEAD_CHARS | set("0123456789")


def pkg_length(body_len: int) -> bytes:
    """PkgLength for a body of `body_len` bytes; the length it encodes counts itself."""
    if body_len + 1 < 0x40:
        return bytes([body_len + 1])
    for extra in (1, 2, 3):
        total = body_len + 1 + extra
        if total < 1 << (4 + 8 * extra):
            lead = (extra << 6) | (total & 0xF)
            return bytes([lead]) + (total >> 4).to_bytes(extra, "little")
    raise ValueError(f"AML package of {body_len} bytes is too long")


def _name_seg(seg: str) -> bytes:
    if not 1 <= len(seg) <= 4 or seg[0] not in _LEAD_CHARS or any(c not in _NAME_CHARS for c in seg):
        raise ValueError(f"bad AML name segment {seg!r}")
    return seg.ljust(4, "_").encode()


def name_string(path: str) -> bytes:
    """'\\\\_SB.PCI0' (absolute), '^^FOO' (parent), 'FOO' or 'A.B.C' (relative)."""
    prefix = b""
    if path.startswith("\\"):
        prefix, path = ROOT_CHAR, path[1:]
    else:
        while path.startswith("^"):
            prefix += PARENT_PREFIX
            path = path[1:]
    segs = [s for s in path.split(".")] if path else []
    if not segs:
        return prefix + ZERO_OP                 # NullName
    body = b"".join(_name_seg(s) for s in segs)
    if len(segs) == 1:
        return prefix + body
    if len(segs) == 2:
        return prefix + bytes([DUAL_NAME_PREFIX]) + body
    return prefix + bytes([MULTI_NAME_PREFIX, len(segs)]) + body


def integer(value: int) -> bytes:
    if value < 0 or value >= 1 << 64:
        raise ValueError(f"AML integer {value} out of range")
    if value == 0:
        return ZERO_OP
    if value == 1:
        return ONE_OP
    for prefix, fmt, limit in ((BYTE_PREFIX, "<B", 1 << 8), (WORD_PREFIX, "<H", 1 << 16),
                               (DWORD_PREFIX, "<I", 1 << 32), (QWORD_PREFIX, "<Q", 1 << 64)):
        if value < limit:
            return bytes([prefix]) + struct.pack(fmt, value)
    raise AssertionError("unreachable")


def string(text: str) -> bytes:
    data = text.encode("ascii")
    if b"\0" in data:
        raise ValueError("AML strings cannot hold NUL")
    return bytes([STRING_PREFIX]) + data + b"\0"


def eisa_id(text: str) -> bytes:
    """EisaId("PNP0A03"): three letters of 5 bits and four hex digits, as a DWord."""
    if len(text) != 7 or not text[:3].isalpha() or not text[:3].isupper():
        raise ValueError(f"bad EISA id {text!r}")
    letters = ((ord(text[0]) - 0x40) << 10) | ((ord(text[1]) - 0x40) << 5) | (ord(text[2]) - 0x40)
    digits = int(text[3:], 16)
    return integer(int.from_bytes(struct.pack(">HH", letters, digits), "little"))


def buffer(data: bytes) -> bytes:
    body = integer(len(data)) + data
    return bytes([BUFFER_OP]) + pkg_length(len(body)) + body


def package(*elements: bytes) -> bytes:
    if len(elements) > 255:
        raise ValueError("a Package holds at most 255 elements (use VarPackage)")
    body = bytes([len(elements)]) + b"".join(elements)
    return bytes([PACKAGE_OP]) + pkg_length(len(body)) + body


def name(path: str, value: bytes) -> bytes:
    return bytes([NAME_OP]) + name_string(path) + value


def scope(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([SCOPE_OP]) + pkg_length(len(body)) + body


def device(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([EXT_OP_PREFIX, DEVICE_OP]) + pkg_length(len(body)) + body


def method(path: str, args: int, *terms: bytes, serialized: bool = False) -> bytes:
    if not 0 <= args <= 7:
        raise ValueError("a method takes 0 to 7 arguments")
    body = name_string(path) + bytes([args | (8 if serialized else 0)]) + b"".join(terms)
    return bytes([METHOD_OP]) + pkg_length(len(body)) + body


def return_(value: bytes) -> bytes:
    return bytes([RETURN_OP]) + value


# -- resource descriptors (section 6.4) --------------------------------------------------------

RES_MEMORY, RES_IO, RES_BUS = 0, 1, 2
# General flags of an address space descriptor: a bridge window decoded positively, fixed bounds.
ADDR_PRODUCER_FIXED = 0x0C           # _MAF | _MIF, positive decode, producer
IO_RANGE_ENTIRE = 0x03               # type-specific flags of an I/O window: ISA and non-ISA ranges
MEM_CACHEABLE_RW = 0x03              # type-specific flags of a memory window: cacheable, read/write


def io_port(base: int, length: int, align: int = 1) -> bytes:
    """IO(Decode16, base, base, align, length): a fixed 16-bit I/O range."""
    return struct.pack("<BBHHBB", 0x47, 0x01, base, base, align, length)


def irq_no_flags(*irqs: int) -> bytes:
    """IRQNoFlags(){...}: edge-triggered, active-high ISA interrupts."""
    mask = 0
    for irq in irqs:
        mask |= 1 << irq
    return struct.pack("<BH", 0x22, mask)


def word_space(kind: int, minimum: int, maximum: int, type_flags: int = 0) -> bytes:
    return struct.pack("<BHBBBHHHHH", 0x88, 13, kind, ADDR_PRODUCER_FIXED, type_flags, 0,
                       minimum, maximum, 0, maximum - minimum + 1)


def dword_memory(minimum: int, maximum: int) -> bytes:
    return struct.pack("<BHBBBIIIII", 0x87, 23, RES_MEMORY, ADDR_PRODUCER_FIXED, MEM_CACHEABLE_RW, 0,
                       minimum, maximum, 0, maximum - minimum + 1)


def qword_memory(minimum: int, maximum: int) -> bytes:
    return struct.pack("<BHBBBQQQQQ", 0x8A, 43, RES_MEMORY, ADDR_PRODUCER_FIXED, MEM_CACHEABLE_RW, 0,
                       minimum, maximum, 0, maximum - minimum + 1)


def resource_template(*descriptors: bytes) -> bytes:
    """ResourceTemplate(){...}: the descriptors and an End Tag, as a Buffer. The End Tag's
    checksum byte is 0, which means "the descriptors are valid" without one."""
    return buffer(b"".join(descriptors) + b"\x79\x00")
