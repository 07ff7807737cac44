"""Real gdb (batch mode) against the stub and the fake target: the protocol as gdb 13 speaks it."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from test_debug_fakes import COUNTER, EXIT, INC, LOAD, NOP, serve_fake

pytestmark = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")


def run_gdb(port: int, *commands: str, timeout: float = 60) -> str:
    args = ["gdb", "-batch", "-nx", "-ex", "set confirm off", "-ex", f"target remote 127.0.0.1:{port}"]
    for cmd in commands:
        args += ["-ex", cmd]
    proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    return proc.stdout


def test_gdb_session_registers_memory_breakpoints_watchpoints_exit():
    target, _, port, thread, result = serve_fake(bytes([NOP, NOP, INC, NOP, LOAD, NOP, NOP, EXIT]))
    out = run_gdb(port,
                  "p/x $eip", "p/x $esp",
                  "x/2xb 0x1000",
                  "break *0x1003", "continue", "p/x $eip",
                  "stepi", "p/x $eip",
                  "set var *(int*)0x3000 = 99", "p *(int*)0x3000",
                  "p $eax = 0x1234",
                  f"rwatch *(int*){COUNTER:#x}", "continue",
                  "delete",
                  "monitor info registers",
                  "set var $eax = 5",
                  "continue")
    assert "Truncated register" not in out and "too long" not in out, out
    assert "$1 = 0x1000" in out and "$2 = 0x8000" in out, out
    assert "0x1000:\t0x90\t0x90" in out, out
    assert "Breakpoint 1, 0x00001003 in ??" in out, out
    assert "$3 = 0x1003" in out and "$4 = 0x1004" in out, out
    assert "$5 = 99" in out and int.from_bytes(target.mem[0x3000:0x3004], "little") == 99
    assert "$6 = 4660" in out
    assert "Hardware read watchpoint 2" in out and "Value = 1" in out, out
    assert "EAX=00000001" in out, out                    # monitor output in gdb's console
    assert "exited with code 05" in out, out
    thread.join(10)
    assert result["status"] == 5


def test_gdb_write_watchpoint_old_and_new_value():
    target, _, port, thread, result = serve_fake(bytes([NOP, INC, NOP, INC, NOP, EXIT]))
    out = run_gdb(port, f"watch *(int*){COUNTER:#x}", "continue", "continue", "kill")
    assert "Old value = 0" in out and "New value = 1" in out, out
    assert "Old value = 1" in out and "New value = 2" in out, out
    thread.join(10)
    assert not thread.is_alive()
