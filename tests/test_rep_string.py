"""rep stos / rep movs over RAM at host speed (machine/x86/rep_string.py, native/rep_string.c):
the native hook must leave exactly what Unicorn's element-by-element execution leaves (memory,
registers, retired instructions, and where every slice stops), only faster."""

from __future__ import annotations

import hashlib

import pytest

from asm import PM32_PROLOGUE, build_machine, result

MIB = 1 << 20

# Each case stores what it saw (RCX, RDI, RSI, a few bytes) into RESULTS and exits with 3.
PM32_PROGRAM = """
main:
    cld
    mov $0x400000, %edi             # 4 MiB of rep stosb
    mov $0x5a, %al
    mov $0x400000, %ecx
    rep stosb
    mov %edi, RESULTS + 0
    mov $0x800000, %edi             # rep stosl, a 32-bit pattern
    mov $0x11223344, %eax
    mov $0x40000, %ecx
    rep stosl
    mov %edi, RESULTS + 4
    mov $0x400000, %esi             # rep movsl, no overlap
    mov $0xc00000, %edi
    mov $0x10000, %ecx
    rep movsl
    mov %esi, RESULTS + 8
    mov %edi, RESULTS + 12
    movb $0xa7, 0x900000            # rep movsb forward onto itself + 1: repeats the byte
    mov $0x900000, %esi
    mov $0x900001, %edi
    mov $0x1000, %ecx
    rep movsb
    mov 0x900ffc, %eax
    mov %eax, RESULTS + 16
    mov $0x1234, %ecx               # rep movsw with an operand-size prefix
    mov $0x400000, %esi
    mov $0xd00000, %edi
    rep movsw
    mov %edi, RESULTS + 20
    mov $0, %ecx                    # rep with RCX = 0 does nothing
    mov $0xe00000, %edi
    rep stosb
    mov %edi, RESULTS + 24
    std                             # backwards: left to Unicorn, still correct
    mov $0xe00100, %edi
    mov $0x100, %ecx
    mov $0x77, %al
    rep stosb
    cld
    mov %edi, RESULTS + 28
    EXIT 3
"""

# Real mode: a 16-bit rep stosw whose DI wraps at 64 KiB inside ES.
REAL_PROGRAM = """
.code16
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov $0x5000, %ax
    mov %ax, %es
    mov $0xff00, %di
    mov $0x100, %cx
    mov $0xbeef, %ax
    cld
    rep stosw
    mov %di, RESULTS + 0
    mov %cx, RESULTS + 4
    EXIT 3
"""

# Self-modifying code through rep movsb: a routine runs, is overwritten by a copy, runs again.
SMC_PROGRAM = """
main:
    call routine
    mov %eax, RESULTS + 0
    mov $patch, %esi
    mov $routine, %edi
    mov $patch_end - patch, %ecx
    cld
    rep movsb
    call routine
    mov %eax, RESULTS + 4
    EXIT 3
.balign 4096
routine:
    mov $1, %eax
    ret
.balign 64
patch:
    mov $2, %eax
    ret
patch_end:
"""


def machine(tmp_path, program: str, prologue: str = PM32_PROLOGUE, accel: bool = True):
    m = build_machine(tmp_path, program, prologue=prologue)
    if m.cpu.rep_string is None:
        pytest.skip("the native helper could not be built (gcc missing)")
    m.cpu.rep_string.set_enabled(accel)
    return m


def state(m) -> tuple:
    regs = m.cpu.read_registers()
    return (m.instructions, tuple(regs[r] for r in ("rax", "rcx", "rsi", "rdi", "rip", "eflags")),
            hashlib.sha256(m.mem.buf).hexdigest())


@pytest.mark.parametrize("program,prologue", [(PM32_PROGRAM, PM32_PROLOGUE), (REAL_PROGRAM, ""),
                                              (SMC_PROGRAM, PM32_PROLOGUE)],
                         ids=["pm32", "real-wrap", "smc"])
def test_same_result_and_instruction_count_as_element_by_element(tmp_path, program, prologue):
    fast = machine(tmp_path, program, prologue)
    assert fast.run() == 7
    slow = machine(tmp_path, program, prologue, accel=False)
    assert slow.run() == 7
    assert state(fast) == state(slow)
    assert slow.cpu.rep_string.elements == 0
    assert fast.cpu.rep_string.elements > 0


def test_the_pm32_cases_compute_what_the_cpu_does(tmp_path):
    m = machine(tmp_path, PM32_PROGRAM)
    assert m.run() == 7
    assert m.cpu.rep_string.elements > 4 * MIB - 16
    assert [result(m, i) for i in range(8)] == [
        0x800000, 0x900000, 0x440000, 0xc40000, 0xa7a7a7a7, 0xd00000 + 2 * 0x1234, 0xe00000,
        0xe00000]
    assert m.mem.read(0x400000, 2) == b"\x5a\x5a" and m.mem.read(0x7fffff, 1) == b"\x5a"
    assert m.mem.read(0x8ffffc, 4) == bytes.fromhex("44332211")
    assert m.mem.read(0xe00001, 0x100) == b"\x77" * 0x100


def test_real_mode_index_wraps_at_64k(tmp_path):
    m = machine(tmp_path, REAL_PROGRAM, prologue="")
    assert m.run() == 7
    # 0x80 words up to the end of the segment, the other 0x80 from its start.
    assert result(m, 0) & 0xFFFF == 0x100 and result(m, 1) & 0xFFFF == 0
    assert m.mem.read(0x5fffe, 2) == bytes.fromhex("efbe")
    assert m.mem.read(0x500fe, 4) == bytes.fromhex("efbe0000")
    assert m.mem.read(0x60000, 2) == b"\0\0"                      # nothing beyond ES:FFFF


def test_smc_the_copied_code_runs(tmp_path):
    m = machine(tmp_path, SMC_PROGRAM)
    assert m.run() == 7
    assert (result(m, 0), result(m, 1)) == (1, 2)


def test_every_slice_stops_where_element_by_element_execution_stops(tmp_path):
    """Run in odd-sized slices: the instruction budget cuts rep instructions in the middle,
    and each stop must show the same registers and count on both paths."""
    stops = []
    for accel in (True, False):
        m = machine(tmp_path, PM32_PROGRAM, accel=accel)
        seen = []
        while True:
            status = m.run(99_991)
            regs = m.cpu.read_registers()
            seen.append((m.instructions, regs["rcx"], regs["rdi"], regs["rsi"], regs["rip"]))
            if m.stop_reason.kind != "limit":
                break
        assert status == 7
        stops.append(seen)
    assert stops[0] == stops[1]
    assert len(stops[0]) > 40


def test_a_single_step_does_one_element(tmp_path):
    m = machine(tmp_path, PM32_PROGRAM)
    rep_at = None
    for _ in range(100):
        m.run(1)
        regs = m.cpu.read_registers()
        if regs["rcx"] == 0x400000 and m.mem.read(regs["rip"], 2) == b"\xf3\xaa":
            rep_at = regs["rip"]
            break
    assert rep_at is not None
    for left in (0x3FFFFF, 0x3FFFFE):
        m.run(1)
        assert m.cpu.read_registers()["rcx"] == left


def test_stands_aside_while_a_breakpoint_is_set(tmp_path):
    m = machine(tmp_path, PM32_PROGRAM)
    m.cpu.add_breakpoint(0xFFFFF000)              # anywhere: any breakpoint turns it off
    assert m.run() == 7
    assert m.cpu.rep_string.elements == 0
    m.cpu.remove_breakpoint(0xFFFFF000)


def covers(ranges, gpa: int, size: int) -> bool:
    return any(g <= gpa and gpa + size <= g + s for g, s, _ in ranges)


@pytest.mark.parametrize("mode,readable,writable", [
    ("ram", True, True), ("ram_ro", True, False), ("ram_wo", False, True), ("bus", True, False)])
def test_direct_ranges_follow_the_shadow_window_modes(tmp_path, mode, readable, writable):
    m = machine(tmp_path, "main:\n    EXIT 3\n")
    physmem = m.cpu.physmem
    physmem.set_legacy_window(0xF0000, 0x10000, mode, 0xF0000)   # the 64 KiB ROM's alias
    rd, wr = physmem.direct_ranges()
    assert covers(rd, 0xF0000, 0x10000) == readable       # 'bus': the ROM alias reads
    assert covers(wr, 0xF0000, 0x10000) == writable
    # The hook's own tables follow at once (a PAM write happens inside a port callback).
    st = m.cpu.rep_string._state
    assert covers([(r.gpa, r.size, 0) for r in st.write[:st.nwrite]], 0xF0000, 0x10000) == writable
    assert not covers(wr, 0xA0000, 0x1000)                   # VGA window: never


SHADOW_COPY = """
main:
    cld
    mov $0x200000, %edi             # a pattern to copy
    mov $0x2000, %ecx
    mov $0x5a5aa5a5, %eax
    rep stosl
    mov $0x200000, %esi             # 32 KiB across two 16 KiB shadow windows, then back out
    mov $0xe0000, %edi
    mov $0x8000, %ecx
    rep movsb
    mov $0xe2000, %esi
    mov $0x300000, %edi
    mov $0x4000, %ecx
    rep movsb
    EXIT 3
"""


def test_a_copy_across_shadow_windows_is_done_range_by_range(tmp_path):
    states = []
    for accel in (True, False):
        m = machine(tmp_path, SHADOW_COPY, accel=accel)
        for base in (0xE0000, 0xE4000):
            m.cpu.physmem.set_legacy_window(base, 0x4000, "ram", base)
        assert m.run() == 7
        assert m.mem.buf[0xE7FFC:0xE8000] == bytes.fromhex("a5a55a5a")   # the RAM under the window
        assert m.mem.read(0x303FFC, 4) == bytes.fromhex("a5a55a5a")
        states.append(state(m))
        if accel:
            assert m.cpu.rep_string.elements >= 0x8000 + 0x4000
    assert states[0] == states[1]
