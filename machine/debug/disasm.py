"""Disassembly of guest code for the monitor and `-d in_asm` (decoding itself, and the one-line
form the fault report uses, are machine/x86/decode.py, which the CPU layer uses too)."""

from __future__ import annotations

from ..x86.decode import engine


def disassemble(code: bytes, address: int, bits: int, count: int = 10) -> list[str]:
    """Up to `count` lines of disassembly starting at `address`."""
    lines = []
    for insn in engine(bits).disasm(code, address, count):
        lines.append(f"{insn.address:#x}: {insn.bytes.hex(' '):<24} {insn.mnemonic} {insn.op_str}".rstrip())
    return lines


def instructions(code: bytes, address: int, bits: int):
    """Capstone instructions decoded from `code` (stops at the first undecodable byte)."""
    return engine(bits).disasm(code, address)
