"""Instruction decoding with capstone, for the fatal fault report and the debugger (operands,
disassembly).

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


def format_one(code: bytes, address: int, bits: int) -> str:
    """`address: bytes  mnemonic operands`, or the raw bytes marked undecodable."""
    insn = decode_one(code, address, bits)
    if insn is None:
        return f"{address:#x}: {code[:8].hex(' ')}  (undecodable)"
    return f"{address:#x}: {insn.bytes.hex(' '):<24} {insn.mnemonic} {insn.op_str}".rstrip()
