"""The debugger on the real board: gdb 13 (batch mode) against the hello test kernel and the
bundled virtio-blk guest, the monitor console, and attach_debugger's option handling."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time

import pytest

from elfsym import symbol
from machine.cli import parse_args
from machine.config import ConfigError
from machine.debug.monitor import MonitorConsole
from machine.debug.session import Debugger, attach_debugger

gdb_missing = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")


class Running:
    """A machine under the debugger, its loop in a thread (the test thread plays gdb)."""

    def __init__(self, args: list[str]):
        from machine.pc import Machine
        config = parse_args(args)
        config.gdb = "tcp:127.0.0.1:0"          # any free port
        config.start_stopped = True
        self.machine = Machine(config)
        self.debugger = attach_debugger(self.machine, config)
        self.port = self.debugger.gdb.port
        self.result: dict = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.result["status"] = self.debugger.run()

    def status(self, timeout: float = 30) -> int | None:
        self.thread.join(timeout)
        return self.result.get("status")

    def wait_spinning(self, timeout: float) -> bool:
        """Wait until the guest runs a `jmp .` (EB FE) at its PC; False if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.debugger.running and self.machine.instructions > 0:
                try:
                    if self.machine.cpu.read_virtual(self.machine.cpu.linear_pc(), 2) == b"\xeb\xfe":
                        return True
                except Exception:
                    pass
            time.sleep(0.02)
        return False

    def close(self):
        if self.thread.is_alive():
            self.debugger.quit_requested = True
            self.thread.join(10)
        self.machine.close()


def gdb_args(elf, port: int, *commands: str) -> list[str]:
    args = ["gdb", "-batch", "-nx", "-ex", "set confirm off", "-ex", "set pagination off",
            str(elf), "-ex", f"target remote 127.0.0.1:{port}"]
    for c in commands:
        args += ["-ex", c]
    return args


def run_gdb(elf, port: int, *commands: str) -> str:
    proc = subprocess.run(gdb_args(elf, port, *commands), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120)
    return proc.stdout


@gdb_missing
def test_gdb_break_step_print_watch_and_exit(hello):
    m = Running(["-kernel", str(hello), "-append", "exit=3", "-serial", "none", "-display", "none",
                 "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
    try:
        out = run_gdb(hello, m.port,
                      "p/x $eip",
                      "break kmain", "continue",
                      "p/x magic",
                      "next", "next",
                      "bt",
                      "break put_dec", "continue",
                      "p v",
                      "watch buf[0]", "continue",
                      "delete",
                      "stepi", "x/1i $pc",
                      "p $eax = 0x1234", "p/x $eax",
                      "monitor info registers",
                      "continue")
    finally:
        m.close()
    assert "Truncated register" not in out and "too long" not in out, out
    assert "$1 = 0xfff0" in out, out                                   # the reset vector (-S)
    assert "Breakpoint 1, kmain (magic=732803074" in out, out
    assert "$2 = 0x2badb002" in out, out
    assert "puts(\"hello from multiboot\\n\");" in out, out            # `next` stepped over calls
    assert "#1  0x" in out and "_start" in out, out
    assert "Breakpoint 2, put_dec (v=640)" in out and "$3 = 640" in out, out
    assert "Hardware watchpoint 3: buf[0]" in out, out
    assert "Old value = 0 '\\000'" in out and "New value = 48 '0'" in out, out
    assert "=> 0x" in out, out
    assert "$5 = 0x1234" in out, out
    assert "EAX=00001234" in out, out
    assert "exited with code 07" in out, out                           # (3 << 1) | 1
    assert m.result.get("status") == 7


@gdb_missing
def test_gdb_ctrl_c_stops_a_running_guest(hello):
    m = Running(["-kernel", str(hello), "-serial", "none", "-display", "none",
                 "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
    try:
        proc = subprocess.Popen(gdb_args(hello, m.port, "break kmain", "continue",
                                         "set var *(unsigned short *)$pc = 0xfeeb",   # jmp .
                                         "delete", "continue", "p/x $pc", "kill"),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if not m.wait_spinning(60):        # running, and the patch is in place
            pytest.fail("the guest never reached its loop")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        m.close()
    assert "Program received signal SIGINT" in out, out
    assert f"$1 = {symbol(hello, 'kmain'):#x}" in out, out     # still spinning where it was patched
    assert "[Inferior 1 (process 1) killed]" in out or "killed" in out.lower(), out


@gdb_missing
def test_gdb_sees_a_fatal_fault_on_the_real_machine_and_it_exits_2(hello):
    """README: fatal faults are reported to gdb. ud2 at kmain (the kernel has no IDT) ends in a
    triple fault under -no-reboot: gdb gets SIGSEGV with the report, can still read the
    registers, and the next continue ends the machine with status 2."""
    m = Running(["-kernel", str(hello), "-serial", "none", "-display", "none", "-no-reboot",
                 "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
    try:
        out = run_gdb(hello, m.port, "break kmain", "continue", "delete",
                      "set var *(unsigned short *)$pc = 0x0b0f",       # ud2
                      "continue", "p/x $pc", "continue")
        status = m.status()
    finally:
        m.close()
    assert "Program received signal SIGSEGV" in out, out
    assert "triple fault" in out, out
    assert f"$1 = {symbol(hello, 'kmain'):#x}" in out, out          # the corpse, at the ud2
    assert "exited with code 02" in out, out
    assert status == 2


@gdb_missing
def test_gdb_detach_lets_the_real_machine_run_to_its_end(hello):
    m = Running(["-kernel", str(hello), "-append", "exit=3", "-serial", "none", "-display", "none",
                 "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
    try:
        out = run_gdb(hello, m.port, "break kmain", "continue", "delete", "detach")
        status = m.status(60)
    finally:
        m.close()
    assert "Breakpoint 1, kmain" in out and "detached]" in out, out
    assert status == 7                                  # the guest ran on: (3 << 1) | 1


@gdb_missing
def test_gdb_device_breakpoint_on_the_virtio_guest(guest, tmp_path):
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4 << 20))
    m = Running(["-kernel", str(guest), "-append", "tests=init,flush", "-serial", "none",
                 "-display", "none", "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                 "-drive", f"file={img},format=raw,if=virtio"])
    try:
        out = run_gdb(guest, m.port,
                      "monitor break virtio-blk request type=flush",
                      "continue",
                      "bt 1",
                      "monitor info breakpoints",
                      "monitor info virtio-queue-status virtio-blk 0",
                      "monitor delete 1",
                      "continue")
    finally:
        m.close()
    assert "Device breakpoint 1: virtio-blk request type=flush" in out, out
    assert "device breakpoint 1 (virtio-blk request type=flush): request flush" in out, out
    assert "Program received signal SIGTRAP" in out, out
    assert "vpci_notify" in out, out                  # stopped right after the guest's kick
    assert "1    1     virtio-blk request type=flush" in out, out
    assert "last_avail_idx:" in out, out
    assert "exited with code 01" in out, out          # the self-test passed: (0 << 1) | 1


def test_monitor_console_on_a_pipe(hello):
    from machine.pc import Machine
    config = parse_args(["-kernel", str(hello), "-append", "exit=2", "-serial", "none",
                         "-display", "none", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
    machine = Machine(config)
    rfd, wfd = os.pipe()
    out_r, out_w = os.pipe()
    try:
        from machine.debug.machine_target import MachineTarget
        with os.fdopen(out_w, "w") as out:
            console = MonitorConsole(rfd, out)
            dbg = Debugger(MachineTarget(machine), machine, console=console, start_stopped=True)
            os.write(wfd, b"info registers\nx /2xb 0xffff0\ninfo pci\nc\n")
            status = dbg.run()
        text = os.read(out_r, 1 << 20).decode()
    finally:
        for fd in (rfd, wfd, out_r):
            os.close(fd)
        machine.close()
    assert status == 5
    assert "(qemu) " in text and "EIP=0000fff0" in text, text
    assert "000ffff0: 0xea" in text, text                 # the reset vector's far jump
    assert "Host bridge: PCI device 8086:1237" in text, text


def test_attach_debugger_options(hello):
    from machine.pc import Machine
    config = parse_args(["-kernel", str(hello), "-serial", "none", "-display", "none"])
    machine = Machine(config)
    try:
        assert attach_debugger(machine, config) is None          # nothing asked: nothing exists
        config.gdb = "tcp:127.0.0.1:0"
        dbg = attach_debugger(machine, config)
        assert dbg is not None and dbg.gdb.host == "127.0.0.1" and dbg.gdb.port > 0
        config.gdb = f"tcp:127.0.0.1:{dbg.gdb.port}"           # the same port again: refused
        with pytest.raises(ConfigError, match="Failed to bind socket"):
            attach_debugger(machine, config)
        dbg.gdb.close()
        config.gdb = None
        config.monitor = "telnet:1234"
        with pytest.raises(ConfigError, match="-monitor"):
            attach_debugger(machine, config)
    finally:
        machine.close()
