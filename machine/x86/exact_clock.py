"""The exact mode's lean clock: a native code hook (native/icount.c `icount_insn`) that counts
every instruction and stops the slice before the first one past its budget, by itself.

Unicorn's own counting (`emu_start(count > 0)`) is also a code hook before each instruction, but
it stops through `uc_emu_stop` and relies on the exit check Unicorn emits after every code hook
and after every load and store: two or more helper calls per instruction. This hook leaves the
translated code at once (Unicorn's `cpu_loop_exit_restore`, the CPU put back to the start of
the instruction), so the CPU translates code without those checks
(`unicorn_internals.set_access_exit_checks`) and an instruction costs one native call. Counts,
stops and virtual time are the same as with Unicorn's counting: the protocol is the same
(`counter`/`budget` live views; lowering the budget to the counter from a callback stops the
slice right after the current instruction).

It needs to be the only code hook (Unicorn then calls it directly from translated code, and
the restore needs that return address): while breakpoints, the dynamic-hook mode or the block
log observe instructions, the CPU attaches it `checked` instead, with code translated with the
exit checks, which those hooks stop through: it then only asks for the stop with
`uc_emu_stop`, and the check after the code hooks leaves the block before the instruction, as
Unicorn's own counting does. It is registered first among the code hooks, and only while one
of those two modes runs (`attach`/`detach`). Unicorn's own counting is used only where the native
helper cannot be built: deleting its hook (which `emu_start(count=0)` does) walks every block
it was compiled into through the page tables, outside `identity_walks`.
"""

from __future__ import annotations

import ctypes

from .. import unicorn_internals as ui
from .fast_clock import STOP_BUDGET, STOP_NONE, library


class _State(ctypes.Structure):
    """struct insn_state of native/icount.c."""
    _fields_ = [("counter", ctypes.c_uint64), ("budget", ctypes.c_uint64),
                ("emu_stop", ctypes.c_void_p), ("cpu", ctypes.c_void_p),
                ("loop_exit_restore", ctypes.c_void_p), ("stopped", ctypes.c_int32),
                ("unused", ctypes.c_int32)]


def _function() -> int:
    """Address of the native code hook."""
    return ctypes.cast(library().icount_insn, ctypes.c_void_p).value


class ExactClock:
    """The instruction-counting hook of one engine. `counter` and `budget` are live views of its
    state."""

    def __init__(self, uc):
        self._uc = uc
        self._fn = _function()
        ui.self_test_insn_clock(self._fn, _State, STOP_BUDGET)
        st = self._state = _State()
        st.emu_stop = ui.native_api()["uc_emu_stop"]
        self._loop_exit_restore = ui.loop_exit_restore_function()
        base = ctypes.addressof(st)
        self.counter = ctypes.c_uint64.from_address(base + _State.counter.offset)
        self.budget = ctypes.c_uint64.from_address(base + _State.budget.offset)
        self._handle: int | None = None

    def attach(self, checked: bool = False) -> None:
        """Register the hook, first among the code hooks (the caller flushes translated code:
        blocks translated before it would never call it). `checked`: for code
        translated with Unicorn's exit checks, which other code hooks stop through."""
        self._state.loop_exit_restore = None if checked else self._loop_exit_restore
        if self._handle is None:
            self._handle = ui.native_hook_code(self._uc, self._fn, ctypes.addressof(self._state),
                                               first=True)

    def detach(self, raw) -> None:
        """Remove the hook (the caller flushes translated code, which may still call it; the
        function and its state stay alive, so such a call is harmless meanwhile)."""
        if self._handle is not None:
            ui.native_hook_del(self._uc, self._handle, raw)
            self._handle = None

    def start(self, budget: int) -> None:
        """Before an emu_start(count=0): a fresh counter and the slice's budget (`uc->cpu`
        exists once the engine has mapped memory, before any slice)."""
        st = self._state
        st.cpu = ui.engine_cpu(self._uc)
        st.counter = 0
        st.budget = budget
        st.stopped = STOP_NONE

    @property
    def stopped(self) -> bool:
        """Did the hook end the last emu_start (at the budget)?"""
        return self._state.stopped == STOP_BUDGET
