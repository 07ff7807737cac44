"""Shadow RAM: what the CPU and DMA see at 0xC0000-0xFFFFF, as the i440FX PAM registers say.

On a PC the 256 KiB below 1 MiB hold option ROMs and the BIOS, but DRAM lies under them too.
The 82441FX's seven Programmable Attribute Map registers (config 0x59-0x5F, datasheet 3.2.15)
choose, per segment, where reads and writes of that range go:

    PAM0 bits 5:4          0xF0000-0xFFFFF (the BIOS area, 64 KiB)
    PAMn bits 1:0 / 5:4    0xC0000 + (n-1)*32 KiB, low / high 16 KiB half, n = 1..6

    00  DRAM disabled: reads and writes go to PCI/ISA (here: the isa-bios ROM alias, or nothing)
    01  read-only: reads from DRAM, writes to PCI/ISA (so they are lost)
    10  write-only: reads from PCI/ISA, writes to DRAM
    11  read/write DRAM

Firmware uses this to copy itself from ROM into RAM ("shadowing") and then write-protect it. The
power-on value 0 makes the whole area the bus (the ROM), which is what code built for a machine
without shadow RAM expects. Device DMA follows the current attributes as QEMU maps them
(`_update_dma_windows`): each run of segments of one kind is one GuestMemory window, and devices
look their rings up again whenever the map changes.

The SMRAM control register (0x72, datasheet 3.2.20) does the same for the DRAM under the VGA
window 0xA0000-0xBFFFF: outside SMM (this machine has none) the CPU sees it when SMRAM is
enabled (G_SMRAME) and opened (D_OPEN), and the bus (no VGA here: nothing) otherwise.
"""

from __future__ import annotations

from typing import Protocol

from .memory import GuestMemory, RamRange

PAM0 = 0x59
AREA_BASE = 0xC0000
AREA_END = 0x100000
SMRAM = 0x72
SMRAM_G_SMRAME = 0x08
SMRAM_D_OPEN = 0x40
SMRAM_BASE, SMRAM_SIZE = 0xA0000, 0x20000

BUS, READ_ONLY, WRITE_ONLY, READ_WRITE = 0, 1, 2, 3
MODE_NAMES = {BUS: "bus", READ_ONLY: "ram_ro", WRITE_ONLY: "ram_wo", READ_WRITE: "ram"}


def pam_segments() -> list[tuple[int, int, int, int]]:
    """(register, bit shift, base, size) for every segment the PAM registers control."""
    segs = [(PAM0, 4, 0xF0000, 0x10000)]
    for n in range(1, 7):
        base = AREA_BASE + (n - 1) * 0x8000
        segs.append((PAM0 + n, 0, base, 0x4000))
        segs.append((PAM0 + n, 4, base + 0x4000, 0x4000))
    return segs


SEGMENTS = pam_segments()


class WindowBackend(Protocol):
    """The CPU layer: maps one segment as 'bus', 'ram', 'ram_ro' or 'ram_wo'."""
    def set_legacy_window(self, base: int, size: int, mode: str, ram_offset: int) -> None: ...


class ShadowRam:
    """Follows PAM register values (`pam_changed`, the I440fx's on_pam_change callback) and
    remaps the segments whose attribute changed. The DRAM under a segment is the RAM buffer at
    the same offset (the PC RAM layout leaves buffer bytes 0xA0000-0xFFFFF for it)."""

    def __init__(self, mem: GuestMemory, cpu: WindowBackend):
        if mem.size < AREA_END:
            raise ValueError("shadow RAM needs at least 1 MiB of RAM")
        self.mem = mem
        self.cpu = cpu
        self.modes = {base: BUS for _, _, base, _ in SEGMENTS}
        self.smram_open = False
        self._dma_windows: list[int] = []

    def mode_at(self, addr: int) -> int:
        for _, _, base, size in SEGMENTS:
            if base <= addr < base + size:
                return self.modes[base]
        raise ValueError(f"{addr:#x} is not in the shadow RAM area")

    def pam_changed(self, offset: int, value: int) -> None:
        if offset == SMRAM:
            self._smram_changed(value)
            return
        changed = False
        for reg, shift, base, size in SEGMENTS:
            if reg != offset:
                continue
            mode = (value >> shift) & 3
            if mode == self.modes[base]:
                continue
            self.modes[base] = mode
            self.cpu.set_legacy_window(base, size, MODE_NAMES[mode], base)
            changed = True
        if changed:
            self._update_dma_windows()

    def _smram_changed(self, value: int) -> None:
        visible = bool(value & SMRAM_G_SMRAME) and bool(value & SMRAM_D_OPEN)
        if visible != self.smram_open:
            self.smram_open = visible
            self.cpu.set_legacy_window(SMRAM_BASE, SMRAM_SIZE, "ram" if visible else "bus", SMRAM_BASE)

    def _update_dma_windows(self) -> None:
        """Device DMA sees the segments as QEMU 7.2's i440FX maps them for it: read/write and
        write-only segments as RAM (QEMU aliases both to RAM), read-only ones as RAM that ignores
        writes (a real 82441FX forwards them to the bus, where nothing takes them), and the
        bus side of a disabled segment as nothing. One map change, so devices look up their
        rings once."""
        runs: list[list] = []          # [start, end, read_only]
        for _, _, base, size in sorted(SEGMENTS, key=lambda s: s[2]):
            mode = self.modes[base]
            if mode == BUS:
                continue
            read_only = mode == READ_ONLY
            if runs and runs[-1][1] == base and runs[-1][2] == read_only:
                runs[-1][1] = base + size
            else:
                runs.append([base, base + size, read_only])
        old, self._dma_windows = self._dma_windows, [start for start, _, _ in runs]
        self.mem.update_ranges(old, [RamRange(start, end - start, start, read_only)
                                     for start, end, read_only in runs])
