"""Our firmware installs the board's ACPI tables: it runs etc/table-loader, so that the RSDP is in
the F segment (where an OS scans for it), every pointer is an absolute address, every checksum
holds, and the tables' pages are reserved in the memory map the kernel gets."""

import re
import struct

import pytest

from machine.config import CharDev, DeviceConfig, MachineConfig
from machine.pc import Machine

RAM = 128 << 20
MMAP_RE = re.compile(r"^mmap 0x([0-9a-f]{16}) 0x([0-9a-f]{16}) type (\d+)$", re.M)


@pytest.fixture(scope="module")
def booted(hello, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("acpi")
    m = Machine(MachineConfig(kernel=str(hello), append="exit=0", ram_size=RAM,
                              serial=CharDev("file", tmp / "serial.txt"),
                              debugcon=CharDev("file", tmp / "fw.txt"),
                              devices=[DeviceConfig("isa-debug-exit", {"iobase": "0xf4", "iosize": "4"})]))
    try:
        assert m.run(max_instructions=200_000_000) == 1
        yield m, (tmp / "serial.txt").read_text(), (tmp / "fw.txt").read_text()
    finally:
        m.close()


def phys(m, addr, length):
    return bytes(m.cpu.read_virtual(addr, length))         # paging is off: linear = physical


def table_at(m, addr):
    length = struct.unpack("<I", phys(m, addr + 4, 4))[0]
    assert 36 <= length < 0x10000
    return phys(m, addr, length)


def find_rsdp(m):
    for addr in range(0xE0000, 0x100000, 16):
        if phys(m, addr, 8) == b"RSD PTR ":
            return addr
    raise AssertionError("no RSDP in 0xE0000-0xFFFFF")


def test_rsdp_in_f_segment_and_tables_linked_with_checksums(booted):
    m, serial, log = booted
    rsdp_at = find_rsdp(m)
    assert f"acpi: RSDP at 0x{rsdp_at:x}" in log
    rsdp = phys(m, rsdp_at, 20)
    assert sum(rsdp) & 0xFF == 0
    rsdt = table_at(m, struct.unpack_from("<I", rsdp, 16)[0])
    assert rsdt[:4] == b"RSDT" and sum(rsdt) & 0xFF == 0
    found = {}
    for (ptr,) in struct.iter_unpack("<I", rsdt[36:]):
        t = table_at(m, ptr)
        assert sum(t) & 0xFF == 0, t[:4]
        found[t[:4]] = (ptr, t)
    assert set(found) == {b"FACP", b"APIC"}
    fadt = found[b"FACP"][1]
    facs_at, dsdt_at = struct.unpack_from("<II", fadt, 36)
    assert phys(m, facs_at, 4) == b"FACS" and facs_at % 64 == 0
    dsdt = table_at(m, dsdt_at)
    assert dsdt[:4] == b"DSDT" and sum(dsdt) & 0xFF == 0
    assert struct.unpack_from("<Q", fadt, 140)[0] == dsdt_at


def test_table_pages_are_reserved_and_out_of_ram(booted):
    m, serial, log = booted
    low, high = (int(x, 16) for x in re.search(r"tables 0x([0-9a-f]+)-0x([0-9a-f]+)", log).groups())
    assert high == RAM - 1
    mmap = [(int(a, 16), int(n, 16), int(t)) for a, n, t in MMAP_RE.findall(serial)]
    base = low & ~0xFFF
    assert (base, RAM - base, 2) in mmap
    assert sorted((a, n) for a, n, t in mmap if t == 1) == [(0, 0xA0000), (0x100000, base - 0x100000)]


def test_f_segment_is_left_read_only(booted):
    m, _, _ = booted
    i440fx = m.devices["i440fx"]
    assert i440fx.config[0x5E] == 0x11 and i440fx.config[0x5F] == 0x11
