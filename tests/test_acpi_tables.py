"""ACPI tables built for the board: the AML encoder, each table's layout, the table-loader
commands linked as firmware links them, and acceptance by ACPICA's disassembler."""

import shutil
import struct
import subprocess

import pytest

from machine import acpi
from machine.acpi import aml, dsdt, loader, tables
from machine.config import CharDev, MachineConfig
from machine.pc import Machine

TABLES_AT = 0x07FE0000
RSDP_AT = 0x000E0000


# -- AML encoder -------------------------------------------------------------------------------

@pytest.mark.parametrize("body,encoded", [
    (0, b"\x01"), (62, b"\x3f"),                         # one byte up to 63 in all
    (63, b"\x41\x04"), (4093, b"\x4f\xff"),              # two bytes: low nibble, then 8 bits
    (4094, b"\x81\x00\x01"),                             # three bytes: 4097 in all
])
def test_pkg_length_counts_itself(body, encoded):
    assert aml.pkg_length(body) == encoded


def test_integers_take_the_shortest_form():
    assert aml.integer(0) == b"\x00" and aml.integer(1) == b"\x01"
    assert aml.integer(2) == b"\x0a\x02"
    assert aml.integer(0x1234) == b"\x0b\x34\x12"
    assert aml.integer(0xFEC00000) == b"\x0c\x00\x00\xc0\xfe"
    assert aml.integer(1 << 32) == b"\x0e" + (1 << 32).to_bytes(8, "little")
    with pytest.raises(ValueError):
        aml.integer(-1)


def test_names_and_eisa_id():
    assert aml.name_string("\\_SB.PCI0") == b"\\\x2e_SB_PCI0"
    assert aml.name_string("A.B.C") == b"\x2f\x03A___B___C___"
    assert aml.name_string("^ISA") == b"^ISA_"
    assert aml.eisa_id("PNP0A03") == b"\x0c\x41\xd0\x0a\x03"
    with pytest.raises(ValueError):
        aml.name_string("TOOLONG")
    with pytest.raises(ValueError):
        aml.eisa_id("pnp0a03")


def test_resource_template_ends_with_an_end_tag():
    buf = aml.resource_template(aml.io_port(0x3F8, 8), aml.irq_no_flags(4))
    assert buf[0] == 0x11 and buf.endswith(b"\x22\x10\x00\x79\x00")
    assert aml.io_port(0x3F8, 8) == b"\x47\x01\xf8\x03\xf8\x03\x01\x08"


# -- the board's tables, linked ----------------------------------------------------------------

@pytest.fixture(scope="module")
def files():
    m = Machine(MachineConfig(serial=CharDev("null"), ram_size=128 << 20))
    fw = m.devices["fw_cfg"]
    out = {n: fw.item(fw.file_key(n)) for n in (acpi.TABLES_FILE, acpi.RSDP_FILE, acpi.LOADER_FILE)}
    m.close()
    return out


@pytest.fixture(scope="module")
def linked(files):
    blobs = loader.execute(files[acpi.LOADER_FILE], files,
                           {acpi.TABLES_FILE: TABLES_AT, acpi.RSDP_FILE: RSDP_AT})
    return blobs


def at(linked, address, length=None):
    """Bytes of the linked blobs at a guest address."""
    for name, base in ((acpi.TABLES_FILE, TABLES_AT), (acpi.RSDP_FILE, RSDP_AT)):
        data = linked[name]
        if base <= address < base + len(data):
            off = address - base
            if length is None:
                length = struct.unpack_from("<I", data, off + 4)[0]
            assert off + length <= len(data), "table runs past its blob"
            return data[off:off + length]
    raise AssertionError(f"pointer {address:#x} into no blob")


def by_signature(linked):
    rsdp = linked[acpi.RSDP_FILE]
    rsdt = at(linked, struct.unpack_from("<I", rsdp, 16)[0])
    out = {b"RSDT": rsdt}
    for (ptr,) in struct.iter_unpack("<I", rsdt[36:]):
        t = at(linked, ptr)
        out[t[:4]] = t
    fadt = out[b"FACP"]
    out[b"DSDT"] = at(linked, struct.unpack_from("<I", fadt, 40)[0])
    out[b"FACS"] = at(linked, struct.unpack_from("<I", fadt, 36)[0])
    return out


def test_loader_commands_allocate_rsdp_low_and_tables_high(files):
    cmds = loader.parse(files[acpi.LOADER_FILE])
    allocs = {c.file: (c.align, c.zone) for c in cmds if c.kind == loader.ALLOCATE}
    assert allocs == {acpi.RSDP_FILE: (16, loader.ZONE_FSEG), acpi.TABLES_FILE: (64, loader.ZONE_HIGH)}
    assert len(files[acpi.LOADER_FILE]) % 128 == 0
    # Checksums come after every pointer they cover.
    kinds = [c.kind for c in cmds if c.file == acpi.TABLES_FILE and c.kind != loader.ALLOCATE]
    assert kinds == sorted(kinds)


def test_rsdp_signature_checksum_and_rsdt_pointer(linked):
    rsdp = linked[acpi.RSDP_FILE]
    assert rsdp[:8] == b"RSD PTR " and len(rsdp) == 20 and rsdp[15] == 0
    assert sum(rsdp) & 0xFF == 0
    assert at(linked, struct.unpack_from("<I", rsdp, 16)[0])[:4] == b"RSDT"


def test_every_table_has_its_length_and_a_zero_checksum(linked):
    t = by_signature(linked)
    assert set(t) == {b"RSDT", b"FACP", b"APIC", b"DSDT", b"FACS"}
    for sig, data in t.items():
        assert data[:4] == sig
        assert struct.unpack_from("<I", data, 4)[0] == len(data)
        if sig != b"FACS":
            assert sum(data) & 0xFF == 0, sig
    assert len(t[b"FACS"]) == 64 and struct.unpack_from("<I", t[b"FACP"], 36)[0] % 64 == 0


def test_fadt_pm_blocks_reset_register_and_pointers(linked):
    f = by_signature(linked)[b"FACP"]
    assert f[8] == 3 and len(f) == 244
    sci, smi = struct.unpack_from("<HI", f, 46)
    assert (sci, smi) == (9, 0)                                 # SCI on IRQ 9; always in ACPI mode
    pm1a_evt, _, pm1a_cnt, _, _, pm_tmr = struct.unpack_from("<6I", f, 56)
    assert (pm1a_evt, pm1a_cnt, pm_tmr) == (0x600, 0x604, 0x608)
    assert tuple(f[88:92]) == (4, 2, 0, 4)
    flags = struct.unpack_from("<I", f, 112)[0]
    assert flags & tables.FADT_RESET_REG_SUP and not flags & (1 << 8)     # 24-bit timer
    assert struct.unpack_from("<BBBBQ", f, 116) == (1, 8, 0, 1, 0xCF9) and f[128] == 6
    assert struct.unpack_from("<H", f, 109)[0] & tables.BOOT_8042
    assert struct.unpack_from("<Q", f, 140)[0] == struct.unpack_from("<I", f, 40)[0]   # X_DSDT
    assert struct.unpack_from("<BBBBQ", f, 208) == (1, 32, 0, 0, 0x608)


def test_madt_lapic_ioapic_and_overrides(linked):
    m = by_signature(linked)[b"APIC"]
    assert struct.unpack_from("<II", m, 36) == (0xFEE00000, 1)
    entries, off = [], 44
    while off < len(m):
        length = m[off + 1]
        assert length >= 2 and off + length <= len(m)
        entries.append(m[off:off + length])
        off += length
    assert off == len(m)
    assert entries[0] == bytes([0, 8, 0, 0, 1, 0, 0, 0])                            # CPU 0 enabled
    assert struct.unpack("<BBBBII", entries[1]) == (1, 12, 0, 0, 0xFEC00000, 0)    # IOAPIC, GSI 0
    overrides = {e[3]: struct.unpack_from("<IH", e, 4) for e in entries if e[0] == 2}
    assert overrides == {0: (2, 0), 5: (5, 0xD), 9: (9, 0xD), 10: (10, 0xD), 11: (11, 0xD)}
    assert entries[-1] == bytes([4, 6, 0xFF, 0, 0, 1])                              # NMI on LINT1


def test_dsdt_holds_the_pci_root_its_routing_and_s5(linked):
    d = by_signature(linked)[b"DSDT"]
    assert b"PCI0" in d and aml.eisa_id("PNP0A03") in d
    assert aml.name("\\_S5", aml.package(*[aml.integer(0)] * 4)) in d
    # slot 2 INTA (the first virtio-blk) -> PIRQB -> GSI 10; INTB -> PIRQC -> GSI 11
    assert aml.package(aml.integer(0x2FFFF), aml.integer(0), aml.integer(0), aml.integer(10)) in d
    assert aml.package(aml.integer(0x2FFFF), aml.integer(1), aml.integer(0), aml.integer(11)) in d


def test_prt_agrees_with_the_piix3_board_wiring():
    from machine.pci.piix3 import pirq_index
    for slot in range(1, 32):
        for pin in range(4):
            assert dsdt.slot_gsi(slot, pin) == dsdt.PIRQ_IRQS[pirq_index(slot, pin + 1)]


def test_pci_window_starts_above_low_ram():
    m = Machine(MachineConfig(serial=CharDev("null"), ram_size=256 << 20))
    try:
        fw = m.devices["fw_cfg"]
        blob = fw.item(fw.file_key(acpi.TABLES_FILE))
    finally:
        m.close()
    assert aml.dword_memory(256 << 20, 0xFEBFFFFF) in blob


@pytest.mark.skipif(shutil.which("iasl") is None, reason="iasl (Debian's acpica-tools) is not installed")
@pytest.mark.parametrize("sig", [b"DSDT", b"FACP", b"APIC", b"RSDT", b"FACS"])
def test_acpica_disassembles_the_tables_without_errors(linked, tmp_path, sig):
    path = tmp_path / f"{sig.decode().lower()}.dat"
    path.write_bytes(by_signature(linked)[sig])
    result = subprocess.run(["iasl", "-d", str(path)], capture_output=True, text=True, cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Error" not in out and "Warning" not in out, out
    dsl = path.with_suffix(".dsl").read_text()
    if sig == b"DSDT":
        assert 'EisaId ("PNP0A03")' in dsl and "Name (_PRT" in dsl and "\\_S5" in dsl
