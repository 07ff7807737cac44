"""`rep stos` / `rep movs` over RAM at memset/memmove speed: a native block hook
(native/rep_string.c, built with gcc on first use like the firmware, loaded with ctypes).

Unicorn executes a rep string instruction one element per run of a one-instruction translated
block, counting an instruction each time. The hook, called natively at such a block's start,
does as many elements as the instruction budget of the slice allows straight on the RAM buffer
and moves RCX/RDI/RSI and the retired-instruction counter exactly as that many executions would;
the rest of the block then runs normally. Virtual time, slice stops and guest-visible state are
therefore the same with or without it (tests/test_rep_string.py checks this on both paths).

It stands aside (`set_enabled(False)`) while anything observes single instructions: code
breakpoints, dynamic-hook mode, the interrupt-enable watch, the -d block log. If the helper
cannot be built (no gcc), the CPU runs without it: correct, only slower.
"""

from __future__ import annotations

import ctypes

from .. import trace
from .. import unicorn_internals as ui
from ..memory import GuestMemory
from ..toolchain import ToolchainError, ensure_built

MAX_RAM = 8
CACHE_SIZE = 1024
LEGACY_HOLE = (0xA0000, 0x100000)      # VGA window, ROM alias and shadow RAM: never touched here


class _Ram(ctypes.Structure):
    _fields_ = [("gpa", ctypes.c_uint64), ("size", ctypes.c_uint64), ("host", ctypes.c_void_p)]


class _Neg(ctypes.Structure):
    _fields_ = [("address", ctypes.c_uint64), ("size", ctypes.c_uint32), ("valid", ctypes.c_uint32)]


class _State(ctypes.Structure):
    """struct rep_state of native/rep_string.c."""
    _fields_ = [("counter", ctypes.c_void_p), ("budget", ctypes.c_void_p),
                ("reg_read", ctypes.c_void_p), ("reg_write", ctypes.c_void_p),
                ("mem_read", ctypes.c_void_p), ("context_save", ctypes.c_void_p),
                ("ctl", ctypes.c_void_p), ("context", ctypes.c_void_p),
                ("ctl_remove_cache", ctypes.c_int32), ("enabled", ctypes.c_int32),
                ("reg_rax", ctypes.c_int32), ("reg_rcx", ctypes.c_int32),
                ("reg_rsi", ctypes.c_int32), ("reg_rdi", ctypes.c_int32),
                ("reg_eflags", ctypes.c_int32), ("reg_cr0", ctypes.c_int32),
                ("ctx_hflags", ctypes.c_int32), ("ctx_segs", ctypes.c_int32),
                ("seg_size", ctypes.c_int32), ("seg_base", ctypes.c_int32),
                ("nram", ctypes.c_int32),
                ("ram", _Ram * MAX_RAM),
                ("elements", ctypes.c_uint64), ("blocks", ctypes.c_uint64),
                ("neg", _Neg * CACHE_SIZE)]


_lib = None


def _library():
    global _lib
    if _lib is None:
        _lib = ctypes.CDLL(str(ensure_built("native", "out/librepstring.so")))
    return _lib


class RepString:
    """The hook on one engine. `ram_base` is the host address of the RAM buffer (pinned by the
    caller for the engine's lifetime)."""

    def __init__(self, uc, mem: GuestMemory, ram_base: int):
        lib = _library()
        api = ui.native_api()
        st = self._state = _State()
        st.counter = ctypes.addressof(ui.emu_counter(uc))
        st.budget = ctypes.addressof(ui.emu_count(uc))
        st.reg_read, st.reg_write = api["uc_reg_read"], api["uc_reg_write"]
        st.mem_read, st.context_save, st.ctl = api["uc_mem_read"], api["uc_context_save"], api["uc_ctl"]
        st.context = ui.context_alloc(uc)
        st.ctl_remove_cache = ui.CTL_REMOVE_CACHE
        regs = ui.NATIVE_REGS
        st.reg_rax, st.reg_rcx, st.reg_rsi = regs["rax"], regs["rcx"], regs["rsi"]
        st.reg_rdi, st.reg_eflags, st.reg_cr0 = regs["rdi"], regs["eflags"], regs["cr0"]
        st.ctx_hflags = ui.CONTEXT_DATA + ui.ENV_HFLAGS
        st.ctx_segs = ui.CONTEXT_DATA + ui.ENV_SEGS
        st.seg_size, st.seg_base = ui.SEG_SIZE, 8
        self._mem = mem
        self._ram_base = ram_base
        self._ranges_seen = None
        self.sync_ram()
        st.enabled = 1
        fn = ctypes.cast(lib.rep_string_block, ctypes.c_void_p).value
        self.handle = ui.native_hook_block(uc, fn, ctypes.addressof(st))
        uc.ctl_flush_tb()                       # code translated before the hook never calls it

    def sync_ram(self) -> None:
        """Give the hook the RAM ranges it may write (outside the legacy hole below 1 MiB, whose
        mapping the chipset changes). Cheap when nothing changed."""
        ranges = self._mem.ranges
        if ranges is self._ranges_seen:
            return
        self._ranges_seen = ranges
        usable = [r for r in ranges if r.gpa + r.size <= LEGACY_HOLE[0] or r.gpa >= LEGACY_HOLE[1]]
        st = self._state
        st.nram = min(len(usable), MAX_RAM)
        for i, r in enumerate(usable[:MAX_RAM]):
            st.ram[i] = _Ram(r.gpa, r.size, self._ram_base + r.host_offset)

    def set_enabled(self, on: bool) -> None:
        self._state.enabled = 1 if on else 0

    @property
    def elements(self) -> int:
        """Elements (iterations) done by the hook so far."""
        return self._state.elements


def attach(uc, mem: GuestMemory, ram_base: int) -> RepString | None:
    """The hook on `uc`, or None (with one trace line) when the helper cannot be built."""
    try:
        return RepString(uc, mem, ram_base)
    except (ToolchainError, OSError) as exc:
        trace.log("unimp", f"rep string acceleration unavailable: {exc}")
        return None
