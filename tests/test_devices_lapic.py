"""Local APIC: registers, timer on virtual time, priorities, ExtINT pass-through."""

import pytest

from machine.clock import VirtualClock
from machine.devices.lapic import LocalApic

from clocktools import run_until

ID, VER, TPR, PPR, EOI, LDR, DFR, SVR = 0x20, 0x30, 0x80, 0xA0, 0xB0, 0xD0, 0xE0, 0xF0
ISR0, TMR0, IRR0, ESR, ICR_LO, ICR_HI = 0x100, 0x180, 0x200, 0x280, 0x300, 0x310
LVT_TIMER, LVT_LINT0, LVT_LINT1, LVT_ERROR = 0x320, 0x350, 0x360, 0x370
TIMER_INIT, TIMER_CUR, TIMER_DIV = 0x380, 0x390, 0x3E0


@pytest.fixture
def apic():
    clock = VirtualClock()
    kicks = []
    a = LocalApic(clock, lambda: kicks.append(clock.now))
    a.kicks = kicks
    a.write(SVR, 4, 0x1FF)                     # software enable, spurious vector 0xFF
    return a


def irr_bit(apic, v):
    return apic.read(IRR0 + 0x10 * (v // 32), 4) >> (v % 32) & 1


def isr_bit(apic, v):
    return apic.read(ISR0 + 0x10 * (v // 32), 4) >> (v % 32) & 1


def test_reset_values_and_firmware_accesses():
    apic = LocalApic(VirtualClock())
    assert apic.read(VER, 4) == 0x00050014
    assert apic.read(SVR, 4) == 0xFF
    assert apic.read(DFR, 4) == 0xFFFFFFFF
    assert apic.read(LVT_TIMER, 4) == 0x10000
    apic.write(SVR, 4, apic.read(SVR, 4) | 0x100)       # what SeaBIOS's smp_setup does
    apic.write(LVT_LINT0, 4, 0x8700)
    apic.write(LVT_LINT1, 4, 0x8400)
    apic.write(ICR_LO, 4, 0x000C4500)                   # INIT to all others: nobody there
    apic.write(ICR_LO, 4, 0x000C4610)
    assert apic.read(ICR_LO, 4) & 0x1000 == 0           # delivery idle
    assert apic.read(LVT_LINT0, 4) == 0x8700 and apic.lint0_extint()
    assert not apic.pending()


def test_bad_widths_and_reserved_registers_read_zero(apic):
    apic.write(TPR, 2, 0x20)
    apic.write(TPR + 4, 4, 0x20)
    assert apic.read(TPR, 4) == 0
    assert apic.read(VER, 1) == 0 and apic.read(VER + 8, 4) == 0
    assert apic.read(0x2F0, 4) == 0                     # no CMCI LVT on this version
    apic.write(ESR, 4, 0)
    assert apic.read(ESR, 4) & 0x80                     # illegal register address
    apic.write(VER, 4, 0)
    assert apic.read(VER, 4) == 0x00050014


def test_oneshot_timer(apic):
    clock = apic.clock
    apic.write(TIMER_DIV, 4, 0x3)                       # divide by 16
    apic.write(LVT_TIMER, 4, 0x40)                      # one-shot, vector 0x40, unmasked
    apic.write(TIMER_INIT, 4, 1000)
    run_until(clock, 16 * 250)
    assert apic.read(TIMER_CUR, 4) == 750
    assert not apic.pending()
    run_until(clock, 16 * 1000 + 5)
    assert apic.read(TIMER_CUR, 4) == 0
    assert apic.kicks == [16000] and apic.pending()
    assert apic.acknowledge() == 0x40
    assert isr_bit(apic, 0x40) and not irr_bit(apic, 0x40)
    apic.write(EOI, 4, 0)
    assert not isr_bit(apic, 0x40)
    run_until(clock, 100000)
    assert apic.kicks == [16000]                        # one-shot fired once


def test_periodic_timer_and_divide_one(apic):
    clock = apic.clock
    apic.write(TIMER_DIV, 4, 0xB)                       # divide by 1
    apic.write(LVT_TIMER, 4, 0x20000 | 0x41)
    apic.write(TIMER_INIT, 4, 500)
    run_until(clock, 1750)
    assert apic.kicks == [500, 1000, 1500]
    assert apic.read(TIMER_CUR, 4) == 250
    apic.write(TIMER_INIT, 4, 0)                        # stop
    run_until(clock, 5000)
    assert len(apic.kicks) == 3


def test_masked_timer_counts_but_does_not_interrupt(apic):
    apic.write(TIMER_DIV, 4, 0xB)
    apic.write(LVT_TIMER, 4, 0x10041)
    apic.write(TIMER_INIT, 4, 100)
    run_until(apic.clock, 1000)
    assert apic.read(TIMER_CUR, 4) == 0 and not apic.pending() and not irr_bit(apic, 0x41)


def test_tpr_and_isr_priority(apic):
    apic.write(ICR_LO, 4, 0x40000 | 0x55)              # self-IPI vector 0x55
    assert apic.pending()
    apic.write(TPR, 4, 0x50)                            # same class: blocked
    assert not apic.pending() and apic.acknowledge() is None
    assert apic.read(PPR, 4) == 0x50
    apic.write(TPR, 4, 0x40)
    assert apic.acknowledge() == 0x55
    assert apic.read(PPR, 4) == 0x50                    # in-service class
    apic.write(ICR_LO, 4, 0x40000 | 0x52)               # same class as in service: waits
    assert not apic.pending()
    apic.write(ICR_LO, 4, 0x40000 | 0x91)               # higher class nests
    assert apic.acknowledge() == 0x91
    apic.write(EOI, 4, 0)                               # EOI goes to the highest in service
    assert not isr_bit(apic, 0x91) and isr_bit(apic, 0x55)
    apic.write(EOI, 4, 0)
    assert apic.acknowledge() == 0x52


def test_illegal_vector_sets_esr_and_error_lvt(apic):
    apic.write(LVT_ERROR, 4, 0x60)
    apic.write(ICR_LO, 4, 0x40000 | 0x05)
    apic.write(ESR, 4, 0)
    assert apic.read(ESR, 4) & 0x20                     # send illegal vector
    assert apic.acknowledge() == 0x60
    apic.write(ESR, 4, 0)
    assert apic.read(ESR, 4) == 0


def test_extint_pass_through_query():
    apic = LocalApic(VirtualClock())
    assert apic.lint0_extint()                          # software disabled: PIC straight through
    apic.write(SVR, 4, 0x1FF)
    assert apic.lint0_extint()                          # LINT0 resets to ExtINT, unmasked
    apic.write(LVT_LINT0, 4, 0x10700)
    assert not apic.lint0_extint()                      # masked
    apic.write(LVT_LINT0, 4, 0x00030)
    assert not apic.lint0_extint()                      # fixed mode
    apic.hw_enabled = False
    assert apic.lint0_extint()


def test_software_disable_masks_lvts(apic):
    apic.write(LVT_TIMER, 4, 0x40)
    apic.write(SVR, 4, 0xFF)
    assert apic.read(LVT_TIMER, 4) & 0x10000
    apic.write(LVT_TIMER, 4, 0x40)                      # cannot unmask while disabled
    assert apic.read(LVT_TIMER, 4) & 0x10000


def test_lint1_fixed_level_needs_eoi(apic):
    apic.write(LVT_LINT1, 4, 0x8000 | 0x70)             # fixed, level
    line = apic.lint_line(1)
    line.raise_()
    assert apic.acknowledge() == 0x70
    assert apic.read(LVT_LINT1, 4) & 0x4000             # remote IRR
    assert apic.read(TMR0 + 0x30, 4) >> 16 & 1          # vector 0x70 is level
    line.lower()
    line.raise_()
    assert not apic.pending()                           # still being serviced
    apic.write(EOI, 4, 0)
    assert not apic.read(LVT_LINT1, 4) & 0x4000


def test_reset_restores_power_on_state(apic):
    apic.write(TIMER_DIV, 4, 0xB)
    apic.write(LVT_TIMER, 4, 0x20041)
    apic.write(TIMER_INIT, 4, 10)
    apic.write(ID, 4, 0x01000000)
    apic.reset()
    run_until(apic.clock, 1000)
    assert apic.kicks == [] and apic.read(ID, 4) == 0 and apic.read(SVR, 4) == 0xFF
