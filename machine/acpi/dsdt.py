"""The DSDT of the board: the PCI root bridge with its windows and INTx routing, the ISA devices
an OS cannot find without firmware help, and the S5 (soft-off) sleep type.

PCI INTx routing is static: the firmware (ours and SeaBIOS alike) steers PIRQA-D to ISA IRQs
10, 10, 11, 11, and every ISA IRQ n is IOAPIC input n, so each _PRT entry names its GSI
directly (no link devices). The board wires slot s, pin p (0 = INTA) to PIRQ (s + p - 1) & 3.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import aml

PIRQ_IRQS = (10, 10, 11, 11)          # what the firmware programs into PIIX3 PIRQRC[A-D]
NUM_SLOTS = 32
PCI_IO_LOW_END = 0x0CF7               # below the config ports 0xCF8-0xCFF
PCI_IO_HIGH_START = 0x0D00
VGA_WINDOW = (0xA0000, 0xBFFFF)
PCI_MEM_END = 0xFEBFFFFF              # the IOAPIC, HPET range and LAPIC lie above
SLP_TYP_S5 = 0                        # the PM block's soft-off value


@dataclass(frozen=True)
class PciWindows:
    mem32_start: int                  # the first address above low RAM
    mem64_start: int                  # above RAM that lies over 4 GiB
    mem64_size: int


def slot_gsi(slot: int, pin: int) -> int:
    """The GSI of slot `slot`'s INTx pin `pin` (0 = INTA) under the firmware's PIRQ routing."""
    return PIRQ_IRQS[(slot + pin - 1) & 3]


def _prt() -> bytes:
    entries = [aml.package(aml.integer(slot << 16 | 0xFFFF), aml.integer(pin), aml.integer(0),
                           aml.integer(slot_gsi(slot, pin)))
               for slot in range(1, NUM_SLOTS) for pin in range(4)]
    # More than 255 elements would need a VarPackage; 31 slots x 4 pins = 124.
    return aml.name("_PRT", aml.package(*entries))


def _pci_crs(win: PciWindows) -> bytes:
    descriptors = [
        aml.word_space(aml.RES_BUS, 0x00, 0xFF),
        aml.io_port(0xCF8, 8),                                   # the config mechanism, consumed
        aml.word_space(aml.RES_IO, 0x0000, PCI_IO_LOW_END, aml.IO_RANGE_ENTIRE),
        aml.word_space(aml.RES_IO, PCI_IO_HIGH_START, 0xFFFF, aml.IO_RANGE_ENTIRE),
        aml.dword_memory(*VGA_WINDOW),
        aml.dword_memory(win.mem32_start, PCI_MEM_END),
    ]
    if win.mem64_size:
        descriptors.append(aml.qword_memory(win.mem64_start, win.mem64_start + win.mem64_size - 1))
    return aml.name("_CRS", aml.resource_template(*descriptors))


def _isa_device(path: str, hid: str, *resources: bytes, uid: int | None = None) -> bytes:
    terms = [aml.name("_HID", aml.eisa_id(hid))]
    if uid is not None:
        terms.append(aml.name("_UID", aml.integer(uid)))
    terms.append(aml.name("_CRS", aml.resource_template(*resources)))
    return aml.device(path, *terms)


def dsdt_body(win: PciWindows) -> bytes:
    isa = aml.device(
        "ISA",
        aml.name("_ADR", aml.integer(0x00010000)),              # 00:01.0, the PIIX3
        _isa_device("KBD", "PNP0303", aml.io_port(0x60, 1), aml.io_port(0x64, 1), aml.irq_no_flags(1)),
        _isa_device("COM1", "PNP0501", aml.io_port(0x3F8, 8), aml.irq_no_flags(4), uid=1),
        _isa_device("RTC", "PNP0B00", aml.io_port(0x70, 2), aml.irq_no_flags(8)),
    )
    pci0 = aml.device(
        "PCI0",
        aml.name("_HID", aml.eisa_id("PNP0A03")),
        aml.name("_ADR", aml.integer(0)),
        aml.name("_UID", aml.integer(0)),
        _pci_crs(win),
        _prt(),
        isa,
    )
    s5 = aml.name("\\_S5", aml.package(*(aml.integer(SLP_TYP_S5),) * 2, aml.integer(0), aml.integer(0)))
    return aml.scope("\\_SB", pci0) + s5
