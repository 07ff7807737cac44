"""What a debugger needs from a machine, as one small protocol.

The gdb stub, the monitor and the Python API talk to a `DebugTarget`, never to Unicorn or the
board directly, so they can be tested against a fake target and the board can change under them.
`machine_target.MachineTarget` adapts the real `machine.pc.Machine`; `session.Debugger` runs
the gdb stub, the monitor console and device breakpoints around one target.

Addresses handed to a target are guest *virtual* (linear when paging is off) unless a method
says physical; memory access goes through the guest's page tables and refuses MMIO (a debugger
read must never trigger a device side effect).
"""

from __future__ import annotations

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
