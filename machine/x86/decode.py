"""Instruction decoding with capstone, for the CPU layer (the length of a ROM store to skip, the
kind of a string store) and the debugger above it (operands, disassembly).

`bits` is the width the CPU decodes at the address (16 in real mode or a 16-bit segment,
32 in protected mode, 64 in long mode); the CPU layer knows it, capstone cannot guess it.
"""

from __future__ import annotations

from functools import lru_cache

import capstone


@lru_cache(maxsize=None)
def engine(bits: int) -> capstone.Cs:
    mode = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}[bits]
    cs = capstone.Cs(capstone.CS_ARCH_X86, mode)
    cs.detail = True
    return cs


def decode_one(code: bytes, address: int, bits: int):
    """The first instruction of `code` as a capstone instruction, or None if it does not decode."""
    for insn in engine(bits).disasm(code, address, 1):
        return insn
    return None


def instruction_length(code: bytes, address: int, bits: int) -> int | None:
    insn = decode_one(code, address, bits)
    return None if insn is None else insn.size


def string_op(code: bytes, address: int, bits: int) -> tuple[str, int, bool] | None:
    """For a string store (stos/movs), (kind, element size, has rep prefix); else None."""
    insn = decode_one(code, address, bits)
    if insn is None:
        return None
    m = insn.mnemonic.split()
    rep = m[0] in ("rep", "repe", "repne", "repz", "repnz")
    op = m[-1]
    for kind in ("stos", "movs"):
        if op.startswith(kind) and len(op) == len(kind) + 1 and op[-1] in "bwdq":
            return kind, {"b": 1, "w": 2, "d": 4, "q": 8}[op[-1]], rep
    return None


def format_one(code: bytes, address: int, bits: int) -> str:
    """`address: bytes  mnemonic operands`, or the raw bytes marked undecodable."""
    insn = decode_one(code, address, bits)
    if insn is None:
        return f"{address:#x}: {code[:8].hex(' ')}  (undecodable)"
    return f"{address:#x}: {insn.bytes.hex(' '):<24} {insn.mnemonic} {insn.op_str}".rstrip()
