"""The exact mode's lean clock (x86/exact_clock.py, native/icount.c `icount_insn`): a native
code hook counts every instruction and stops the slice by itself, so code is translated without
Unicorn's exit checks after each access. It must count, stop and time exactly as Unicorn's own
counting does (which the CPU still uses while breakpoints or other code hooks observe
instructions): same results, same instruction counts, same virtual time, same stops."""

import ctypes

import pytest

from asm import PM32_PROLOGUE, PROGRAM_BASE, build_machine, result
from test_cpu_fast_mode import StoppingRecorder
from test_cpu_run import TICKS_PROGRAM, FakeIrqController, periodic

from machine import unicorn_internals as ui
from machine.x86 import exact_clock, fast_clock

# Stops from a device, a timer's interrupts, a rep string store, a ROM store, a loop.
MIXED = """
main:
    xor %ebx, %ebx
1:  inc %ebx
    mov %bl, %al
    out %al, $0x81                  # the device asks for a stop at every write
    cmp $3, %ebx
    jne 1b
    mov $0x100000, %edi
    mov $4096, %ecx
    mov $0x5a, %al
    cld
    rep stosb
    movl $0x1234, 0xffff0000        # ignored: ROM
    mov 0xffff0000, %eax
    mov %eax, RESULTS + 4
    mov $200000, %ecx
    xor %eax, %eax
2:  add $3, %eax
    dec %ecx
    jnz 2b
    mov %eax, RESULTS
    EXIT 0
"""


def run_mixed(path, lean: bool):
    path.mkdir()
    m = build_machine(path, MIXED, prologue=PM32_PROLOGUE, ram_size=4 << 20)
    if not lean:
        m.cpu._exact_clock = None                  # Unicorn's own counting throughout
    dev = StoppingRecorder(m)
    m.io.add("stopper", 0x81, 1, dev)
    stops = []
    while m.run(1_000_000) != 1:
        assert m.stop_reason.kind == "interrupt"
        stops.append((m.instructions, m.clock.now))
    return m, stops


def test_the_lean_clock_counts_stops_and_times_as_unicorns_own(tmp_path):
    lean, lean_stops = run_mixed(tmp_path / "lean", True)
    counted, counted_stops = run_mixed(tmp_path / "counted", False)
    assert lean.cpu.clock_mode == "exact" and counted.cpu.clock_mode == "counted"
    assert lean_stops == counted_stops and len(lean_stops) == 3
    assert (lean.instructions, lean.clock.now) == (counted.instructions, counted.clock.now)
    assert result(lean, 0) == result(counted, 0) == 600_000
    assert result(lean, 1) == result(counted, 1) != 0x1234
    assert lean.mem.read(0x100000, 4096) == counted.mem.read(0x100000, 4096) == b"\x5a" * 4096


def test_timer_interrupts_arrive_at_the_same_instruction(tmp_path):
    runs = []
    for lean in (True, False):
        d = tmp_path / str(lean)
        d.mkdir()
        m = build_machine(d, TICKS_PROGRAM)
        if not lean:
            m.cpu._exact_clock = None
        ctl = FakeIrqController()
        m.irq_sources.append(ctl)
        periodic(m, ctl, 0x20, 1_000_000)
        assert m.run(10_000_000) == 1
        runs.append((m.instructions, m.clock.now, bytes(m.recorder.data), m.cpu.clock_mode))
    assert runs[0][:3] == runs[1][:3]
    assert [r[3] for r in runs] == ["exact", "counted"]


def breakpoint_session(path, lean: bool):
    path.mkdir()
    m = build_machine(path, MIXED.replace("out %al, $0x81", "nop"), prologue=PM32_PROLOGUE,
                      ram_size=4 << 20)
    if not lean:
        m.cpu._exact_clock = None
    code = m.cpu.read_virtual(PROGRAM_BASE, 0x200)
    target = PROGRAM_BASE + code.index(bytes.fromhex("b9400d0300" "31c0")) + 5   # the xor
    loop = target + 2                                                             # the add
    m.cpu.add_breakpoint(target)
    m.run()
    trail = [(m.stop_reason.kind, m.cpu.linear_pc(), m.instructions, m.cpu.clock_mode)]
    m.cpu.remove_breakpoint(target)
    m.cpu.add_breakpoint(loop)
    for _ in range(3):                       # the loop's first instruction, three rounds
        m.run()
        trail.append((m.stop_reason.kind, m.cpu.linear_pc(), m.instructions, m.cpu.clock_mode))
    m.cpu.remove_breakpoint(loop)
    status = m.run()
    trail.append((status, result(m, 0), m.instructions, m.cpu.clock_mode))
    return trail


def test_breakpoints_stop_and_count_as_with_unicorns_own_counting(tmp_path):
    lean = breakpoint_session(tmp_path / "lean", True)
    counted = breakpoint_session(tmp_path / "counted", False)
    assert [t[:3] for t in lean] == [t[:3] for t in counted]
    # While breakpoints exist the clock runs code with the exit checks; then the lean one again.
    assert [t[3] for t in lean] == ["checked"] * 4 + ["exact"]
    assert {t[3] for t in counted} == {"counted"}
    assert lean[0][0] == "breakpoint" and lean[1][1] == lean[2][1] == lean[3][1]
    assert [t[2] - lean[1][2] for t in lean[1:4]] == [0, 3, 6]      # one round apart
    at_break = lean[0][2]
    assert lean[4][:3] == (1, 600_000, at_break + 1 + 200_000 * 3 + 1 + 2)   # xor, loop, mov, EXIT


def test_single_steps_match_unicorns_counting(tmp_path):
    trails = []
    for lean in (True, False):
        d = tmp_path / str(lean)
        d.mkdir()
        m = build_machine(d, MIXED.replace("out %al, $0x81", "nop"), prologue=PM32_PROLOGUE,
                          ram_size=4 << 20)
        if not lean:
            m.cpu._exact_clock = None
        m.run(max_instructions=20)                 # inside the rep stosb: a step is one element
        trail = []
        for _ in range(8):
            m.step()
            regs = m.cpu.read_registers()
            trail.append((m.instructions, regs["rip"], regs["rcx"], regs["rdi"], m.cpu.clock_mode))
        trails.append(trail)
    assert [t[:4] for t in trails[0]] == [t[:4] for t in trails[1]]
    assert {t[4] for t in trails[0]} == {"exact"}
    assert trails[0][-1][0] == trails[0][0][0] + 7


def test_the_self_test_refuses_a_hook_state_of_another_layout(monkeypatch):
    swapped = [("budget" if n == "counter" else "counter" if n == "budget" else n, t)
               for n, t in exact_clock._State._fields_]
    WrongOrder = type("WrongOrder", (ctypes.Structure,), {"_fields_": swapped})
    monkeypatch.setattr(ui, "_passed", set())
    fn = exact_clock._function()
    with pytest.raises(ui.UnsupportedUnicorn):
        ui.self_test_insn_clock(fn, WrongOrder, fast_clock.STOP_BUDGET)
    ui.self_test_insn_clock(fn, exact_clock._State, fast_clock.STOP_BUDGET)


@pytest.mark.parametrize("shift", [-1, 1])
def test_the_self_test_refuses_another_place_for_the_hook_order_switch(monkeypatch, shift):
    right = ui.UC_STRUCT_HOOK_INSERT
    fn = exact_clock._function()
    monkeypatch.setattr(ui, "_passed", set())
    monkeypatch.setattr(ui, "UC_STRUCT_HOOK_INSERT", right + shift)
    with pytest.raises(ui.UnsupportedUnicorn, match="first"):
        ui.self_test_insn_clock(fn, exact_clock._State, fast_clock.STOP_BUDGET)
    monkeypatch.setattr(ui, "UC_STRUCT_HOOK_INSERT", right)
    ui.self_test_insn_clock(fn, exact_clock._State, fast_clock.STOP_BUDGET)
