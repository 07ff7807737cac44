"""A tiny x86 encoder for 32-bit flat protected-mode code: just the instructions the fuzz
programs need (port I/O, loads and stores of every width through EBX, string stores), written
as bytes so a hypothesis example costs no assembler run.

Registers by number: eax=0 ecx=1 edx=2 ebx=3 esp=4 ebp=5 esi=6 edi=7.
"""

from __future__ import annotations

import struct

EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI = range(8)
OPSIZE = b"\x66"


def mov_imm(reg: int, value: int) -> bytes:
    """mov $value, %reg (32-bit)."""
    return bytes([0xB8 + reg]) + struct.pack("<I", value & 0xFFFFFFFF)


def out_dx(size: int) -> bytes:
    """out %al/%ax/%eax, %dx."""
    return {1: b"\xee", 2: OPSIZE + b"\xef", 4: b"\xef"}[size]


def in_dx(size: int) -> bytes:
    """in %dx, %al/%ax/%eax."""
    return {1: b"\xec", 2: OPSIZE + b"\xed", 4: b"\xed"}[size]


def port_out(port: int, size: int, value: int) -> bytes:
    return mov_imm(EDX, port & 0xFFFF) + mov_imm(EAX, value) + out_dx(size)


def port_in(port: int, size: int) -> bytes:
    return mov_imm(EDX, port & 0xFFFF) + in_dx(size)


def store(addr: int, size: int, value: int) -> bytes:
    """A store of `size` bytes (1, 2, 4, or 8 through the x87 unit: fild/fistp) at `addr`."""
    code = mov_imm(EBX, addr) + mov_imm(EAX, value)
    if size == 1:
        return code + b"\x88\x03"                    # mov %al, (%ebx)
    if size == 2:
        return code + OPSIZE + b"\x89\x03"           # mov %ax, (%ebx)
    if size == 4:
        return code + b"\x89\x03"                    # mov %eax, (%ebx)
    # 8 bytes: push the value twice-halved on the stack, fild it, fistp to the target
    return (code + mov_imm(ECX, value >> 32) + b"\x51\x50"   # push %ecx; push %eax
            + b"\xdf\x2c\x24"                        # fildq (%esp)
            + b"\xdf\x3b"                            # fistpq (%ebx)
            + b"\x83\xc4\x08")                       # add $8, %esp


def load(addr: int, size: int) -> bytes:
    code = mov_imm(EBX, addr)
    if size == 1:
        return code + b"\x8a\x03"                    # mov (%ebx), %al
    if size == 2:
        return code + OPSIZE + b"\x8b\x03"           # mov (%ebx), %ax
    if size == 4:
        return code + b"\x8b\x03"                    # mov (%ebx), %eax
    return code + b"\xdf\x2b" + b"\xdd\xd8"          # fildq (%ebx); fstp %st(0)


def cmpxchg8b(addr: int) -> bytes:
    """An 8-byte locked read-modify-write at `addr`."""
    return mov_imm(EBX, addr) + mov_imm(ESI, addr) + b"\xf0\x0f\xc7\x0e"   # lock cmpxchg8b (%esi)


def rep_stos(addr: int, count: int, size: int, value: int) -> bytes:
    """cld; rep stos{b,w,l} of `value` at `addr`, `count` elements."""
    op = {1: b"\xaa", 2: OPSIZE + b"\xab", 4: b"\xab"}[size]
    return (b"\xfc" + mov_imm(EDI, addr) + mov_imm(ECX, count) + mov_imm(EAX, value)
            + b"\xf3" + op)


def rep_movs(dst: int, src: int, count: int, size: int) -> bytes:
    op = {1: b"\xa4", 2: OPSIZE + b"\xa5", 4: b"\xa5"}[size]
    return b"\xfc" + mov_imm(EDI, dst) + mov_imm(ESI, src) + mov_imm(ECX, count) + b"\xf3" + op


def rep_outs(port: int, src: int, count: int, size: int) -> bytes:
    op = {1: b"\x6e", 2: OPSIZE + b"\x6f", 4: b"\x6f"}[size]
    return b"\xfc" + mov_imm(EDX, port) + mov_imm(ESI, src) + mov_imm(ECX, count) + b"\xf3" + op


def rep_ins(port: int, dst: int, count: int, size: int) -> bytes:
    op = {1: b"\x6c", 2: OPSIZE + b"\x6d", 4: b"\x6d"}[size]
    return b"\xfc" + mov_imm(EDX, port) + mov_imm(EDI, dst) + mov_imm(ECX, count) + b"\xf3" + op


STI = b"\xfb"
CLI = b"\xfa"
HLT = b"\xf4"
NOP = b"\x90"
PAUSE = b"\xf3\x90"


def jmp_self() -> bytes:
    return b"\xeb\xfe"
