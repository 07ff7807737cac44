"""The report for a fatal guest fault (exit status 2): why, the CPU mode, CS:EIP, the
instruction there and the registers. It is written from inside CPU hooks, so it never raises."""

from __future__ import annotations

from ..cpu_memory import MemoryAccessError
from .decode import format_one


def fault_report(cpu, why: str, back: int = 0) -> str:
    """A short, human-readable report: why, CPU mode, CS:EIP, the instruction, registers.
    `back`: the instruction of interest starts that many bytes before RIP (a trap such as
    `int n` or HLT leaves RIP after the instruction)."""
    try:
        regs = cpu.read_registers()
        bits = cpu.code_bits()
        lin = cpu.linear_pc() - back
        regs["rip"] -= back
        mode = cpu.mode
    except Exception as exc:                 # the report must never itself fail
        return f"{why}\n(registers unavailable: {exc})"
    try:
        code = cpu.read_virtual(lin, 16)
    except MemoryAccessError:
        code = b""
    insn = format_one(code, lin, bits) if code else f"{lin:#x}: (code not readable)"
    mode_txt = {64: "long mode, 64-bit code", 32: f"{mode} mode, 32-bit code",
                16: f"{mode} mode, 16-bit code"}[bits]
    if bits == 64:
        gprs = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10",
                "r11", "r12", "r13", "r14", "r15"]
        width = 16
    else:
        gprs = ["eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp"]
        width = 8
    lines = [why,
             f"CPU: {mode_txt}; CS:EIP = {regs['cs']:04x}:{regs['rip']:0{width}x}",
             f"instruction: {insn}"]
    row = []
    for i, name in enumerate(gprs):
        row.append(f"{name.upper()}={regs[name] & ((1 << (4 * width)) - 1):0{width}x}")
        if len(row) == 4:
            lines.append(" ".join(row))
            row = []
    lines.append(f"EFLAGS={regs['eflags']:08x} CR0={regs['cr0']:08x} CR2={regs['cr2']:x} "
                 f"CR3={regs['cr3']:x} CR4={regs['cr4']:x} EFER={regs['efer']:x}")
    lines.append(" ".join(f"{s.upper()}={regs[s]:04x}" for s in ("cs", "ds", "es", "ss", "fs", "gs")))
    lines.append(f"GDT={regs['gdtr_base']:x}/{regs['gdtr_limit']:x} IDT={regs['idtr_base']:x}/{regs['idtr_limit']:x}")
    return "\n".join(lines)
