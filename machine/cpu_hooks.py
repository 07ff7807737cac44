"""Hooks on executed code, added and removed while the machine runs: debugger breakpoints
(stop before an address; resuming there executes it once), per-block hooks for the -d logs,
the dynamic-hook mode, and the interrupt-enable watch the board uses to take a pending interrupt
as soon as IF goes to 1. Every one of them costs a flush of translated code when it comes or
goes (code translated without a hook never calls it), so each is kept only while it is needed.
"""

from __future__ import annotations

from unicorn import unicorn_const as UC
from unicorn import x86_const as X

from . import unicorn_internals as ui
from .x86.deliver import EFLAGS_IF

_REG_EFLAGS = X.UC_X86_REG_EFLAGS


class CodeHooks:
    """The code hooks of one Cpu. `breakpoints` maps linear address -> hook handle; `bp_hit` is
    where the last slice stopped, `bp_skip` the breakpoint a resume steps over."""

    def __init__(self, cpu):
        self.cpu = cpu
        self.uc = cpu.uc
        self._reg = cpu._reg                                # read per block by the IF watch
        self.breakpoints: dict[int, int] = {}
        self.bp_hit: int | None = None
        self.bp_skip: int | None = None
        self._dead_hooks: list = []                         # callbacks kept alive after hook_del
        self._dynamic_hook: int | None = None
        self._if_watch: int | None = None                   # block hook, see watch_interrupt_enable
        self.if_waiting = False                             # an interrupt waits for IF=1
        self._if_calls = 0                                  # block starts since the watch last hit
        self._if_gave_up = False                            # the watch gave up on this wait
        self._block_hooks = 0                               # -d block log hooks installed

    def observing(self, ignore_if_watch: bool = False) -> bool:
        """Does any hook watch single instructions or block starts? The rep string hook, which
        does many iterations at once, stands aside while one does; the fast mode waits for
        all but the IF watch (it has its own) to go."""
        return bool(self.breakpoints or self._dynamic_hook is not None
                    or (self._if_watch is not None and not ignore_if_watch) or self._block_hooks)

    def _changed(self) -> None:
        rep = getattr(self.cpu, "rep_string", None)
        if rep is not None:
            rep.set_enabled(not self.observing())

    def add_breakpoint(self, linear: int) -> None:
        """Stop *before* executing the instruction at linear address `linear` (run() returns
        kind 'breakpoint'). Resuming from it executes that instruction (skip-once)."""
        if linear in self.breakpoints:
            return
        self.breakpoints[linear] = self.uc.hook_add(UC.UC_HOOK_CODE, self._on_breakpoint, None, linear, linear)
        self._changed()
        # Already translated code would miss it. Removing one block looks `linear` up through
        # the page tables, which clobbers the guest when it is unmapped (see identity_walks):
        # with paging on, drop everything instead.
        if self._reg.read(X.UC_X86_REG_CR0) & 0x80000000:
            self.uc.ctl_flush_tb()
        else:
            self.uc.ctl_remove_cache(linear, linear + 1)

    def remove_breakpoint(self, linear: int) -> None:
        h = self.breakpoints.pop(linear, None)
        if h is None:
            return
        self._delete_code_hook(h)
        # Stale translated code may still call the deleted hook's thunk: drop it all.
        self.uc.ctl_flush_tb()
        self._changed()

    def _delete_code_hook(self, handle: int) -> None:
        # Translated blocks may still call a deleted code hook's thunk until the next flush
        # (the callers flush): keep the callback alive so such a call is harmless.
        self._dead_hooks.append(ui.hook_callback(self.uc, handle))
        self._hook_del(handle)

    def _hook_del(self, handle: int) -> None:
        # hook_del drops the blocks the hook was compiled into by looking their virtual
        # addresses up through the page tables; for a block of another address space or of
        # freed kernel memory the walk faults, and Unicorn swallows the #PF half-way: CR2 and
        # the exception state are clobbered (two of them leave old_exception at #DF, and the
        # guest's next fault becomes a silent triple fault). The callers flush all translated
        # code right after, so the lookup may as well be the identity.
        with ui.identity_walks(self.uc, self.cpu._raw):
            self.uc.hook_del(handle)

    def add_block_hook(self, fn) -> int:
        """fn(linear_address, size) before every executed translated block (for -d in_asm/exec/
        cpu). It slows the guest about tenfold: add it only while such a log is on. Returns the
        handle for remove_block_hook."""
        handle = self.uc.hook_add(UC.UC_HOOK_BLOCK, lambda _uc, addr, size, _ud: fn(addr, size))
        self.uc.ctl_flush_tb()           # code translated without the hook would never call it
        self._block_hooks += 1
        self._changed()
        return handle

    def remove_block_hook(self, handle: int) -> None:
        self._delete_code_hook(handle)
        self.uc.ctl_flush_tb()
        self._block_hooks -= 1
        self._changed()

    def _on_breakpoint(self, uc, address, size, _ud) -> None:
        if self.bp_skip == address:
            self.bp_skip = None
            return
        self.bp_skip = None
        self.bp_hit = address
        self.cpu._stop_cause = "breakpoint"          # the slice result says so
        uc.emu_stop()

    def set_dynamic_hooks(self, on: bool) -> None:
        """'Dynamic-hook mode': a never-matching code hook makes every translated block call the
        hook dispatcher, so code hooks added later take effect at the very next instruction.
        Costs ~30 % speed. Stops after an instruction no longer need it (they are exact in every
        mode, see request_stop_after_instruction); kept for debugger front ends that ask."""
        if on and self._dynamic_hook is None:
            self._dynamic_hook = self.uc.hook_add(UC.UC_HOOK_CODE, _noop_code, None,
                                                  0xFFFFFFFFFFFFF000, 0xFFFFFFFFFFFFF000)
        elif not on and self._dynamic_hook is not None:
            self._delete_code_hook(self._dynamic_hook)
            self._dynamic_hook = None
        self.uc.ctl_flush_tb()
        self._changed()

    # Interrupt enable. An interrupt that became pending while IF=0 must be taken as soon as IF
    # goes to 1 (after the instruction following STI, right after POPF or IRET), not at the
    # slice end. Unicorn ends a translated block after each of those instructions, so while the
    # board has such an interrupt waiting, a block hook checks IF at every block start and ends
    # the slice there. The hook is a Python call per block, and adding or removing it costs a
    # flush of all translated code, so it is bounded both ways: it stays installed while it
    # keeps being useful (an interrupt storm: waits come and go every few blocks), and it gives
    # up after IF_WATCH_BLOCKS block starts without a hit (a BIOS polling a port with IF=0 while
    # the keyboard's or the timer's interrupt waits): then the board shortens its slices
    # instead, until that wait is over.
    IF_WATCH_BLOCKS = 4096

    def watch_interrupt_enable(self, on: bool) -> bool:
        """Say (between slices) whether an interrupt waits for IF=1. While one does, the slice
        ends before the first instruction of a translated block that starts with IF=1 (an STI
        shadow, if any, is still pending then: see interrupt_shadow). Returns False when the
        watch gave up on this wait: the caller should then keep its slices short."""
        self.if_waiting = on
        if not on:
            self._if_gave_up = False
            if self._if_watch is not None and self._if_calls > self.IF_WATCH_BLOCKS:
                self._drop_if_watch()
            return True
        if self._if_gave_up:
            if self._if_watch is not None:
                self._drop_if_watch()
            return False
        if self._if_watch is None:
            self._if_calls = 0
            self._if_watch = ui.hook_block(self.uc, self._on_block_if_watch)
            self.uc.ctl_flush_tb()           # code translated without the hook never calls it
            self._changed()
        return True

    def if_watch_state(self) -> tuple[bool, int, bool, bool]:
        """(waiting, block starts counted, gave up, hook installed): a snapshot keeps them,
        since they decide slice lengths."""
        return self.if_waiting, self._if_calls, self._if_gave_up, self._if_watch is not None

    def restore_if_watch(self, waiting: bool, calls: int, gave_up: bool, installed: bool) -> None:
        if installed and self._if_watch is None:
            self._if_watch = ui.hook_block(self.uc, self._on_block_if_watch)
            self.uc.ctl_flush_tb()
            self._changed()
        elif not installed and self._if_watch is not None:
            self._drop_if_watch()
        self.if_waiting, self._if_calls, self._if_gave_up = waiting, calls, gave_up

    def drop_if_watch(self) -> None:
        """Remove the IF watch's block hook, if installed (the fast mode watches natively)."""
        if self._if_watch is not None:
            self._drop_if_watch()
        self._if_gave_up = False

    def _drop_if_watch(self) -> None:
        # No stale block can call the deleted hook: the flush comes before any code runs again
        # (so, unlike _delete_code_hook, nothing needs keeping alive).
        self._hook_del(self._if_watch)
        self._if_watch = None
        self.uc.ctl_flush_tb()
        self._changed()

    def _on_block_if_watch(self, _address: int) -> None:
        if self.if_waiting and self._reg.read(_REG_EFLAGS) & EFLAGS_IF:
            self._if_calls = 0
            self.cpu.request_stop_after_instruction()
            return
        self._if_calls += 1
        if self._if_calls > self.IF_WATCH_BLOCKS:
            if self.if_waiting:
                self._if_gave_up = True
            self.cpu.request_stop_after_instruction()       # the board drops the hook


def _noop_code(uc, address, size, _ud) -> None:
    pass
