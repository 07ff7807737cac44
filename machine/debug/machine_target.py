"""`DebugTarget` over the real board (`machine.pc.Machine`): registers, virtual memory, code
breakpoints and watchpoints, and the board's run loop turned into `Stop`s."""

from __future__ import annotations

import sys
import time

from .target import (DebugAccessError, PollFn, Stop, STOP_BREAKPOINT, STOP_DEVICE, STOP_EXITED,
                     STOP_FAULT, STOP_INTERRUPT, STOP_LIMIT, STOP_RESET, STOP_STEP, STOP_WATCHPOINT,
                     WATCH_KINDS)


_watch_warned = False          # the slow-watchpoint warning is printed once per process
_WATCH_POLL_EVERY = 1024        # instructions between host polls while stepping for watchpoints


class MachineTarget:
    """`DebugTarget` over `machine.pc.Machine` (its `run()`/`step()`/`stop_reason`, and the
    CPU's registers, virtual memory and code-hook breakpoints).

    Watchpoints: the CPU layer offers no data hooks, so they are done here by running one
    instruction at a time through the board's loop (devices, timers and interrupts keep working),
    only while a watchpoint exists, and far slower than free running:
    * `watch` (write) compares the watched bytes after each instruction, so it also catches a
      device's DMA into them, and reports only real changes (as gdb expects);
    * `rwatch`/`awatch` decode each instruction (capstone) and compute the addresses of its
      explicit memory operands and string operations before it runs; implicit stack accesses
      (push/pop/call/ret) are not seen.
    A CPU that grows `add_watchpoint(addr, len, kind)` is used instead automatically.
    """

    def __init__(self, machine, arch: str = "auto"):
        self.machine = machine
        self.cpu = machine.cpu
        self._arch = arch
        self._poll: PollFn | None = None
        self._pending: tuple[str, str] | None = None
        self._breakpoints: set[int] = set()
        self._soft_watch: dict[tuple[int, int, str], bytes] = {}
        self._hw_watch = hasattr(self.cpu, "add_watchpoint")
        self._decoded: dict[tuple[int, int], list[tuple]] = {}
        self.history = None                 # reverse.History once reverse execution is on
        self.last_watch: tuple[int, str] = (0, "watch")
        machine.add_poll_hook(self._poll_hook)
        machine.mem.add_write_listener(self._host_wrote)

    @property
    def arch(self) -> str:
        """'x86-64' while the CPU is in long mode, else 'i386' (unless fixed at creation)."""
        if self._arch != "auto":
            return self._arch
        return "x86-64" if self.cpu.mode == "long" else "i386"

    # -- registers and memory -------------------------------------------------------------------
    def read_registers(self) -> dict[str, int]:
        return dict(self.cpu.read_registers())

    def write_register(self, name: str, value: int) -> None:
        try:
            self.cpu.write_register(name, value)
        except (KeyError, ValueError) as exc:
            raise DebugAccessError(f"cannot write register {name}: {exc}") from None
        self._modified()

    def read_memory(self, vaddr: int, length: int) -> bytes:
        try:
            return bytes(self.cpu.read_virtual(vaddr, length))
        except (ValueError, OverflowError) as exc:     # MemoryAccessError is a ValueError
            raise DebugAccessError(f"cannot access memory at {vaddr:#x}: {exc}") from None

    def _host_wrote(self, gpa: int, length: int) -> None:
        if self._decoded:
            self._decoded.clear()

    def write_memory(self, vaddr: int, data: bytes) -> None:
        self._decoded.clear()
        try:
            self.cpu.write_virtual(vaddr, bytes(data))
        except (ValueError, OverflowError) as exc:
            raise DebugAccessError(f"cannot access memory at {vaddr:#x}: {exc}") from None
        self._modified()

    def _modified(self) -> None:
        if self.history is not None:
            self.history.modified()

    def read_physical(self, paddr: int, length: int) -> bytes:
        try:
            return self.machine.mem.read(paddr, length)
        except Exception as exc:
            raise DebugAccessError(f"cannot access physical memory at {paddr:#x}: {exc}") from None

    def translate(self, vaddr: int) -> int | None:
        return self.cpu.translate(vaddr)

    # -- breakpoints and watchpoints -----------------------------------------------------------
    def add_breakpoint(self, addr: int) -> None:
        self._breakpoints.add(addr)
        self.cpu.add_breakpoint(addr)

    def remove_breakpoint(self, addr: int) -> None:
        self._breakpoints.discard(addr)
        self.cpu.remove_breakpoint(addr)

    def has_breakpoint(self, addr: int) -> bool:
        return addr in self._breakpoints

    def add_watchpoint(self, addr: int, length: int, kind: str) -> bool:
        if self._hw_watch:
            return self.cpu.add_watchpoint(addr, length, kind) is not False
        if kind not in WATCH_KINDS:
            return False
        try:
            self._soft_watch[(addr, length, kind)] = self.read_memory(addr, length)
        except DebugAccessError:
            return False
        global _watch_warned
        if not _watch_warned:
            # Software watchpoints step the guest instruction by instruction: say so once, or a
            # run that takes seconds instead of milliseconds looks like a hang.
            _watch_warned = True
            print("machine: warning: watchpoints single-step the guest; it runs about 100 times "
                  "slower while one is set", file=sys.stderr)
        return True

    def remove_watchpoint(self, addr: int, length: int, kind: str) -> None:
        if self._hw_watch:
            self.cpu.remove_watchpoint(addr, length, kind)
        else:
            self._soft_watch.pop((addr, length, kind), None)

    def set_precise_stops(self, on: bool) -> None:
        """Device breakpoints stop at the end of the very instruction that reached the device
        only in the CPU's dynamic-hook mode (it costs speed, so only while they exist)."""
        dyn = getattr(self.cpu, "set_dynamic_hooks", None)
        if dyn is not None:
            dyn(on)

    # -- execution --------------------------------------------------------------------------------
    def pc(self) -> int:
        return self.cpu.linear_pc() if hasattr(self.cpu, "linear_pc") else self.cpu.read_registers()["eip"]

    def request_stop(self, reason: str, message: str = "") -> None:
        """Callable from a device callback: the board stops cleanly after the current instruction.
        While the history re-executes to reach a point, device breakpoints stay quiet."""
        if self.history is not None and self.history.replaying is True:
            return
        if self._pending is None:
            self._pending = (reason, message)
        self.machine.request_stop(reason)

    def _poll_hook(self) -> None:
        if self._poll is None:
            return
        reason = self._poll()
        if reason:
            self.request_stop(reason)

    def _collect(self) -> Stop | None:
        """After a step: an exit, reset or device stop the stepped instruction caused is still
        queued in the board; a zero-instruction run() hands it over."""
        self.machine.run(max_instructions=0)
        stop = self._classify(self.machine.stop_reason)
        return None if stop.kind == STOP_LIMIT else stop

    def step(self, irqs: bool = False) -> Stop:
        h = self.history
        if h is not None:
            h.before_forward()
            start = h._now()
        if irqs:
            self.machine.run(max_instructions=1)     # pending interrupts are delivered first
            reason = self.machine.stop_reason
        else:
            reason = self.machine.step()
        stop = self._classify(reason)
        if h is not None:
            h.record("run" if irqs else "step", start, stop.kind)
        if stop.kind in (STOP_LIMIT, STOP_STEP):
            stop = self._collect() or Stop(STOP_STEP, pc=self.pc())
        return stop

    def resume(self, poll: PollFn, max_instructions: int | None = None, record: bool = True) -> Stop:
        h = self.history if record else None
        if h is not None:
            h.before_forward()
        self._poll = poll
        try:
            if self._soft_watch:
                return self._resume_watching(poll, max_instructions, h)
            if h is None:
                self.machine.run(max_instructions=max_instructions)
                return self._classify(self.machine.stop_reason)
            # Recorded: in chunks that end at the history's periodic checkpoints.
            left = max_instructions
            while True:
                chunk = h.budget() if left is None else min(left, h.budget())
                start, t0 = h._now(), time.perf_counter()
                self.machine.run(max_instructions=chunk)
                stop = self._classify(self.machine.stop_reason)
                h.record("run", start, stop.kind, time.perf_counter() - t0)
                if stop.kind != STOP_LIMIT:
                    return stop
                if left is not None:
                    left -= chunk
                    if left <= 0:
                        return stop
        finally:
            self._poll = None

    # -- what reverse execution needs of the target ------------------------------------------------
    def enable_reverse(self, **options) -> None:
        """Record from now on: reverse-step and reverse-continue become possible."""
        from .reverse import History
        self.history = History(self, **options)
        self.history.start()

    def disable_reverse(self) -> None:
        """Stop recording and free the checkpoints (gdb went away)."""
        if self.history is not None:
            self.history.close()
            self.history = None

    def reverse_step(self) -> Stop:
        if self.history is None:
            self.enable_reverse()          # nothing recorded yet: the history starts here
        return self.history.reverse_step()

    def reverse_continue(self) -> Stop:
        if self.history is None:
            self.enable_reverse()
        return self.history.reverse_continue()

    def state_changed(self) -> None:
        """The whole machine was put back to a checkpoint."""
        self._decoded.clear()
        self._pending = None

    def clear_pending(self) -> None:
        self._pending = None
        self.machine._stop_request = None

    def refresh_watchpoints(self) -> None:
        for key in self._soft_watch:
            try:
                self._soft_watch[key] = self.read_memory(key[0], key[1])
            except DebugAccessError:
                pass

    def watch_changed(self) -> bool:
        """A written watchpoint's bytes differ from what they were (then noted as the new value)."""
        for key in [k for k in self._soft_watch if k[2] == "watch"]:
            try:
                new = self.read_memory(key[0], key[1])
            except DebugAccessError:
                continue
            if new != self._soft_watch[key]:
                self._soft_watch[key] = new
                self.last_watch = (key[0], "watch")
                return True
        return False

    def _resume_watching(self, poll: PollFn, max_instructions: int | None, history=None) -> Stop:
        n = 0
        first = True
        machine = self.machine
        value_watches = [k for k in self._soft_watch if k[2] == "watch"]
        access_watches = [k for k in self._soft_watch if k[2] != "watch"]
        while max_instructions is None or n < max_instructions:
            pc = self.pc()
            if not first and pc in self._breakpoints:
                return Stop(STOP_BREAKPOINT, pc=pc)
            first = False
            accesses = self._accesses(pc) if access_watches else ()
            start = history._now() if history is not None else None
            machine.run(max_instructions=1)
            n += 1
            reason = machine.stop_reason
            if history is not None:
                history.record("run", start, getattr(reason, "kind", "limit"))
            if reason is not None and reason.kind != "limit":
                stop = self._classify(reason)
                if stop.kind not in (STOP_LIMIT, STOP_STEP):
                    return stop
            if value_watches and self.watch_changed():
                return Stop(STOP_WATCHPOINT, pc=self.pc(), addr=self.last_watch[0], watch_kind="watch")
            for addr, length, kind in access_watches:
                for a, size, is_read in accesses:
                    if a < addr + length and addr < a + size and (is_read or kind == "awatch"):
                        self.last_watch = (addr, kind)
                        return Stop(STOP_WATCHPOINT, pc=self.pc(), addr=addr, watch_kind=kind)
            if n % _WATCH_POLL_EVERY == 0:
                why = poll()
                if why:
                    return Stop(STOP_INTERRUPT, pc=self.pc(), message=why)
        return Stop(STOP_LIMIT, pc=self.pc())

    def _decode_operands(self, pc: int, bits: int) -> list[tuple]:
        """The explicit memory operands of the instruction at `pc`, decoded once per address:
        (base, index, scale, disp, segment, size, is_read, next_pc). The cache is dropped when
        the debugger or a device writes guest memory (code rewritten by the guest itself is not
        noticed)."""
        key = (pc, bits)
        ops = self._decoded.get(key)
        if ops is not None:
            return ops
        from capstone import CS_AC_READ, x86 as cx     # loaded only while a watchpoint exists
        from ..x86.decode import decode_one
        code = b""
        for n in (15, 1 + (0xFFF - (pc & 0xFFF))):       # up to the end of the page if need be
            try:
                code = self.read_memory(pc, min(n, 15))
                break
            except DebugAccessError:
                continue
        insn = decode_one(code, pc, bits) if code else None
        ops = []
        if insn is not None:
            for op in insn.operands:
                if op.type != cx.X86_OP_MEM:
                    continue
                m = op.mem
                base = insn.reg_name(m.base) if m.base else None
                index = insn.reg_name(m.index) if m.index else None
                seg = insn.reg_name(m.segment) if m.segment else \
                    ("ss" if base in ("esp", "ebp", "sp", "bp", "rsp", "rbp") else "ds")
                ops.append((base, index, m.scale, m.disp, seg, op.size or 1,
                            bool(op.access & CS_AC_READ), pc + insn.size))
        self._decoded[key] = ops
        return ops

    def _accesses(self, pc: int) -> list[tuple[int, int, bool]]:
        """(linear address, size, is_read) of the explicit memory operands of the instruction
        at `pc`, computed from the registers before it runs (read-modify-write counts as read)."""
        bits = self.cpu.code_bits() if hasattr(self.cpu, "code_bits") else 32
        ops = self._decode_operands(pc, bits)
        if not ops:
            return []
        one = getattr(self.cpu, "read_register", None)
        if one is not None:                       # only the registers the operands use
            names = {r if r in _WIDE or len(r) == 3 else "e" + r
                     for op in ops for r in op[:2] if r and r not in ("eip", "rip")}
            regs = {r: one(r) for r in names}
        else:
            regs = self.cpu.read_registers()
        mask = (1 << bits) - 1
        out = []
        for base, index, scale, disp, seg, size, is_read, next_pc in ops:
            ea = disp
            if base in ("eip", "rip"):
                ea += next_pc
            elif base:
                ea += _reg_value(regs, base)
            if index:
                ea += _reg_value(regs, index) * scale
            ea &= mask
            if bits != 64:
                try:
                    ea = (ea + self.cpu.segment(seg)[1]) & 0xFFFFFFFF
                except Exception:
                    pass
            out.append((ea, size, is_read))
        return out

    def reset(self) -> None:
        self.machine.reset()
        self._modified()

    def _classify(self, reason) -> Stop:
        """The board's StopReason as a debugger Stop. Our own stop request (`_pending`) pairs
        with the board's 'interrupt' return, which may come a run later than it was made
        (e.g. when a step or a breakpoint ended the run first)."""
        kind = getattr(reason, "kind", "limit")
        message = getattr(reason, "message", "") or ""
        status = getattr(reason, "exit_status", 0)
        if kind == "exited":
            return Stop(STOP_EXITED, pc=self.pc(), exit_status=status, message=message)
        if kind == "fault":
            return Stop(STOP_FAULT, pc=self.pc(), exit_status=status, message=message)
        if kind == "breakpoint":
            return Stop(STOP_BREAKPOINT, pc=getattr(reason, "address", 0) or self.pc())
        if kind == "step":
            return Stop(STOP_STEP, pc=self.pc())
        if kind == "limit":
            return Stop(STOP_LIMIT, pc=self.pc())
        # A stop request: ours (device breakpoint, ^C, attach, quit, reset) or someone else's.
        pending, self._pending = self._pending, None
        if pending is not None:
            why, text = pending
            if why == "device":
                return Stop(STOP_DEVICE, pc=self.pc(), message=text)
            if why == "reset":
                return Stop(STOP_RESET, pc=self.pc())
            return Stop(STOP_INTERRUPT, pc=self.pc(), message=why)
        if message == "device":
            return Stop(STOP_DEVICE, pc=self.pc(), message="device breakpoint")
        return Stop(STOP_INTERRUPT, pc=self.pc(), message=message)


_WIDE = {"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"} | {f"r{i}" for i in range(8, 16)}


def _reg_value(regs: dict[str, int], name: str) -> int:
    """A register by capstone's name; 16-bit names (si, bp...) are the low half of the 32-bit one."""
    if name in regs:
        return regs[name]
    wide = regs.get("e" + name)
    return (wide & 0xFFFF) if wide is not None else 0
