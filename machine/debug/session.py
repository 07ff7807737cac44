"""The debug loop: the gdb stub, the monitor console and device breakpoints around one
`DebugTarget`, and `attach_debugger`, which wires them from the command line's options."""

from __future__ import annotations

import select
import sys

from ..config import ConfigError
from .breakpoints import DeviceBreakpoints
from .gdbstub import Action, GdbStub, parse_gdb_address
from .machine_target import MachineTarget
from .monitor import Monitor, MonitorConsole
from .target import (Stop, STOP_DEVICE, STOP_EXITED, STOP_FAULT, STOP_INTERRUPT, STOP_LIMIT,
                     STOP_RESET, STOP_STEP)


class Debugger:
    """Owns the run loop while a debugger is configured (`-s`/`-gdb`, `-S`, `-monitor stdio`).

    `run()` returns the process exit status, like `Machine.run()`. While the guest runs, the
    target calls `_poll` between instruction slices (one `select` with timeout 0); while it is
    stopped, `_wait_stopped` blocks in `select` on the gdb sockets and the monitor console.
    """

    def __init__(self, target, machine=None, gdb=None, console=None,
                 start_stopped: bool = False):
        self.target = target
        self.machine = machine
        self.gdb = gdb
        self.console = console
        self.start_stopped = start_stopped
        precise = getattr(target, "set_precise_stops", None)
        self.breakpoints = DeviceBreakpoints(self._device_hit,
                                             on_change=(lambda n: precise(n > 0)) if precise else None,
                                             completions=machine is not None)
        self.monitor = Monitor(target, machine, self.breakpoints, on_quit=self._quit,
                               on_reset=self._reset, on_stop=self._console_stop,
                               on_cont=self._console_cont, is_running=lambda: self.running)
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
            if stop.kind == STOP_DEVICE:
                what = stop.message
            elif stop.message == "io-error":
                what = "paused (io-error): a drive's rerror/werror=stop; `cont` retries the request"
            else:
                what = f"stopped ({stop.kind}) at {stop.pc:#x}"
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
    monitor = (config.monitor or "none").lower()
    if monitor not in ("stdio", "none", "null", "vc"):
        raise ConfigError(f"-monitor {config.monitor}: only 'stdio' and 'none' are supported")
    if not config.gdb and not config.start_stopped and monitor != "stdio":
        return None
    target = MachineTarget(machine)
    # Breakpoints, steps and watchpoints need instruction-exact stops: with a debugger wired,
    # a fast-mode machine (-icount off) runs in the exact mode.
    machine.cpu.hold_exact(True)
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
