"""Shadow RAM under the BIOS area: the i440FX PAM registers switch each segment of
0xC0000-0xFFFFF between the bus (ROM alias or nothing), read-only, write-only and read/write
RAM, for the CPU and (read/write segments only) for device DMA."""

import pytest

from asm import rom_image, rom_machine
from machine.config import CharDev, MachineConfig
from machine.cpu import MemoryAccessError
from machine.memory import GuestMemory, GuestMemoryError, RamRange
from machine.pc import Machine
from machine.shadow import READ_ONLY, READ_WRITE, SEGMENTS, WRITE_ONLY, ShadowRam


class FakeCpu:
    def __init__(self):
        self.calls = []

    def set_legacy_window(self, base, size, mode, ram_offset):
        self.calls.append((base, size, mode, ram_offset))


def test_pam_layout_covers_the_bios_area_once():
    covered = sorted((base, size) for _, _, base, size in SEGMENTS)
    pos = 0xC0000
    for base, size in covered:
        assert base == pos
        pos += size
    assert pos == 0x100000
    assert len(SEGMENTS) == 13


def test_pam_nibbles_select_segments_and_only_changes_remap():
    mem = GuestMemory(4 << 20)
    cpu = FakeCpu()
    sh = ShadowRam(mem, cpu)
    sh.pam_changed(0x5A, 0x13)          # PAM1: C0000 read/write (low nibble), C4000 read-only
    assert cpu.calls == [(0xC0000, 0x4000, "ram", 0xC0000), (0xC4000, 0x4000, "ram_ro", 0xC4000)]
    cpu.calls.clear()
    sh.pam_changed(0x5A, 0x23)          # only the high nibble changed
    assert cpu.calls == [(0xC4000, 0x4000, "ram_wo", 0xC4000)]
    assert sh.mode_at(0xC0000) == READ_WRITE and sh.mode_at(0xC7FFF) == WRITE_ONLY
    cpu.calls.clear()
    sh.pam_changed(0x59, 0x1F)          # PAM0: only bits 5:4 mean anything (F segment)
    assert cpu.calls == [(0xF0000, 0x10000, "ram_ro", 0xF0000)]
    assert sh.mode_at(0xFFFFF) == READ_ONLY


def test_dma_reaches_read_write_segments_only_merged_into_runs():
    mem = GuestMemory(4 << 20)
    sh = ShadowRam(mem, FakeCpu())
    with pytest.raises(GuestMemoryError):
        mem.view(0xEC000, 16)
    sh.pam_changed(0x5F, 0x33)          # E8000-EFFFF read/write
    sh.pam_changed(0x59, 0x30)          # F0000-FFFFF read/write
    mem.write(0xEFFF8, bytes(range(16)))           # one DMA across two segments
    assert mem.read(0xEFFF8, 16) == bytes(range(16))
    sh.pam_changed(0x5F, 0x13)          # EC000 becomes read-only: no DMA there any more
    with pytest.raises(GuestMemoryError):
        mem.write(0xEC000, b"x")
    assert mem.read(0xE8000, 4) == bytes(4)
    sh.pam_changed(0x5F, 0x00)
    sh.pam_changed(0x59, 0x00)
    assert [r for r in mem.ranges if 0xA0000 <= r.gpa < 0x100000] == []


def test_guest_memory_windows_refuse_overlaps():
    mem = GuestMemory(4 << 20)
    with pytest.raises(ValueError):
        mem.add_range(RamRange(0x9F000, 0x2000, 0x9F000))      # overlaps low RAM
    with pytest.raises(ValueError):
        mem.add_range(RamRange(0xC0000, 0x1000, 4 << 20))      # beyond the buffer
    mem.add_range(RamRange(0xC0000, 0x1000, 0xC0000))
    mem.remove_range(0xC0000)
    assert not mem.contains(0xC0000, 1)


# A guest drives the PAM register for E0000-E3FFF (PAM5 low nibble) through config mechanism #1
# and records what it reads at 0xE0000 after each step in RESULTS[0..]. The ROM is 64 KiB (at
# 0xF0000), so the bus at 0xE0000 has nothing: all-ones.
PAM_ROM = """
.set RESULTS, 0x500
.macro PAM5 value
    mov $0xcf8, %dx
    mov $0x8000005c, %eax
    out %eax, %dx
    mov $0xcfe, %dx                 # byte 0x5e = PAM5
    mov $\\value, %al
    out %al, %dx
.endm
.macro RECORD slot
    mov %es:0, %al
    mov %al, RESULTS + \\slot
.endm
reset:
    xor %ax, %ax
    mov %ax, %ds
    mov $0xe000, %ax
    mov %ax, %es
    RECORD 0                        # bus: nothing there
    PAM5 0x03
    movb $0x5a, %es:0
    RECORD 1                        # read/write RAM
    PAM5 0x01
    movb $0xa5, %es:0               # read-only: the write goes to the bus
    RECORD 2
    PAM5 0x02
    RECORD 3                        # write-only: reads from the bus
    movb $0x77, %es:0
    PAM5 0x03
    RECORD 4                        # the write-only store reached RAM
    PAM5 0x00
    RECORD 5
    mov $0x21, %al
    out %al, $0xf4
    cli
    hlt
"""


def test_guest_sees_pam_modes(tmp_path):
    m = rom_machine(tmp_path, PAM_ROM)
    assert m.run() == 0x43
    assert m.mem.read(0x500, 6) == bytes([0xFF, 0x5A, 0x5A, 0xFF, 0x77, 0xFF])
    m.close()


def test_reset_puts_the_rom_back_under_the_f_segment(tmp_path):
    rom = tmp_path / "rom.bin"
    image = rom_image("reset: hlt\n")
    rom.write_bytes(image)
    m = Machine(MachineConfig(bios=rom, serial=CharDev("null")))
    host = m.devices["i440fx"]
    host.config_write(0x59, 1, 0x30)                   # F segment: read/write RAM (zeros)
    assert m.cpu.read_virtual(0xFFFF0, 4) == bytes(4)
    host.config_write(0x59, 1, 0x10)                   # read-only RAM: debugger reads still work
    assert m.cpu.read_virtual(0xFFFF0, 4) == bytes(4)
    m.reset()
    assert m.cpu.read_virtual(0xFFFF0, 4) == image[-16:-12]
    m.close()


def test_smram_opens_the_ram_under_the_vga_window(tmp_path):
    rom = tmp_path / "rom.bin"
    rom.write_bytes(rom_image("reset: hlt\n"))
    m = Machine(MachineConfig(bios=rom, serial=CharDev("null")))
    host = m.devices["i440fx"]
    m.mem.buf[0xA0000:0xA0004] = b"SMRM"               # the DRAM under 0xA0000
    host.config_write(0x72, 1, 0x40)                   # D_OPEN without G_SMRAME: still the bus
    assert m.shadow.smram_open is False
    host.config_write(0x72, 1, 0x48)                   # enabled and open: the CPU sees the DRAM
    assert m.cpu.read_virtual(0xA0000, 4) == b"SMRM"
    host.config_write(0x72, 1, 0x08)                   # closed: the bus again
    assert m.shadow.smram_open is False
    with pytest.raises(MemoryAccessError):
        m.cpu.read_virtual(0xA0000, 4)
    m.close()
