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
from ..toolchain import ToolchainError, native_library

MAX_RANGES = 16
CACHE_SIZE = 1024


class _Range(ctypes.Structure):
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
                ("nread", ctypes.c_int32), ("nwrite", ctypes.c_int32),
                ("read", _Range * MAX_RANGES), ("write", _Range * MAX_RANGES),
                ("elements", ctypes.c_uint64), ("blocks", ctypes.c_uint64),
                ("neg", _Neg * CACHE_SIZE)]


def _library():
    return native_library("out/librepstring.so", {})


class RepString:
    """The hook on one engine, over `physmem` (the CPU's view of physical memory: where loads and
    stores are plain host memory accesses)."""

    def __init__(self, uc, physmem):
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
        self._physmem = physmem
        self._ranges_seen = None
        self.sync_ranges()
        physmem.layout_listener = self.sync_ranges     # shadow windows change mid-slice
        st.enabled = 1
        self._uc = uc
        self.function = ctypes.cast(lib.rep_string_block, ctypes.c_void_p).value
        self.handle: int | None = None
        self.attach()
        uc.ctl_flush_tb()                       # code translated before the hook never calls it

    @property
    def native(self) -> tuple[int, int]:
        """(function, user data): for a native hook that calls this one itself."""
        return self.function, ctypes.addressof(self._state)

    def attach(self) -> None:
        """Register the hook with Unicorn (the caller flushes translated code)."""
        if self.handle is None:
            self.handle = ui.native_hook_block(self._uc, self.function, ctypes.addressof(self._state))

    def detach(self, raw) -> None:
        """Unregister it, while another native hook calls it (the caller flushes translated
        code; until then stale blocks may still call it, which is harmless)."""
        if self.handle is not None:
            ui.native_hook_del(self._uc, self.handle, raw)
            self.handle = None

    def sync_ranges(self) -> None:
        """Give the hook the ranges it may read and write directly, as mapped now (called when
        the memory layout changes, inside device callbacks too: the table is read at every
        block start)."""
        self._ranges_seen = self._physmem.mem.ranges
        readable, writable = self._physmem.direct_ranges()
        st = self._state
        st.nread = st.nwrite = 0                  # never a half-written table in use
        for table, ranges in ((st.read, readable), (st.write, writable)):
            for i, (gpa, size, host) in enumerate(ranges[:MAX_RANGES]):
                table[i] = _Range(gpa, size, host)
        st.nread, st.nwrite = min(len(readable), MAX_RANGES), min(len(writable), MAX_RANGES)

    def check_ram_layout(self) -> None:
        """Between slices: pick up RAM ranges added or removed (GuestMemory replaces its list)."""
        if self._physmem.mem.ranges is not self._ranges_seen:
            self.sync_ranges()

    def use_counter(self, counter: ctypes.c_uint64, budget: ctypes.c_uint64) -> None:
        """Count against another clock's counter and budget (live ctypes views): Unicorn's in
        the exact mode, the fast clock's in the fast mode."""
        self._state.counter = ctypes.addressof(counter)
        self._state.budget = ctypes.addressof(budget)

    def set_enabled(self, on: bool) -> None:
        self._state.enabled = 1 if on else 0

    @property
    def elements(self) -> int:
        """Elements (iterations) done by the hook so far."""
        return self._state.elements


def attach(uc, physmem) -> RepString | None:
    """The hook on `uc`, or None (with one trace line) when the helper cannot be built."""
    try:
        return RepString(uc, physmem)
    except (ToolchainError, OSError) as exc:
        trace.log("unimp", f"rep string acceleration unavailable: {exc}")
        return None
