"""Every dependency on Unicorn 2.1.4 *internals*, in one place, checked at start-up.

Unicorn's public API cannot do what a PC needs in these ways, so we reach under it:

1. Segment loads on a UC_MODE_64 engine. That engine's `reg_write(CS/DS/ES/SS)` only changes the
   selector; with the engine's API mode switched to UC_MODE_32 for the one call, Unicorn performs
   a full descriptor load (real-mode base = sel<<4, or a GDT/LDT lookup in protected mode).
   `struct uc_struct` starts with `{uc_arch arch; uc_mode mode;}`, so the mode is the int at +4.
2. The raw CPU state (`uc_context_save` copies CPUX86State byte for byte): the exception error
   code and the "was it `int n`" flag (not exposed by the API), `old_exception`, which Unicorn never
   resets (without the reset the 2nd contributory fault becomes #DF and the 3rd a triple fault),
   `hflags` (CPL, the STI/MOV SS interrupt shadow, CPU mode bits) and the segment caches.
3. `uc_struct.emu_counter`: how many instructions the last `emu_start(count=N)` retired, so
   virtual time is exact and deterministic; and `uc_struct.emu_count`, the budget itself: the
   counting hook runs before every instruction and stops the engine once the counter passes the
   budget, so lowering the budget to the counter from inside a callback stops cleanly right
   after the current instruction (nothing replayed, whatever the translated code looks like).
4. Lean hooks: MMIO, IN/OUT, CPUID and RDTSC callbacks registered with libunicorn directly
   (`uc_mmio_map`, and `uc_hook_add` through the binding's private helper, which also takes the
   RDTSC hook the 2.1.4 binding's `hook_add` rejects), bypassing the binding's per-call wrappers;
   they keep its rule that a callback's exception stops emulation and leaves `emu_start`.

5. A native block hook (`native_hook_block`): a C function registered with `uc_hook_add` and
   called at every translated block start with no Python in between (x86/rep_string.py). It
   relies on 3. (it advances `emu_counter` itself, below `emu_count`) and on the context
   offsets of 2.; both are what `self_test()` checks.
6. The fast mode's clock (x86/fast_clock.py): with `emu_start(count=0)` a native block hook
   counts and calls `uc_emu_stop` at a block start, which must end the run before that block's
   first instruction with nothing replayed, also when a port callback earlier in the run asked
   for the stop. `self_test_block_clock()` checks it when the fast mode is first used (it needs
   the native helper built).
7. Memory hooks bounded to where RAM is not (cpu.py): Unicorn keeps every store to an address
   that any memory hook covers on its "not dirty" slow path, and lets other RAM pages take the
   TLB fast path after their first store, while still dropping translated code that a later
   store overwrites (it re-arms the slow path for a page when it translates code there).
   `_probe_store_fast_path()` checks that a guest's self-modifying code is still seen.
8. `uc_struct.memory_mapping`, Unicorn's physical address -> region lookup (a walk of QEMU's
   flat view), called on every slow-path load and twice on every slow-path store: the CPU puts
   a caching lookup there (region_cache.py, native/mapcache.c). The slot holds
   `find_memory_mapping_x86_64` once the engine has mapped memory; `self_test_region_cache()`
   checks the cached lookup against Unicorn's own across map changes.
9. The store fast path (store_path.py, native/storepath.c): wrappers put in libunicorn's GOT
   slots for `tlb_set_page_with_attrs` and `tb_gen_code` (Unicorn calls both through its PLT),
   which call Unicorn's `tlb_set_dirty`, `tlb_reset_dirty` and `qemu_map_ram_ptr`, and read
   `uc_struct.cpu` and `TranslationBlock.page_addr`. `self_test_store_path()` checks the layout
   and that code rewritten through a fast-path entry, at its own address and through an alias,
   is still seen.
10. `uc_struct.no_exit_request`, read when code is translated: while it is set, Unicorn leaves
   out the exit check it otherwise emits after every guest load and store (a helper call that
   also writes the CPU's globals back, ~9 % of a fast Linux boot) and after code hooks; the
   check at each block start stays. The fast mode sets it (fast_clock.py): it stops only at
   block starts anyway. A store the engine refuses (ROM, unassigned) is then dropped and the
   block runs on to its end before `emu_start` returns the error.
   `self_test_access_exit_checks()` checks both the offset and that behaviour.
11. The exact mode's lean clock (x86/exact_clock.py): with `emu_start(count=0)` and the code
   translated without those checks, a native code hook counts each instruction and, past its
   budget, stops by calling `uc_emu_stop` and then `cpu_loop_exit_restore` (exported by
   libunicorn) with its return address into the translated block: the CPU is put back to the
   start of that instruction, as Unicorn's own exit check would. `self_test_insn_clock()` checks
   the stop point, that flags computed before a stop survive it, and a stop asked from a port
   callback. A lean callback that raises also lowers the clock's budget
   (`set_failure_stop`), since `uc_emu_stop` alone acts at the next block start then.

Also here: a direct `uc_ctl(UC_CTL_TB_REMOVE_CACHE)` call (2 µs against 6 µs through the
binding: it sits on the DMA path, once per written range), ctypes wrappers for `uc_vmem_read/write/translate` (exported by libunicorn 2.1.4,
absent from its Python binding), which walk the guest page tables; raw ctypes register access
(3x faster than the binding); and the two places we touch the binding's callback bookkeeping.

`self_test()` verifies each of these on a scratch engine and raises `UnsupportedUnicorn` with one
clear message on any other Unicorn build. Nothing else in the project may import these offsets.
"""

from __future__ import annotations

import contextlib
import ctypes
import weakref

import unicorn
from unicorn import Uc, UcError
from unicorn import unicorn_const as UC
from unicorn import x86_const as X86

from .config import ConfigError

REQUIRED_VERSION = "2.1.4"

# Offsets measured on unicorn 2.1.4 (x86-64 Linux wheel); verified by self_test().
UC_STRUCT_ARCH = 0
UC_STRUCT_MODE = 4
UC_STRUCT_EMU_COUNTER = 1368
UC_STRUCT_EMU_COUNT = 1376     # the budget emu_start(count=N) set, right after the counter
UC_STRUCT_MEMORY_MAPPING = 288  # uc_memory_mapping_t, set when the engine first maps memory
UC_STRUCT_CPU = 440            # CPUState *cpu, built when the engine first maps memory
UC_STRUCT_HOOK_INSERT = 2032   # bool: uc_hook_add puts the new hook first in its list
UC_STRUCT_NO_EXIT_REQUEST = 2034  # bool: translate without the exit check after each access
TB_PAGE_ADDR = 72              # offsetof(TranslationBlock, page_addr): RAM addresses of its pages
CONTEXT_SIZE = 5608            # uc_context_size() for an x86 engine
CONTEXT_DATA = 40              # struct uc_context header before the CPUX86State copy
# Offsets inside the CPUX86State copy:
ENV_HFLAGS = 176
ENV_HFLAGS2 = 180              # GIF/HIF/NMI/VINTR... (snapshots carry it as it is)
ENV_CR0 = 424                  # target_ulong cr[5]: CR0, (CR1), CR2, CR3, CR4
ENV_SEGS = 184                 # SegmentCache[6]: ES CS SS DS FS GS, 24 bytes each
SEG_SIZE = 24                  # {u32 selector; u64 base; u32 limit; u32 flags}
ENV_ERROR_CODE = 5384
ENV_EXCEPTION_IS_INT = 5388
ENV_EXCEPTION_NEXT_EIP = 5392
ENV_OLD_EXCEPTION = 5496

# hflags bits (QEMU target/i386/cpu.h)
HF_CPL_MASK = 0x3
HF_INHIBIT_IRQ = 1 << 3
HF_CS32 = 1 << 4
HF_SS32 = 1 << 5
HF_PE = 1 << 7
HF_LMA = 1 << 14
HF_CS64 = 1 << 15

SEG_ES, SEG_CS, SEG_SS, SEG_DS, SEG_FS, SEG_GS = range(6)


class UnsupportedUnicorn(ConfigError):
    """The installed Unicorn is not the exact build whose internals we rely on (a host
    problem: the command line prints the one-line message and exits with status 1)."""


_uclib = unicorn.unicorn_py3.unicorn.uclib
_uclib.uc_vmem_read.restype = ctypes.c_int
_uclib.uc_vmem_read.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
_uclib.uc_vmem_write.restype = ctypes.c_int
_uclib.uc_vmem_write.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
_uclib.uc_vmem_translate.restype = ctypes.c_int
_uclib.uc_vmem_translate.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.POINTER(ctypes.c_uint64)]
_uclib.uc_context_save.restype = ctypes.c_int
_uclib.uc_context_restore.restype = ctypes.c_int
_uclib.uc_reg_read.restype = ctypes.c_int
_uclib.uc_reg_read.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
_uclib.uc_reg_write.restype = ctypes.c_int
_uclib.uc_reg_write.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]


def handle(uc: Uc) -> int:
    return uc._uch.value


def set_access_exit_checks(uc: Uc, on: bool) -> None:
    """10.: translate code with (Unicorn's default) or without the exit check after each load
    and store. Applies to code translated from now on: the caller flushes translated code."""
    ctypes.c_bool.from_address(handle(uc) + UC_STRUCT_NO_EXIT_REQUEST).value = not on


# ------------------------------------------------------------------------------------------
# 1. API mode switch for segment loads
# ------------------------------------------------------------------------------------------

def _mode_cell(uc: Uc) -> ctypes.c_int:
    return ctypes.c_int.from_address(handle(uc) + UC_STRUCT_MODE)


def load_seg(uc: Uc, reg: int, selector: int) -> None:
    """Load a segment register the way the CPU does (real mode: base = sel<<4; protected/long
    mode: descriptor from the GDT/LDT, with Unicorn's privilege checks). Raises UcError when the
    load would fault."""
    cell = _mode_cell(uc)
    cell.value = UC.UC_MODE_32
    try:
        uc.reg_write(reg, selector)
    finally:
        cell.value = UC.UC_MODE_64


# ------------------------------------------------------------------------------------------
# 3. retired-instruction counter
# ------------------------------------------------------------------------------------------

def emu_counter(uc: Uc) -> ctypes.c_uint64:
    """A live view of `uc->emu_counter` (instructions counted by the last emu_start(count>0)).
    Unicorn counts one past the budget when the budget is exhausted (the counting hook fires
    on the instruction it then refuses to run)."""
    return ctypes.c_uint64.from_address(handle(uc) + UC_STRUCT_EMU_COUNTER)


def emu_count(uc: Uc) -> ctypes.c_uint64:
    """A live view of `uc->emu_count`, the budget of the running emu_start(count>0). Unicorn's
    counting hook runs before each instruction: `counter += 1; if counter > count: stop`. Setting
    it to the counter's value from inside any callback therefore stops the engine before the
    next instruction, cleanly (a stop from a code hook rolls nothing back); the slice then
    retired exactly `emu_count` instructions."""
    return ctypes.c_uint64.from_address(handle(uc) + UC_STRUCT_EMU_COUNT)


# ------------------------------------------------------------------------------------------
# 2. raw CPU state
# ------------------------------------------------------------------------------------------

class RawState:
    """The CPUX86State bytes, read with one `uc_context_save` (about 1 µs) and optionally written
    back. Usable inside hooks."""

    def __init__(self, uc: Uc):
        self._uch = uc._uch
        self._ctx = ctypes.c_void_p()
        err = _uclib.uc_context_alloc(self._uch, ctypes.byref(self._ctx))
        if err != UC.UC_ERR_OK:
            raise UcError(err)
        self._data = self._ctx.value + CONTEXT_DATA
        self._i32 = lambda off: ctypes.c_int32.from_address(self._data + off)
        self._u32 = lambda off: ctypes.c_uint32.from_address(self._data + off)
        self._u64 = lambda off: ctypes.c_uint64.from_address(self._data + off)
        self._hflags = ctypes.c_uint32.from_address(self._data + ENV_HFLAGS)

    def __del__(self):
        try:
            _uclib.uc_context_free(self._ctx)
        except Exception:
            pass

    def save(self) -> "RawState":
        _uclib.uc_context_save(self._uch, self._ctx)
        return self

    def restore(self) -> None:
        _uclib.uc_context_restore(self._uch, self._ctx)

    # -- after save() ----------------------------------------------------------------------
    @property
    def hflags(self) -> int:
        return self._hflags.value

    @hflags.setter
    def hflags(self, value: int) -> None:
        self._hflags.value = value

    def exception_info(self) -> tuple[int, bool]:
        """(error_code, was_int_n) of the exception being raised."""
        return self._i32(ENV_ERROR_CODE).value & 0xFFFFFFFF, bool(self._i32(ENV_EXCEPTION_IS_INT).value)

    def seg(self, index: int) -> tuple[int, int, int, int]:
        """(selector, base, limit, flags) of segment `index` (SEG_ES..SEG_GS)."""
        off = ENV_SEGS + SEG_SIZE * index
        return (self._u32(off).value, self._u64(off + 8).value,
                self._u32(off + 16).value, self._u32(off + 20).value)

    def clear_old_exception(self) -> None:
        self._i32(ENV_OLD_EXCEPTION).value = -1

    @property
    def hflags2(self) -> int:
        return self._u32(ENV_HFLAGS2).value

    @hflags2.setter
    def hflags2(self, value: int) -> None:
        self._u32(ENV_HFLAGS2).value = value

    def set_seg(self, index: int, selector: int, base: int, limit: int, flags: int) -> None:
        """Write a segment register's selector and hidden cache (a snapshot restoring it as it
        was: no descriptor load, which could fault or read a GDT that has changed since)."""
        off = ENV_SEGS + SEG_SIZE * index
        self._u32(off).value = selector
        self._u64(off + 8).value = base
        self._u32(off + 16).value = limit
        self._u32(off + 20).value = flags


class identity_walks:
    """`with identity_walks(uc, raw): uc.mem_unmap(...)`: Unicorn's mem_unmap (and every other path
    into its uc_invalidate_tb) looks the *physical* range up as a *virtual* code address through
    the guest's page tables; when paging does not map it, the walk raises a #PF that Unicorn
    swallows half-way: CR2, the error code and old_exception are overwritten (two such walks
    leave old_exception at #DF: the next real fault becomes a silent triple fault),
    so the guest takes a page fault it never caused (seen as Linux faulting on a BAR address
    while sizing BARs). Inside this block CR0.PG reads as clear, so the lookup is the identity
    (which is what the caller means); the CPU state is restored byte for byte afterwards."""

    def __init__(self, uc: Uc, raw: RawState):
        self._uch = uc._uch
        self._raw = raw
        self._paged = False

    def __enter__(self):
        raw = self._raw.save()
        cr0 = raw._u64(ENV_CR0)
        self._paged = bool(cr0.value & CR0_PG)
        if self._paged:
            cr0.value &= ~CR0_PG
            raw.restore()
        return self

    def __exit__(self, *exc) -> None:
        if self._paged:
            cr0 = self._raw._u64(ENV_CR0)
            cr0.value |= CR0_PG
            self._raw.restore()
            # The identity lookups filled TLB entries (virtual = physical) that paging does
            # not back: drop them all.
            _uc_ctl_none(self._uch, _CTL_TLB_FLUSH)


CR0_PG = 1 << 31
_CTL_TLB_FLUSH = UC.UC_CTL_TLB_FLUSH | (UC.UC_CTL_IO_WRITE << 30)
_uc_ctl_none = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int)(("uc_ctl", _uclib))


def flush_tlb(uc: Uc) -> None:
    """Drop every software TLB entry (after the CPU state was replaced wholesale)."""
    _uc_ctl_none(uc._uch, _CTL_TLB_FLUSH)


def take_exception_info(raw: RawState) -> tuple[int, bool]:
    """Inside an interrupt hook: read (error_code, was_int_n) and reset `old_exception` so the
    next fault is not promoted to #DF (Unicorn never runs the code that resets it)."""
    raw.save()
    info = raw.exception_info()
    raw.clear_old_exception()
    raw.restore()
    return info


def set_cpl(raw: RawState, cpl: int) -> None:
    """Force the CPL bits of hflags (for a privilege-changing interrupt: Unicorn refuses to load
    a DPL0 SS/CS while CPL=3; the CPU itself would, as part of the gate transfer)."""
    raw.save()
    raw.hflags = (raw.hflags & ~HF_CPL_MASK) | (cpl & 3)
    raw.restore()


# ------------------------------------------------------------------------------------------
# 4. lean hooks: MMIO, IN/OUT, CPUID, RDTSC
# ------------------------------------------------------------------------------------------
# The binding wraps every callback in three Python frames (a generic `wrapper` with an exception
# guard, a per-type adapter, then ours) and hands each one the `Uc` object. On the paths a guest
# exercises constantly (a virtio notify, a port poll, SeaBIOS's TSC reads) that costs about as
# much as the work. These register CFUNCTYPE callbacks with libunicorn directly, with the
# signatures of unicorn.h, one guard frame each. The guard keeps the binding's contract: an
# exception escaping a callback is stored in `uc._hook_exception`, emulation stops, and the
# binding's `emu_start` raises it (ctypes alone would print it and carry on).
# Callback references live in the binding's own tables (`_mmio_callbacks`, `_callbacks`) so
# `mem_unmap` + forget_mmio_callbacks and `hook_del` release them as before.

_MMIO_READ_T = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint,
                                ctypes.c_void_p)
_MMIO_WRITE_T = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint,
                                 ctypes.c_uint64, ctypes.c_void_p)
_INSN_IN_T = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                              ctypes.c_void_p)
_INSN_OUT_T = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                               ctypes.c_uint32, ctypes.c_void_p)
_INSN_PLAIN_T = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p)   # CPUID, RDTSC
_uclib.uc_emu_stop.restype = ctypes.c_int


# engine handle -> how its clock stops at once (a weak method: the engine's owner may go)
_failure_stops: dict[int, weakref.WeakMethod] = {}


def set_failure_stop(uc: Uc, stop) -> None:
    """`stop()` (a bound method) ends the run right after the current instruction: a lean
    callback that fails calls it besides uc_emu_stop, which alone acts only at the next block
    start when code is translated without the exit checks (10.)."""
    for key in [k for k, ref in _failure_stops.items() if ref() is None]:
        del _failure_stops[key]
    _failure_stops[handle(uc)] = weakref.WeakMethod(stop)


def _failer(uc: Uc):
    """What a lean callback does with an exception: what the binding's guard does."""
    uch = uc._uch

    def fail(exc: BaseException) -> None:
        if uc._hook_exception is None:
            uc._hook_exception = exc
        ref = _failure_stops.get(uch.value)
        stop = ref() if ref is not None else None
        if stop is not None:
            stop()
        _uclib.uc_emu_stop(uch)
    return fail


def mmio_map(uc: Uc, base: int, size: int, read, write, native_write=None) -> None:
    """Map [base, base+size) as MMIO: `read(offset, size) -> int`, `write(offset, size, value)`.
    `native_write(fallback) -> (function, user data) | None`: a native write callback for the
    region that calls `fallback` (the address of `write` as Unicorn would call it) for what it
    leaves to Python. Raises UcError as `Uc.mmio_map` does (bad alignment, overlap)."""
    fail = _failer(uc)

    def on_read(_h, offset, sz, _ud):
        try:
            return read(offset, sz)
        except BaseException as exc:
            fail(exc)
            return 0

    def on_write(_h, offset, sz, value, _ud):
        try:
            write(offset, sz, value)
        except BaseException as exc:
            fail(exc)

    rcb, wcb = _MMIO_READ_T(on_read), _MMIO_WRITE_T(on_write)
    wfn, wud = ctypes.cast(wcb, ctypes.c_void_p).value, None
    front = native_write(wfn) if native_write is not None else None
    if front is not None:
        wfn, wud = front
    # A map change: inside the region cache's guard when the engine has one (region_cache.py).
    guard = getattr(uc, "map_guard", None)
    with guard() if guard is not None else contextlib.nullcontext():
        err = _uclib.uc_mmio_map(uc._uch, base, size, ctypes.cast(rcb, ctypes.c_void_p), None,
                                 ctypes.c_void_p(wfn), ctypes.c_void_p(wud))
    if err != UC.UC_ERR_OK:
        raise UcError(err)
    uc._mmio_callbacks[(base, base + size)] = (rcb, wcb)


def _hook_insn(uc: Uc, fptr, insn: int) -> int:
    return uc._Uc__do_hook_add(UC.UC_HOOK_INSN, fptr, 1, 0, ctypes.c_int(insn))


def hook_in(uc: Uc, fn) -> int:
    """Hook IN: `fn(port, size) -> int`."""
    fail = _failer(uc)

    def on_in(_h, port, size, _ud):
        try:
            return fn(port, size)
        except BaseException as exc:
            fail(exc)
            return 0
    return _hook_insn(uc, _INSN_IN_T(on_in), X86.UC_X86_INS_IN)


def hook_out(uc: Uc, fn) -> int:
    """Hook OUT: `fn(port, size, value)`."""
    fail = _failer(uc)

    def on_out(_h, port, size, value, _ud):
        try:
            fn(port, size, value)
        except BaseException as exc:
            fail(exc)
    return _hook_insn(uc, _INSN_OUT_T(on_out), X86.UC_X86_INS_OUT)


_BLOCK_T = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p)


def hook_block(uc: Uc, fn) -> int:
    """Hook the start of every translated block: `fn(address)`. Code translated before the
    hook exists does not call it: flush after adding (and after `hook_del`)."""
    fail = _failer(uc)

    def on_block(_h, address, _size, _ud):
        try:
            fn(address)
        except BaseException as exc:
            fail(exc)
    return uc._Uc__do_hook_add(UC.UC_HOOK_BLOCK, _BLOCK_T(on_block), 1, 0)


def native_hook_block(uc: Uc, function: int, user_data: int) -> int:
    """Register a C function (its address) as a UC_HOOK_BLOCK callback with `user_data`: no
    Python runs per block. Code translated before the hook exists does not call it: flush
    after adding (and after hook_del)."""
    handle_out = ctypes.c_size_t()
    err = _uclib.uc_hook_add(uc._uch, ctypes.cast(ctypes.byref(handle_out), ctypes.POINTER(ctypes.c_ulong)),
                             UC.UC_HOOK_BLOCK, ctypes.c_void_p(function),
                             ctypes.c_void_p(user_data), 1, 0)
    if err != UC.UC_ERR_OK:
        raise UcError(err)
    return handle_out.value


# Register ids a native hook reads and writes with uc_reg_read/uc_reg_write.
NATIVE_REGS = {"rax": X86.UC_X86_REG_RAX, "rdx": X86.UC_X86_REG_RDX, "rcx": X86.UC_X86_REG_RCX, "rsi": X86.UC_X86_REG_RSI,
               "rdi": X86.UC_X86_REG_RDI, "eflags": X86.UC_X86_REG_EFLAGS, "cr0": X86.UC_X86_REG_CR0}


def native_hook_code(uc: Uc, function: int, user_data: int, first: bool = False) -> int:
    """Register a C function (its address) as a UC_HOOK_CODE callback over every address, with
    `user_data` (flush translated code after adding, and after hook_del). `first`: called
    before the code hooks already registered (`uc_struct.hook_insert`, as Unicorn registers
    its own counting hook), not after them."""
    handle_out = ctypes.c_size_t()
    insert = ctypes.c_bool.from_address(handle(uc) + UC_STRUCT_HOOK_INSERT)
    insert.value = first
    try:
        err = _uclib.uc_hook_add(uc._uch, ctypes.cast(ctypes.byref(handle_out), ctypes.POINTER(ctypes.c_ulong)),
                                 UC.UC_HOOK_CODE, ctypes.c_void_p(function),
                                 ctypes.c_void_p(user_data), 1, 0)
    finally:
        insert.value = False
    if err != UC.UC_ERR_OK:
        raise UcError(err)
    return handle_out.value


def loop_exit_restore_function() -> int:
    """Address of Unicorn's cpu_loop_exit_restore(cpu, host_pc): leave translated code with the
    CPU state put back to the guest instruction that host_pc (a return address into a
    translated block) belongs to. For native/icount.c's exact clock."""
    return ctypes.cast(_uclib.cpu_loop_exit_restore_x86_64, ctypes.c_void_p).value


def native_api() -> dict[str, int]:
    """Addresses of the libunicorn functions a native hook may call, by name."""
    return {name: ctypes.cast(getattr(_uclib, name), ctypes.c_void_p).value
            for name in ("uc_reg_read", "uc_reg_write", "uc_mem_read", "uc_context_save", "uc_ctl",
                         "uc_emu_stop")}


def native_hook_rdtsc(uc: Uc, function: int, user_data: int) -> int:
    """Register a C function `uint32_t fn(uc, user_data)` answering RDTSC (it sets EDX:EAX and
    returns 1 to skip the host's instruction), as hook_rdtsc does for a Python one."""
    handle_out = ctypes.c_size_t()
    err = _uclib.uc_hook_add(uc._uch, ctypes.cast(ctypes.byref(handle_out), ctypes.POINTER(ctypes.c_ulong)),
                             UC.UC_HOOK_INSN, ctypes.c_void_p(function), ctypes.c_void_p(user_data),
                             ctypes.c_uint64(1), ctypes.c_uint64(0), ctypes.c_int(X86.UC_X86_INS_RDTSC))
    if err != UC.UC_ERR_OK:
        raise UcError(err)
    return handle_out.value


def native_hook_del(uc: Uc, handle: int, raw: "RawState") -> None:
    """Remove a hook added by native_hook_block/code (the binding's hook_del expects a callback
    of its own). Unicorn drops the blocks it was compiled into by looking them up through the
    page tables: done inside identity_walks with the engine's `raw` state. Translated code may
    still call the hook: flush after (the function and its state must stay alive until then)."""
    with identity_walks(uc, raw):
        err = _uclib.uc_hook_del(uc._uch, ctypes.c_size_t(handle))
    if err != UC.UC_ERR_OK:
        raise UcError(err)


def context_alloc(uc: Uc) -> int:
    """A uc_context for `uc_context_save` (freed with the process: one per CPU)."""
    ctx = ctypes.c_void_p()
    err = _uclib.uc_context_alloc(uc._uch, ctypes.byref(ctx))
    if err != UC.UC_ERR_OK:
        raise UcError(err)
    return ctx.value


class _RegBatch:
    """Fixed registers read or written with one `uc_reg_read_batch` / `uc_reg_write_batch`
    call: on this path each ctypes call costs about a microsecond, the register access itself
    almost nothing."""

    def __init__(self, uc: Uc, regs: tuple[int, ...]):
        n = len(regs)
        self._uch = uc._uch
        self._n = n
        self.vals = [ctypes.c_uint64() for _ in regs]
        self._regs = (ctypes.c_int * n)(*regs)
        self._ptrs = (ctypes.c_void_p * n)(*(ctypes.addressof(v) for v in self.vals))

    def read(self) -> None:
        _uclib.uc_reg_read_batch(self._uch, self._regs, self._ptrs, self._n)

    def write(self) -> None:
        _uclib.uc_reg_write_batch(self._uch, self._regs, self._ptrs, self._n)


for _fn in (_uclib.uc_reg_read_batch, _uclib.uc_reg_write_batch):
    _fn.restype = ctypes.c_int
    _fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]


def hook_cpuid(uc: Uc, fn) -> int:
    """Hook CPUID: `fn(leaf, subleaf) -> (eax, ebx, ecx, edx)` answers it."""
    fail = _failer(uc)
    args = _RegBatch(uc, (X86.UC_X86_REG_RAX, X86.UC_X86_REG_RCX))
    leaf, sub = args.vals
    out = _RegBatch(uc, (X86.UC_X86_REG_RAX, X86.UC_X86_REG_RBX, X86.UC_X86_REG_RCX,
                         X86.UC_X86_REG_RDX))
    a, b, c, d = out.vals

    def on_cpuid(_h, _ud):
        try:
            args.read()
            a.value, b.value, c.value, d.value = fn(leaf.value & 0xFFFFFFFF, sub.value & 0xFFFFFFFF)
            out.write()
        except BaseException as exc:
            fail(exc)
        return 1                  # skip the native instruction (the host's CPUID)
    return _hook_insn(uc, _INSN_PLAIN_T(on_cpuid), X86.UC_X86_INS_CPUID)


def hook_rdtsc(uc: Uc, fn) -> int:
    """Hook RDTSC: `fn() -> int` returns the 64-bit time stamp to put in EDX:EAX. The 2.1.4
    binding's `hook_add` rejects UC_X86_INS_RDTSC although libunicorn supports it."""
    fail = _failer(uc)
    out = _RegBatch(uc, (X86.UC_X86_REG_RAX, X86.UC_X86_REG_RDX))
    lo, hi = out.vals

    def on_rdtsc(_h, _ud):
        try:
            tsc = fn()
            lo.value = tsc & 0xFFFFFFFF
            hi.value = (tsc >> 32) & 0xFFFFFFFF
            out.write()
        except BaseException as exc:
            fail(exc)
        return 1                  # skip the native (host TSC) instruction
    return _hook_insn(uc, _INSN_PLAIN_T(on_rdtsc), X86.UC_X86_INS_RDTSC)


# ------------------------------------------------------------------------------------------
# the binding's callback bookkeeping
# ------------------------------------------------------------------------------------------

def forget_mmio_callbacks(uc: Uc, base: int, size: int) -> None:
    """Drop the binding's references to the callbacks of an unmapped MMIO range (it never
    does so itself, so remapped BARs would leak them)."""
    uc._mmio_callbacks.pop((base, base + size), None)


def hook_callback(uc: Uc, handle: int):
    """The ctypes callback the binding keeps for hook `handle` (hook_del releases it)."""
    return uc._callbacks.get(handle)


# ------------------------------------------------------------------------------------------
# 8. the region lookup
# ------------------------------------------------------------------------------------------

def memory_mapping_slot(uc: Uc) -> ctypes.c_void_p:
    """A live view of `uc->memory_mapping`. Raises UnsupportedUnicorn unless it holds Unicorn's
    own lookup (the engine must have mapped memory: Unicorn fills the slot then)."""
    slot = ctypes.c_void_p.from_address(handle(uc) + UC_STRUCT_MEMORY_MAPPING)
    if slot.value != unicorn_memory_mapping():
        raise UnsupportedUnicorn(
            f"this emulator needs exactly unicorn {REQUIRED_VERSION}; uc_struct.memory_mapping "
            f"is not where expected. Install it with: pip install unicorn=={REQUIRED_VERSION}")
    return slot


def unicorn_memory_mapping() -> int:
    """Address of Unicorn's own region lookup for x86 engines."""
    return ctypes.cast(_uclib.find_memory_mapping_x86_64, ctypes.c_void_p).value


# ------------------------------------------------------------------------------------------
# 9. the store fast path
# ------------------------------------------------------------------------------------------

def engine_cpu(uc: Uc) -> int:
    """`uc->cpu`, the engine's CPUState (0 before the engine has mapped memory)."""
    return ctypes.c_void_p.from_address(handle(uc) + UC_STRUCT_CPU).value or 0


def store_path_functions() -> tuple[int, int, int, int, int]:
    """Addresses of Unicorn's tlb_set_page_with_attrs, tb_gen_code (the two the store path
    wraps), tlb_set_dirty, tlb_reset_dirty and qemu_map_ram_ptr, for native/storepath.c."""
    return tuple(ctypes.cast(getattr(_uclib, f"{name}_x86_64"), ctypes.c_void_p).value
                 for name in ("tlb_set_page_with_attrs", "tb_gen_code", "tlb_set_dirty",
                              "tlb_reset_dirty", "qemu_map_ram_ptr"))


# ------------------------------------------------------------------------------------------
# translated-code invalidation
# ------------------------------------------------------------------------------------------

# uc_ctl's control word: the control number, the argument count in bits 26..29 and the
# direction in bits 30..31 (unicorn.h UC_CTL_WRITE). The binding builds the same word and
# converts each argument to a ctypes object on every call; a prototype with fixed argument
# types lets ctypes pass plain ints. uc_ctl is variadic, but on x86-64 SysV integer arguments
# travel in the same registers either way (the binding relies on that too).
_CTL_REMOVE_CACHE = UC.UC_CTL_TB_REMOVE_CACHE | (2 << 26) | (UC.UC_CTL_IO_WRITE << 30)
CTL_REMOVE_CACHE = _CTL_REMOVE_CACHE          # for native callers of uc_ctl (x86/rep_string.py)
_uc_ctl_u64_u64 = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                                   ctypes.c_uint64, ctypes.c_uint64)(("uc_ctl", _uclib))


def code_remover(uc: Uc):
    """A function `remove(begin, end)` dropping the translated code over addresses
    [begin, end) (virtual, as `Uc.ctl_remove_cache`; equal to physical with paging off).
    Returns the uc_err code (0 = OK) instead of raising: an empty range is the only error."""
    h = handle(uc)
    fn = _uc_ctl_u64_u64
    ctl = _CTL_REMOVE_CACHE

    def remove(begin: int, end: int) -> int:
        return fn(h, ctl, begin, end)
    return remove


# ------------------------------------------------------------------------------------------
# vmem: virtual-address access through the guest page tables
# ------------------------------------------------------------------------------------------

def vmem_read(uc: Uc, vaddr: int, size: int, prot: int = UC.UC_PROT_READ) -> bytes | None:
    buf = ctypes.create_string_buffer(size)
    if _uclib.uc_vmem_read(uc._uch, vaddr, prot, buf, size) != UC.UC_ERR_OK:
        return None
    return buf.raw


def vmem_write(uc: Uc, vaddr: int, data: bytes, prot: int = UC.UC_PROT_WRITE) -> bool:
    buf = ctypes.create_string_buffer(bytes(data), len(data))
    return _uclib.uc_vmem_write(uc._uch, vaddr, prot, buf, len(data)) == UC.UC_ERR_OK


def vmem_translate(uc: Uc, vaddr: int, prot: int = UC.UC_PROT_READ) -> int | None:
    out = ctypes.c_uint64()
    if _uclib.uc_vmem_translate(uc._uch, vaddr, prot, ctypes.byref(out)) != UC.UC_ERR_OK:
        return None
    return out.value


class RawReg:
    """Register access through raw ctypes (about 1 µs, against 3 µs for the binding)."""

    __slots__ = ("_uch", "_val", "_ref")

    def __init__(self, uc: Uc):
        self._uch = uc._uch
        self._val = ctypes.c_uint64()
        self._ref = ctypes.byref(self._val)

    def read(self, reg: int) -> int:
        self._val.value = 0
        _uclib.uc_reg_read(self._uch, reg, self._ref)
        return self._val.value

    def write(self, reg: int, value: int) -> None:
        self._val.value = value & 0xFFFFFFFFFFFFFFFF
        _uclib.uc_reg_write(self._uch, reg, self._ref)


# ------------------------------------------------------------------------------------------
# start-up self-test
# ------------------------------------------------------------------------------------------

_passed: set[str] = set()             # the probes below that passed in this process


def _check_once(name: str, probe, *args, needs: str = "this emulator", advice: str = "") -> None:
    """Run `probe(*args)` (None, or what is wrong) once per process: a problem, or any surprise
    (the internals moved), raises UnsupportedUnicorn with one line."""
    if name in _passed:
        return
    try:
        problem = probe(*args)
    except Exception as exc:
        problem = f"internal probe failed ({exc})"
    if problem:
        raise UnsupportedUnicorn(
            f"{needs} needs exactly unicorn {REQUIRED_VERSION}; {problem}. "
            f"{advice}Install it with: pip install unicorn=={REQUIRED_VERSION}")
    _passed.add(name)


def self_test_block_clock(function: int, state_type, stop_budget: int, bytes_per_insn: int) -> None:
    """Check 6. on a scratch engine with the fast clock's native hook `function` and its state
    type (fields counter, budget, reg_read, emu_stop, reg_eflags, stopped) and the bytes per
    charged unit (`bytes_per_insn`):
    a budget stops the engine at a block start before that block runs, and a budget lowered
    from an OUT callback stops at the next block start with the OUT done once. Raises
    UnsupportedUnicorn otherwise."""
    _check_once("block clock", _probe_block_clock, function, state_type, stop_budget,
                bytes_per_insn, needs="the fast mode (-icount off)", advice="Run without -icount off, or ")


def self_test_access_exit_checks() -> None:
    """Check 10. on a scratch engine: the flag is clear on a new engine; with it set, a stop
    asked from an MMIO callback ends the run at the next block start (the rest of the block
    ran) instead of rolling back to the access, and a refused store is dropped while the
    block runs on. Raises UnsupportedUnicorn otherwise."""
    _check_once("access exit checks", _probe_access_exit_checks, needs="the fast mode (-icount off)",
                advice="Run without -icount off, or ")


def _probe_access_exit_checks() -> str | None:
    def run(checks: bool) -> tuple:
        uc = Uc(UC.UC_ARCH_X86, UC.UC_MODE_64)
        uc.mem_map(0x1000, 0x1000)
        uc.mem_map(0x4000, 0x1000, UC.UC_PROT_READ)
        # 0x1000: mov 0x3000, %eax (MMIO); inc %rbx; inc %rbx; jmp 0x1100
        # 0x1100: hlt
        # 0x1200: mov %eax, 0x4000 (read-only); inc %rbx; jmp 0x1100
        uc.mem_write(0x1000, bytes.fromhex("8b042500300000" "48ffc3" "48ffc3" "e9ee000000"))
        uc.mem_write(0x1100, b"\xf4")
        uc.mem_write(0x1200, bytes.fromhex("89042500400000" "48ffc3" "e9f1feffff"))
        uch = handle(uc)
        if ctypes.c_bool.from_address(uch + UC_STRUCT_NO_EXIT_REQUEST).value:
            raise UcError(UC.UC_ERR_ARG)            # a new engine must have the flag clear
        set_access_exit_checks(uc, checks)
        reads = []

        def on_read(offset, size):
            reads.append(offset)
            if len(reads) == 1:
                _uclib.uc_emu_stop(uch)
            return 0x55
        mmio_map(uc, 0x3000, 0x1000, on_read, lambda *_: None)
        uc.emu_start(0x1000, 0, 0, 100)
        first = (uc.reg_read(X86.UC_X86_REG_RIP), uc.reg_read(X86.UC_X86_REG_RBX), len(reads))
        uc.reg_write(X86.UC_X86_REG_RBX, 0)
        uc.reg_write(X86.UC_X86_REG_RAX, 0x77)
        try:
            uc.emu_start(0x1200, 0, 0, 100)
            err = None
        except UcError as exc:
            err = exc.errno
        second = (err, uc.reg_read(X86.UC_X86_REG_RIP), uc.reg_read(X86.UC_X86_REG_RBX),
                  bytes(uc.mem_read(0x4000, 4)))
        return first, second
    try:
        checked, unchecked = run(True), run(False)
    except UcError:
        return "uc_struct.no_exit_request is not where expected"
    if checked != ((0x1000, 0, 1), (UC.UC_ERR_WRITE_PROT, 0x1200, 0, bytes(4))):
        return f"the engine's exit checks after each access behave unexpectedly ({checked})"
    if unchecked != ((0x1100, 2, 1), (UC.UC_ERR_WRITE_PROT, 0x1100, 1, bytes(4))):
        return ("translating without the exit check after each access does not run on to the "
                f"block's end ({unchecked})")
    return None


def self_test_insn_clock(function: int, state_type, stop_budget: int) -> None:
    """Check 11. on a scratch engine with the exact clock's native code hook `function` and its
    state type (fields counter, budget, emu_stop, cpu, loop_exit_restore, stopped). Translating
    without the exit checks (10.): a budget stops the run right before the instruction past it
    with the guest state (flags included) as the instructions before it left it, a budget
    lowered from a port callback stops right after the OUT, and resuming goes on as if never
    stopped. With the checks and no restore function, registered first
    (`uc_struct.hook_insert`) beside a breakpoint's hook: it runs before that hook, and budget
    stops are at the same instructions. Raises UnsupportedUnicorn otherwise."""
    _check_once("instruction clock", _probe_insn_clock, function, state_type, stop_budget)


def _probe_insn_clock(function: int, state_type, stop_budget: int) -> str | None:
    problem = _probe_insn_clock_lean(function, state_type, stop_budget)
    return problem or _probe_insn_clock_checked(function, state_type, stop_budget)


def _probe_insn_clock_checked(function: int, state_type, stop_budget: int) -> str | None:
    uc = Uc(UC.UC_ARCH_X86, UC.UC_MODE_64)
    uc.mem_map(0x1000, 0x1000)
    # 0x1000: inc %rbx; inc %rbx; inc %rbx (a breakpoint here); inc %rbx; hlt
    uc.mem_write(0x1000, bytes.fromhex("48ffc3" * 4 + "f4"))
    hits = []

    def breakpoint_hook(uc_, address, size, _ud):
        hits.append(counter.value)
        uc_.emu_stop()
    uc.hook_add(UC.UC_HOOK_CODE, breakpoint_hook, None, 0x1006, 0x1006)
    st = state_type()
    st.emu_stop = native_api()["uc_emu_stop"]
    st.cpu = engine_cpu(uc)                    # no loop_exit_restore: the checks stop it
    native_hook_code(uc, function, ctypes.addressof(st), first=True)
    counter = ctypes.c_uint64.from_address(ctypes.addressof(st) + state_type.counter.offset)
    st.counter, st.budget = 0, 100
    uc.emu_start(0x1000, 0, 0, 0)
    got = (hits, st.counter, uc.reg_read(X86.UC_X86_REG_RIP), uc.reg_read(X86.UC_X86_REG_RBX))
    if got != ([3], 3, 0x1006, 2):         # counted first (3), then stopped before running it
        return f"a code hook added first does not run before the others ({got})"
    uc.reg_write(X86.UC_X86_REG_RBX, 0)
    st.counter, st.budget, st.stopped = 0, 1, 0
    uc.emu_start(0x1003, 0, 0, 0)
    got = (st.stopped, st.counter, uc.reg_read(X86.UC_X86_REG_RIP), uc.reg_read(X86.UC_X86_REG_RBX))
    if got != (stop_budget, 1, 0x1006, 1):
        return f"the checked instruction clock does not stop before the instruction past its budget ({got})"
    return None


def _probe_insn_clock_lean(function: int, state_type, stop_budget: int) -> str | None:
    uc = Uc(UC.UC_ARCH_X86, UC.UC_MODE_64)
    uc.mem_map(0x1000, 0x1000)
    uc.mem_map(0x8000, 0x1000)
    # 0x1000: 1: inc %rbx; cmp $5, %rbx; mov %rbx, 0x8000(,%rbx,8); jne 1b; out %al, $0x80;
    #         inc %rdx; inc %rdx; hlt
    uc.mem_write(0x1000, bytes.fromhex("48ffc3" "4883fb05" "48891cdd00800000" "75ef"
                                       "e680" "48ffc2" "48ffc2" "f4"))
    set_access_exit_checks(uc, False)
    st = state_type()
    st.emu_stop = native_api()["uc_emu_stop"]
    st.loop_exit_restore = loop_exit_restore_function()
    native_hook_code(uc, function, ctypes.addressof(st))
    counter = ctypes.c_uint64.from_address(ctypes.addressof(st) + state_type.counter.offset)
    budget = ctypes.c_uint64.from_address(ctypes.addressof(st) + state_type.budget.offset)
    outs = []

    def on_out(port, size, value):
        outs.append(port)
        budget.value = counter.value       # what Cpu.request_stop_after_instruction does
    hook_out(uc, on_out)
    r = uc.reg_read
    trail = []
    pc = 0x1000
    # Stop after 6 instructions (inside the second round, after its cmp), then after 1, 2, ...
    st.cpu = engine_cpu(uc)                    # built with the first mapping
    if not st.cpu:
        return "uc_struct.cpu is not where expected"
    for allowed in (6, 1, 2, 3, 100):
        st.counter, st.budget, st.stopped = 0, allowed, 0
        uc.emu_start(pc, 0, 0, 0)
        pc = r(X86.UC_X86_REG_RIP)
        trail.append((st.stopped, st.counter, pc, r(X86.UC_X86_REG_RBX)))
    # 6: a round and the inc, cmp of the next (stop before the mov: the cmp's flags must
    # survive the stop); 1: the mov (stop right before the jne that reads them); 2: the jne
    # and the next inc; 3: cmp, mov, jne.
    want = [(stop_budget, 6, 0x1007, 2), (stop_budget, 1, 0x100f, 2), (stop_budget, 2, 0x1003, 3),
            (stop_budget, 3, 0x1000, 3)]
    if trail[:4] != want:
        return f"the exact clock does not stop right before the instruction past its budget ({trail[:4]})"
    # The rest: rounds 4 and 5 (4 instructions each) and the OUT, whose callback stops the run
    # right after it.
    if (outs, trail[4], r(X86.UC_X86_REG_RDX)) != ([0x80], (stop_budget, 9, 0x1013, 5), 0):
        return f"a stop asked from a port callback is not right after the OUT ({outs}, {trail[4]})"
    if [int.from_bytes(uc.mem_read(0x8000 + 8 * n, 8), "little") for n in range(1, 6)] != [1, 2, 3, 4, 5]:
        return "a run stopped and resumed by the exact clock does not compute what it should"
    return None


def self_test_native_rdtsc(function: int, state_type) -> None:
    """A native RDTSC hook (`function`, state with base, counter, reg_write, reg_rax, reg_rdx)
    puts base + *counter in EDX:EAX and skips the host's instruction. Raises UnsupportedUnicorn
    otherwise."""
    _check_once("native rdtsc", _probe_native_rdtsc, function, state_type)


def _probe_native_rdtsc(function: int, state_type) -> str | None:
    uc = Uc(UC.UC_ARCH_X86, UC.UC_MODE_64)
    uc.mem_map(0x1000, 0x1000)
    uc.mem_write(0x1000, b"\x0f\x31\xf4")              # rdtsc; hlt
    counter = ctypes.c_uint64(0x55)
    st = state_type(base=0x1122334455667700, counter=ctypes.addressof(counter),
                    reg_write=native_api()["uc_reg_write"],
                    reg_rax=X86.UC_X86_REG_RAX, reg_rdx=X86.UC_X86_REG_RDX)
    native_hook_rdtsc(uc, function, ctypes.addressof(st))
    uc.emu_start(0x1000, 0, 0, 10)
    got = (uc.reg_read(X86.UC_X86_REG_RDX), uc.reg_read(X86.UC_X86_REG_RAX))
    return None if got == (0x11223344, 0x55667755) else \
        f"a native RDTSC hook does not set EDX:EAX ({got[0]:#x}:{got[1]:#x})"


def self_test_region_cache(make_cache) -> None:
    """Check 8. with `make_cache(uc)` (a region_cache.RegionCache factory) on a scratch engine:
    guest stores and loads, host reads and writes, and map changes made inside
    `cache.changing()` (unmap, map elsewhere with other permissions, MMIO in RAM's place) all
    see what Unicorn's own lookup sees, and repeated lookups hit the cache. Raises
    UnsupportedUnicorn otherwise."""
    _check_once("region cache", _probe_region_cache, make_cache)


def self_test_store_path(make_state, seen) -> None:
    """Check 9. on a scratch engine with `make_state(uc, ram, ram_size, ranges)` (a
    store_path.StorePath factory) and `seen()` (what the wrappers saw last): `uc->cpu` and a
    block's page addresses are where expected, stores take the fast path, and code rewritten by
    stores after it ran is still seen, at its own address (paging off) and through an alias
    (two linear addresses of one page). Raises UnsupportedUnicorn otherwise."""
    _check_once("store path", _probe_store_path, make_state, seen)


# 0x8000: write `mov $1, %eax; ret` at 0x5000, call it at `target`, keep EAX in EBX, rewrite the
# immediate to 2 through 0x5000, call it at `target` again; hlt.
def _smc_program(target: int) -> bytes:
    def code(imm: int) -> bytes:                 # movabs $(mov $imm, %eax; ret), %rax
        return bytes.fromhex("48b8") + (0xC300000000B8 | imm << 8).to_bytes(8, "little")
    store = bytes.fromhex("48a3") + (0x5000).to_bytes(8, "little")     # movabs %rax, 0x5000
    call = bytes.fromhex("48c7c1") + target.to_bytes(4, "little") + bytes.fromhex("ffd1")
    return (code(1) + store + call + bytes.fromhex("4889c3")          # mov %rax, %rbx
            + code(2) + store + call + bytes.fromhex("f4"))


def _probe_store_path(make_state, seen) -> str | None:
    ram = ctypes.create_string_buffer(0x10000)
    base = ctypes.addressof(ram)
    results = []
    for paging in (False, True):
        uc = Uc(UC.UC_ARCH_X86, UC.UC_MODE_64)
        uc.mem_map_ptr(0, 0x10000, UC.UC_PROT_ALL, base)
        ctypes.memset(base, 0, 0x10000)
        target = 0x5000
        if paging:                 # 2 MiB pages: 0 -> 0 and 0x200000 -> 0 (an alias)
            ram[0x1000:0x1008] = (0x2003).to_bytes(8, "little")          # PML4[0] -> PDPT
            ram[0x2000:0x2008] = (0x3003).to_bytes(8, "little")          # PDPT[0] -> PD
            ram[0x3000:0x3010] = (0x83).to_bytes(8, "little") * 2        # PD[0], PD[1] -> 0
            uc.reg_write(X86.UC_X86_REG_CR3, 0x1000)
            uc.reg_write(X86.UC_X86_REG_CR4, 0x20)
            uc.reg_write(X86.UC_X86_REG_CR0, 0x80000011)
            target = 0x205000
        state = make_state(uc, base, 0x10000, [(0, 0x10000, 0)])
        prog = _smc_program(target)
        ram[0x8000:0x8000 + len(prog)] = prog
        uc.reg_write(X86.UC_X86_REG_RSP, 0x9800)
        uc.emu_start(0x8000, 0, 0, 100)
        if engine_cpu(uc) != seen().cpu:
            return "uc_struct.cpu is not where expected"
        tb, pc = seen().tb, seen().pc            # the last block translated, and where
        page0 = ctypes.c_uint64.from_address(tb + TB_PAGE_ADDR).value
        ram_ptr = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                   ctypes.c_uint64)(store_path_functions()[4])
        if ram_ptr(handle(uc), None, page0) != base + (pc & 0x1FF000):   # both maps: pa = va mod 2 MiB
            return "TranslationBlock.page_addr is not where expected"
        results.append((uc.reg_read(X86.UC_X86_REG_RBX), uc.reg_read(X86.UC_X86_REG_RAX)))
        if state.cleaned == 0:
            return "no store took the fast path"
    if results != [(1, 2), (1, 2)]:
        return f"code rewritten through a fast-path TLB entry was not seen ({results})"
    return None


def _probe_region_cache(make_cache) -> str | None:
    uc = Uc(UC.UC_ARCH_X86, UC.UC_MODE_64)
    uc.mem_map(0x1000, 0x1000)
    uc.mem_map(0x2000, 0x1000)
    cache = make_cache(uc)
    # 0x1000: a loop storing to and loading from 0x2000 (slow path: the page is executable)
    code = bytes.fromhex("48c7c1" "10000000"          # mov $16, %rcx
                         "48890c25" "00200000"        # 1: mov %rcx, 0x2000
                         "488b0425" "00200000"        # mov 0x2000, %rax
                         "48ffc9" "75eb" "f4")        # dec %rcx; jnz 1b; hlt
    uc.mem_write(0x1000, code)
    uc.emu_start(0x1000, 0, 0, 100)
    if uc.reg_read(X86.UC_X86_REG_RAX) != 1 or uc.mem_read(0x2000, 8) != (1).to_bytes(8, "little"):
        return "guest stores and loads through the cached region lookup went wrong"
    if cache.hits == 0:
        return "the cached region lookup is never used"
    faults = []
    uc.hook_add(UC.UC_HOOK_MEM_WRITE_UNMAPPED | UC.UC_HOOK_MEM_WRITE_PROT,
                lambda _uc, kind, addr, *_: faults.append((kind, addr)) and False)
    with cache.changing():                 # the data page goes away, comes back read-only
        uc.mem_unmap(0x2000, 0x1000)
        uc.mem_map(0x2000, 0x1000, UC.UC_PROT_READ)
    try:
        uc.emu_start(0x1000, 0, 0, 100)
    except UcError:
        pass
    if faults != [(UC.UC_MEM_WRITE_PROT, 0x2000)]:
        return f"a map change is not seen by the cached region lookup ({faults})"
    seen = []
    with cache.changing():                 # MMIO where the page was
        uc.mem_unmap(0x2000, 0x1000)
        mmio_map(uc, 0x2000, 0x1000, lambda off, size: 7, lambda off, size, v: seen.append(v))
    uc.emu_start(0x1000, 0, 0, 100)
    if seen[:1] != [16] or uc.reg_read(X86.UC_X86_REG_RAX) & 0xFFFFFFFF != 7:   # 8 bytes: 2 MMIO reads
        return "MMIO mapped in RAM's place is not seen by the cached region lookup"
    cache.close()
    if ctypes.c_void_p.from_address(handle(uc) + UC_STRUCT_MEMORY_MAPPING).value != unicorn_memory_mapping():
        return "closing the region cache does not give the engine its own lookup back"
    return None


def _probe_block_clock(function: int, state_type, stop_budget: int, bytes_per_insn: int) -> str | None:
    uc = Uc(UC.UC_ARCH_X86, UC.UC_MODE_64)
    uc.mem_map(0x1000, 0x1000)
    # 0x1000: inc rbx; dec rcx; jnz 0x1000; hlt          (8-byte loop block)
    # 0x1100: inc rdx; out 0x80, al; inc rbx; jmp 0x1100 (a port callback inside a block)
    uc.mem_write(0x1000, bytes.fromhex("48ffc3" "48ffc9" "75f8" "f4"))
    uc.mem_write(0x1100, bytes.fromhex("48ffc2" "e680" "48ffc3" "ebf6"))
    st = state_type()
    api = native_api()
    st.reg_read, st.emu_stop = api["uc_reg_read"], api["uc_emu_stop"]
    st.reg_eflags = X86.UC_X86_REG_EFLAGS
    native_hook_block(uc, function, ctypes.addressof(st))
    uc.reg_write(X86.UC_X86_REG_RCX, 1000)
    unit = -(-8 // bytes_per_insn)         # the charge of the 8-byte loop block
    st.counter, st.budget = 0, 10 * unit
    uc.emu_start(0x1000, 0, 0, 0)
    r = uc.reg_read
    if (st.stopped, st.counter, r(X86.UC_X86_REG_RBX), r(X86.UC_X86_REG_RIP)) != (stop_budget, 10 * unit, 10, 0x1000):
        return ("a native block hook's uc_emu_stop does not end the run at the block start "
                f"(counter {st.counter}, blocks run {r(X86.UC_X86_REG_RBX)})")
    outs = []
    counter = ctypes.c_uint64.from_address(ctypes.addressof(st) + state_type.counter.offset)
    budget = ctypes.c_uint64.from_address(ctypes.addressof(st) + state_type.budget.offset)

    def on_out(port, size, value):
        outs.append(port)
        budget.value = counter.value       # what Cpu.request_stop_after_instruction does
    hook_out(uc, on_out)
    uc.ctl_flush_tb()
    uc.reg_write(X86.UC_X86_REG_RBX, 0)
    st.counter, st.budget, st.stopped = 0, 1000, 0
    uc.emu_start(0x1100, 0, 0, 0)
    got = (outs, r(X86.UC_X86_REG_RDX), r(X86.UC_X86_REG_RBX), r(X86.UC_X86_REG_RIP), st.stopped)
    if got != ([0x80], 1, 1, 0x1100, stop_budget):
        return f"a stop asked from a port callback is not clean at the next block start ({got})"
    return None

_checked = False


def self_test() -> None:
    """Refuse to run on anything but the Unicorn build these offsets were measured on."""
    global _checked
    if _checked:
        return
    found = getattr(unicorn, "__version__", "?")
    problem = None
    if found != REQUIRED_VERSION:
        problem = f"found unicorn {found}"
    else:
        try:
            problem = _probe()
        except Exception as exc:           # any surprise means the internals moved
            problem = f"internal probe failed ({exc})"
    if problem:
        raise UnsupportedUnicorn(
            f"this emulator needs exactly unicorn {REQUIRED_VERSION} (it relies on that build's "
            f"internal layout); {problem}. Install it with: pip install unicorn=={REQUIRED_VERSION}")
    _checked = True


def _probe() -> str | None:
    uc = Uc(UC.UC_ARCH_X86, UC.UC_MODE_64)
    h = handle(uc)
    if ctypes.c_int.from_address(h + UC_STRUCT_ARCH).value != UC.UC_ARCH_X86:
        return "uc_struct.arch is not where expected"
    if ctypes.c_int.from_address(h + UC_STRUCT_MODE).value != UC.UC_MODE_64:
        return "uc_struct.mode is not where expected"
    if _uclib.uc_context_size(uc._uch) != CONTEXT_SIZE:
        return "the CPU context has a different size"
    if RawState(uc).save().hflags2 != 1:            # HF2_GIF, set at power-on
        return "hflags2 is not where expected"
    # Code: nop x5; hlt. Run with count=3 and check the counter and the segment cache layout.
    uc.mem_map(0x1000, 0x1000)
    if ctypes.c_void_p.from_address(h + UC_STRUCT_MEMORY_MAPPING).value != unicorn_memory_mapping():
        return "uc_struct.memory_mapping is not where expected"
    uc.mem_write(0x1000, b"\x90" * 5 + b"\xf4")
    uc.emu_start(0x1000, 0x2000, count=3)
    if emu_counter(uc).value not in (3, 4):
        return "uc_struct.emu_counter is not where expected"
    if emu_count(uc).value != 3:
        return "uc_struct.emu_count is not where expected"
    # Lowering the budget from inside a callback stops before the next instruction.
    stop_at = [0]

    def lower_budget(_uc, address, _size, _ud):
        if address == 0x1001:
            stop_at[0] = emu_counter(uc).value
            emu_count(uc).value = stop_at[0]
    h = uc.hook_add(UC.UC_HOOK_CODE, lower_budget, None, 0x1001, 0x1001)
    uc.ctl_flush_tb()                      # code translated before the hook would not call it
    uc.emu_start(0x1000, 0x2000, count=5)
    uc.hook_del(h)
    uc.ctl_flush_tb()
    if uc.reg_read(X86.UC_X86_REG_RIP) != 0x1002 or emu_count(uc).value != stop_at[0]:
        return "lowering uc_struct.emu_count does not stop after the current instruction"
    raw = RawState(uc)
    uc.reg_write(X86.UC_X86_REG_FS_BASE, 0x123456789A)
    raw.save()
    if raw.seg(SEG_FS)[1] != 0x123456789A:
        return "the segment cache is not where expected"
    if not raw.hflags & HF_LMA:
        return "hflags is not where expected"
    # Direct code-cache removal: run `mov $1, %al; hlt`, patch the immediate behind Unicorn's
    # back, drop the code through code_remover and run again: the new immediate must be seen.
    uc.mem_write(0x1000, b"\xb0\x01\xf4")
    uc.emu_start(0x1000, 0x2000)
    uc.mem_write(0x1001, b"\x02")
    if code_remover(uc)(0x1000, 0x1003) != UC.UC_ERR_OK:
        return "uc_ctl(UC_CTL_TB_REMOVE_CACHE) refused a valid range"
    uc.emu_start(0x1000, 0x2000)
    if uc.reg_read(X86.UC_X86_REG_RAX) & 0xFF != 2:
        return "uc_ctl(UC_CTL_TB_REMOVE_CACHE) did not drop translated code"
    return (_probe_lean_hooks(uc) or _probe_syscall(uc) or _probe_unmap_walk(uc)
            or _probe_store_fast_path())


def _probe_store_fast_path() -> str | None:
    """With a memory hook only outside the page, a store makes the page's TLB entry take the
    fast path; code then translated on that page and overwritten by a later store must not run
    stale (see 7.)."""
    uc = Uc(UC.UC_ARCH_X86, UC.UC_MODE_64)
    uc.mem_map(0x1000, 0x3000)
    uc.hook_add(UC.UC_HOOK_MEM_WRITE_PROT, lambda *a: False, None, 0x100000, 0x1FFFFF)
    uc.mem_write(0x1000, bytes.fromhex(
        "c60425002100" "0090"       # movb $0x90, 0x2100   (the page's first store: now dirty)
        "e8" "f30f0000"             # call 0x2000         (code translated on that page)
        "c60425012000" "0002"       # movb $2, 0x2001     (overwrites that code's immediate)
        "e8" "e60f0000"             # call 0x2000
        "f4"))                      # hlt
    uc.mem_write(0x2000, bytes.fromhex("b801000000" "c3"))     # mov $1, %eax; ret
    uc.reg_write(X86.UC_X86_REG_RSP, 0x3800)
    uc.emu_start(0x1000, 0, 0, 100)
    if uc.reg_read(X86.UC_X86_REG_RAX) != 2:
        return "a store over translated code on a page written before was not seen"
    return None


def _probe_unmap_walk(uc: Uc) -> str | None:
    """With paging on and nothing mapped, mem_unmap's code-cache walk clobbers CR2 unless done
    inside identity_walks; CR0 sits at ENV_CR0 in the raw state."""
    raw = RawState(uc)
    uc.mem_map(0x6000, 0x1000)                       # an empty PML4: nothing is mapped
    uc.mem_write(0x6000, bytes(0x1000))
    uc.reg_write(X86.UC_X86_REG_CR3, 0x6000)
    uc.reg_write(X86.UC_X86_REG_CR4, 0x20)
    uc.reg_write(X86.UC_X86_REG_CR0, 0x80000011)
    if raw.save()._u64(ENV_CR0).value != 0x80000011:
        return "CR0 is not where expected in the CPU state"
    clobbered = []
    for guarded in (False, True):
        uc.reg_write(X86.UC_X86_REG_CR2, 0)
        uc.mem_map(0x7000, 0x1000)
        if guarded:
            with identity_walks(uc, raw):
                uc.mem_unmap(0x7000, 0x1000)
        else:
            uc.mem_unmap(0x7000, 0x1000)
        clobbered.append(uc.reg_read(X86.UC_X86_REG_CR2))
    uc.reg_write(X86.UC_X86_REG_CR0, 0x11)
    if uc.reg_read(X86.UC_X86_REG_CR0) & CR0_PG:
        return "paging could not be turned off again"
    if clobbered != [0x7000, 0]:
        return f"mem_unmap's page walk behaves differently than measured (CR2 {clobbered})"
    return None


def _probe_syscall(uc: Uc) -> str | None:
    """SYSCALL is a no-op unless hooked; inside the hook RIP is the instruction itself, and
    Unicorn adds its length (2) when the hook returns (see syscall_insn)."""
    base = 0x4000
    uc.mem_map(base, 0x1000)
    uc.mem_write(base, b"\x0f\x05" + b"\xf4" * 14 + b"\xb0\x07\xf4")   # syscall; ... mov al, 7; hlt
    seen = []

    def on_syscall(_uc, _ud):
        seen.append(uc.reg_read(X86.UC_X86_REG_RIP))
        uc.reg_write(X86.UC_X86_REG_RIP, base + 16 - 2)
    h = uc.hook_add(UC.UC_HOOK_INSN, on_syscall, None, 1, 0, X86.UC_X86_INS_SYSCALL)
    uc.ctl_flush_tb()
    uc.reg_write(X86.UC_X86_REG_RAX, 0)
    uc.emu_start(base, base + 0x1000, count=10)
    uc.hook_del(h)
    uc.ctl_flush_tb()
    if seen != [base] or uc.reg_read(X86.UC_X86_REG_RAX) & 0xFF != 7:
        return "a SYSCALL hook does not see RIP at the instruction, or RIP is not advanced by 2"
    return None


class _ProbeError(Exception):
    pass


def _probe_lean_hooks(uc: Uc) -> str | None:
    """The direct callbacks: every signature carries the values the guest sees, and an exception
    in a callback stops emulation and comes out of emu_start. Runs at 0x3000 on the engine of
    the other probes (a second scratch engine would cost start-up time)."""
    base = 0x3000
    uc.mem_map(base, 0x1000)
    seen: list = []
    raise_in = [False]

    def on_in(port, size):
        if raise_in[0]:
            raise _ProbeError()
        seen.append(("in", port, size))
        return 0x5A

    hook_in(uc, on_in)
    hook_out(uc, lambda port, size, value: seen.append(("out", port, size, value)))
    hook_rdtsc(uc, lambda: 0x1122334455667788)
    hook_cpuid(uc, lambda leaf, sub: (leaf + 1, sub + 2, 3, 4))
    mmio_map(uc, 0x2000, 0x1000, lambda off, size: 0xCAFEBABE,
             lambda off, size, value: seen.append(("w", off, size, value)))
    code = bytes.fromhex(
        "e480"              # in al, 0x80
        "e681"              # out 0x81, al
        "0f31"              # rdtsc
        "89d6" "89c7"       # mov esi, edx; mov edi, eax
        "b807000000"        # mov eax, 7
        "b905000000"        # mov ecx, 5
        "0fa2"              # cpuid
        "8b042500200000"    # mov eax, [0x2000]
        "890c2504200000"    # mov [0x2004], ecx
        "f4")               # hlt
    uc.mem_write(base, code)
    uc.emu_start(base, base + 0x1000, count=100)
    r = uc.reg_read
    got = (r(X86.UC_X86_REG_RSI), r(X86.UC_X86_REG_RDI), r(X86.UC_X86_REG_RBX),
           r(X86.UC_X86_REG_RCX), r(X86.UC_X86_REG_RDX), r(X86.UC_X86_REG_RAX))
    if got != (0x11223344, 0x55667788, 7, 3, 4, 0xCAFEBABE):
        return f"the direct RDTSC/CPUID/MMIO hooks misbehave ({[hex(v) for v in got]})"
    if seen != [("in", 0x80, 1), ("out", 0x81, 1, 0x5A), ("w", 4, 4, 3)]:
        return f"the direct port/MMIO hooks misbehave ({seen})"
    raise_in[0] = True
    try:
        uc.emu_start(base, base + 0x1000, count=100)
    except _ProbeError:
        return None
    return "an exception in a direct hook does not stop emulation"
