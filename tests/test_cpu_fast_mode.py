"""The fast clock mode (-icount off): Unicorn runs with count = 0 and a native block hook
(native/icount.c) charges each translated block to virtual time and ends slices at block starts.
The guest must compute the same results, timers and interrupts must work, stops asked from device
callbacks must be clean (nothing replayed), and everything that observes single instructions
(breakpoints, steps, an attached debugger) must get the exact mode."""

import ctypes

import pytest

from asm import PM32_PROLOGUE, PROGRAM_BASE, build_machine, result
from test_cpu_run import TICKS_PROGRAM, FakeIrqController, periodic

from machine import unicorn_internals as ui
from machine.cli import parse_args
from machine.config import ConfigError
from machine.x86 import fast_clock, tsc

ALU = """
main:
    mov $100000, %ecx
    xor %eax, %eax
1:  add $3, %eax
    dec %ecx
    jnz 1b
    mov %eax, RESULTS
    EXIT 0
"""


def test_a_loop_computes_the_same_result_and_time_is_estimated_from_blocks(tmp_path):
    (tmp_path / "exact").mkdir()
    (tmp_path / "fast").mkdir()
    exact = build_machine(tmp_path / "exact", ALU, prologue=PM32_PROLOGUE)
    fast = build_machine(tmp_path / "fast", ALU, prologue=PM32_PROLOGUE, icount=False)
    assert exact.run() == 1 and fast.run() == 1
    assert result(exact, 0) == result(fast, 0) == 300_000
    assert not exact.cpu.fast_now and fast.cpu.fast_now
    # 3 instructions (6 bytes) per iteration: the fast clock charges 2 units per loop block
    assert exact.instructions > 300_000
    assert 190_000 < fast.instructions < 220_000
    assert fast.clock.now >= fast.instructions


def run_ticks(tmp_path, icount):
    m = build_machine(tmp_path, TICKS_PROGRAM, icount=icount)
    ctl = FakeIrqController()
    m.irq_sources.append(ctl)
    periodic(m, ctl, 0x20, 1_000_000)
    return m, m.run(10_000_000)


def test_timer_interrupts_wake_the_halted_cpu_and_runs_repeat(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, status_a = run_ticks(tmp_path / "a", False)
    b, status_b = run_ticks(tmp_path / "b", False)
    assert status_a == status_b == 1
    assert bytes(a.recorder.data) == bytes(b.recorder.data) == b"\x05"
    assert a.clock.now >= 5_000_000
    assert (a.instructions, a.clock.now) == (b.instructions, b.clock.now)


class StoppingRecorder:
    """A port that asks the board to stop at every write (as a device breakpoint would)."""

    def __init__(self, machine):
        self.machine = machine
        self.data = bytearray()

    def read(self, offset, size):
        return 0

    def write(self, offset, size, value):
        self.data.append(value & 0xFF)
        self.machine.request_stop("device")


def test_a_stop_from_a_port_callback_ends_at_the_next_block_without_replay(tmp_path):
    m = build_machine(tmp_path, """
    main:
        xor %ebx, %ebx
    1:  inc %ebx
        mov %bl, %al
        out %al, $0x81
        cmp $5, %ebx
        jne 1b
        EXIT 0
    """, prologue=PM32_PROLOGUE, icount=False)
    dev = StoppingRecorder(m)
    m.io.add("stopper", 0x81, 1, dev)
    stops = 0
    while m.run(10_000) != 1:
        assert m.stop_reason.kind == "interrupt" and m.stop_reason.message == "device"
        stops += 1
        assert len(dev.data) == stops          # one write per run: stopped before the next one
    assert bytes(dev.data) == b"\x01\x02\x03\x04\x05"
    assert m.cpu.fast_now


def test_a_budget_ends_the_run_at_a_block_start(tmp_path):
    m = build_machine(tmp_path, "main:\n1: inc %eax\n jmp 1b\n", prologue=PM32_PROLOGUE, icount=False)
    m.run(max_instructions=5000)
    assert m.stop_reason.kind == "limit"
    assert 5000 <= m.instructions < 5000 + 10


def test_breakpoints_and_steps_run_in_the_exact_mode(tmp_path):
    m = build_machine(tmp_path, ALU, prologue=PM32_PROLOGUE, icount=False)
    code = m.cpu.read_virtual(PROGRAM_BASE, 0x200)
    at = PROGRAM_BASE + code.index(bytes.fromhex("83c003"))     # add $3, %eax
    m.run(max_instructions=1000)
    assert m.cpu.fast_now
    m.cpu.add_breakpoint(at)
    m.run()
    assert m.stop_reason.kind == "breakpoint" and m.stop_reason.address == at
    assert not m.cpu.fast_now
    ecx = m.cpu.read_registers()["ecx"]
    m.step()                                    # add
    m.step()                                    # dec
    assert m.cpu.read_registers()["ecx"] == ecx - 1
    assert m.cpu.linear_pc() == at + 4
    m.cpu.remove_breakpoint(at)
    assert m.run() == 1
    assert m.cpu.fast_now                       # back to the fast mode once nothing observes
    assert result(m, 0) == 300_000


def test_an_attached_debugger_holds_the_exact_mode(tmp_path):
    from machine.debug.session import attach_debugger
    m = build_machine(tmp_path, ALU, prologue=PM32_PROLOGUE, icount=False)
    m.config.start_stopped = True
    assert attach_debugger(m, m.config) is not None
    m.run(max_instructions=1000)
    assert not m.cpu.fast_now and m.instructions == 1000


def test_an_interrupt_waiting_for_sti_is_taken_at_the_next_block(tmp_path):
    m = build_machine(tmp_path, """
        xor %ax, %ax
        mov %ax, %ds
        mov %ax, %ss
        mov $0x7000, %sp
        movw $handler, 0x30 * 4
        movw $0, 0x30 * 4 + 2
        mov $2000, %cx
    1:  loop 1b                         # the interrupt waits here with IF = 0
        sti
        nop
        jmp 2f
    2:  nop
        EXIT 0
    3:  jmp 3b                          # the fast mode stops at a block start: not in handler
    handler:
        mov %sp, %bp
        mov (%bp), %ax
        mov %ax, RESULTS                # where the interrupt returned to
        iret
    """, icount=False)
    ctl = FakeIrqController()
    ctl.queue.append(0x30)
    m.irq_sources.append(ctl)
    code = m.cpu.read_virtual(PROGRAM_BASE, 0x60)
    sti = PROGRAM_BASE + code.index(b"\xfb\x90\xeb")
    assert m.run(100_000) == 1
    assert m.cpu.fast_now
    # taken once the shadow's block ran (by the jmp), not at the EXIT's port write
    assert sti + 2 <= result(m, 0) & 0xFFFF <= sti + 4


def test_rep_stos_is_done_by_the_chained_hook(tmp_path):
    m = build_machine(tmp_path, """
    main:
        cld
        mov $0x400000, %edi
        mov $0x5a, %al
        mov $0x100000, %ecx
        rep stosb
        EXIT 0
    """, prologue=PM32_PROLOGUE, ram_size=16 << 20, icount=False)
    if m.cpu.rep_string is None:
        pytest.skip("the native helpers cannot be built here")
    assert m.run() == 1
    assert m.mem.read(0x400000, 0x100000) == b"\x5a" * 0x100000
    assert m.cpu.rep_string.elements > 0x80000
    assert m.instructions >= 0x100000           # one unit per element, as in the exact mode


def test_the_self_test_refuses_a_hook_state_of_another_layout(monkeypatch):
    swapped = [("budget" if n == "counter" else "counter" if n == "budget" else n, t)
               for n, t in fast_clock._State._fields_]
    WrongOrder = type("WrongOrder", (ctypes.Structure,), {"_fields_": swapped})
    monkeypatch.setattr(ui, "_passed", set())
    fn = fast_clock._function()
    with pytest.raises(ui.UnsupportedUnicorn, match="fast mode"):
        ui.self_test_block_clock(fn, WrongOrder, fast_clock.STOP_BUDGET, fast_clock.bytes_per_insn())
    ui.self_test_block_clock(fn, fast_clock._State, fast_clock.STOP_BUDGET, fast_clock.bytes_per_insn())


@pytest.mark.parametrize("shift", [-1, 1])
def test_the_self_test_refuses_another_place_for_the_exit_check_switch(monkeypatch, shift):
    right = ui.UC_STRUCT_NO_EXIT_REQUEST
    monkeypatch.setattr(ui, "_passed", set())
    monkeypatch.setattr(ui, "UC_STRUCT_NO_EXIT_REQUEST", right + shift)
    with pytest.raises(ui.UnsupportedUnicorn, match="fast mode"):
        ui.self_test_access_exit_checks()
    monkeypatch.setattr(ui, "UC_STRUCT_NO_EXIT_REQUEST", right)
    ui.self_test_access_exit_checks()


def test_the_command_line_selects_the_mode():
    assert parse_args([]).icount is True
    assert parse_args(["-icount", "shift=0"]).icount is True
    assert parse_args(["-icount", "0"]).icount is True
    assert parse_args(["-icount", "off"]).icount is False
    for bad in ("3", "shift=auto", "shift=0,align=on"):
        with pytest.raises(ConfigError, match="shift=0|Invalid parameter"):
            parse_args(["-icount", bad])


@pytest.mark.parametrize("icount", [True, False], ids=["exact", "fast"])
def test_rdtsc_is_answered_natively_from_virtual_time(tmp_path, icount):
    from machine.cpu import IO_PORT_NS
    m = build_machine(tmp_path, """
    main:
        rdtsc
        mov %eax, RESULTS
        out %al, $0x80
        jmp 1f
    1:  rdtsc
        mov %eax, RESULTS + 4
        EXIT 0
    2:  jmp 2b                          # ends the block (the fast mode charges by block size)
    """, prologue=PM32_PROLOGUE, icount=icount)
    if m.cpu.tsc is None:
        pytest.skip("the native helpers cannot be built here")
    assert m.run(100_000) == 1
    assert m.cpu.tsc.reads == 2
    delta = result(m, 1) - result(m, 0)
    if icount:
        assert delta == 4 + IO_PORT_NS          # mov, out, jmp, rdtsc: 1 ns each, and the port
    else:
        # the port, the first RDTSC's latency and the second block's charge
        assert IO_PORT_NS + tsc.FAST_CHARGE <= delta < IO_PORT_NS + tsc.FAST_CHARGE + 20


def test_fast_mode_charges_rdtsc_its_latency(tmp_path):
    """Back-to-back time stamps are FAST_CHARGE apart in the fast mode (as on real cores), so a
    loop spinning on the TSC for a fixed time runs about that many times fewer iterations; the
    exact mode keeps one instruction, one nanosecond."""
    src = """
    main:
        xor %ecx, %ecx
        rdtsc
        mov %eax, %ebx
    1:  inc %ecx
        rdtsc
        sub %ebx, %eax
        cmp $100000, %eax               # spin for 100 us of virtual time
        jb 1b
        mov %ecx, RESULTS
        EXIT 0
    2:  jmp 2b
    """
    spins = {}
    for icount in (True, False):
        d = tmp_path / ("exact" if icount else "fast")
        d.mkdir()
        m = build_machine(d, src, prologue=PM32_PROLOGUE, icount=icount)
        if m.cpu.tsc is None:
            pytest.skip("the native helpers cannot be built here")
        assert m.run(10_000_000) == 1
        spins[icount] = result(m, 0)
    assert 100_000 // 6 <= spins[True] <= 100_000 // 5 + 1         # 5 instructions a spin
    assert 20 <= tsc.FAST_CHARGE <= 40              # cycles an RDTSC takes on current cores
    assert spins[False] <= 100_000 // 20


def test_memory_hooks_cover_exactly_the_gaps_between_ram_ranges():
    """Unicorn keeps stores to any address a memory hook covers on its slow path, so the CPU's
    unmapped and write-protect hooks are bounded to where the base RAM is not; self-modifying
    code on RAM outside them is still seen (the start-up probe)."""
    from machine.cpu import _ram_gaps
    from machine.memory import GuestMemory
    mem = GuestMemory(256 << 20)
    assert [(r.gpa, r.end) for r in mem.ranges] == [(0, 0xA0000), (0x100000, 256 << 20)]
    assert _ram_gaps(mem) == [(0xA0000, 0xFFFFF), (256 << 20, 0xFFFFFFFFFFFFFFFF)]
    assert ui._probe_store_fast_path() is None


@pytest.mark.parametrize("after", ["cli\n hlt", "movl $0, 0xfffffff0\n 1: jmp 1b"])
def test_a_guest_exit_wins_over_the_rest_of_its_block(tmp_path, after):
    # Stops come at block starts, so what follows the exit's OUT in its block runs too: a HLT
    # with IF=0 there (a fatal report on its own) or a store into ROM does not replace the
    # guest's exit status.
    m = build_machine(tmp_path, f"main:\n EXIT 5\n {after}\n", prologue=PM32_PROLOGUE, icount=False)
    assert m.run(10_000) == 11
    assert m.stop_reason.kind == "exited"
