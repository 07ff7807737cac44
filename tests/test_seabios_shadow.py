"""Shadow RAM under the BIOS area: the i440FX PAM registers switch each segment of
0xC0000-0xFFFFF between the bus (ROM alias or nothing), read-only, write-only and read/write
RAM, for the CPU and for device DMA (as QEMU maps them for DMA: write-only as RAM, read-only as
RAM that takes no writes, the bus side as nothing)."""

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


def test_dma_follows_the_segments_merged_into_runs():
    mem = GuestMemory(4 << 20)
    sh = ShadowRam(mem, FakeCpu())
    with pytest.raises(GuestMemoryError):
        mem.view(0xEC000, 16)
    sh.pam_changed(0x5F, 0x33)          # E8000-EFFFF read/write
    sh.pam_changed(0x59, 0x30)          # F0000-FFFFF read/write
    mem.write(0xEFFF8, bytes(range(16)))           # one DMA across two segments
    assert mem.read(0xEFFF8, 16) == bytes(range(16))
    sh.pam_changed(0x5F, 0x13)          # EC000 becomes read-only: DMA reads it, cannot write it
    with pytest.raises(GuestMemoryError):
        mem.write(0xEC000, b"x")
    assert mem.read(0xEFFF8, 8) == bytes(range(8)) and not mem.writable(0xEFFF8, 1)
    assert mem.read(0xE8000, 4) == bytes(4) and mem.writable(0xE8000, 4)
    assert [(r.gpa, r.size, r.read_only) for r in mem.ranges if 0xE0000 <= r.gpa < 0x100000] == \
        [(0xE8000, 0x4000, False), (0xEC000, 0x4000, True), (0xF0000, 0x10000, False)]
    sh.pam_changed(0x5F, 0x20)          # EC000 write-only: QEMU maps it as RAM for DMA too
    mem.write(0xEC000, b"wo")
    assert mem.read(0xEC000, 2) == b"wo"
    with pytest.raises(GuestMemoryError):
        mem.read(0xE8000, 1)            # E8000 back to the bus: nothing
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


def test_virtqueue_rings_in_shadow_ram_follow_the_pam_registers(tmp_path):
    """Item: rings resolved once at queue enable kept being written after the guest
    write-protected them. The device looks its rings up again on every change of the map, as
    QEMU rebuilds its ring caches: read-only, it still reads them and its writes are lost (as on
    QEMU and a real PC); on the bus side, nowhere, it fails as QEMU's "Cannot map"."""
    from virtio_driver import S_OK, T_IN, Allocator, Bench, BlkRequests, pattern
    from machine.virtio.queue import RingsNotInRam

    b = Bench(tmp_path)
    try:
        sh = ShadowRam(b.mem, FakeCpu())
        sh.pam_changed(0x5E, 0x33)                     # E0000-E7FFF read/write
        b.vqs = b.drv.init(Allocator(b.mem, start=0xE0000), size=16)
        vq = b.vqs[0]
        assert 0xE0000 <= vq.desc < vq.used < 0xE4000
        blk = BlkRequests(vq)
        blk.alloc = b.alloc                            # data buffers in ordinary RAM
        r = blk.submit(T_IN, 0, in_len=512)
        b.drv.kick(0)
        assert vq.get_used() == [(r.head, 513)]

        used_before = b.mem.read(vq.used, 6 + 8 * 16)
        r = blk.submit(T_IN, 1, in_len=512)
        sh.pam_changed(0x5E, 0x11)                     # write-protected, then kicked
        b.drv.kick(0)
        assert blk.result(r) == (pattern(1 << 20)[512:1024], S_OK)
        assert b.mem.read(vq.used, 6 + 8 * 16) == used_before and not b.needs_reset

        sh.pam_changed(0x5E, 0x00)                     # the bus: the rings are nowhere
        assert b.needs_reset and type(b.vdev.error) is RingsNotInRam
        assert b.vdev.state().queues[0].active is False
    finally:
        b.close()


def test_a_packed_ring_in_write_protected_shadow_ram_is_read_and_never_written(tmp_path):
    """The packed ring's used elements are written over its descriptors: write-protected, the
    device still reads the descriptors from RAM and its used elements are lost."""
    from test_virtio_packed import packed_bench, start
    from virtio_driver import S_OK, T_IN, Allocator, BlkRequests, benches, pattern

    made = benches(tmp_path)
    b = packed_bench(next(made))
    try:
        sh = ShadowRam(b.mem, FakeCpu())
        sh.pam_changed(0x5E, 0x33)
        data_alloc, b.alloc = b.alloc, Allocator(b.mem, start=0xE0000)
        ring = start(b, size=16)
        assert 0xE0000 <= ring.desc < 0xE4000
        b.blk = BlkRequests(ring)
        b.blk.alloc = data_alloc
        r = b.blk.submit(T_IN, 2, in_len=512)
        sh.pam_changed(0x5E, 0x11)
        ring_before = b.mem.read(ring.desc, 16 * 16)
        b.drv.kick(0)
        assert b.blk.result(r) == (pattern(1 << 20)[1024:1536], S_OK)
        assert b.mem.read(ring.desc, 16 * 16) == ring_before and not b.needs_reset
    finally:
        next(made, None)                               # closes the bench
