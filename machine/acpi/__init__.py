"""ACPI tables for the board, built on the host and handed to firmware through fw_cfg as QEMU
does: the blobs "etc/acpi/tables" (FACS, DSDT, FADT, MADT, RSDT) and "etc/acpi/rsdp", and the
"etc/table-loader" commands that place them in guest RAM (tables high, RSDP in the F segment),
patch their pointers and checksums. SeaBIOS and our firmware run the same commands.

    files = acpi.build(acpi.Platform(...))      # {fw_cfg file name: bytes}

Modules: aml.py (AML encoder), tables.py (fixed tables), dsdt.py (the namespace), loader.py
(the command list, and a Python executor for tests).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import aml, dsdt, tables
from .dsdt import PciWindows
from .loader import ZONE_FSEG, ZONE_HIGH, TableLoader
from .tables import Override, PmBlocks

TABLES_FILE = "etc/acpi/tables"
RSDP_FILE = "etc/acpi/rsdp"
LOADER_FILE = "etc/table-loader"
TABLES_ALIGN = 64                     # the FACS, first in the blob, must be 64-byte aligned
RSDP_ALIGN = 16                       # OSes scan for the RSDP on 16-byte boundaries

DSDT_REVISION = 2                     # 64-bit AML integers

# ISA interrupt source overrides, as QEMU's pc has them: the PIT's IRQ0 is GSI 2, and the IRQs
# that PCI INTx and the SCI use are level-triggered, active high.
ISA_OVERRIDES = [
    Override(0, 2, tables.MPS_INTI_EDGE_HIGH_DEFAULT),
    *[Override(irq, irq, tables.MPS_INTI_LEVEL | tables.MPS_INTI_ACTIVE_HIGH) for irq in (5, 9, 10, 11)],
]


@dataclass(frozen=True)
class Platform:
    pm: PmBlocks
    windows: PciWindows
    lapic_base: int = 0xFEE00000
    ioapic_base: int = 0xFEC00000
    ioapic_id: int = 0
    apic_id: int = 0
    lint_nmi: int = 1                 # LINT1 carries NMI, as the firmware programs it


class _Blob:
    """Tables appended to one blob; offsets are where each starts."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.offsets: dict[bytes, int] = {}

    def add(self, key: bytes, table: bytes, align: int = 1) -> int:
        self.data += bytes(-len(self.data) % align)
        offset = len(self.data)
        self.offsets[key] = offset
        self.data += table
        return offset


def build(p: Platform) -> dict[str, bytes]:
    blob = _Blob()
    loader = TableLoader()
    loader.allocate(RSDP_FILE, RSDP_ALIGN, ZONE_FSEG)
    loader.allocate(TABLES_FILE, TABLES_ALIGN, ZONE_HIGH)

    facs_at = blob.add(b"FACS", tables.facs(), tables.FACS_ALIGN)
    dsdt_at = blob.add(b"DSDT", tables.table(b"DSDT", DSDT_REVISION, dsdt.dsdt_body(p.windows)))
    fadt_at = blob.add(b"FACP", tables.fadt(p.pm, facs_at, dsdt_at))
    madt_at = blob.add(b"APIC", tables.madt(p.lapic_base, p.apic_id, p.ioapic_id, p.ioapic_base,
                                            ISA_OVERRIDES, p.lint_nmi))
    entries = [fadt_at, madt_at]
    rsdt_at = blob.add(b"RSDT", tables.rsdt(entries))

    for field, size in ((tables.FADT_FIRMWARE_CTRL, 4), (tables.FADT_DSDT, 4), (tables.FADT_X_DSDT, 8)):
        loader.add_pointer(TABLES_FILE, TABLES_FILE, fadt_at + field, size)
    for i in range(len(entries)):
        loader.add_pointer(TABLES_FILE, TABLES_FILE, rsdt_at + tables.rsdt_entry_offset(i), 4)
    for key, at in blob.offsets.items():
        if key != b"FACS":            # the FACS has no checksum
            length = int.from_bytes(blob.data[at + 4:at + 8], "little")
            loader.add_checksum(TABLES_FILE, at + tables.CHECKSUM_OFFSET, at, length)

    rsdp = tables.rsdp(rsdt_at)
    loader.add_pointer(RSDP_FILE, TABLES_FILE, tables.RSDP_RSDT_OFFSET, 4)
    loader.add_checksum(RSDP_FILE, 8, 0, tables.RSDP_SIZE)
    return {TABLES_FILE: bytes(blob.data), RSDP_FILE: rsdp, LOADER_FILE: loader.blob()}


__all__ = ["Platform", "PciWindows", "PmBlocks", "build", "aml", "TABLES_FILE", "RSDP_FILE", "LOADER_FILE"]
