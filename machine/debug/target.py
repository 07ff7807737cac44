"""What a debugger needs from a machine, as one small protocol.

The gdb stub, the monitor and the Python API talk to a `DebugTarget`, never to Unicorn or the
board directly, so they can be tested against a fake target and the board can change under them.
`MachineTarget` (at the bottom) adapts the real `machine.pc.Machine`.

Addresses handed to a target are guest *virtual* (linear when paging is off) unless a method
says physical; memory access goes through the guest's page tables and refuses MMIO (a debugger
read must never trigger a device side effect).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable, Protocol


class DebugAccessError(Exception):
    """A debugger memory or register access the target refuses (unmapped page, MMIO, unknown
    register). gdb gets an error reply; the monitor prints the message."""


# Why the guest stopped. Kept as plain strings so stops read well in tests and logs.
STOP_BREAKPOINT = "breakpoint"      # a software/hardware breakpoint at `pc`
STOP_WATCHPOINT = "watchpoint"      # `watch_kind` ('watch'|'rwatch'|'awatch') at data `addr`
STOP_STEP = "step"                  # one instruction done
STOP_INTERRUPT = "interrupt"        # ^C, or a stop asked for from outside (monitor 'stop')
STOP_DEVICE = "device"              # a device breakpoint fired; `message` says which and why
STOP_EXITED = "exited"              # the guest asked to exit (isa-debug-exit, -no-reboot reset)
STOP_FAULT = "fault"                # a fatal guest fault (triple fault, HLT with IF=0); `message` is the report
STOP_RESET = "reset"                # the guest reset the machine (it keeps running)
STOP_LIMIT = "limit"                # the instruction budget given to resume() ran out

WATCH_KINDS = ("watch", "rwatch", "awatch")     # gdb's names: write, read, access


@dataclass
class Stop:
    kind: str
    pc: int = 0
    addr: int = 0                   # data address of a watchpoint hit
    watch_kind: str = ""
    exit_status: int | None = None  # process exit status for STOP_EXITED / STOP_FAULT
    message: str = ""               # human-readable detail (device breakpoint, fault report)
    extra: dict = field(default_factory=dict)


PollFn = Callable[[], "str | None"]
"""Called between instruction slices while the target runs; returns a reason to stop (e.g.
'interrupt') or None to keep going. Must not block."""


class DebugTarget(Protocol):
    arch: str                                   # 'i386' or 'x86-64': picks gdb's target description

    def read_registers(self) -> dict[str, int]: ...
    def write_register(self, name: str, value: int) -> None: ...
    def read_memory(self, vaddr: int, length: int) -> bytes: ...          # DebugAccessError
    def write_memory(self, vaddr: int, data: bytes) -> None: ...         # DebugAccessError
    def read_physical(self, paddr: int, length: int) -> bytes: ...       # RAM only
    def translate(self, vaddr: int) -> int | None: ...
    def add_breakpoint(self, addr: int) -> None: ...
    def remove_breakpoint(self, addr: int) -> None: ...
    def add_watchpoint(self, addr: int, length: int, kind: str) -> bool: ...   # False: unsupported
    def remove_watchpoint(self, addr: int, length: int, kind: str) -> None: ...
    def step(self, irqs: bool = False) -> Stop: ...
    def resume(self, poll: PollFn, max_instructions: int | None = None) -> Stop: ...
    def request_stop(self, reason: str, message: str = "") -> None: ...
    def reset(self) -> None: ...


# ----------------------------------------------------------------------------------------------
# Adapter for the real board
# ----------------------------------------------------------------------------------------------

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

    def __init__(self, machine, arch: str = "i386"):
        self.machine = machine
        self.cpu = machine.cpu
        self.arch = arch
        self._poll: PollFn | None = None
        self._pending: tuple[str, str] | None = None
        self._breakpoints: set[int] = set()
        self._soft_watch: dict[tuple[int, int, str], bytes] = {}
        self._hw_watch = hasattr(self.cpu, "add_watchpoint")
        self._decoded: dict[tuple[int, int], list[tuple]] = {}
        machine.add_poll_hook(self._poll_hook)
        machine.mem.add_write_listener(self._host_wrote)

    # -- registers and memory -------------------------------------------------------------------
    def read_registers(self) -> dict[str, int]:
        return dict(self.cpu.read_registers())

    def write_register(self, name: str, value: int) -> None:
        try:
            self.cpu.write_register(name, value)
        except (KeyError, ValueError) as exc:
            raise DebugAccessError(f"cannot write register {name}: {exc}") from None

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
        """Callable from a device callback: the board stops cleanly after the current instruction."""
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
        if irqs:
            self.machine.run(max_instructions=1)     # pending interrupts are delivered first
            reason = self.machine.stop_reason
        else:
            reason = self.machine.step()
        stop = self._classify(reason)
        if stop.kind in (STOP_LIMIT, STOP_STEP):
            stop = self._collect() or Stop(STOP_STEP, pc=self.pc())
        return stop

    def resume(self, poll: PollFn, max_instructions: int | None = None) -> Stop:
        self._poll = poll
        try:
            if self._soft_watch:
                return self._resume_watching(poll, max_instructions)
            self.machine.run(max_instructions=max_instructions)
            return self._classify(self.machine.stop_reason)
        finally:
            self._poll = None

    def _resume_watching(self, poll: PollFn, max_instructions: int | None) -> Stop:
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
            machine.run(max_instructions=1)
            n += 1
            reason = machine.stop_reason
            if reason is not None and reason.kind != "limit":
                stop = self._classify(reason)
                if stop.kind not in (STOP_LIMIT, STOP_STEP):
                    return stop
            for key in value_watches:
                try:
                    new = self.read_memory(key[0], key[1])
                except DebugAccessError:
                    continue
                if new != self._soft_watch[key]:
                    self._soft_watch[key] = new
                    return Stop(STOP_WATCHPOINT, pc=self.pc(), addr=key[0], watch_kind="watch")
            for addr, length, kind in access_watches:
                for a, size, is_read in accesses:
                    if a < addr + length and addr < a + size and (is_read or kind == "awatch"):
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
        from capstone import CS_AC_READ, x86 as cx
        from . import disasm
        code = b""
        for n in (15, 1 + (0xFFF - (pc & 0xFFF))):       # up to the end of the page if need be
            try:
                code = self.read_memory(pc, min(n, 15))
                break
            except DebugAccessError:
                continue
        insn = disasm.decode_one(code, pc, bits) if code else None
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


# ----------------------------------------------------------------------------------------------
# The debug loop: gdb, the monitor console and device breakpoints around one target
# ----------------------------------------------------------------------------------------------

class Debugger:
    """Owns the run loop while a debugger is configured (`-s`/`-gdb`, `-S`, `-monitor stdio`).

    `run()` returns the process exit status, like `Machine.run()`. While the guest runs, the
    target calls `_poll` between instruction slices (one `select` with timeout 0); while it is
    stopped, `_wait_stopped` blocks in `select` on the gdb sockets and the monitor console.
    """

    def __init__(self, target, machine=None, gdb=None, console=None,
                 start_stopped: bool = False):
        from .breakpoints import DeviceBreakpoints, RequestResolver
        from .monitor import Monitor
        self.target = target
        self.machine = machine
        self.gdb = gdb
        self.console = console
        self.start_stopped = start_stopped
        resolver = RequestResolver(self._virtio_named) if machine is not None else None
        precise = getattr(target, "set_precise_stops", None)
        self.breakpoints = DeviceBreakpoints(self._device_hit, resolver,
                                             on_change=(lambda n: precise(n > 0)) if precise else None)
        self.monitor = Monitor(target, machine, self.breakpoints, on_quit=self._quit,
                               on_reset=self._reset, on_stop=self._console_stop,
                               on_cont=self._console_cont)
        if gdb is not None:
            # gdb has its own continue/^C; `monitor stop|cont` there would confuse its state.
            gdb_monitor = Monitor(target, machine, self.breakpoints, on_quit=self._quit,
                                  on_reset=self._reset)
            gdb.monitor = gdb_monitor.execute
        self.quit_requested = False
        self._reset_pending = False
        self._cont_requested = False
        self._stop_requested = False
        self.running = False
        self.exit_status = 0
        self._dead: Stop | None = None      # a fatal fault gdb is looking at

    # -- callbacks ----------------------------------------------------------------------------------
    def _virtio_named(self, name: str) -> list:
        return [vdev for _, vdev, _ in self.monitor.virtio_devices()
                if getattr(vdev, "name", None) == name]

    def _device_hit(self, bp, message: str) -> None:
        self.target.request_stop("device", message)

    def _quit(self) -> None:
        self.quit_requested = True
        if self.running:
            self.target.request_stop("quit")

    def _reset(self) -> None:
        if self.running:
            self._reset_pending = True
            self.target.request_stop("reset")
        else:
            self.target.reset()

    def _console_stop(self) -> None:
        if self.running:
            self._stop_requested = True

    def _console_cont(self) -> None:
        self._cont_requested = True

    # -- polling while running ----------------------------------------------------------------------
    def _poll(self) -> str | None:
        reason = self.gdb.poll() if self.gdb is not None else None
        if reason:
            return reason
        if self.console is not None:
            if self.console.pending:
                self._console_lines(read=False)
            if not self.console.closed:
                import select
                r, _, _ = select.select([self.console.infd], [], [], 0)
                if r:
                    self._console_lines()
        if self.quit_requested:
            return "quit"
        if self._reset_pending:
            return "reset"
        if self._stop_requested:
            self._stop_requested = False
            return "interrupt"
        return None

    def _console_lines(self, read: bool = True) -> None:
        """Run the console's complete lines in order; a `cont` ends the batch (the lines typed
        after it run once the guest is going again, as they would have been typed)."""
        console = self.console
        if read:
            console.pending += console.read_lines()
        while console.pending:
            line = console.pending.pop(0)
            out = self.monitor.execute(line)
            console.write(out + console.PROMPT)
            if self._cont_requested and not self.running:
                break

    # -- waiting while stopped ----------------------------------------------------------------------
    def _can_resume(self) -> bool:
        return (self.gdb is not None) or (self.console is not None and not self.console.closed)

    def _wait_stopped(self):
        """Block until gdb or the console gives the guest back; returns an Action."""
        import select
        from .gdbstub import Action
        self._cont_requested = False
        while True:
            if self.quit_requested:
                return Action("kill")
            if self.console is not None and self.console.pending:
                self._console_lines(read=False)
                if self._cont_requested:
                    self._cont_requested = False
                    return Action("continue")
                continue
            if not self._can_resume():
                return Action("continue")
            fds = list(self.gdb.fds()) if self.gdb is not None else []
            if self.console is not None and not self.console.closed:
                fds.append(self.console.infd)
            readable, _, _ = select.select(fds, [], [])
            if self.console is not None and self.console.infd in readable:
                self._console_lines()
                if self._cont_requested:
                    self._cont_requested = False
                    return Action("continue")
            if self.gdb is not None and any(s in readable for s in self.gdb.fds()):
                action = self.gdb.on_readable(readable)
                if action is not None:          # a detach resumes the guest, as in QEMU
                    return action

    # -- the loop -----------------------------------------------------------------------------------
    def run(self) -> int:
        if self.console is not None:
            self.console.greet()
        stopped = self.start_stopped
        if self.gdb is not None:
            self.gdb.last_stop = Stop(STOP_STEP, pc=self._pc())
        try:
            while True:
                if self.quit_requested:
                    return self.exit_status
                if stopped:
                    action = self._wait_stopped()
                    if action.kind == "kill":
                        self.quit_requested = True      # ended by the user, as quit is
                        return self.exit_status
                    if self._dead is not None:
                        # Nothing can run after a fatal fault: the machine ends here.
                        self.gdb.report_exit(Stop(STOP_EXITED, exit_status=self.exit_status))
                        return self.exit_status
                    if action.kind == "step":
                        stop = self.target.step(irqs=action.irqs)
                        if self._handle(stop):
                            return self.exit_status
                        continue
                    stopped = False
                self.running = True
                try:
                    stop = self.target.resume(self._poll)
                finally:
                    self.running = False
                done = self._handle(stop)
                if done:
                    return self.exit_status
                stopped = self._stopped_after(stop)
        finally:
            self.breakpoints.clear()            # no trace listener outlives the session
            if self.gdb is not None:
                self.gdb.close()

    def _pc(self) -> int:
        try:
            regs = self.target.read_registers()
        except Exception:
            return 0
        return regs.get("eip", regs.get("rip", 0))

    def _handle(self, stop: Stop) -> bool:
        """Report a stop; True when the machine is finished."""
        if stop.kind == STOP_EXITED:
            self.exit_status = stop.exit_status or 0
            if self.gdb is not None:
                self.gdb.report_exit(stop)
            return True
        if stop.kind == STOP_FAULT:
            self.exit_status = stop.exit_status if stop.exit_status is not None else 2
            if self.gdb is not None and self.gdb.has_client and self.gdb.waiting:
                # Let the user look at the corpse; the next resume ends the machine.
                self.gdb.report_stop(stop)
                self._dead = stop
                return False
            if self.console is not None and stop.message and self.machine is None:
                self.console.write("\n" + stop.message.rstrip("\n") + "\n")
            return True
        if stop.kind == STOP_RESET and self._reset_pending:
            self._reset_pending = False
            self.target.reset()
            return False
        if stop.kind in (STOP_RESET, STOP_LIMIT):
            return False
        if stop.message == "quit" or self.quit_requested:
            return True
        if stop.message == "attach":
            if self.gdb is not None:
                self.gdb.last_stop = Stop(STOP_INTERRUPT, pc=stop.pc)
            return False
        if self.gdb is not None:
            self.gdb.report_stop(stop)
        if self.console is not None and (stop.message or stop.kind != STOP_STEP):
            what = stop.message if stop.kind == STOP_DEVICE else f"stopped ({stop.kind}) at {stop.pc:#x}"
            self.console.write(f"\n{what}\n{self.console.PROMPT}")
        return False

    def _stopped_after(self, stop: Stop) -> bool:
        if self._dead is not None:
            return True
        return stop.kind not in (STOP_RESET, STOP_LIMIT) and self._can_resume()


def attach_debugger(machine, config) -> "Debugger | None":
    """Wire `-gdb`/`-s`, `-S` and `-monitor stdio` around a built machine. Returns None when
    none is asked for (then nothing of the debugger exists and `machine.run()` runs alone);
    otherwise a Debugger whose `run()` replaces `machine.run()`."""
    import sys
    from ..config import ConfigError
    from .gdbstub import GdbStub, parse_gdb_address
    from .monitor import MonitorConsole
    monitor = (config.monitor or "none").lower()
    if monitor not in ("stdio", "none", "null", "vc"):
        raise ConfigError(f"-monitor {config.monitor}: only 'stdio' and 'none' are supported")
    if not config.gdb and not config.start_stopped and monitor != "stdio":
        return None
    target = MachineTarget(machine, arch="i386")
    gdb = None
    if config.gdb and config.gdb.lower() != "none":
        try:
            host, port = parse_gdb_address(config.gdb)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        gdb = GdbStub(target, host=host, port=port)
        try:
            gdb.listen()
        except OSError as exc:
            raise ConfigError(f"-gdb {config.gdb}: Failed to bind socket: {exc.strerror or exc}") from None
    console = MonitorConsole(sys.stdin.fileno(), sys.stdout) if monitor == "stdio" else None
    return Debugger(target, machine, gdb=gdb, console=console, start_stopped=config.start_stopped)
