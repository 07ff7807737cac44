"""The cache in front of Unicorn's physical address -> region lookup (machine/region_cache.py):
used on the CPU's slow memory paths, and never stale across a change of the memory map, whether
the board makes it (a device moving its MMIO window from inside its own callback) or a caller
uses the engine's API directly."""

import gc

import pytest
from unicorn import Uc, UcError
from unicorn import unicorn_const as UC
from unicorn import x86_const as X86

from asm import PM32_PROLOGUE, build_machine, result
from machine import region_cache
from machine.toolchain import ToolchainError

OLD, NEW = 0xFEB00000, 0xFEB10000


class MovingDevice:
    """Reads 0x11; its first write moves its window from OLD to NEW, from inside the callback."""

    def __init__(self, memory_map):
        self.memory_map = memory_map
        self.region = memory_map.add("mover", OLD, 0x1000, self)

    def read(self, offset, size):
        return 0x11

    def write(self, offset, size, value):
        self.memory_map.remove(self.region)
        self.region = self.memory_map.add("mover", NEW, 0x1000, self)


def test_a_window_moved_from_its_own_callback_is_seen_at_once(tmp_path):
    m = build_machine(tmp_path, f"""
    main:
        mov $64, %ecx
    1:  mov %ecx, 0x9000                # RAM stores and loads: the cache's hits
        mov 0x9000, %eax
        loop 1b
        mov {OLD:#x}, %eax
        mov %eax, RESULTS
        movb $1, {OLD:#x}               # the device moves to NEW
        mov {OLD:#x}, %eax              # nothing there now: all ones
        mov %eax, RESULTS + 4
        mov {NEW:#x}, %eax
        mov %eax, RESULTS + 8
        EXIT 0
    """, prologue=PM32_PROLOGUE)
    cache = m.cpu.physmem.region_cache
    if cache is None:
        pytest.skip("the native helpers cannot be built here")
    MovingDevice(m.memory_map)
    assert m.run(100_000) == 1
    assert [result(m, i) for i in range(3)] == [0x11, 0xFFFFFFFF, 0x11]
    assert cache.hits > 0


def _store_loop_engine():
    uc = Uc(UC.UC_ARCH_X86, UC.UC_MODE_64)
    uc.mem_map(0x1000, 0x1000)
    uc.mem_map(0x2000, 0x1000)
    uc.mem_write(0x1000, bytes.fromhex(
        "48c7c1" "10000000"             # mov $16, %rcx
        "48890c25" "00200000"           # 1: mov %rcx, 0x2000
        "48ffc9" "75f3" "f4"))          # dec %rcx; jnz 1b; hlt
    return uc


def test_map_changes_through_the_engine_api_empty_the_cache():
    try:
        region_cache.library()
    except ToolchainError:
        pytest.skip("the native helpers cannot be built here")
    uc = _store_loop_engine()
    cache = region_cache.attach(uc)
    uc.emu_start(0x1000, 0, 0, 100)
    assert cache.hits > 0
    faults = []
    uc.hook_add(UC.UC_HOOK_MEM_WRITE_PROT, lambda _uc, kind, addr, *_: faults.append(addr) and False)
    uc.mem_unmap(0x2000, 0x1000)        # no explicit guard: the engine's methods carry it
    uc.mem_map(0x2000, 0x1000, UC.UC_PROT_READ)
    with pytest.raises(UcError):
        uc.emu_start(0x1000, 0, 0, 100)
    assert faults == [0x2000]
    cache.close()
    uc.mem_protect(0x2000, 0x1000, UC.UC_PROT_ALL)
    uc.emu_start(0x1000, 0, 0, 100)     # Unicorn's own lookup again
    assert uc.reg_read(X86.UC_X86_REG_RCX) == 0


def test_caches_go_with_their_engines():
    """More engines than the native table holds, one after the other: each cache is freed with
    its engine, so none is refused."""
    try:
        region_cache.library()
    except ToolchainError:
        pytest.skip("the native helpers cannot be built here")
    for _ in range(1100):
        uc = Uc(UC.UC_ARCH_X86, UC.UC_MODE_64)
        uc.mem_map(0x1000, 0x1000)
        assert region_cache.RegionCache(uc) is not None
        del uc
        gc.collect(0)


def test_without_the_helper_the_engine_keeps_its_own_lookup(tmp_path, monkeypatch):
    def unavailable():
        raise ToolchainError("no compiler")
    monkeypatch.setattr(region_cache, "library", unavailable)
    m = build_machine(tmp_path, "main:\n    EXIT 3\n", prologue=PM32_PROLOGUE)
    assert m.cpu.physmem.region_cache is None
    assert m.run(100_000) == 7
