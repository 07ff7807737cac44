"""A fake DebugTarget for the debugger tests: a toy CPU with one-byte instructions, so the gdb
stub, the monitor and the debug loop can be tested without the board."""

from __future__ import annotations

import threading

from machine.debug.gdbstub import GdbStub
from machine.debug.session import Debugger
from machine.debug.target import (DebugAccessError, Stop, STOP_BREAKPOINT, STOP_DEVICE,
                                  STOP_EXITED, STOP_FAULT, STOP_INTERRUPT, STOP_LIMIT, STOP_STEP,
                                  STOP_WATCHPOINT)

NOP, INC, LOAD, EXIT, LOOP, FAULT, KICK = 0x90, 0x01, 0x02, 0xF4, 0xEB, 0xCC, 0x07
COUNTER = 0x2000
MEM_SIZE = 0x10000
MMIO = 0xF000          # a page the fake refuses, like MMIO on the real machine


class FakeTarget:
    """Opcodes: NOP; INC (mem32[COUNTER] += 1); LOAD (reads mem32[COUNTER]); EXIT (exit with
    status eax); LOOP (jump to 0x1000); FAULT (fatal fault); KICK (calls `on_kick`, a device
    callback that may ask for a stop, as a device breakpoint does)."""

    arch = "i386"

    def __init__(self, program: bytes = b"", origin: int = 0x1000):
        self.mem = bytearray(MEM_SIZE)
        self.mem[origin:origin + len(program)] = program
        self.regs = {n: 0 for n in ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi",
                                    "eflags", "cs", "ss", "ds", "es", "fs", "gs")}
        self.regs.update(eip=origin, esp=0x8000, eflags=0x202, cs=0x08, ss=0x10, ds=0x10, es=0x10)
        self.breakpoints: set[int] = set()
        self.watchpoints: set[tuple[int, int, str]] = set()
        self.pending: tuple[str, str] | None = None
        self.on_kick = None
        self.executed = 0
        self.resets = 0
        self.step_irqs: list[bool] = []

    # registers and memory
    def read_registers(self):
        return dict(self.regs)

    def write_register(self, name, value):
        if name not in self.regs and name != "eip":
            if name.startswith(("st", "f")):
                return
            raise DebugAccessError(f"no register {name}")
        self.regs[name] = value & 0xFFFFFFFF

    def _check(self, addr, n):
        if addr < 0 or addr + n > MEM_SIZE or (addr < MMIO + 0x1000 and addr + n > MMIO):
            raise DebugAccessError(f"cannot access memory at {addr:#x}")

    def read_memory(self, addr, n):
        self._check(addr, n)
        return bytes(self.mem[addr:addr + n])

    def write_memory(self, addr, data):
        self._check(addr, len(data))
        self.mem[addr:addr + len(data)] = data

    def read_physical(self, addr, n):
        return self.read_memory(addr, n)

    def translate(self, vaddr):
        return vaddr

    def add_breakpoint(self, addr):
        self.breakpoints.add(addr)

    def remove_breakpoint(self, addr):
        self.breakpoints.discard(addr)

    def add_watchpoint(self, addr, length, kind):
        self.watchpoints.add((addr, length, kind))
        return True

    def remove_watchpoint(self, addr, length, kind):
        self.watchpoints.discard((addr, length, kind))

    def request_stop(self, reason, message=""):
        self.pending = (reason, message)

    def reset(self):
        self.resets += 1
        self.regs["eip"] = 0x1000

    # execution
    def _watch_hit(self, addr, kind_done):
        for (a, n, kind) in self.watchpoints:
            if a <= addr < a + n and (kind == "awatch" or (kind == "watch") == (kind_done == "w")):
                return Stop(STOP_WATCHPOINT, addr=a, watch_kind=kind)
        return None

    def _execute(self) -> Stop | None:
        eip = self.regs["eip"]
        op = self.mem[eip]
        self.executed += 1
        self.regs["eip"] = eip + 1
        hit = None
        if op == INC:
            v = int.from_bytes(self.mem[COUNTER:COUNTER + 4], "little") + 1
            self.mem[COUNTER:COUNTER + 4] = v.to_bytes(4, "little")
            hit = self._watch_hit(COUNTER, "w")
        elif op == LOAD:
            self.regs["eax"] = int.from_bytes(self.mem[COUNTER:COUNTER + 4], "little")
            hit = self._watch_hit(COUNTER, "r")
        elif op == EXIT:
            return Stop(STOP_EXITED, exit_status=self.regs["eax"])
        elif op == LOOP:
            self.regs["eip"] = 0x1000
        elif op == FAULT:
            self.regs["eip"] = eip
            return Stop(STOP_FAULT, exit_status=2, message="fatal: triple fault at %#x" % eip)
        elif op == KICK and self.on_kick is not None:
            self.on_kick()
        if hit is not None:
            hit.pc = self.regs["eip"]
            return hit
        if self.pending is not None:
            reason, msg = self.pending
            self.pending = None
            kind = STOP_DEVICE if reason == "device" else STOP_INTERRUPT
            return Stop(kind, pc=self.regs["eip"], message=msg or reason)
        return None

    def step(self, irqs=False):
        self.step_irqs.append(irqs)
        stop = self._execute()
        return stop or Stop(STOP_STEP, pc=self.regs["eip"])

    def resume(self, poll, max_instructions=None):
        first = True
        n = 0
        while max_instructions is None or n < max_instructions:
            if not first and self.regs["eip"] in self.breakpoints:
                return Stop(STOP_BREAKPOINT, pc=self.regs["eip"])
            first = False
            stop = self._execute()
            n += 1
            if stop is not None:
                return stop
            if n % 500 == 0:
                reason = poll()
                if reason:
                    return Stop(STOP_INTERRUPT, pc=self.regs["eip"], message=reason)
        return Stop(STOP_LIMIT, pc=self.regs["eip"])


def serve_fake(program: bytes, start_stopped: bool = True):
    """A FakeTarget running `program` under the Debugger with a gdb stub on a free local port, its
    loop in a daemon thread. Returns (target, debugger, port, thread, result); result["status"]
    is the loop's exit status once it ends."""
    target = FakeTarget(program)
    stub = GdbStub(target, port=0)
    port = stub.listen()
    dbg = Debugger(target, gdb=stub, start_stopped=start_stopped)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("status", dbg.run()), daemon=True)
    thread.start()
    return target, dbg, port, thread, result
