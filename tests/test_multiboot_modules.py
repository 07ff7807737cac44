"""-initrd with a Multiboot kernel keeps its Multiboot meaning: a list of modules in QEMU's syntax
("file args,file args", ",," a comma in a name) that the firmware loads page aligned above the
kernel and describes in the information structure (mods_count, mods_addr, each module's command
line). The hello kernel prints each module's range, an FNV-1a checksum of its bytes and its
command line; the same kernel and options on QEMU's own Multiboot loader give the same modules."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from elftools.elf.elffile import ELFFile

from machine import kernel_image
from machine.cli import main
from machine.config import CharDev, DeviceConfig, MachineConfig
from machine.pc import Machine

QEMU = shutil.which("qemu-system-x86_64")
MOD_RE = re.compile(r'^mod (\d+) 0x([0-9a-f]{8})-0x([0-9a-f]{8}) fnv 0x([0-9a-f]{8}) "(.*)"$', re.M)


def fnv1a(data: bytes) -> int:
    h = 2166136261
    for b in data:
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


def modules_seen(serial: str) -> list[tuple[int, int, int, str]]:
    """(start, end, checksum, command line) of each module the kernel printed."""
    count = re.search(r"^mods (\d+)$", serial, re.M)
    mods = [(int(s, 16), int(e, 16), int(h, 16), cmd) for _, s, e, h, cmd in MOD_RE.findall(serial)]
    assert count is not None and int(count.group(1)) == len(mods), serial
    return mods


def run_ours(tmp_path, hello, initrd: str, ram_mib: int = 64) -> str:
    serial = tmp_path / "serial.txt"
    config = MachineConfig(ram_size=ram_mib << 20, kernel=hello, append="exit=3", initrd=initrd,
                           serial=CharDev("file", str(serial)),
                           devices=[DeviceConfig("isa-debug-exit", {"iobase": "0xf4", "iosize": "4"})])
    m = Machine(config)
    try:
        status = m.run(max_instructions=20_000_000)
    finally:
        m.close()
    text = serial.read_text()
    assert status == (3 << 1) | 1, text
    return text


@pytest.fixture
def module_files(tmp_path):
    one = tmp_path / "one"
    one.write_bytes(b"module one data")
    two = tmp_path / "two,x"                    # a comma in the name: ",," on the command line
    two.write_bytes(bytes(range(256)) * 41 + b"tail")
    three = tmp_path / "empty"
    three.write_bytes(b"")
    spec = f"{one} arg1  arg2,{str(two).replace(',', ',,')},{three} last"
    expected = [(one.read_bytes(), f"{one} arg1  arg2"), (two.read_bytes(), str(two)),
                (b"", f"{three} last")]
    return spec, expected


def test_module_list_syntax_is_qemus():
    assert kernel_image.multiboot_module_specs("a b c,d") == [("a", "a b c"), ("d", "d")]
    assert kernel_image.multiboot_module_specs("a,,b x,c") == [("a,b", "a,b x"), ("c", "c")]
    assert kernel_image.multiboot_module_specs("") == []
    assert kernel_image.multiboot_module_specs("a,,,b") == [("a,", "a,"), ("b", "b")]


def test_firmware_loads_modules_page_aligned_above_the_kernel(tmp_path, hello, module_files):
    spec, expected = module_files
    mods = modules_seen(run_ours(tmp_path, hello, spec))
    assert [(h, cmd) for _, _, h, cmd in mods] == [(fnv1a(d), c) for d, c in expected]
    kernel_end = max(paddr + memsz for paddr, memsz in load_segments(hello))
    previous_end = kernel_end
    for (start, end, _, _), (data, _) in zip(mods, expected):
        assert start % 4096 == 0 and start >= previous_end and end - start == len(data)
        previous_end = end
    assert mods[0][0] == (kernel_end + 4095) & ~4095     # no gap: right above the kernel


def test_no_initrd_gives_no_modules(tmp_path, hello):
    serial = run_ours(tmp_path, hello, "")
    assert "mods " not in serial                          # MBI_MODS stays clear


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
def test_modules_match_qemus_multiboot_loader(tmp_path, hello, module_files):
    spec, expected = module_files
    ours = modules_seen(run_ours(tmp_path, hello, spec))
    proc = subprocess.run([QEMU, "-machine", "pc", "-m", "64", "-display", "none", "-no-reboot",
                           "-nodefaults", "-serial", "stdio", "-kernel", str(hello), "-append", "exit=3",
                           "-initrd", spec, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == (3 << 1) | 1, proc.stderr
    theirs = modules_seen(proc.stdout.replace("\r\n", "\n"))
    # Where each module lands is the loader's choice (both page align them above the kernel);
    # what each holds and is called must be the same.
    assert [(e - s, h, cmd) for s, e, h, cmd in ours] == [(e - s, h, cmd) for s, e, h, cmd in theirs]


def test_missing_module_is_one_error_line(tmp_path, capsys, hello):
    present = tmp_path / "present"
    present.write_bytes(b"x")
    assert main(["-kernel", str(hello), "-initrd", f"{present},{tmp_path / 'nope'} arg"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "-initrd" in err[0] and "nope" in err[0] and "No such file" in err[0], err


def test_modules_larger_than_ram_are_refused(tmp_path, capsys, hello):
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(20 << 20)
    assert main(["-kernel", str(hello), "-m", "16", "-initrd", str(big)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "Multiboot modules take" in err[0], err


def test_too_many_modules_are_refused(tmp_path, capsys, hello):
    one = tmp_path / "m"
    one.write_bytes(b"m")
    spec = ",".join([str(one)] * (kernel_image.MODS_MAX + 1))
    assert main(["-kernel", str(hello), "-initrd", spec]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"at most {kernel_image.MODS_MAX}" in err[0], err


def test_exactly_the_limits_boot(tmp_path, hello, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").write_bytes(b"m")
    name = "m " + "x" * (kernel_image.MOD_STRINGS_MAX // kernel_image.MODS_MAX - 3)  # +NUL: all of it
    spec = ",".join([name] * kernel_image.MODS_MAX)
    mods = modules_seen(run_ours(tmp_path, hello, spec))
    assert len(mods) == kernel_image.MODS_MAX
    assert {h for _, _, h, _ in mods} == {fnv1a(b"m")}


def load_segments(path) -> list[tuple[int, int]]:
    """(physical address, size in memory) of each loaded segment of an ELF file."""
    with open(path, "rb") as f:
        return [(s["p_paddr"], s["p_memsz"]) for s in ELFFile(f).iter_segments()
                if s["p_type"] == "PT_LOAD" and s["p_memsz"]]
