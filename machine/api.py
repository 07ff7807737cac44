"""Script a machine from Python: a notebook, a pytest test, a bisecting script.

    from machine.api import Session

    with Session.from_args(["-kernel", "guest/out/guest.elf",
                            "-drive", "file=disk.img,format=raw,if=virtio",
                            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]) as s:
        s.run_until("vblk_init")                   # an ELF symbol of the guest
        print(hex(s.registers["eip"]), s.read_u32("blk"))
        s.break_on("virtio-blk request type=flush")
        stop = s.run()                              # stops at the FLUSH
        print(stop.message, s.monitor("info virtio-queue-status virtio-blk 0"))
        s.run_until_serial("ok 8")                  # the next test's TAP line
        print(s.serial)                             # everything the guest printed so far
        print(s.run().exit_status)                  # on to the guest's exit

The options are the command line's (`machine.cli.parse_args`). The session captures COM1 in
`serial` (still echoed when `-serial stdio` was given and echo=True). Every run takes an optional
instruction budget (`max_instructions`) so a script can never hang on a stuck guest: the
returned Stop then has kind 'limit'.
"""

from __future__ import annotations

import struct
import sys
import time
from pathlib import Path
from typing import Callable

from . import trace
from .config import CharDev, MachineConfig
from .debug.breakpoints import DeviceBreakpoint, DeviceBreakpoints
from .debug.monitor import Monitor
from .debug.symbols import ElfSymbols as _ElfSymbols, UnknownSymbol
from .debug.machine_target import MachineTarget
from .debug.target import Stop, STOP_DEVICE, STOP_EXITED, STOP_FAULT
from .savevm_store import SnapshotError  # noqa: F401  (what savevm/loadvm raise)
from .virtio.device import VirtioDeviceState


class SessionError(Exception):
    """A request the session cannot carry out (unknown symbol, machine already finished)."""


# --------------------------------------------------------------------------------------------------
# ELF symbols (machine.debug.symbols); `address` raises SessionError here
# --------------------------------------------------------------------------------------------------

class ElfSymbols(_ElfSymbols):
    """name -> (address, size) for the functions and objects of an ELF file."""

    def address(self, name: str) -> int:
        try:
            return super().address(name)
        except UnknownSymbol as exc:
            raise SessionError(str(exc)) from None


# --------------------------------------------------------------------------------------------------
# The session
# --------------------------------------------------------------------------------------------------

class _SerialTap:
    """Stands in for COM1's host output: keeps every byte, optionally passes it on."""

    def __init__(self, forward, on_data: Callable[[], None]):
        self.data = bytearray()
        self.forward = forward
        self.on_data = on_data

    def write(self, b: bytes) -> int:
        self.data += b
        if self.forward is not None:
            self.forward.write(b)
        self.on_data()
        return len(b)

    def flush(self) -> None:
        if self.forward is not None:
            self.forward.flush()


class Session:
    """One machine under script control. Build it with `from_args` (command-line options) or
    from a MachineConfig."""

    def __init__(self, config: MachineConfig, *, echo: bool = False):
        from .cli import attach_block_log
        from .pc import Machine
        self.config = config
        echo_stdio = echo and config.serial.kind == "stdio"
        if config.serial.kind == "stdio":
            # The session owns the console: the text is captured (and echoed only if asked).
            config.serial = CharDev("null")
        self.machine = Machine(config)
        attach_block_log(self.machine)
        self.target = MachineTarget(self.machine)
        self.symbols = ElfSymbols(_EMPTY_ELF)
        if config.kernel and Path(config.kernel).read_bytes()[:4] == b"\x7fELF":
            self.symbols = ElfSymbols.from_file(config.kernel)      # a bzImage has none
        self._serial_wait: bytes | None = None
        self._serial_from = 0           # run_until_serial searches from here (pexpect style)
        uart = self.machine.devices.get("serial0")
        self._tap = None
        if uart is not None:
            forward = uart.output if uart.output is not None else (sys.stdout.buffer if echo_stdio else None)
            self._tap = _SerialTap(forward, self._serial_written)
            uart.output = self._tap
        self.breakpoints = DeviceBreakpoints(self._device_hit,
                                             on_change=lambda n: self.target.set_precise_stops(n > 0),
                                             completions=True)
        self._monitor = Monitor(self.target, self.machine, self.breakpoints,
                                on_reset=self.target.reset)
        self._monitor.on_snapshot_loaded = self._after_load
        self.last_stop: Stop | None = None
        self.finished = False
        self._temp_image: Path | None = None

    @classmethod
    def from_args(cls, argv: list[str], *, echo: bool = False) -> "Session":
        """The same options as the command line (without the program name). As on the command
        line, with neither -kernel nor -bios the bundled self-test guest boots (on a temporary
        image, removed by close())."""
        from .cli import bundled_defaults, parse_args, uses_bundled_guest
        config = parse_args(list(argv))
        temp = None
        if uses_bundled_guest(config):
            temp = bundled_defaults(config).temp_image
        try:
            session = cls(config, echo=echo)
        except BaseException:
            if temp is not None:
                temp.unlink(missing_ok=True)
            raise
        session._temp_image = temp
        return session

    # -- context manager ------------------------------------------------------------------------
    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.breakpoints.clear()
        close = getattr(self.machine, "close", None)
        if close is not None:
            close()
        if self._temp_image is not None:
            self._temp_image.unlink(missing_ok=True)
            self._temp_image = None

    # -- running --------------------------------------------------------------------------------
    def run(self, max_instructions: int | None = None, *, timeout: float | None = None) -> Stop:
        """Run until the guest exits or faults, a breakpoint or device breakpoint hits, or the
        budget runs out; or, with `timeout`, until that many seconds of host time have passed
        (a Stop of kind "interrupt" with message "timeout": the machine can run on). The
        instruction budget is the deterministic limit; the timeout only guards a script."""
        if self.finished:
            raise SessionError("the machine has finished (exit or fatal fault)")
        poll = lambda: None                                      # noqa: E731
        if timeout is not None:
            deadline = time.monotonic() + timeout
            poll = lambda: "timeout" if time.monotonic() >= deadline else None   # noqa: E731
        stop = self.target.resume(poll, max_instructions)
        self.last_stop = stop
        if stop.kind in (STOP_EXITED, STOP_FAULT):
            self.finished = True
        return stop

    def run_until(self, where: str | int, max_instructions: int | None = None, *,
                  timeout: float | None = None) -> Stop:
        """Run until execution reaches a symbol or a (linear) address."""
        addr = self.symbols.address(where) if isinstance(where, str) else where
        temporary = not self.target.has_breakpoint(addr)
        if temporary:
            self.target.add_breakpoint(addr)
        try:
            return self.run(max_instructions, timeout=timeout)
        finally:
            if temporary:
                self.target.remove_breakpoint(addr)

    def run_until_serial(self, text: str, max_instructions: int | None = None, *,
                         timeout: float | None = None) -> Stop:
        """Run until COM1 output contains `text`, searching (like pexpect) from the end of the
        previous match, so text printed while the guest ran for another reason still counts.
        Returns at once if it is already there; otherwise stops right after the byte that
        completed it. Either way the next search starts after this match. `timeout` (seconds
        of host time) ends the wait as in run()."""
        if self._tap is None:
            raise SessionError("this machine has no serial port")
        needle = text.encode()
        found = self._tap.data.find(needle, self._serial_from)
        if found >= 0:
            self._serial_from = found + len(needle)
            return Stop(STOP_DEVICE, pc=self.pc, message=f"serial output {text!r}")
        self._serial_wait = needle
        try:
            stop = self.run(max_instructions, timeout=timeout)
        finally:
            self._serial_wait = None
        found = self._tap.data.find(needle, self._serial_from)
        if found >= 0:
            self._serial_from = found + len(needle)
        return stop

    def run_until_event(self, pattern: str, max_instructions: int | None = None,
                        **match) -> tuple[Stop, dict | None]:
        """Run until a trace event whose name matches the glob `pattern` (and whose fields equal
        `match`) is emitted, e.g. run_until_event("virtio_queue_notify", n=0). Returns the stop
        and the event's fields (None if something else stopped the guest first)."""
        import fnmatch
        seen: list[dict] = []

        def listener(name: str, fields: dict) -> None:
            if seen or not fnmatch.fnmatchcase(name, pattern):
                return
            if all(fields.get(k) == v for k, v in match.items()):
                seen.append(dict(fields, event=name))
                self.target.request_stop("device", f"trace event {name}")

        trace.listen(pattern)
        trace.add_listener(listener)
        self.target.set_precise_stops(True)
        try:
            stop = self.run(max_instructions)
        finally:
            trace.remove_listener(listener)
            trace.unlisten(pattern)
            self.target.set_precise_stops(bool(self.breakpoints.items))
        return stop, (seen[0] if seen else None)

    def step(self, count: int = 1, *, irqs: bool = False) -> Stop:
        """Execute `count` instructions (interrupt handlers are not entered unless irqs=True)."""
        stop = None
        for _ in range(count):
            stop = self.target.step(irqs=irqs)
            if stop.kind in (STOP_EXITED, STOP_FAULT, STOP_DEVICE):
                self.finished = stop.kind != STOP_DEVICE
                break
        self.last_stop = stop
        return stop

    def break_at(self, where: str | int) -> int:
        """A code breakpoint at a symbol or address; returns the address."""
        addr = self.symbols.address(where) if isinstance(where, str) else where
        self.target.add_breakpoint(addr)
        return addr

    def delete_break(self, where: str | int) -> None:
        addr = self.symbols.address(where) if isinstance(where, str) else where
        self.target.remove_breakpoint(addr)

    def break_on(self, spec: str) -> DeviceBreakpoint:
        """A device breakpoint, as the monitor's `break` takes it:
        'virtio-blk request type=flush', 'virtio-blk notify queue=0', 'virtio-blk needs-reset'."""
        return self.breakpoints.add(spec)

    # -- looking at the machine ---------------------------------------------------------------
    @property
    def registers(self) -> dict[str, int]:
        return self.target.read_registers()

    @property
    def pc(self) -> int:
        return self.target.pc()

    def where(self) -> str:
        """The current PC as 'symbol+off' when the guest's symbols know it."""
        pc = self.pc
        return self.symbols.lookup(pc) or f"{pc:#x}"

    def set_register(self, name: str, value: int) -> None:
        self.target.write_register(name, value)

    def _addr(self, where: str | int) -> int:
        return self.symbols.address(where) if isinstance(where, str) else where

    def read(self, where: str | int, length: int) -> bytes:
        """Guest virtual memory (through the page tables; MMIO refused)."""
        return self.target.read_memory(self._addr(where), length)

    def write(self, where: str | int, data: bytes) -> None:
        self.target.write_memory(self._addr(where), data)

    def read_u32(self, where: str | int) -> int:
        return struct.unpack("<I", self.read(where, 4))[0]

    def read_u16(self, where: str | int) -> int:
        return struct.unpack("<H", self.read(where, 2))[0]

    def read_u8(self, where: str | int) -> int:
        return self.read(where, 1)[0]

    def read_physical(self, gpa: int, length: int) -> bytes:
        return self.target.read_physical(gpa, length)

    @property
    def serial(self) -> str:
        return self._tap.data.decode("utf-8", "replace") if self._tap is not None else ""

    @property
    def exit_status(self) -> int | None:
        s = self.last_stop
        return s.exit_status if s is not None and s.kind in (STOP_EXITED, STOP_FAULT) else None

    # -- snapshots ------------------------------------------------------------------------------
    def savevm(self, name: str):
        """Save the whole machine as snapshot `name` (beside the first writable disk image);
        returns its SnapshotInfo. SnapshotError (QEMU's message) when it cannot."""
        return self.machine.savevm(name)

    def loadvm(self, name: str) -> None:
        """Go back to snapshot `name`: RAM, CPU, devices, timers and disks as they were. The
        machine can run again even if it had finished."""
        self.machine.loadvm(name)
        self._after_load()

    def delvm(self, name: str) -> None:
        self.machine.delvm(name)

    def snapshots(self) -> list:
        return self.machine.snapshots()

    def save_state(self, *, disks: bool = True):
        """An in-memory snapshot (MachineState; `state.release()` when no longer needed).
        `disks=False`: the drives are not tracked (the state then restores RAM and devices only)."""
        return self.machine.save_state(disks=disks)

    def load_state(self, state) -> None:
        self.machine.load_state(state)
        self._after_load()

    def _after_load(self) -> None:
        self.finished = False
        self.last_stop = None

    def monitor(self, command: str) -> str:
        """Any monitor command ('info pci', 'x /4xw 0x1000', 'info virtio-queue-status virtio-blk 0')."""
        return self._monitor.execute(command)

    def virtio_devices(self) -> list:
        return [vdev for _, vdev, _ in self._monitor.virtio_devices()]

    def queues(self, device: str = "virtio-blk") -> list:
        """The virtqueue objects of a virtio device (size, enabled, desc/avail/used addresses,
        last_avail_idx, used_idx...): live views, not copies."""
        _, vdev = self._monitor._virtio(device)
        return list(vdev.queues)

    def virtio(self, device: str = "virtio-blk"):
        """The VirtioDevice itself (status, host_features, guest_features, queues, peek_chain)."""
        return self._monitor._virtio(device)[1]

    def virtio_state(self, device: str = "virtio-blk") -> VirtioDeviceState:
        """A snapshot of a virtio device and its queues (status, features, broken and why,
        config, and per queue its addresses and indices): a value that later guest activity
        does not change."""
        return self.virtio(device).state()

    # -- internals ---------------------------------------------------------------------------------
    def _device_hit(self, bp, message: str) -> None:
        self.target.request_stop("device", message)

    def _serial_written(self) -> None:
        needle = self._serial_wait
        if needle is not None and self._tap.data.find(needle, self._serial_from) >= 0:
            self._serial_wait = None
            self.target.request_stop("device", f"serial output {needle.decode(errors='replace')!r}")


# The smallest thing ElfSymbols accepts: a header with no sections (a session without -kernel).
_EMPTY_ELF = b"\x7fELF\x01\x01\x01" + bytes(0x34 - 7)
