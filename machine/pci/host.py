"""The i440FX host bridge: PCI configuration mechanism #1 (ports 0xCF8-0xCFF) and function
00:00.0, plus the PIIX3 Reset Control Register that shares port 0xCF9.

Configuration mechanism #1 (PCI 3.0 section 3.2.2.3.2): software writes a dword address to
CONFIG_ADDRESS (0xCF8) - bit 31 enable, bits 23:16 bus, 15:11 device, 10:8 function, 7:2
register - then accesses CONFIG_DATA (0xCFC-0xCFF) with byte, word or dword cycles; the byte
offset within CONFIG_DATA selects the byte within the addressed dword. Only dword accesses hit
CONFIG_ADDRESS; narrower ones at 0xCF8-0xCFB are ordinary I/O cycles, except the byte at 0xCF9,
which the PIIX3 claims for its Reset Control Register.
"""

from __future__ import annotations

from typing import Callable

from .. import trace, vmstate
from ..memory import ones
from .bus import PciBus
from .device import QEMU_SUBSYSTEM_ID, QEMU_SUBSYSTEM_VENDOR_ID, PciDevice
from .piix3 import Piix3

__all__ = ["PciConfigIo", "I440fx", "Piix3"]

ADDR_ENABLE = 1 << 31
# Bits 30:24 are reserved and bits 1:0 read 0 (they select type 0/1 cycles on other bridges).
ADDR_WRITABLE = 0x80FFFFFC

# PIIX3 Reset Control Register bits (82371SB datasheet, RC register at I/O 0xCF9).
RCR_SYSTEM_RESET = 1 << 1      # 1: the reset triggered by bit 2 is a hard (full system) reset
RCR_RESET_CPU = 1 << 2         # 0 -> 1 starts the reset


class PciConfigIo:
    """Device ops for ports 0xCF8..0xCFF."""

    BASE = 0xCF8
    SIZE = 8
    VMSTATE = vmstate.Description("pci-config-io", 1, (
        vmstate.Field("address", vmstate.U32), vmstate.Field("rcr", vmstate.U8)))

    def __init__(self, bus: PciBus, on_reset: Callable[[], None] | None = None):
        self.bus = bus
        bus.host_ports.append((self.BASE, self.SIZE))
        self.on_reset = on_reset
        self.address = 0
        self.rcr = 0

    def reset(self) -> None:
        self.address = 0
        self.rcr = 0

    # -- helpers ------------------------------------------------------------------------------
    def _target(self) -> tuple[int, int, int] | None:
        a = self.address
        if not a & ADDR_ENABLE:
            return None
        return (a >> 16) & 0xFF, (a >> 8) & 0xFF, a & 0xFC

    # -- device ops -----------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset >= 4:
            return self._data_read(offset - 4, size)
        if offset == 0 and size == 4:
            return self.address
        if offset == 1 and size == 1:
            return self.rcr
        return ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset >= 4:
            self._data_write(offset - 4, size, value)
        elif offset == 0 and size == 4:
            self.address = value & ADDR_WRITABLE
        elif offset == 1 and size == 1:
            self._rcr_write(value)
        else:
            trace.guest_error(f"pci: {size}-byte write {value:#x} to port {self.BASE + offset:#x} ignored")

    def _data_read(self, n: int, size: int) -> int:
        target = self._target()
        if target is None:
            return ones(size)
        bus, devfn, reg = target
        if n + size <= 4:
            return self.bus.config_read(bus, devfn, reg + n, size)
        # An access running past 0xCFF: only its bytes inside CONFIG_DATA reach config space.
        value = ones(size)
        for k in range(4 - n):
            byte = self.bus.config_read(bus, devfn, reg + n + k, 1)
            value = (value & ~(0xFF << (8 * k))) | (byte << (8 * k))
        return value

    def _data_write(self, n: int, size: int, value: int) -> None:
        target = self._target()
        if target is None:
            return
        bus, devfn, reg = target
        if n + size <= 4:
            self.bus.config_write(bus, devfn, reg + n, size, value)
            return
        for k in range(4 - n):
            self.bus.config_write(bus, devfn, reg + n + k, 1, (value >> (8 * k)) & 0xFF)

    def _rcr_write(self, value: int) -> None:
        if value & RCR_RESET_CPU:
            # Bit 1 picks a hard reset (whole system) or a soft one (CPU INIT). We have no
            # INIT-only path, so both reset the machine, which is what a rebooting guest wants.
            if not value & RCR_SYSTEM_RESET:
                trace.log("unimp", "pci: soft reset (INIT) through 0xCF9 performed as a full reset")
            if self.on_reset is not None:
                self.on_reset()
            return
        self.rcr = value & RCR_SYSTEM_RESET


# i440FX (82441FX PMC) registers beyond the header.
PAM0 = 0x59                  # PAM0..PAM6 at 0x59..0x5F: read/write enables of the BIOS/option ROM areas
PAM_COUNT = 7
SMRAM = 0x72
SMRAM_RESET = 0x02           # C_BASE_SEG = 010b: SMRAM at 0xA0000 (hardwired)
SMRAM_WMASK = 0x78           # D_OPEN, D_CLS, D_LCK, G_SMRAME
SMRAM_D_OPEN = 1 << 6
SMRAM_D_LCK = 1 << 4
SMRAM_LOCKED_WMASK = 0x20    # with D_LCK set only D_CLS stays writable


class I440fx(PciDevice):
    """82441FX PCI and Memory Controller, function 00:00.0. The PAM and SMRAM registers are
    stored so firmware reads back what it wrote; `on_pam_change(offset, value)` is called for
    every PAM/SMRAM byte whose value changes (shadow RAM is not modelled yet)."""

    def __init__(self, on_pam_change: Callable[[int, int], None] | None = None):
        super().__init__("i440fx", 0x8086, 0x1237, 0x060000, revision=0x02,
                         subsystem_vendor_id=QEMU_SUBSYSTEM_VENDOR_ID, subsystem_id=QEMU_SUBSYSTEM_ID)
        self.on_pam_change = on_pam_change
        # PAM0 has only the 0xF0000 BIOS area in its high nibble; PAM1-6 cover two areas each.
        self.set_writable(PAM0, 1, 0x30)
        for i in range(1, PAM_COUNT):
            self.set_writable(PAM0 + i, 1, 0x33)
        self.set_writable(SMRAM, 1, SMRAM_WMASK, reset=SMRAM_RESET)
        self.config[SMRAM] = SMRAM_RESET

    VMSTATE = vmstate.Description("i440fx", 1, PciDevice.VMSTATE_FIELDS)

    def post_load(self) -> None:
        """Shadow RAM follows the restored PAM/SMRAM bytes (the callback remaps what differs)."""
        super().post_load()
        if self.on_pam_change is not None:
            for off in (*range(PAM0, PAM0 + PAM_COUNT), SMRAM):
                self.on_pam_change(off, self.config[off])

    def _chipset_bytes(self) -> bytes:
        return bytes(self.config[PAM0:PAM0 + PAM_COUNT]) + bytes((self.config[SMRAM],))

    def config_write(self, offset: int, size: int, value: int) -> None:
        if not (offset < SMRAM + 1 and offset + size > PAM0):
            super().config_write(offset, size, value)
            return
        before = self._chipset_bytes()
        super().config_write(offset, size, value)
        if self.config[SMRAM] & SMRAM_D_LCK:
            # D_LCK closes SMRAM and freezes the SMRAM controls until power-on reset.
            self.config[SMRAM] &= ~SMRAM_D_OPEN & 0xFF
            self.wmask[SMRAM] = SMRAM_LOCKED_WMASK
        self._notify(before)

    def reset(self) -> None:
        before = self._chipset_bytes()
        self.wmask[SMRAM] = SMRAM_WMASK
        super().reset()
        self._notify(before)

    def _notify(self, before: bytes) -> None:
        if self.on_pam_change is None:
            return
        after = self._chipset_bytes()
        offsets = list(range(PAM0, PAM0 + PAM_COUNT)) + [SMRAM]
        for off, old, new in zip(offsets, before, after):
            if old != new:
                self.on_pam_change(off, new)
