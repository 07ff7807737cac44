"""ACPI PM block: PM1 status/enable/control, SCI, the 3.579545 MHz PM timer, S5 power-off."""

import pytest

from asm import rom_image
from machine.clock import VirtualClock
from machine.config import CharDev, MachineConfig
from machine.devices import acpi_pm
from machine.devices.acpi_pm import AcpiPm
from machine.irq import IrqLine
from machine.pc import Machine

from clocktools import run_until

STS, EN, CNT, TMR = 0, 2, 4, 8


@pytest.fixture
def pm():
    clock = VirtualClock()
    offs = []
    sci = IrqLine("sci")
    dev = AcpiPm(clock, sci, lambda: offs.append(clock.now))
    dev.offs, dev.sci_line = offs, sci
    return dev


def test_reset_state_sci_enabled_and_block_reads_zero_beyond(pm):
    assert pm.read(CNT, 2) == acpi_pm.SCI_EN           # ACPI mode from power-on
    assert pm.read(STS, 2) == 0 and pm.read(EN, 2) == 0
    assert pm.read(0x10, 4) == 0
    pm.write(CNT, 2, 0)                                 # SCI_EN cannot be cleared (no SMI_CMD)
    assert pm.read(CNT, 2) & acpi_pm.SCI_EN


def test_pm_timer_counts_at_3_579545_mhz_and_wraps_at_24_bits(pm):
    assert pm.read(TMR, 4) == 0
    pm.clock.advance_to(1_000_000_000)
    assert pm.read(TMR, 4) == 3_579_545
    pm.clock.advance_to(5_000_000_000)                  # 17 897 725 ticks: wrapped once
    assert pm.read(TMR, 4) == 17_897_725 - (1 << 24)
    pm.write(TMR, 4, 0)                                 # read-only
    assert pm.read(TMR, 4) == 17_897_725 - (1 << 24)


def test_timer_msb_toggle_sets_tmr_sts_and_raises_sci_when_enabled(pm):
    pm.write(EN, 2, acpi_pm.TMR_EN)
    toggle_ns = -(-(1 << 23) * 10**9 // 3_579_545)      # bit 23 first changes here (~2.34 s)
    run_until(pm.clock, toggle_ns - 1)
    assert not pm.read(STS, 2) & acpi_pm.TMR_STS and not pm.sci_line.level
    run_until(pm.clock, toggle_ns)
    assert pm.read(STS, 2) & acpi_pm.TMR_STS and pm.sci_line.level
    pm.write(STS, 2, acpi_pm.TMR_STS)                   # write 1 to clear
    assert pm.read(STS, 2) == 0 and not pm.sci_line.level


def test_status_bit_without_enable_raises_no_sci(pm):
    pm.sts = acpi_pm.PWRBTN_STS
    pm.write(EN, 2, 0)
    assert not pm.sci_line.level
    pm.write(EN, 2, acpi_pm.PWRBTN_EN)
    assert pm.sci_line.level
    pm.write(STS, 2, 0)                                 # writing 0 clears nothing
    assert pm.sci_line.level


@pytest.mark.parametrize("typ", [0, 2])
def test_slp_en_with_s5_type_powers_off(pm, typ):
    pm.write(CNT, 2, typ << 10)                         # SLP_TYP alone: nothing yet
    assert pm.offs == []
    pm.write(CNT, 2, typ << 10 | acpi_pm.SLP_EN | acpi_pm.SCI_EN)
    assert len(pm.offs) == 1
    assert not pm.read(CNT, 2) & acpi_pm.SLP_EN         # write-only bit


def test_other_sleep_types_are_ignored(pm):
    pm.write(CNT, 2, 1 << 10 | acpi_pm.SLP_EN)          # S3: not offered
    assert pm.offs == []


POWER_OFF_ROM = """
reset:
    mov $0x608, %dx
    inl %dx, %eax
    mov %eax, %ebx
    mov $0x3f8, %dx
    mov $'P', %al
    out %al, %dx
    mov $0x604, %dx
    mov $0x2000, %ax                # SLP_TYP 0 (\\_S5) | SLP_EN
    out %ax, %dx
    mov $0x3f8, %dx
    mov $'X', %al                   # never reached: the machine is off
    out %al, %dx
    cli
    hlt
"""


def test_guest_s5_powers_the_board_off_with_status_0(tmp_path):
    rom = tmp_path / "rom.bin"
    rom.write_bytes(rom_image(POWER_OFF_ROM))
    m = Machine(MachineConfig(bios=rom, serial=CharDev("file", tmp_path / "s.txt")))
    try:
        assert m.run(max_instructions=10_000) == 0
        assert m.stop_reason.kind == "exited"
    finally:
        m.close()
    assert (tmp_path / "s.txt").read_bytes() == b"P"


def test_board_sci_is_isa_irq_9(tmp_path):
    rom = tmp_path / "rom.bin"
    rom.write_bytes(rom_image("reset:\n    cli\n    hlt\n"))
    m = Machine(MachineConfig(bios=rom, serial=CharDev("null")))
    try:
        pm = m.devices["acpi-pm"]
        pm.sts = acpi_pm.PWRBTN_STS
        m.io.write(0x602, 2, acpi_pm.PWRBTN_EN)
        assert m.isa_irqs[9].level and m.pic.slave.lines & 2 and m.ioapic.lines & (1 << 9)
    finally:
        m.close()


def test_power_button_sets_status_and_sci_only_when_enabled(pm):
    pm.power_button()
    assert pm.read(STS, 2) & acpi_pm.PWRBTN_STS and not pm.sci_line.level
    pm.write(EN, 2, acpi_pm.PWRBTN_EN)
    assert pm.sci_line.level
    pm.write(STS, 2, acpi_pm.PWRBTN_STS)
    assert not pm.sci_line.level and pm.offs == []      # the OS decides; nothing turns off by itself
