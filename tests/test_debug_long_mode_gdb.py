"""gdb on 64-bit code: when gdb connects while the guest is in long mode, the stub serves the
x86-64 target description (i386 otherwise), so `info registers` shows rax..r15 and rip,
`x/i $pc` decodes 64-bit instructions and stepping works, as on a 64-bit Linux kernel."""
from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time

import pytest

from asm import LONG_MODE, PM32_PROLOGUE, build_machine
from machine.debug.session import attach_debugger

def run_gdb_no_file(port: int, *commands: str) -> str:
    """gdb in batch mode with no program file: everything comes from the stub."""
    args = ["gdb", "-batch", "-nx", "-ex", "set confirm off", "-ex", "set pagination off",
            "-ex", f"target remote 127.0.0.1:{port}"]
    for c in commands:
        args += ["-ex", c]
    return subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=120).stdout

pytestmark = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")

PROGRAM = LONG_MODE + """
main64:
    movabs $0x1122334455667788, %rax
    mov $0x99, %r9
spin:
    jmp spin
after:
    inc %r9
    movabs $0xfedcba9876543210, %r15
    jmp spin
"""


def debugged_long_mode_machine(tmp_path):
    m = build_machine(tmp_path, PROGRAM, prologue=PM32_PROLOGUE)
    m.config.gdb = "tcp:127.0.0.1:0"
    dbg = attach_debugger(m, m.config)
    thread = threading.Thread(target=dbg.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:              # until the guest spins in 64-bit code
        try:
            if m.cpu.mode == "long" and m.cpu.read_virtual(m.cpu.linear_pc(), 2) == b"\xeb\xfe":
                break
        except Exception:
            pass
        time.sleep(0.02)
    else:
        pytest.fail("the guest never reached its long-mode spin")
    return m, dbg, thread


def test_gdb_registers_disassembly_and_stepping_in_long_mode(tmp_path):
    m, dbg, thread = debugged_long_mode_machine(tmp_path)
    try:
        out = run_gdb_no_file(dbg.gdb.port,
                      "show architecture",
                      "info registers rax r9 rip",
                      "x/i $pc",
                      "set $pc = $pc + 2",
                      "stepi", "stepi",
                      "p $r9", "p/x $r15",
                      "x/i $pc",
                      "kill")
    finally:
        dbg.quit_requested = True
        thread.join(10)
        m.close()
    assert "i386:x86-64" in out, out
    assert re.search(r"^rax\s+0x1122334455667788\s", out, re.M), out
    assert re.search(r"^r9\s+0x99\s", out, re.M), out
    assert re.search(r"^rip\s+0x[0-9a-f]+\s", out, re.M), out
    assert re.search(r"=> 0x[0-9a-f]+:\s+jmp\s+0x", out), out
    assert "$1 = 154" in out, out                      # inc %r9 ran once
    assert "$2 = 0xfedcba9876543210" in out, out       # a 64-bit immediate: decoded as 64-bit code


def test_arch_follows_the_cpu_mode(tmp_path):
    from machine.debug.machine_target import MachineTarget
    m = build_machine(tmp_path, PROGRAM, prologue=PM32_PROLOGUE)
    target = MachineTarget(m)
    assert target.arch == "i386"                       # reset: real mode
    m.run(max_instructions=200_000)
    assert m.cpu.mode == "long" and target.arch == "x86-64"
    m.close()
