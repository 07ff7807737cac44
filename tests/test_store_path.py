"""Stores to RAM pages without translated code take the TLB fast path (machine/store_path.py),
and code the guest rewrites after running it is still seen: at its own address, through
another linear address of the same page, and with the same results and instruction counts as
without the fast path."""

import gc

import pytest
from unicorn import Uc
from unicorn import unicorn_const as UC

from asm import PM32_PROLOGUE, build_machine, result
from machine import store_path
from machine.toolchain import ToolchainError

# Writes `mov $1, %eax; ret` at 0x9000, calls it at CALL, rewrites the immediate (2, 3, ...)
# through 0x9000 and calls it at CALL again, eight times; the sum of the results in RESULTS.
# With paging, 0 and 4 MiB both map physical 0 (4 MiB pages): CALL 0x409000 is an alias.
def smc_program(paging: bool) -> str:
    setup = """
        PD_CLEAR
        movl $0x83, 0x50000                 # 0-4 MiB -> 0
        movl $0x83, 0x50004                 # 4-8 MiB -> 0 as well
        PSE_PAGING_ON
    """ if paging else ""
    target = 0x409000 if paging else 0x9000
    return f"""
    main:
        {setup}
        mov $0x200000, %edi                 # first, 64 KiB of plain data stores
        mov $0x4000, %ecx
    1:  mov %ecx, (%edi)
        add $4, %edi
        loop 1b
        movl $0x0001b8, 0x9000              # mov $1, %eax
        movw $0xc300, 0x9004                # ...; ret
        xor %ebx, %ebx
        mov $1, %esi
    2:  mov $0x{target:x}, %edx
        call *%edx
        add %eax, %ebx
        inc %esi
        mov %esi, 0x9001                    # the next immediate
        cmp $9, %esi
        jne 2b
        mov %ebx, RESULTS
        EXIT 0
    """


def run(tmp_path, paging: bool, fast_path: bool, monkeypatch):
    if not fast_path:
        monkeypatch.setattr(store_path, "attach", lambda *a: None)
    m = build_machine(tmp_path, smc_program(paging), prologue=PM32_PROLOGUE)
    monkeypatch.undo()
    assert m.run(2_000_000) == 1
    return m


@pytest.mark.parametrize("paging", [False, True], ids=["flat", "alias"])
def test_rewritten_code_is_seen_with_the_same_counts(tmp_path, paging, monkeypatch):
    try:
        store_path.library()
    except ToolchainError:
        pytest.skip("the native helpers cannot be built here")
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    on = run(tmp_path / "on", paging, True, monkeypatch)
    off = run(tmp_path / "off", paging, False, monkeypatch)
    assert result(on, 0) == result(off, 0) == sum(range(1, 9))
    assert on.instructions == off.instructions
    assert on.cpu.physmem.store_path.cleaned > 0
    assert on.cpu.physmem.store_path.code_pages > 0
    assert off.cpu.physmem.store_path is None


def test_states_go_with_their_engines():
    """More engines than the native table holds, one after the other: each state is freed
    with its engine, so none is refused."""
    try:
        store_path.library()
    except ToolchainError:
        pytest.skip("the native helpers cannot be built here")
    ram = bytearray(0x1000)
    import ctypes
    base = ctypes.addressof(ctypes.c_char.from_buffer(ram))
    for _ in range(1100):
        uc = Uc(UC.UC_ARCH_X86, UC.UC_MODE_64)
        uc.mem_map_ptr(0, 0x1000, UC.UC_PROT_ALL, base)
        assert store_path.StorePath(uc, base, 0x1000, [(0, 0x1000, 0)]) is not None
        del uc
        gc.collect(0)


def test_shadow_windows_stay_on_unicorns_path(tmp_path):
    """Only base RAM takes the fast path; a window the RAM map gains later does not, and a base
    range the map loses leaves it."""
    from machine.memory import RamRange
    m = build_machine(tmp_path, "main:\n    EXIT 0\n", prologue=PM32_PROLOGUE)
    sp = m.cpu.physmem.store_path
    if sp is None:
        pytest.skip("the native helpers cannot be built here")
    base = [(r.gpa, r.size, r.host_offset) for r in m.mem.ranges]
    m.mem.add_range(RamRange(0xC0000, 0x1000, 0xC0000))
    assert [(r.gpa, r.size, r.offset) for r in sp._state.range[:sp._state.nranges]] == base
    m.mem.remove_range(0)
    assert [(r.gpa, r.size, r.offset) for r in sp._state.range[:sp._state.nranges]] == base[1:]
