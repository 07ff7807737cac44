"""ACPI table builders (ACPI 6.5, chapter 5): the common header with its checksum, and the fixed
tables of a one-CPU i440FX PC: RSDP, RSDT, FADT, FACS, MADT.

Tables are built with their pointers to other tables as offsets into the blob that holds them;
the firmware's table loader (loader.py) adds the blob's address at run time and recomputes the
checksums. Each builder returns bytes with a valid checksum for its relative form already.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

OEM_ID = b"PYMACH"
OEM_TABLE_ID = b"PYMACHPC"
OEM_REVISION = 1
CREATOR_ID = b"PYMA"
CREATOR_REVISION = 1

HEADER = struct.Struct("<4sIBB6s8sI4sI")
HEADER_SIZE = HEADER.size            # 36
CHECKSUM_OFFSET = 9


def checksum(data: bytes) -> int:
    """The byte that makes `data` (with that byte counted as 0) sum to zero."""
    return (-sum(data)) & 0xFF


def with_checksum(data: bytes, offset: int = CHECKSUM_OFFSET, length: int | None = None) -> bytes:
    buf = bytearray(data)
    end = len(buf) if length is None else length
    buf[offset] = 0
    buf[offset] = checksum(buf[:end])
    return bytes(buf)


def table(signature: bytes, revision: int, body: bytes) -> bytes:
    """A system description table: the 36-byte header, then `body`, checksummed."""
    header = HEADER.pack(signature, HEADER_SIZE + len(body), revision, 0, OEM_ID, OEM_TABLE_ID,
                         OEM_REVISION, CREATOR_ID, CREATOR_REVISION)
    return with_checksum(header + body)


# -- Generic Address Structure ---------------------------------------------------------------
SPACE_MEMORY, SPACE_IO = 0, 1
ACCESS_UNDEFINED, ACCESS_BYTE, ACCESS_WORD, ACCESS_DWORD = 0, 1, 2, 3
GAS = struct.Struct("<BBBBQ")


def gas(space: int, bit_width: int, address: int, access: int = ACCESS_UNDEFINED) -> bytes:
    return GAS.pack(space, bit_width, 0, access, address) if address else bytes(GAS.size)


# -- RSDP / RSDT -------------------------------------------------------------------------------
RSDP_SIZE = 20                      # revision 0 (ACPI 1.0 form): RSDT only, as QEMU's pc
RSDP_RSDT_OFFSET = 16


def rsdp(rsdt_offset: int) -> bytes:
    return with_checksum(struct.pack("<8sB6sBI", b"RSD PTR ", 0, OEM_ID, 0, rsdt_offset), offset=8)


def rsdt(entries: list[int]) -> bytes:
    return table(b"RSDT", 1, struct.pack(f"<{len(entries)}I", *entries))


def rsdt_entry_offset(index: int) -> int:
    return HEADER_SIZE + 4 * index


# -- FACS ----------------------------------------------------------------------------------------
FACS_SIZE = 64
FACS_ALIGN = 64


def facs() -> bytes:
    """Firmware ACPI Control Structure: no checksum, hardware signature 0, no waking vector."""
    return struct.pack("<4sIIIIIQBBBB", b"FACS", FACS_SIZE, 0, 0, 0, 0, 0, 2, 0, 0, 0).ljust(FACS_SIZE, b"\0")


# -- FADT ------------------------------------------------------------------------------------------
FADT_REVISION = 3                   # ACPI 2.0 form: the reset register and X_ blocks exist
FADT_SIZE = 244
FADT_FIRMWARE_CTRL = 36
FADT_DSDT = 40
FADT_X_DSDT = 140

FADT_WBINVD = 1 << 0
FADT_PROC_C1 = 1 << 2
FADT_SLP_BUTTON = 1 << 5            # no sleep button
FADT_RTC_S4 = 1 << 7
FADT_RESET_REG_SUP = 1 << 10
FADT_PLATFORM_CLOCK = 1 << 15
# QEMU's pc flags (WBINVD, C1, no sleep button, RTC wake from S4, platform clock) plus the reset register.
FADT_FLAGS = FADT_WBINVD | FADT_PROC_C1 | FADT_SLP_BUTTON | FADT_RTC_S4 | FADT_RESET_REG_SUP | FADT_PLATFORM_CLOCK
BOOT_LEGACY_DEVICES = 1 << 0
BOOT_8042 = 1 << 1                  # an OS that trusts the FADT looks for the keyboard controller
P_LVL_UNSUPPORTED = 0xFFF           # > 100 (C2) / > 1000 (C3) us: those C-states are not offered
CMOS_CENTURY = 0x32


@dataclass(frozen=True)
class PmBlocks:
    sci_irq: int
    pm1a_evt: int
    pm1_evt_len: int
    pm1a_cnt: int
    pm1_cnt_len: int
    pm_tmr: int
    pm_tmr_len: int
    reset_port: int
    reset_value: int


def fadt(pm: PmBlocks, facs_offset: int, dsdt_offset: int) -> bytes:
    """Fixed ACPI Description Table, revision 3. SMI_CMD is 0: the PM block is in ACPI mode from
    power-on (SCI_EN reads 1), so there is no ACPI enable handshake. The PM timer is 24 bits
    (TMR_VAL_EXT clear). The 32-bit FACS pointer alone is set (the spec forbids both)."""
    body = struct.pack(
        "<IIBBHIBBBBIIIIIIIIBBBBBBBBHHHHBBBBBHBI",
        facs_offset, dsdt_offset,
        1,                          # INT_MODEL (ACPI 1.0 field; 1 = multiple APIC, as QEMU)
        0,                          # preferred PM profile: unspecified
        pm.sci_irq,
        0, 0, 0, 0, 0,              # SMI_CMD, ACPI_ENABLE, ACPI_DISABLE, S4BIOS_REQ, PSTATE_CNT
        pm.pm1a_evt, 0, pm.pm1a_cnt, 0, 0, pm.pm_tmr, 0, 0,   # PM1a/b EVT, CNT, PM2, TMR, GPE0/1
        pm.pm1_evt_len, pm.pm1_cnt_len, 0, pm.pm_tmr_len, 0, 0, 0,
        0,                          # CST_CNT
        P_LVL_UNSUPPORTED, P_LVL_UNSUPPORTED,
        0, 0, 0, 0,                 # FLUSH_SIZE, FLUSH_STRIDE, DUTY_OFFSET, DUTY_WIDTH
        0, 0, CMOS_CENTURY,         # DAY_ALRM, MON_ALRM, CENTURY
        BOOT_LEGACY_DEVICES | BOOT_8042,
        0,                          # reserved
        FADT_FLAGS,
    )
    body += gas(SPACE_IO, 8, pm.reset_port, ACCESS_BYTE) + struct.pack("<BHB", pm.reset_value, 0, 0)
    body += struct.pack("<QQ", 0, dsdt_offset)                      # X_FIRMWARE_CTRL, X_DSDT
    body += gas(SPACE_IO, 8 * pm.pm1_evt_len, pm.pm1a_evt) + gas(SPACE_IO, 0, 0)
    body += gas(SPACE_IO, 8 * pm.pm1_cnt_len, pm.pm1a_cnt) + gas(SPACE_IO, 0, 0)
    body += gas(SPACE_IO, 0, 0)                                     # X_PM2_CNT
    body += gas(SPACE_IO, 8 * pm.pm_tmr_len, pm.pm_tmr)
    body += gas(SPACE_IO, 0, 0) + gas(SPACE_IO, 0, 0)               # X_GPE0, X_GPE1
    data = table(b"FACP", FADT_REVISION, body)
    assert len(data) == FADT_SIZE
    return data


# -- MADT -----------------------------------------------------------------------------------------
MADT_PCAT_COMPAT = 1                # dual 8259s present (they must be masked to use the APICs)
MPS_INTI_EDGE_HIGH_DEFAULT = 0      # conforms to the bus: ISA = edge, active high
MPS_INTI_ACTIVE_HIGH = 0x1
MPS_INTI_LEVEL = 0xC


@dataclass(frozen=True)
class Override:
    irq: int
    gsi: int
    flags: int


def madt(lapic_base: int, apic_id: int, ioapic_id: int, ioapic_base: int,
         overrides: list[Override], lint_nmi: int) -> bytes:
    """Multiple APIC Description Table: one enabled LAPIC, one IOAPIC at GSI base 0, the ISA
    interrupt source overrides, and the LAPIC NMI input (LINTn for all processors)."""
    body = struct.pack("<II", lapic_base, MADT_PCAT_COMPAT)
    body += struct.pack("<BBBBI", 0, 8, 0, apic_id, 1)                      # processor LAPIC, enabled
    body += struct.pack("<BBBBII", 1, 12, ioapic_id, 0, ioapic_base, 0)     # IOAPIC, GSI base 0
    for o in overrides:
        body += struct.pack("<BBBBIH", 2, 10, 0, o.irq, o.gsi, o.flags)     # bus 0 = ISA
    body += struct.pack("<BBBHB", 4, 6, 0xFF, 0, lint_nmi)                  # LAPIC NMI, all CPUs
    return table(b"APIC", 1, body)
