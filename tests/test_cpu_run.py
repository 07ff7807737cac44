"""The run loop as a guest sees it: interrupts while halted, the STI shadow, determinism,
ROM/open-bus behaviour, coherence of translated code with DMA, breakpoints, RDTSC/CPUID, and the
Unicorn version guard."""

import pytest

from asm import IDT, PM32_PROLOGUE, PROGRAM_BASE, build_machine, result


class FakeIrqController:
    """Stands in for the PIC: a queue of vectors."""

    def __init__(self):
        self.queue = []

    def pending(self):
        return bool(self.queue)

    def acknowledge(self):
        return self.queue.pop(0)


def periodic(m, ctl, vector, period_ns):
    """A virtual timer that raises `vector` every period_ns."""
    timer = None

    def fire():
        ctl.queue.append(vector)
        timer.arm_in(period_ns)
    timer = m.clock.timer(fire, "test-tick")
    timer.arm_in(period_ns)
    return timer


TICKS_PROGRAM = """
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov $0x7000, %sp
    movw $tick, 0x20 * 4
    movw $0, 0x20 * 4 + 2
    sti
idle:
    hlt
    cmpw $5, RESULTS
    jb idle
    mov RESULTS, %al
    out %al, $0x80
    EXIT 0
tick:
    incw RESULTS
    iret
"""


def run_ticks(tmp_path):
    m = build_machine(tmp_path, TICKS_PROGRAM)
    ctl = FakeIrqController()
    m.irq_sources.append(ctl)
    periodic(m, ctl, 0x20, 1_000_000)              # 1 ms of virtual time
    status = m.run(10_000_000)
    return m, status


def test_timer_irq_wakes_halted_cpu(tmp_path):
    m, status = run_ticks(tmp_path)
    assert status == 1
    assert bytes(m.recorder.data) == b"\x05"
    assert m.clock.now >= 5_000_000                # time jumped over the idle periods
    assert m.instructions < 200                    # ...without executing anything meanwhile


def test_two_runs_are_identical(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, _ = run_ticks(tmp_path / "a")
    b, _ = run_ticks(tmp_path / "b")
    assert a.instructions == b.instructions
    assert a.clock.now == b.clock.now
    assert a.recorder.data == b.recorder.data


def test_pit_irq0_while_halted(tmp_path):
    pytest.importorskip("machine.devices.pit")
    pytest.importorskip("machine.devices.pic")
    m = build_machine(tmp_path, """
        xor %ax, %ax
        mov %ax, %ds
        mov %ax, %ss
        mov $0x7000, %sp
        movw $tick, 0x08 * 4            # IRQ0 at vector 8 (PIC base 8, the BIOS layout)
        movw $0, 0x08 * 4 + 2
        mov $0x11, %al                  # ICW1: edge, cascade, ICW4
        out %al, $0x20
        mov $0x08, %al                  # ICW2: vectors 8..15
        out %al, $0x21
        mov $0x04, %al
        out %al, $0x21
        mov $0x01, %al
        out %al, $0x21
        mov $0xfe, %al                  # only IRQ0
        out %al, $0x21
        mov $0x34, %al                  # PIT channel 0, mode 2
        out %al, $0x43
        mov $0xa9, %al                  # 1193 -> ~1 kHz
        out %al, $0x40
        mov $0x04, %al
        out %al, $0x40
        sti
    idle:
        hlt
        cmpw $3, RESULTS
        jb idle
        EXIT 0
    tick:
        incw RESULTS
        push %ax
        mov $0x20, %al                  # EOI
        out %al, $0x20
        pop %ax
        iret
    """)
    assert m.run(10_000_000) == 1
    assert result(m, 0) & 0xFFFF == 3
    assert m.clock.now >= 1_900_000            # three ~1 ms periods


def test_sti_shadow_does_not_lose_the_wakeup(tmp_path):
    m = build_machine(tmp_path, """
        xor %ax, %ax
        mov %ax, %ds
        mov %ax, %ss
        mov $0x7000, %sp
        movw $handler, 0x30 * 4
        movw $0, 0x30 * 4 + 2
        sti
    the_hlt:
        hlt
    after:
        EXIT 0
    handler:
        mov %sp, %bp
        mov (%bp), %ax
        mov %ax, RESULTS                # where the interrupt returns to
        iret
    """)
    ctl = FakeIrqController()
    m.irq_sources.append(ctl)
    hlt_addr = PROGRAM_BASE + m.cpu.read_virtual(PROGRAM_BASE, 0x40).index(b"\xfb\xf4") + 1
    m.cpu.add_breakpoint(hlt_addr)
    m.run(1000)
    assert m.stop_reason.kind == "breakpoint" and m.stop_reason.address == hlt_addr
    assert m.cpu.interrupt_shadow()             # the STI just ran
    ctl.queue.append(0x30)                      # the interrupt arrives inside the shadow
    m.cpu.remove_breakpoint(hlt_addr)
    assert m.run(1000) == 1                     # HLT ran first, then the interrupt woke it
    assert result(m, 0) & 0xFFFF == hlt_addr + 1


@pytest.mark.parametrize("icount", [True, False], ids=["exact", "fast"])
def test_rom_writes_are_ignored(tmp_path, icount, guest_errors):
    # The fast mode translates without Unicorn's exit check after each access: the engine
    # drops the store itself and runs on to the block's end (the instruction there is not
    # skipped), and the rep string store is skipped once it is seen still aimed at the ROM
    # (one element per engine exit otherwise).
    m = build_machine(tmp_path, """
        mov $0xf000, %ax
        mov %ax, %es
        mov %es:0x10, %ax
        mov %ax, RESULTS
        xor %bx, %bx
        movw $0x1234, %es:0x10          # a plain store into the ROM
        inc %bx
        jmp 1f                          # the block ends here
    1:  inc %bx
        mov %bx, RESULTS + 20
        mov %es:0x10, %ax
        mov %ax, RESULTS + 4
        mov $0x20, %di
        mov $8, %cx
        cld
        rep stosb                       # a string store into the ROM
        mov %cx, RESULTS + 8
        mov %di, RESULTS + 12
        mov %es:0x20, %ax
        mov %ax, RESULTS + 16
        EXIT 0
    """, icount=icount)
    rom = m.cpu.read_virtual(0xF0000, 0x30)
    assert m.run(10_000) == 1
    assert result(m, 0) == result(m, 1) == int.from_bytes(rom[0x10:0x12], "little")
    assert result(m, 2) == 0 and result(m, 3) == 0x28      # rep stos retired, as if done
    assert result(m, 4) == int.from_bytes(rom[0x20:0x22], "little")
    assert result(m, 5) == 2                                # nothing skipped after the store
    assert m.cpu.read_virtual(0xF0000, 0x30) == rom
    assert guest_errors.getvalue().count("write to ROM") == 2


def test_unclaimed_ports_and_memory_read_all_ones(tmp_path):
    m = build_machine(tmp_path, """
    main:
        in $0x99, %al
        mov %al, RESULTS
        mov $0x9a, %dx
        in %dx, %ax
        mov %ax, RESULTS + 4
        in %dx, %eax
        mov %eax, RESULTS + 8
        movl $0, 0xd0000000             # nothing there: ignored
        mov 0xd0000000, %eax
        mov %eax, RESULTS + 12
        mov 0xa0000, %eax               # the legacy VGA hole: nothing decodes it here
        mov %eax, RESULTS + 16
        EXIT 0
    """, prologue=PM32_PROLOGUE)
    assert m.run(100_000) == 1
    assert result(m, 0) & 0xFF == 0xFF
    assert result(m, 1) & 0xFFFF == 0xFFFF
    assert result(m, 2) == 0xFFFFFFFF
    assert result(m, 3) == 0xFFFFFFFF
    assert result(m, 4) == 0xFFFFFFFF


class CodePatcher:
    """A port whose first write 'DMAs' new code into guest RAM (as a disk read would)."""

    def __init__(self, mem, addr, code):
        self.mem, self.addr, self.code, self.writes = mem, addr, code, 0

    def read(self, offset, size):
        return 0xFF

    def write(self, offset, size, value):
        self.writes += 1
        if self.writes == 1:
            self.mem.write(self.addr, self.code)      # notifies the CPU: stale code dropped


@pytest.mark.parametrize("paging", [False, True])
def test_dma_over_translated_code_is_seen(tmp_path, paging):
    setup_paging = """
        PD_CLEAR
        movl $0x83, 0x50000
        PSE_PAGING_ON
    """ if paging else ""
    m = build_machine(tmp_path, f"""
    main:
        {setup_paging}
        movl $0xc3000001, %eax          # "mov $1, %al" = b0 01, then ret = c3
        movl $0x00c301b0, 0x9000
    again:
        call 0x9000
        mov %al, RESULTS
        out %al, $0x81                  # the device replaces the code at 0x9000
        cmp $2, %al
        jne again
        EXIT 0
    """, prologue=PM32_PROLOGUE)
    patcher = CodePatcher(m.mem, 0x9000, bytes([0xB0, 0x02, 0xC3]))
    m.io.add("patcher", 0x81, 1, patcher)
    assert m.run(100_000) == 1
    assert patcher.writes == 2                  # old code once, then the new code


def test_breakpoint_stops_before_and_resumes(tmp_path):
    m = build_machine(tmp_path, """
        mov $3, %cx
    top:
        incw RESULTS
        loop top
        EXIT 0
    """)
    top = PROGRAM_BASE + 3
    m.cpu.add_breakpoint(top)
    hits = 0
    while m.run(10_000) == 0 and m.stop_reason.kind == "breakpoint":
        assert m.stop_reason.address == top == m.cpu.linear_pc()
        hits += 1
        if hits == 2:
            m.cpu.remove_breakpoint(top)
    assert m.stop_reason.kind == "exited"
    assert hits == 2 and result(m, 0) == 3


def test_a_breakpoint_stop_counts_only_the_instructions_executed(tmp_path):
    # Stopped before the instruction at the breakpoint, the machine has retired what a run
    # without breakpoints retires to get there, and its clock says the same: debugging with
    # breakpoints does not move virtual time (reverse execution re-runs without them).
    src = """
        mov $3, %cx
    top:
        incw RESULTS
        loop top
        EXIT 0
    """
    top = PROGRAM_BASE + 3
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    m = build_machine(tmp_path / "a", src)
    m.cpu.add_breakpoint(top)
    stops = []
    while m.run(10_000) == 0 and m.stop_reason.kind == "breakpoint":
        stops.append((m.instructions, m.clock.now))
    plain = build_machine(tmp_path / "b", src)
    seen = []
    while len(seen) < len(stops):
        plain.run(1)
        if plain.cpu.linear_pc() == top:
            seen.append((plain.instructions, plain.clock.now))
    assert len(stops) == 3 and stops == seen


def test_step_executes_one_instruction(tmp_path):
    m = build_machine(tmp_path, "nop\n nop\n EXIT 0\n")
    m.step()
    m.step()
    assert m.cpu.linear_pc() == PROGRAM_BASE
    m.step()
    assert m.cpu.linear_pc() == PROGRAM_BASE + 1
    assert m.instructions == 3


def test_rdtsc_counts_virtual_time_and_cpuid_is_stable(tmp_path):
    m = build_machine(tmp_path, """
    main:
        rdtsc
        mov %eax, RESULTS
        nop
        nop
        rdtsc
        mov %eax, RESULTS + 4
        xor %eax, %eax
        cpuid
        mov %ebx, RESULTS + 8
        mov %edx, RESULTS + 12
        mov %ecx, RESULTS + 16
        mov $1, %eax
        cpuid
        mov %edx, RESULTS + 20
        mov %ecx, RESULTS + 24
        mov $0x80000001, %eax
        cpuid
        mov %edx, RESULTS + 28
        EXIT 0
    """, prologue=PM32_PROLOGUE)
    assert m.run(100_000) == 1
    assert result(m, 1) - result(m, 0) == 4        # mov, nop, nop, rdtsc: 1 ns each
    vendor = b"".join(result(m, i).to_bytes(4, "little") for i in (2, 3, 4))
    assert vendor == b"GenuineIntel"
    edx1, ecx1 = result(m, 5), result(m, 6)
    assert bool(edx1 & (1 << 9)) == (m.lapic is not None)   # APIC bit iff a LAPIC is wired
    assert not ecx1 & (1 << 21)                              # no x2APIC
    assert result(m, 7) & (1 << 29)                          # long mode


def test_wrong_unicorn_version_is_refused(monkeypatch):
    import unicorn

    from machine import unicorn_internals as ui
    monkeypatch.setattr(unicorn, "__version__", "2.1.3")
    monkeypatch.setattr(ui, "_checked", False)
    with pytest.raises(ui.UnsupportedUnicorn) as info:
        ui.self_test()
    msg = str(info.value)
    assert "2.1.4" in msg and "2.1.3" in msg and "\n" not in msg


@pytest.mark.parametrize("extra_deadline", [5, 40, 999_990, 2_500_000])
def test_slicing_and_silent_timers_do_not_change_execution(tmp_path, extra_deadline):
    # A timer that raises no interrupt cuts slices and ends idle jumps early, but must not wake
    # the halted CPU nor change what runs.
    m = build_machine(tmp_path, TICKS_PROGRAM)
    ctl = FakeIrqController()
    m.irq_sources.append(ctl)
    periodic(m, ctl, 0x20, 1_000_000)
    m.clock.timer(lambda: None, "silent").arm(extra_deadline)
    assert m.run(10_000_000) == 1
    reference, _ = run_ticks(tmp_path / "ref" if not (tmp_path / "ref").mkdir() else None)
    assert m.instructions == reference.instructions
    assert m.clock.now == reference.clock.now
