"""The firmware ROM image and the hello kernel as files: what the platform contract requires of
them before anything runs (size, reset vector, RAM footprint, Multiboot header)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from building import built

ROM_BASE = 0xFFFF0000
FW_RAM = (0x7000, 0x20000)


build = built


def sections(elf: Path) -> dict[str, tuple[int, int, str]]:
    """name -> (address, size, flags) from `readelf -S -W`."""
    if shutil.which("readelf") is None:
        pytest.skip("readelf not installed")
    out = subprocess.run(["readelf", "-S", "-W", str(elf)], capture_output=True, text=True,
                         check=True).stdout
    result = {}
    for line in out.splitlines():
        parts = line.replace("[ ", "[").split()
        if len(parts) >= 8 and parts[0].startswith("[") and parts[0] != "[Nr]" and parts[1] != "NULL":
            result[parts[1]] = (int(parts[3], 16), int(parts[5], 16), parts[7])
    return result


def test_rom_image_is_64k_with_a_far_jump_at_the_reset_vector():
    rom = build("firmware", "out/bios.bin").read_bytes()
    assert len(rom) == 0x10000
    # ljmp 0xF000:offset, 5 bytes at 0xFFFFFFF0, so CS gets a real-mode base at once
    opcode, offset, segment = struct.unpack_from("<BHH", rom, 0xFFF0)
    assert (opcode, segment) == (0xEA, 0xF000)
    assert offset < 0xFFF0


def test_firmware_writes_only_its_ram_window():
    build("firmware", "out/bios.bin")
    secs = sections(Path(__file__).resolve().parent.parent / "firmware/out/bios.elf")
    for name, (addr, size, flags) in secs.items():
        if "A" not in flags:
            continue                                    # debug info
        if "W" in flags:
            assert name == ".bss", f"{name} would be writable data in ROM"
            assert FW_RAM[0] <= addr and addr + size <= FW_RAM[1]
        else:
            assert addr >= ROM_BASE, name


def test_hello_kernel_is_a_multiboot_elf32_at_1mib():
    data = build("tests/kernels", "out/hello.elf").read_bytes()
    assert data[:7] == b"\x7fELF\x01\x01\x01"
    e_type, e_machine, _, entry, phoff = struct.unpack_from("<HHIII", data, 16)
    assert (e_type, e_machine) == (2, 3)
    phnum = struct.unpack_from("<H", data, 44)[0]
    loads = [struct.unpack_from("<8I", data, phoff + 32 * i) for i in range(phnum)]
    loads = [p for p in loads if p[0] == 1]
    assert min(p[3] for p in loads) == 0x100000
    assert any(p[3] <= entry < p[3] + p[5] for p in loads)
    header = [off for off in range(0, 8192, 4)
              if struct.unpack_from("<I", data, off)[0] == 0x1BADB002]
    assert header
    magic, flags, checksum = struct.unpack_from("<3I", data, header[0])
    assert (magic + flags + checksum) & 0xFFFFFFFF == 0
