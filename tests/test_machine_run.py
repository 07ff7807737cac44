"""The board's run loop as the host sees it: COM1 output reaches the host per line and is all
there whenever run() or step() returns (before a fatal report), and an interrupt raised in the
middle of a slice (a LAPIC self-IPI, a device IRQ from a port access) is taken at once."""

import signal
import sys

import pytest

from asm import PM32_PROLOGUE, PROGRAM_BASE, RESULTS, build_machine, result

COM1 = 0x3F8
MARK = PROGRAM_BASE + 0x100       # programs put their `.org 0x100` label here
NOT_RUN = 0xFFFFFFFF


class HostConsole:
    """A host stream that shows only what was flushed; each flush is one entry of `log`."""

    def __init__(self, log: list):
        self.pending = bytearray()
        self.log = log

    def write(self, data: bytes) -> int:
        self.pending += data
        return len(data)

    def flush(self) -> None:
        if self.pending:
            self.log.append(("serial", bytes(self.pending)))
            self.pending.clear()

    @property
    def shown(self) -> bytes:
        return b"".join(data for who, data in self.log if who == "serial")


class HostStderr:
    def __init__(self, log: list):
        self.log = log

    def write(self, text: str) -> int:
        self.log.append(("stderr", text))
        return len(text)

    def flush(self) -> None:
        pass


def prints(text: bytes) -> str:
    return f"    mov ${COM1:#x}, %dx\n" + "".join(f"    mov ${b}, %al\n    out %al, %dx\n" for b in text)


def with_console(tmp_path, program: str):
    m = build_machine(tmp_path, program)
    log: list = []
    m.devices["serial0"].output = HostConsole(log)
    return m, log


def test_com1_output_reaches_the_host_per_line_not_per_byte(tmp_path):
    m, log = with_console(tmp_path, prints(b"ab\ncd") + "    EXIT 0\n")
    assert m.run(100_000) == 1
    assert log == [("serial", b"ab\n"), ("serial", b"cd")]


class DebuggerPort:
    """A port whose write stops the machine from inside the slice, as a device breakpoint does."""

    def __init__(self, machine):
        self.machine = machine

    def read(self, offset, size):
        return 0xFF

    def write(self, offset, size, value):
        self.machine.request_stop("device breakpoint")


ENDINGS = {
    # how the run ends: (program after the output, run() budget, stop kind)
    "exit": ("    EXIT 0\n", None, "exited"),
    "fault": ("    cli\n    hlt\n", None, "fault"),
    "limit": ("1:  jmp 1b\n", 100, "limit"),
    "debugger-stop": ("    out %al, $0xe0\n1:  jmp 1b\n", None, "interrupt"),
    "breakpoint": ("    jmp mark\n.org 0x100\nmark:\n    jmp mark\n", None, "breakpoint"),
}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_a_partial_line_is_on_the_host_whenever_run_returns(tmp_path, ending, monkeypatch):
    tail, budget, kind = ENDINGS[ending]
    m, log = with_console(tmp_path, prints(b"partial") + tail)
    monkeypatch.setattr(sys, "stderr", HostStderr(log))
    m.io.add("debugger", 0xE0, 1, DebuggerPort(m))
    m.cpu.add_breakpoint(MARK)
    m.run(budget)
    assert m.stop_reason.kind == kind
    # The guest's last partial line comes first, then (for a fault) the report.
    assert log[0] == ("serial", b"partial")
    assert [who for who, _ in log[1:]] == (["stderr"] if kind == "fault" else [])


def test_a_debugger_step_over_an_out_shows_the_byte(tmp_path):
    m, log = with_console(tmp_path, f"""
        mov ${COM1:#x}, %dx
        mov $'s', %al
        jmp mark
    .org 0x100
    mark:
        out %al, %dx
    1:  jmp 1b
    """)
    m.cpu.add_breakpoint(MARK)
    m.run(1000)
    assert m.stop_reason.kind == "breakpoint" and log == []
    m.cpu.remove_breakpoint(MARK)
    assert m.step().kind == "step"
    assert log == [("serial", b"s")]


# An interrupt raised inside a slice ------------------------------------------------------------

LOOP = """
    xor %ecx, %ecx
1:  inc %ecx
    cmp $300000, %ecx
    jb 1b
    EXIT 0
"""


def test_a_lapic_self_ipi_is_taken_right_after_the_icr_write(tmp_path):
    m = build_machine(tmp_path, """
    main:
        SETGATE 0x40, handler
        movl $0x1ff, 0xfee000f0            # SVR: APIC software-enabled
        xor %ecx, %ecx
        sti
        movl $0x40040, 0xfee00300          # ICR: fixed, to self, vector 0x40
    """ + LOOP + """
    handler:
        mov %ecx, RESULTS
        movl $0, 0xfee000b0                # EOI
        iret
    """, prologue=PM32_PROLOGUE)
    m.mem.write_u32(RESULTS, NOT_RUN)
    assert m.run(5_000_000) == 1
    # Taken within the first loop iterations, not when the slice ends (after the loop).
    assert result(m, 0) < 10


def test_a_device_irq_raised_by_a_port_write_is_taken_after_that_instruction(tmp_path):
    m = build_machine(tmp_path, """
    .macro OUTB8 port, val
        mov $\\val, %al
        out %al, $\\port
    .endm
        xor %ax, %ax
        mov %ax, %ds
        OUTB8 0x20, 0x11                   # 8259 master: ICW1..ICW4, vectors 0x20-0x27
        OUTB8 0x21, 0x20
        OUTB8 0x21, 0x04
        OUTB8 0x21, 0x01
        OUTB8 0x21, 0xef                   # only IRQ4 (COM1) unmasked
        movw $handler, 0x24 * 4
        movw $0, 0x24 * 4 + 2
        xor %ecx, %ecx
        sti
        mov $0x3f9, %dx
        mov $0x02, %al
        out %al, %dx                       # IER.ETBEI: THR empty interrupts at once
        mov $0x1234, %ecx                  # the handler must see ECX before this
    """ + LOOP.replace("xor %ecx, %ecx", "") + """
    handler:
        mov %ecx, RESULTS
        mov $0x3fa, %dx
        in %dx, %al                        # IIR read: THRE acknowledged
        mov $0x20, %al
        out %al, $0x20                     # EOI
        iret
    """)
    m.mem.write_u32(RESULTS, NOT_RUN)
    assert m.run(5_000_000) == 1
    assert result(m, 0) == 0


# A halted CPU and a budget ---------------------------------------------------------------------

class Hang(Exception):
    pass


def test_a_budget_ends_a_cpu_halted_through_endless_timer_events(tmp_path):
    """The LAPIC timer fires every few nanoseconds, but its handler never sends EOI, so the ISR
    blocks every later one: the CPU halts for ever while time jumps from event to event. The
    budget still ends run()."""
    m = build_machine(tmp_path, """
    main:
        SETGATE 0x40, handler
        movl $0x1ff, 0xfee000f0            # SVR: APIC on
        movl $0xb, 0xfee003e0              # divide by 1
        movl $0x20040, 0xfee00320          # LVT timer: periodic, vector 0x40
        movl $1, 0xfee00380                # initial count 1
        sti
    1:  hlt
        jmp 1b
    handler:
        iret                               # no EOI
    """, prologue=PM32_PROLOGUE)

    def expire(_sig, _frame):
        raise Hang("run() did not return")
    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(20)
    try:
        assert m.run(10_000) == 0
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert m.stop_reason.kind == "limit"
    assert m.instructions < 10_000                 # the budget went on timer events, not instructions
