"""The fast mode's virtual clock (`-icount off`): a native block hook (native/icount.c, built with
gcc on first use like the rep string helper, loaded with ctypes) that charges every translated
block to the slice's clock and ends the slice at a block start.

In the exact mode Unicorn counts each instruction itself (`emu_start` with count > 0), which
calls a helper before every instruction and costs about nine tenths of the engine's speed. In
the fast mode the engine runs with count = 0 and this hook does the counting, once per block:
the charge is the block's size in bytes divided by 3 (`bytes_per_insn()`: x86 code averages
about three bytes per instruction), rounded up, an estimate of its instruction count: the hook
is told the block's address and size, not how many instructions it holds. A rep string block
(2-4 bytes) is charged 1 per element, as in the exact mode. The hook stops the engine cleanly at a block start (before the block
runs, so nothing is replayed) when the slice's budget is used up, when a callback lowered the
budget to ask for a stop, or, while an interrupt waits for IF = 1, when the block starts with
IF set.

The hook is registered only while the fast mode runs (`attach`/`detach`): in the exact mode it
would cost a native call per block for nothing.
"""

from __future__ import annotations

import ctypes

from .. import unicorn_internals as ui
from ..toolchain import native_library

STOP_NONE, STOP_BUDGET, STOP_IF = 0, 1, 2


class _State(ctypes.Structure):
    """struct icount_state of native/icount.c."""
    _fields_ = [("counter", ctypes.c_uint64), ("budget", ctypes.c_uint64),
                ("reg_read", ctypes.c_void_p), ("emu_stop", ctypes.c_void_p),
                ("reg_eflags", ctypes.c_int32), ("if_watch", ctypes.c_int32),
                ("stopped", ctypes.c_int32), ("unused", ctypes.c_int32),
                ("blocks", ctypes.c_uint64),
                ("chain", ctypes.c_void_p), ("chain_user", ctypes.c_void_p)]


def library() -> ctypes.CDLL:
    """native/icount.c, built on first use (ToolchainError when it cannot be built or
    loaded: the command line reports it in one line)."""
    return native_library("out/libicount.so", {})


def bytes_per_insn() -> int:
    """The fast clock charges a block ceil(size / this) units."""
    return ctypes.c_int.in_dll(library(), "icount_bytes_per_insn").value


def _function() -> int:
    """Address of the native block hook."""
    return ctypes.cast(library().icount_block, ctypes.c_void_p).value


class FastClock:
    """The block-counting hook of one engine. `counter` and `budget` are live views of the
    hook's state (the same protocol as Unicorn's emu_counter / emu_count in the exact mode:
    lowering the budget to the counter from a callback ends the slice, here at the next block
    start)."""

    def __init__(self, uc):
        self._uc = uc
        self._fn = _function()
        ui.self_test_block_clock(self._fn, _State, STOP_BUDGET, bytes_per_insn())
        ui.self_test_access_exit_checks()         # see Cpu._set_fast
        st = self._state = _State()
        api = ui.native_api()
        st.reg_read, st.emu_stop = api["uc_reg_read"], api["uc_emu_stop"]
        st.reg_eflags = ui.NATIVE_REGS["eflags"]
        base = ctypes.addressof(st)
        self.counter = ctypes.c_uint64.from_address(base + _State.counter.offset)
        self.budget = ctypes.c_uint64.from_address(base + _State.budget.offset)
        self._handle: int | None = None
        self._chain: tuple[int, int] | None = None

    @property
    def attached(self) -> bool:
        return self._handle is not None

    def attach(self, chain: tuple[int, int] | None = None) -> None:
        """Register the hook (the caller flushes translated code: blocks translated before it
        would never call it). `chain`: (function, user data) of another native block hook the
        caller unregistered, to be called first at every block start (see native/icount.c)."""
        st = self._state
        self._chain = chain
        st.chain, st.chain_user = chain if chain else (None, None)
        if self._handle is None:
            self._handle = ui.native_hook_block(self._uc, self._fn, ctypes.addressof(self._state))

    def detach(self, raw) -> None:
        """Remove the hook (the caller flushes translated code, which may still call it; the
        function and its state stay alive, so such a call is harmless meanwhile)."""
        if self._handle is not None:
            ui.native_hook_del(self._uc, self._handle, raw)
            self._handle = None

    def start(self, budget: int, if_watch: bool, chain: bool = True) -> None:
        """Before an emu_start(count=0): a fresh counter and the slice's budget; `chain`: call
        the chained hook in this slice (attach's), or not."""
        st = self._state
        st.chain = self._chain[0] if chain and self._chain else None
        st.counter = 0
        st.budget = budget
        st.stopped = STOP_NONE
        st.if_watch = 1 if if_watch else 0

    def set_if_watch(self, on: bool) -> None:
        self._state.if_watch = 1 if on else 0

    @property
    def stopped(self) -> int:
        """Why the hook ended the last emu_start: STOP_NONE (it did not), STOP_BUDGET, STOP_IF."""
        return self._state.stopped

    @property
    def blocks(self) -> int:
        """Blocks charged since the hook was built (statistics)."""
        return self._state.blocks
