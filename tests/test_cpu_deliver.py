"""The rules of interrupt and exception delivery (machine/x86/deliver.py), one at a time: a
program brings the CPU into real or protected mode and stops; the test then writes IVT/IDT/GDT
entries and registers from Python, delivers one event and checks the frame, the registers and
the fault raised (Intel SDM vol. 3, chapter 6; the INT n pseudo-code in vol. 2)."""

from __future__ import annotations

import io
import re
import struct

import pytest
from unicorn import x86_const as X

from asm import LONG_MODE, PM32_PROLOGUE, build_machine
from machine import trace
from machine import unicorn_internals as ui
from machine.x86.deliver import DeliveryFault

IDT = 0x20000
GDT = 0x1000
TSS = 0x6000
STACK = 0x70000
CODE = 0x9000                   # where tests put the instruction a software interrupt ran

IF, TF, NT, RF, VM, AC, CF = 1 << 9, 1 << 8, 1 << 14, 1 << 16, 1 << 17, 1 << 18, 1

# 32-bit flat segments: 0x08 ring-0 code, 0x10 ring-0 data, 0x18 ring-3 code, 0x20 ring-3 data,
# 0x28 ring-0 data with a 16-bit stack (B=0), 0x30 conforming ring-0 code, 0x38 not present
# code, 0x40 64-bit ring-0 code, 0x48 ring-1 code, 0x50 ring-1 data, 0x58 64-bit ring-3 code,
# 0x60 64-bit ring-1 code, 0x68 a data segment with the L bit set.
GDT_ENTRIES = [0, 0x00cf9a000000ffff, 0x00cf92000000ffff, 0x00cffa000000ffff, 0x00cff2000000ffff,
               0x008f92000000ffff, 0x00cf9e000000ffff, 0x00cf1a000000ffff, 0x00af9a000000ffff,
               0x00cfba000000ffff, 0x00cfb2000000ffff, 0x00affa000000ffff, 0x00afba000000ffff,
               0x00af92000000ffff]


def _stopped(tmp_path, prologue: str, program: str):
    m = build_machine(tmp_path, program, prologue=prologue)
    assert m.run(1_000_000) == 1, m.stop_reason
    return m


@pytest.fixture
def real(tmp_path):
    m = _stopped(tmp_path, "", "EXIT 0\n")
    cpu = m.cpu
    cpu.write_register("ss", 0)
    cpu.write_register("rsp", 0x7000)
    cpu.write_register("rip", CODE)
    cpu.write_register("eflags", 0x2)
    yield m
    m.close()


@pytest.fixture
def pm(tmp_path):
    """32-bit protected mode, CPL 0, the GDT above at GDT, an empty IDT of 256 gates at IDT,
    ESP = STACK, EIP = CODE."""
    m = _stopped(tmp_path, PM32_PROLOGUE, "main:\n    EXIT 0\n")
    m.mem.write(GDT, b"".join(struct.pack("<Q", d) for d in GDT_ENTRIES))
    set_gdt(m, GDT, len(GDT_ENTRIES) * 8 - 1)
    m.mem.write(IDT, bytes(256 * 8))
    m.cpu.write_register("rsp", STACK)
    m.cpu.write_register("rip", CODE)
    m.cpu.write_register("eflags", 0x2)
    yield m
    m.close()


@pytest.fixture
def lm(tmp_path):
    """Long mode (64-bit code, CPL 0), the GDT above, an empty IDT of 256 16-byte gates at IDT,
    RSP = STACK, RIP = CODE."""
    m = _stopped(tmp_path, PM32_PROLOGUE, LONG_MODE + "main64:\n    EXIT 0\n")
    assert m.cpu.mode == "long"
    m.mem.write(GDT, b"".join(struct.pack("<Q", d) for d in GDT_ENTRIES))
    set_gdt(m, GDT, len(GDT_ENTRIES) * 8 - 1)
    m.mem.write(IDT, bytes(256 * 16))
    m.cpu.write_register("rsp", STACK)
    m.cpu.write_register("rip", CODE)
    m.cpu.write_register("eflags", 0x2)
    yield m
    m.close()


def set_gdt(m, base: int, limit: int) -> None:
    m.cpu.uc.reg_write(X.UC_X86_REG_GDTR, (0, base, limit, 0))


def set_idt(m, base: int, limit: int) -> None:
    m.cpu.uc.reg_write(X.UC_X86_REG_IDTR, (0, base, limit, 0))


def gate32(m, vector: int, offset: int, selector: int = 0x08, access: int = 0x8E,
           reserved: int = 0) -> None:
    """An IDT gate: access byte 0x8E = present DPL0 32-bit interrupt gate."""
    m.mem.write(IDT + vector * 8, struct.pack("<HHBBH", offset & 0xFFFF, selector, reserved, access,
                                              offset >> 16))


def to_ring(m, cpl: int, cs: int, ss: int, esp: int) -> None:
    ui.set_cpl(m.cpu._raw, cpl)
    m.cpu.write_register("ss", ss)
    m.cpu.write_register("cs", cs)
    m.cpu.write_register("rsp", esp)


def words(m, addr: int, n: int) -> list[int]:
    return list(struct.unpack(f"<{n}H", m.mem.read(addr, 2 * n)))


def dwords(m, addr: int, n: int) -> list[int]:
    return list(struct.unpack(f"<{n}I", m.mem.read(addr, 4 * n)))


def regs(m):
    return m.cpu.read_registers()


# --- real mode ------------------------------------------------------------------------------

def test_real_mode_frame_flags_and_target(real):
    m = real
    m.mem.write(0x30 * 4 - 4, struct.pack("<HHHHHH", 0x1111, 0x2222, 0x5678, 0x1234, 0x3333, 0x4444))
    m.cpu.write_register("rsp", 0xABCD7000)     # 16-bit stack: the upper half of ESP stays
    m.cpu.write_register("eflags", 0x2 | IF | TF | AC | CF)
    m.cpu.write_register("cs", 0x0800)
    m.cpu.write_register("rip", CODE - 0x8000)
    m.cpu.deliver(0x30)
    r = regs(m)
    assert (r["cs"], r["rip"], m.cpu.segment("cs")[1]) == (0x1234, 0x5678, 0x12340)
    assert r["rsp"] == 0xABCD6FFA
    assert words(m, 0x6FFA, 3) == [CODE - 0x8000, 0x0800, 0x2 | IF | TF | CF]   # FLAGS: low 16 bits
    assert r["eflags"] == 0x2 | CF                  # IF, TF and AC cleared; the rest kept


def test_real_mode_frame_wraps_inside_the_stack_segment(real):
    m = real
    m.mem.write(0x30 * 4, struct.pack("<HH", 0x100, 0x2000))
    m.cpu.write_register("ss", 0x1000)
    m.cpu.write_register("rsp", 2)
    m.cpu.write_register("eflags", 0x2 | CF)
    m.cpu.deliver(0x30)
    assert regs(m)["rsp"] == 0xFFFC
    assert words(m, 0x10000, 1) == [0x2 | CF]                  # FLAGS at SS:0000
    assert words(m, 0x1FFFC, 2) == [CODE, 0]                   # IP, CS at SS:FFFC
    assert m.mem.read(0x20000, 2) == b"\0\0"                   # nothing past the segment


def test_real_mode_ivt_base_and_unreadable_entry(real):
    m = real
    m.mem.write(0x5000 + 0x30 * 4, struct.pack("<HH", 0x4321, 0x0100))
    set_idt(m, 0x5000, 0x3FF)
    m.cpu.deliver(0x30)
    assert (regs(m)["cs"], regs(m)["rip"]) == (0x0100, 0x4321)
    set_idt(m, 0xE0000000, 0x3FF)                   # no RAM there
    with pytest.raises(DeliveryFault, match="cannot read 4 bytes at 0xe00000c0"):
        m.cpu.deliver(0x30)
    set_idt(m, 0, 0x30 * 4 + 2)
    with pytest.raises(DeliveryFault, match="vector 0x30 is beyond the IVT limit 0xc2") as e:
        m.cpu.deliver(0x30)
    assert e.value.vector == 13


def test_real_mode_with_a_32_bit_stack_segment(real):
    # "Unreal" mode: SS keeps a B=1 descriptor cache from protected mode; pushes use ESP.
    m = real
    m.mem.write(0x30 * 4, struct.pack("<HH", 0x100, 0))
    raw = m.cpu._raw.save()
    raw.set_seg(ui.SEG_SS, 0, 0, 0xFFFFFFFF, 0x00CF9300)
    raw.hflags |= ui.HF_SS32
    raw.restore()
    m.cpu.write_register("rsp", 0x00100010)
    m.cpu.deliver(0x30)
    assert regs(m)["rsp"] == 0x0010000A
    assert words(m, 0x0010000A, 3) == [CODE, 0, 0x2]


def test_real_mode_int_at_the_end_of_the_segment_returns_to_it(real):
    # `int $0x30` at 0800:FFFE faults (entry beyond the IVT limit): #GP's frame names FFFE
    m = real
    m.mem.write(0x17FFE, b"\xcd\x30")
    m.mem.write(13 * 4, struct.pack("<HH", 0x9000, 0))
    m.mem.write(0x9000, b"\xb0\x00\xe6\xf4")          # mov $0, %al; out %al, $0xf4 (exit)
    set_idt(m, 0, 0x30 * 4 + 2)
    m.cpu.write_register("cs", 0x0800)
    m.cpu.write_register("rip", 0xFFFE)
    assert m.run(1000) == 1
    assert words(m, 0x7000 - 6, 3) == [0xFFFE, 0x0800, 0x2]


# --- protected mode: gates, frames, flags ---------------------------------------------------

ALL_FLAGS = 0x2 | IF | TF | NT | RF | AC | CF


@pytest.mark.parametrize("access, kept", [(0x8E, 0), (0x8F, IF)])      # interrupt / trap gate
def test_pm32_gate_frame_and_flags(pm, access, kept):
    m = pm
    gate32(m, 0x40, 0x12345678, access=access, reserved=0x1F)    # reserved bits: ignored
    m.cpu.write_register("eflags", ALL_FLAGS)
    m.cpu.write_register("rsp", STACK + 8)          # the frame crosses a page boundary
    m.cpu.write_register("rip", 0x80009000)
    m.cpu.deliver(0x40, 0x1ABCD)
    r = regs(m)
    assert (r["cs"], r["rip"]) == (0x08, 0x12345678)
    assert r["rsp"] == STACK - 8
    assert dwords(m, STACK - 8, 4) == [0x1ABCD, 0x80009000, 0x08, ALL_FLAGS]
    assert r["eflags"] == 0x2 | AC | CF | kept      # TF, NT, RF (and IF for an interrupt gate) cleared


@pytest.mark.parametrize("access, kept", [(0x86, 0), (0x87, IF)])      # 16-bit gates
def test_pm32_16_bit_gate_pushes_words(pm, access, kept):
    m = pm
    gate32(m, 0x40, 0x5678, access=access)
    m.cpu.write_register("eflags", 0x2 | IF | CF)
    m.cpu.deliver(0x40, 0x12345)
    r = regs(m)
    assert (r["cs"], r["rip"], r["rsp"]) == (0x08, 0x5678, STACK - 8)
    assert words(m, STACK - 8, 4) == [0x2345, CODE, 0x08, 0x2 | IF | CF]
    assert m.mem.read(STACK - 12, 4) == bytes(4)
    assert r["eflags"] == 0x2 | CF | kept


def test_pm32_16_bit_stack_segment_wraps_and_keeps_esp_high_half(pm):
    m = pm
    gate32(m, 0x40, 0x9100)
    m.cpu.write_register("ss", 0x28)                # B=0: SP, not ESP
    m.cpu.write_register("rsp", 0xABCD0004)
    m.cpu.write_register("eflags", 0x2 | CF)
    m.cpu.deliver(0x40)
    assert regs(m)["rsp"] == 0xABCDFFF8
    assert dwords(m, 0, 1) == [0x2 | CF]             # EFLAGS at SS:0000
    assert dwords(m, 0xFFF8, 2) == [CODE, 0x08]      # EIP, CS at SS:FFF8 (wrapped)


def test_pm32_idt_limit_is_exact(pm):
    m = pm
    gate32(m, 0x40, 0x9100)
    set_idt(m, IDT, 0x40 * 8 + 7)
    m.cpu.deliver(0x40, software=True)
    assert regs(m)["rip"] == 0x9100
    set_idt(m, IDT, 0x40 * 8 + 6)
    with pytest.raises(DeliveryFault, match="vector 0x40 is beyond the IDT limit 0x206") as e:
        m.cpu.deliver(0x40, software=True)
    assert (e.value.vector, e.value.error) == (13, 0x40 * 8 + 2)
    with pytest.raises(DeliveryFault) as e:
        m.cpu.deliver(0x40)                          # an exception or IRQ: EXT set
    assert (e.value.vector, e.value.error) == (13, 0x40 * 8 + 3)


@pytest.mark.parametrize("access", [0x80, 0x81, 0x84, 0x85, 0x8C, 0x8D, 0x96])
def test_pm32_gate_types_other_than_interrupt_and_trap_raise_gp(pm, access):
    m = pm
    gate32(m, 0x41, 0x9100, access=access)          # task gate (5), call gate (C), ...
    with pytest.raises(DeliveryFault, match="unsupported type") as e:
        m.cpu.deliver(0x41, software=True)
    assert (e.value.vector, e.value.error) == (13, 0x41 * 8 + 2)


def test_pm32_gate_not_present_raises_np(pm):
    m = pm
    gate32(m, 0x41, 0x9100, access=0x0E)
    with pytest.raises(DeliveryFault, match="not present") as e:
        m.cpu.deliver(0x41)
    assert (e.value.vector, e.value.error) == (11, 0x41 * 8 + 3)


@pytest.mark.parametrize("selector, glimit, vector, error", [
    (0x0C, 0x57, 13, 0x0C),       # an LDT selector
    (0x0F, 0x57, 13, 0x0C),       # ... with an RPL: the error code drops the RPL
    (0x00, 0x57, 13, 0x00),       # null
    (0x03, 0x57, 13, 0x00),
    (0x08, 0x0E, 13, 0x08),       # its last byte one past the GDT limit
    (0x58, 0x57, 13, 0x58),       # past the GDT
    (0x38, 0x57, 11, 0x38),       # not present: #NP
    (0x10, 0x57, 13, 0x10),       # a data segment
    (0x13, 0x57, 13, 0x10),       # ... with an RPL
])
@pytest.mark.parametrize("software", [True, False])
def test_pm32_gate_selector_checks(pm, selector, glimit, vector, error, software):
    m = pm
    gate32(m, 0x41, 0x9100, selector=selector)
    set_gdt(m, GDT, glimit)
    with pytest.raises(DeliveryFault, match=SELECTOR_MESSAGES[selector & ~3]) as e:
        m.cpu.deliver(0x41, software=software)
    assert (e.value.vector, e.value.error) == (vector, error + (0 if software else 1))


SELECTOR_MESSAGES = {0x0C: "LDT selector 0x[cf] in a gate", 0x00: "selector 0x[03] is null or beyond the GDT",
                     0x08: "selector 0x8 is null or beyond the GDT limit", 0x58: "beyond the GDT limit",
                     0x38: "segment 0x38 is not present", 0x10: "points at a non-code segment 0x1[03]"}


def test_pm32_gate_selector_at_the_gdt_limit_is_valid(pm):
    m = pm
    gate32(m, 0x41, 0x9100, selector=0x08)
    set_gdt(m, GDT, 0x0F)                           # the last byte of entry 1 is the limit
    m.cpu.deliver(0x41)
    assert (regs(m)["cs"], regs(m)["rip"]) == (0x08, 0x9100)


def test_pm32_unreadable_tables_and_stack_fault_without_a_vector(pm):
    m = pm
    gate32(m, 0x41, 0x9100)
    set_gdt(m, 0xE0000000, 0x57)
    with pytest.raises(DeliveryFault, match="cannot read 8 bytes at 0xe0000008") as e:
        m.cpu.deliver(0x41)
    assert e.value.vector is None
    set_gdt(m, GDT, 0x57)
    m.cpu.write_register("rsp", 0xE0000000)
    with pytest.raises(DeliveryFault, match="cannot write the interrupt frame at 0xdffffffc") as e:
        m.cpu.deliver(0x41)
    assert e.value.vector is None


def test_pm32_interrupt_in_virtual_8086_mode_is_refused(pm):
    m = pm
    gate32(m, 0x41, 0x9100)
    m.cpu.write_register("eflags", 0x2 | VM)
    with pytest.raises(DeliveryFault, match="^interrupt from virtual-8086 mode is not supported$") as e:
        m.cpu.deliver(0x41)
    assert e.value.vector is None


# --- protected mode: privilege --------------------------------------------------------------

def _tss32(m, **stacks) -> None:
    """A 32-bit TSS at TSS with ESPn/SSn for the rings given (esp0=..., ss0=...)."""
    m.mem.write(TSS, bytes(0x68))
    for ring in range(3):
        m.mem.write(TSS + 4 + 8 * ring, struct.pack("<IH", stacks.get(f"esp{ring}", 0),
                                                    stacks.get(f"ss{ring}", 0)))
    m.cpu.uc.reg_write(X.UC_X86_REG_TR, (0x58, TSS, 0x67, 0x8B))


def cpl(m) -> int:
    return m.cpu._raw.save().hflags & 3


@pytest.mark.parametrize("target, ring, stack, ss", [(0x08, 0, 0x60000, 0x10), (0x48, 1, 0x64000, 0x51)])
def test_pm32_ring3_to_inner_ring_through_the_tss(pm, target, ring, stack, ss):
    m = pm
    _tss32(m, esp0=0x60000, ss0=0x10, esp1=0x64000, ss1=0x51, esp2=0x68000, ss2=0x10)
    gate32(m, 0x80, 0x9100, selector=target, access=0xEE)
    to_ring(m, 3, 0x1B, 0x23, 0x50000)
    m.cpu.write_register("eflags", 0x2 | IF)
    m.cpu.deliver(0x80, 0x77, software=True)
    r = regs(m)
    assert (r["cs"], r["ss"], r["rsp"], cpl(m)) == (target, ss, stack - 24, ring)
    assert dwords(m, stack - 24, 6) == [0x77, CODE, 0x1B, 0x2 | IF, 0x50000, 0x23]


def test_pm32_inner_stack_of_16_bits(pm):
    m = pm
    _tss32(m, esp0=0xABCD0010, ss0=0x28)            # B=0: the frame wraps at 64 KiB
    gate32(m, 0x80, 0x9100, access=0xEE)
    to_ring(m, 3, 0x1B, 0x23, 0x50000)
    m.cpu.deliver(0x80, software=True)
    assert (regs(m)["ss"], regs(m)["rsp"], cpl(m)) == (0x28, 0xABCDFFFC, 0)
    assert dwords(m, 0xFFFC, 1) == [CODE]           # EIP at SS:FFFC, the rest from SS:0000
    assert dwords(m, 0, 4) == [0x1B, 0x2, 0x50000, 0x23]


def test_pm32_same_privilege_and_conforming_handlers_stay_on_the_stack(pm):
    m = pm
    gate32(m, 0x80, 0x9100, selector=0x30, access=0xEE)   # conforming ring-0 code
    to_ring(m, 3, 0x1B, 0x23, 0x50000)
    m.cpu.deliver(0x80, software=True)
    r = regs(m)
    assert (r["ss"], r["rsp"], cpl(m)) == (0x23, 0x50000 - 12, 3)
    assert dwords(m, 0x50000 - 12, 3) == [CODE, 0x1B, 0x2]


def test_pm32_gate_dpl_limits_software_interrupts_only(pm):
    m = pm
    _tss32(m, esp0=0x60000, ss0=0x10)
    gate32(m, 0x81, 0x9100, access=0x8E)            # DPL0
    gate32(m, 0x82, 0x9100, access=0xCE)            # DPL2
    gate32(m, 0x83, 0x9100, selector=0x18, access=0xEE)   # DPL3, to ring-3 code
    to_ring(m, 3, 0x1B, 0x23, 0x50000)
    for vector in (0x81, 0x82):
        with pytest.raises(DeliveryFault, match=f"int {vector:#x} from CPL3 through a DPL") as e:
            m.cpu.deliver(vector, software=True)
        assert (e.value.vector, e.value.error) == (13, vector * 8 + 2)
        assert cpl(m) == 3                          # the failed delivery left CPL alone
    m.cpu.deliver(0x83, software=True)              # DPL3 = CPL3: allowed, stays in ring 3
    assert (regs(m)["cs"], regs(m)["rsp"], cpl(m)) == (0x18, 0x50000 - 12, 3)
    to_ring(m, 3, 0x1B, 0x23, 0x50000)
    m.cpu.deliver(0x81)                             # an IRQ ignores the gate's DPL
    assert (regs(m)["cs"], regs(m)["ss"], cpl(m)) == (0x08, 0x10, 0)


def test_pm32_bad_inner_stack_segment_fails_and_keeps_cpl(pm):
    m = pm
    _tss32(m, esp0=0x60000, ss0=0)                  # a null SS0
    gate32(m, 0x80, 0x9100, access=0xEE)
    to_ring(m, 3, 0x1B, 0x23, 0x50000)
    with pytest.raises(DeliveryFault, match="cannot load the inner stack segment 0x0"):
        m.cpu.deliver(0x80, software=True)
    assert cpl(m) == 3


# --- long mode ------------------------------------------------------------------------------

def gate64(m, vector: int, target: int, selector: int = 0x40, access: int = 0x8E, ist: int = 0) -> None:
    m.mem.write(IDT + vector * 16, struct.pack("<HHBBHII", target & 0xFFFF, selector, ist, access,
                                               target >> 16 & 0xFFFF, target >> 32, 0))


def qwords(m, addr: int, n: int) -> list[int]:
    return list(struct.unpack(f"<{n}Q", m.mem.read(addr, 8 * n)))


def _tss64(m, rsp=(0, 0, 0), ist=(0,) * 7) -> None:
    m.mem.write(TSS, bytes(0x68))
    m.mem.write(TSS + 4, struct.pack("<3Q", *rsp))
    m.mem.write(TSS + 0x24, struct.pack("<7Q", *ist))
    m.cpu.uc.reg_write(X.UC_X86_REG_TR, (0x68, TSS, 0x67, 0x8B))


@pytest.mark.parametrize("access, kept", [(0x8E, 0), (0x8F, IF)])
def test_long_mode_frame_alignment_target_and_flags(lm, access, kept):
    m = lm
    gate64(m, 0x40, 0x00007123456789AB, access=access)
    m.cpu.write_register("rsp", STACK + 0x18)        # the CPU aligns RSP down to 16 bytes
    m.cpu.write_register("rip", 0xFFFF800000009000)  # (a kernel address: above 2^63)
    m.cpu.write_register("eflags", ALL_FLAGS)
    old_cs, old_ss = regs(m)["cs"], regs(m)["ss"]
    m.cpu.deliver(0x40, 0x1ABCD)
    r = regs(m)
    frame = STACK + 0x10 - 48                        # across the page boundary at STACK
    assert (r["cs"], r["rip"], r["rsp"]) == (0x40, 0x00007123456789AB, frame)
    assert qwords(m, frame, 6) == [0x1ABCD, 0xFFFF800000009000, old_cs, ALL_FLAGS, STACK + 0x18, old_ss]
    assert r["eflags"] == 0x2 | AC | CF | kept


def test_long_mode_idt_limit_is_exact(lm):
    m = lm
    gate64(m, 0x40, 0x9100)
    set_idt(m, IDT, 0x40 * 16 + 15)
    m.cpu.deliver(0x40)
    assert regs(m)["rip"] == 0x9100
    set_idt(m, IDT, 0x40 * 16 + 14)
    with pytest.raises(DeliveryFault, match="beyond the IDT limit") as e:
        m.cpu.deliver(0x40, software=True)
    assert (e.value.vector, e.value.error) == (13, 0x40 * 8 + 2)


@pytest.mark.parametrize("access", [0x86, 0x87, 0x8C, 0x85, 0x80, 0x9E])
def test_long_mode_needs_a_64_bit_interrupt_or_trap_gate(lm, access):
    m = lm
    gate64(m, 0x41, 0x9100, access=access)
    with pytest.raises(DeliveryFault, match="not a 64-bit gate") as e:
        m.cpu.deliver(0x41)
    assert (e.value.vector, e.value.error) == (13, 0x41 * 8 + 3)


def test_long_mode_gate_not_present_raises_np(lm):
    m = lm
    gate64(m, 0x41, 0x9100, access=0x0E)
    with pytest.raises(DeliveryFault, match="not present") as e:
        m.cpu.deliver(0x41, software=True)
    assert (e.value.vector, e.value.error) == (11, 0x41 * 8 + 2)


@pytest.mark.parametrize("selector", [0x08, 0x10, 0x13, 0x68])    # 32-bit code, data, L-bit data
@pytest.mark.parametrize("software", [True, False])
def test_long_mode_gate_must_point_at_64_bit_code(lm, selector, software):
    m = lm
    gate64(m, 0x41, 0x9100, selector=selector)
    with pytest.raises(DeliveryFault, match="64-bit code segment") as e:
        m.cpu.deliver(0x41, software=software)
    assert (e.value.vector, e.value.error) == (13, (selector & ~3) + (0 if software else 1))


@pytest.mark.parametrize("target, ring, stack", [(0x40, 0, 0x60000), (0x60, 1, 0x64000)])
def test_long_mode_ring3_to_inner_ring(lm, target, ring, stack):
    m = lm
    _tss64(m, rsp=(0x60000, 0x64008, 0x68000))      # RSP1 misaligned: aligned down
    gate64(m, 0x80, 0x9100, selector=target, access=0xEE)
    to_ring(m, 3, 0x5B, 0x23, 0x50008)
    m.cpu.deliver(0x80, software=True)
    r = regs(m)
    assert (r["cs"], r["ss"], r["rsp"], cpl(m)) == (target, ring, stack - 40, ring)   # SS: null, RPL = CPL
    assert m.cpu.segment("ss")[3] == ring << 13      # a null SS's cache: only its DPL
    assert qwords(m, stack - 40, 5) == [CODE, 0x5B, 0x2, 0x50008, 0x23]


def test_long_mode_ist_stack_at_any_privilege(lm):
    m = lm
    _tss64(m, rsp=(0x60000, 0, 0), ist=(0x61000, 0x62000, 0x63008, 0, 0, 0, 0x67000))
    gate64(m, 0x40, 0x9100, ist=3)
    m.cpu.deliver(0x40)                              # CPL 0: IST3, aligned
    assert (regs(m)["rsp"], regs(m)["rip"]) == (0x63000 - 40, 0x9100)
    gate64(m, 0x41, 0x9100, access=0xEE, ist=7)
    to_ring(m, 3, 0x5B, 0x23, 0x50000)
    m.cpu.deliver(0x41, software=True)               # from ring 3: IST7, not RSP0
    assert (regs(m)["rsp"], cpl(m)) == (0x67000 - 40, 0)


def test_long_mode_dpl_and_same_privilege(lm):
    m = lm
    _tss64(m, rsp=(0x60000, 0, 0))
    gate64(m, 0x81, 0x9100, access=0x8E)             # DPL0
    gate64(m, 0x83, 0x9100, selector=0x5B, access=0xEE)   # DPL3 to ring-3 code
    to_ring(m, 3, 0x5B, 0x23, 0x50000)
    with pytest.raises(DeliveryFault, match="from CPL3 through a DPL0 gate") as e:
        m.cpu.deliver(0x81, software=True)
    assert (e.value.vector, e.value.error, cpl(m)) == (13, 0x81 * 8 + 2, 3)
    m.cpu.deliver(0x83, software=True)               # same privilege: the user stack, CPL 3
    assert (regs(m)["ss"], regs(m)["rsp"], cpl(m)) == (0x23, 0x50000 - 40, 3)
    to_ring(m, 3, 0x5B, 0x23, 0x50000)
    m.cpu.deliver(0x81)                              # an IRQ ignores the gate's DPL
    assert (regs(m)["cs"], regs(m)["rsp"], cpl(m)) == (0x40, 0x60000 - 40, 0)


# --- a delivery that faults (deliver_exception) ---------------------------------------------

DF_HANDLER, NP_HANDLER = 0x9800, 0x9900


def _fault_gates(m, first: int, df: bool = True, np: bool = True) -> None:
    gate32(m, first, 0x9100, access=0x0E)            # the event's gate: not present
    gate32(m, 8, DF_HANDLER, access=0x8E if df else 0x0E)
    gate32(m, 11, NP_HANDLER, access=0x8E if np else 0x0E)


@pytest.mark.parametrize("code, vector", [(b"\xcd\x40", 0x40), (b"\xcc", 3), (b"\xce", 4),
                                          (b"\xcd\x03", 3)])
def test_pm32_fault_while_delivering_a_software_interrupt_returns_to_it(pm, code, vector):
    m = pm
    _fault_gates(m, vector)
    m.mem.write(CODE - 2, b"\x90\x90" + code)
    m.cpu.write_register("rip", CODE + len(code))
    m.cpu.deliver_exception(vector, None, software=True)
    assert regs(m)["rip"] == NP_HANDLER
    assert dwords(m, STACK - 16, 2) == [vector * 8 + 2, CODE]     # EXT clear, EIP = the int


@pytest.mark.parametrize("vector", [0, 10, 11, 12, 13, 14])
def test_pm32_contributory_or_page_fault_then_np_is_a_double_fault(pm, vector):
    m = pm
    _fault_gates(m, vector, np=vector != 11)
    m.cpu.deliver_exception(vector, 0x10 if vector in (10, 11, 12, 13, 14) else None)
    assert regs(m)["rip"] == DF_HANDLER
    assert dwords(m, STACK - 16, 2) == [0, CODE]      # #DF's error code is 0


@pytest.mark.parametrize("vector", [1, 2, 5, 6, 7, 9, 16, 17, 0x40])
def test_pm32_benign_event_then_np_delivers_the_np(pm, vector):
    m = pm
    _fault_gates(m, vector)
    m.cpu.deliver_exception(vector, None, hardware=vector == 0x40)
    assert regs(m)["rip"] == NP_HANDLER
    assert dwords(m, STACK - 16, 2) == [vector * 8 + 3, CODE]


def test_pm32_fault_without_a_vector_goes_to_double_fault(pm):
    # An IRQ at CPL 3 whose handler is in ring 1 with no usable ring-1 stack: the failed stack
    # switch has no exception of its own, so #DF (to ring 0 through the TSS) follows directly.
    m = pm
    _tss32(m, esp0=0x60000, ss0=0x10, esp1=0x64000, ss1=0)
    gate32(m, 0x40, 0x9100, selector=0x48)
    gate32(m, 8, DF_HANDLER)
    gate32(m, 11, NP_HANDLER)
    gate32(m, 13, NP_HANDLER)
    to_ring(m, 3, 0x1B, 0x23, 0x50000)
    assert m.cpu.deliver_irq(0x40)
    assert (regs(m)["rip"], regs(m)["rsp"], cpl(m)) == (DF_HANDLER, 0x60000 - 24, 0)
    assert dwords(m, 0x60000 - 24, 2) == [0, CODE]


def test_pm32_second_fault_then_double_fault(pm):
    m = pm
    _fault_gates(m, 0x40, np=False)                  # the #NP's own gate is missing as well
    assert m.cpu.deliver_irq(0x40)
    assert regs(m)["rip"] == DF_HANDLER


def test_pm32_triple_fault_reports_every_step(pm):
    m = pm
    _fault_gates(m, 0x40, df=False, np=False)
    assert not m.cpu.deliver_irq(0x40)
    assert m.cpu.fatal_report.startswith(
        "triple fault: cannot deliver vector 0x40 (IDT gate 0x40 is not present), then vector 0xb "
        "(IDT gate 0xb is not present), then #DF (IDT gate 0x8 is not present)\n")


def test_pm32_triple_fault_after_a_contributory_fault_and_software_int(pm):
    m = pm
    _fault_gates(m, 13, df=False)
    m.cpu.deliver_exception(13, 0)
    assert m.cpu.fatal_report.startswith(
        "triple fault: cannot deliver vector 0xd (IDT gate 0xd is not present), then #DF "
        "(IDT gate 0x8 is not present)\n")
    m.mem.write(CODE, b"\xcd\x41")                   # int $0x41: the report names the int
    m.cpu.write_register("rip", CODE + 2)
    gate32(m, 0x41, 0x9100, access=0x0E)
    gate32(m, 11, 0x9100, access=0x0E)
    m.cpu.deliver_exception(0x41, None, software=True)
    assert "CS:EIP = 0008:00009000\n" in m.cpu.fatal_report, m.cpu.fatal_report


def test_pm32_irq_8_through_a_missing_gate_is_a_triple_fault(pm):
    m = pm
    gate32(m, 8, DF_HANDLER, access=0x0E)
    assert not m.cpu.deliver_irq(8)
    assert m.cpu.fatal_report.startswith("triple fault: cannot deliver #DF (IDT gate 0x8 is not present)\n")


@pytest.mark.parametrize("code_at", [CODE, 0x19000])
def test_pm32_fault_while_delivering_int_above_64k(pm, code_at):
    m = pm
    _fault_gates(m, 0x40)
    m.mem.write(code_at, b"\xcd\x40")
    m.cpu.write_register("rip", code_at + 2)
    m.cpu.deliver_exception(0x40, None, software=True)
    assert dwords(m, STACK - 16, 2) == [0x40 * 8 + 2, code_at]


def test_pm32_double_fault_that_fails_is_a_triple_fault(pm):
    m = pm
    m.mem.write(CODE, b"\xcd\x08")                   # int $8 through a missing gate
    gate32(m, 8, DF_HANDLER, access=0x0E)
    m.cpu.write_register("rip", CODE + 2)
    m.cpu.deliver_exception(8, None, software=True)
    report = m.cpu.fatal_report
    assert report.startswith("triple fault: cannot deliver #DF (IDT gate 0x8 is not present)\n")
    assert "CS:EIP = 0008:00009000\n" in report and "int 8" in report, report


# --- what -d int and -trace cpu_interrupt say ----------------------------------------------

@pytest.fixture
def int_log():
    out = io.StringIO()
    trace.set_output(out)
    trace.enable_category("int")
    yield out
    trace.set_output(__import__("sys").stderr)


def test_d_int_lines_for_exceptions_software_and_hardware_interrupts(pm, int_log):
    m = pm
    for v in (6, 13, 0x40, 0x41):
        gate32(m, v, 0x9100)
    m.mem.write(CODE, b"\xcd\x40")
    m.cpu.write_register("rax", 0x1234ABCD)
    for args, kwargs in [((6, None), {}), ((13, 0x1238), {}), ((0x40, None), {"software": True}),
                         ((0x41, None), {"hardware": True})]:
        m.cpu.write_register("rip", CODE + 2 if kwargs.get("software") else CODE)
        m.cpu.write_register("rsp", STACK)
        m.cpu.write_register("cs", 0x08)
        m.cpu.delivery.deliver_exception(*args, **kwargs)     # (as the SYSCALL hook calls it)
    lines = [ln for ln in int_log.getvalue().splitlines() if re.match(r"check_exception| +\d+: v=", ln)]
    pattern = [r"check_exception old: 0xffffffff new 0x6",
               r" +\d+: v=06 e=0000 i=0 cpl=0 IP=0008:00009000 pc=00009000 SP=0010:00070000 EAX=1234abcd",
               r"check_exception old: 0xffffffff new 0xd",
               r" +\d+: v=0d e=1238 i=0 cpl=0 IP=0008:00009000 pc=00009000 SP=0010:00070000 EAX=1234abcd",
               r" +\d+: v=40 e=0000 i=1 cpl=0 IP=0008:00009000 pc=00009000 SP=0010:00070000 EAX=1234abcd",
               r" +\d+: v=41 e=0000 i=0 cpl=0 IP=0008:00009000 pc=00009000 SP=0010:00070000 EAX=1234abcd"]
    assert len(lines) == len(pattern), lines
    for line, want in zip(lines, pattern):
        assert re.fullmatch(want, line), (line, want)


@pytest.fixture
def events():
    seen = []

    def listener(name, fields):
        if name == "cpu_interrupt":
            seen.append(fields)
    trace.listen("cpu_interrupt")
    trace.add_listener(listener)
    yield seen
    trace.remove_listener(listener)
    trace.unlisten("cpu_interrupt")


def test_cpu_interrupt_event_in_every_mode(real, tmp_path, events):
    real.mem.write(0x30 * 4, struct.pack("<HH", 0x100, 0))
    real.cpu.deliver(0x30, software=True)
    (tmp_path / "pm").mkdir()
    (tmp_path / "lm").mkdir()
    pm = _stopped(tmp_path / "pm", PM32_PROLOGUE, "main:\n    EXIT 0\n")
    pm.mem.write(IDT + 13 * 8, struct.pack("<HHBBH", 0x9100, 0x08, 0, 0x8E, 0))
    pm.cpu.deliver(13, 0x1238)
    lm = _stopped(tmp_path / "lm", PM32_PROLOGUE, LONG_MODE + "main64:\n    EXIT 0\n")
    lm.mem.write(IDT + 0x41 * 16, struct.pack("<HHBBHII", 0x9100, 0x18, 0, 0x8E, 0, 0, 0))
    lm.cpu.deliver(0x41)
    assert events == [dict(vector=0x30, kind="int", mode="real", err="-"),
                      dict(vector=13, kind="exc/irq", mode="protected", err="0x1238"),
                      dict(vector=0x41, kind="exc/irq", mode="long", err="-")]
    pm.close()
    lm.close()
