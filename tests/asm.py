"""Assemble small test programs into flat binaries with the system gcc/binutils.

    code = assemble(SOURCE, base=0x7c00)          # GNU as syntax (AT&T), flat binary at `base`

The source starts in the mode given by `.code16`/`.code32`/`.code64` inside it (default .code16).
Results are cached per (source, base) for the test session; builds happen in a temp dir.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from pathlib import Path

_cache: dict[str, bytes] = {}


def assemble(source: str, base: int = 0) -> bytes:
    key = hashlib.sha256(f"{base}:{source}".encode()).hexdigest()
    if key in _cache:
        return _cache[key]
    with tempfile.TemporaryDirectory(prefix="asm-") as tmp:
        d = Path(tmp)
        (d / "t.S").write_text(".code16\n" + source + "\n")
        subprocess.run(["gcc", "-m64", "-c", "-o", str(d / "t.o"), str(d / "t.S")],
                       check=True, capture_output=True, text=True)
        subprocess.run(["ld", "-m", "elf_x86_64", "--oformat", "binary", "-Ttext", hex(base),
                        "-e", "0", "-o", str(d / "t.bin"), str(d / "t.o")],
                       check=True, capture_output=True, text=True)
        data = (d / "t.bin").read_bytes()
    _cache[key] = data
    return data


def rom_image(source: str, size: int = 0x10000) -> bytes:
    """A firmware ROM of `size` bytes whose last 16 bytes are the reset vector: the source is
    assembled at the top of the 1 MiB real-mode window (ROM alias), with the code starting at
    `1M - size` and a `reset:` label that the vector at F000:FFF0 jumps to.
    Labels are offsets in real-mode segment 0xF000 (linear address = 0xF0000 + label)."""
    base = 0x10000 - size
    full = (source + f"""
        .org {size - 16}
        ljmp $0xf000, $reset
        .org {size}
    """)
    data = assemble(full, base=base)
    assert len(data) == size, len(data)
    return data



def rom_machine(tmp_path, source: str):
    """A Machine of the default configuration whose firmware is `source` (see rom_image), with
    isa-debug-exit at 0xf4 (4 ports) and COM1 discarded."""
    from machine.config import CharDev, DeviceConfig, MachineConfig
    from machine.pc import Machine

    rom = tmp_path / "rom.bin"
    rom.write_bytes(rom_image(source))
    return Machine(MachineConfig(bios=rom, serial=CharDev("null"),
                                 devices=[DeviceConfig("isa-debug-exit", {"iobase": "0xf4", "iosize": "4"})]))

# ------------------------------------------------------------------------------------------
# Building blocks for CPU tests: a ROM whose reset vector jumps to a program in RAM at
# PROGRAM_BASE (the test writes the program there before running), so program labels are plain
# absolute addresses in every CPU mode.
# ------------------------------------------------------------------------------------------

PROGRAM_BASE = 0x8000
RESULTS = 0x3000           # programs store what they observed here (u32 slots; real-mode reachable)
IDT = 0x20000
EXIT_PORT = 0xF4           # isa-debug-exit iobase the tests configure (status = (v << 1) | 1)
OUT_PORT = 0x80            # tests record bytes written here

STUB_ROM_SOURCE = f"reset: ljmp $0, ${PROGRAM_BASE:#x}\n"

# PD_CLEAR / PSE_PAGING_ON (32-bit protected mode): zero the page directory at 0x50000, then,
# once the program has filled in its entries, turn on paging from it with 4 MiB pages (CR4.PSE).
COMMON_MACROS = f"""
.set IDT, {IDT:#x}
.set RESULTS, {RESULTS:#x}
.macro EXIT code
    mov $\\code, %al
    out %al, ${EXIT_PORT:#x}
.endm
.macro OUTB val
    mov $\\val, %al
    out %al, ${OUT_PORT:#x}
.endm
.macro PD_CLEAR
    mov $0x50000, %edi
    xor %eax, %eax
    mov $1024, %ecx
    rep stosl
.endm
.macro PSE_PAGING_ON
    mov %cr4, %eax
    or $0x10, %eax
    mov %eax, %cr4
    mov $0x50000, %eax
    mov %eax, %cr3
    mov %cr0, %eax
    or $0x80000000, %eax
    mov %eax, %cr0
.endm
"""

# Real mode -> 32-bit protected mode with flat segments, an empty IDT at IDT (limit 256 gates)
# and a stack at 0x70000; continues at `main` (code32).
PM32_PROLOGUE = COMMON_MACROS + """
.code16
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov $0x7000, %sp
    lgdtl gdtr
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x08, $pm32
.code32
pm32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov $0x70000, %esp
    lidt idtr
    jmp main
.align 8
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff      # 0x08 flat 32-bit code
    .quad 0x00cf92000000ffff      # 0x10 flat data
    .quad 0x00af9a000000ffff      # 0x18 64-bit code
gdt_end:
gdtr:
    .word gdt_end - gdt - 1
    .long gdt
idtr:
    .word 256 * 8 - 1
    .long IDT
.macro SETGATE vec, handler, type=0x8e00
    movl $\\handler, %eax
    movw %ax, IDT + \\vec * 8
    movw $0x08, IDT + \\vec * 8 + 2
    movw $\\type, IDT + \\vec * 8 + 4
    shr $16, %eax
    movw %ax, IDT + \\vec * 8 + 6
.endm
"""

# From 32-bit protected mode (after PM32_PROLOGUE) into long mode: identity-mapped first GiB with
# 2 MiB pages (tables at 0x40000), 64-bit IDT at IDT (16-byte gates); continues at `main64`.
LONG_MODE = """
main:
    mov $0x40000, %edi
    xor %eax, %eax
    mov $(3 * 4096 / 4), %ecx
    rep stosl
    movl $0x41007, 0x40000        # PML4[0] -> PDPT (user-accessible, for ring-3 tests)
    movl $0x42007, 0x41000        # PDPT[0] -> PD
    mov $0x42000, %edi
    mov $0x87, %eax               # 2 MiB, present, writable, user
    mov $512, %ecx
1:  mov %eax, (%edi)
    add $0x200000, %eax
    add $8, %edi
    loop 1b
    mov $0x40000, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax                # PAE
    mov %eax, %cr4
    mov $0xc0000080, %ecx
    rdmsr
    or $0x100, %eax               # EFER.LME
    wrmsr
    mov %cr0, %eax
    or $0x80000000, %eax
    mov %eax, %cr0
    ljmpl $0x18, $lm64
.code64
lm64:
    movw $(256 * 16 - 1), idtr64
    movq $IDT, idtr64 + 2
    lidt idtr64
    jmp main64
idtr64: .skip 10
.macro SETGATE64 vec, handler, type=0x8e00
    movabs $\\handler, %rax
    movw %ax, IDT + \\vec * 16
    movw $0x18, IDT + \\vec * 16 + 2
    movw $\\type, IDT + \\vec * 16 + 4
    shr $16, %rax
    movw %ax, IDT + \\vec * 16 + 6
    shr $16, %rax
    movl %eax, IDT + \\vec * 16 + 8
.endm
"""


class PortRecorder:
    """Device ops that record bytes written to a port (and read back as 0x5A)."""

    def __init__(self):
        self.data = bytearray()

    def read(self, offset: int, size: int) -> int:
        return 0x5A

    def write(self, offset: int, size: int, value: int) -> None:
        self.data.append(value & 0xFF)


def build_machine(tmp_path, program: str, *, rom: str = STUB_ROM_SOURCE, no_reboot: bool = True,
                  ram_size: int = 32 * 1024 * 1024, prologue: str = "", icount: bool = True):
    """A Machine running `prologue + program` from PROGRAM_BASE, with isa-debug-exit at EXIT_PORT
    and a PortRecorder (returned as machine.recorder) at OUT_PORT."""
    from machine.config import CharDev, DeviceConfig, MachineConfig
    from machine.pc import Machine

    rom_path = tmp_path / "rom.bin"
    rom_path.write_bytes(rom_image(rom))
    config = MachineConfig(ram_size=ram_size, bios=rom_path, serial=CharDev("null"),
                           no_reboot=no_reboot, icount=icount,
                           devices=[DeviceConfig("isa-debug-exit", {"iobase": hex(EXIT_PORT), "iosize": "1"})])
    m = Machine(config)
    code = assemble(COMMON_MACROS + prologue + program if not prologue else prologue + program,
                    base=PROGRAM_BASE)
    m.mem.write(PROGRAM_BASE, code)
    m.recorder = PortRecorder()
    m.io.add("test-out", OUT_PORT, 1, m.recorder)
    return m


def result(m, slot: int) -> int:
    """The u32 a test program stored at RESULTS + 4 * slot."""
    return m.mem.read_u32(RESULTS + 4 * slot)
