"""The same options, minus the program name, run the same kernel on qemu-system-x86_64: our command
line stays a subset of QEMU's, not a look-alike."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from machine.cli import parse_args
from machine.config import CharDev, MiB

ROOT = Path(__file__).resolve().parent.parent
QEMU = shutil.which("qemu-system-x86_64")


KERNEL_AS_TYPED = "tests/kernels/out/hello.elf"     # relative to the repository root


def essentials(serial: bytes) -> list[str]:
    """The hello kernel's lines that do not depend on the firmware (memory map, loader name)."""
    keep = ("hello", "magic", "cmdline", "exit")
    return [line.strip() for line in serial.decode(errors="replace").splitlines()
            if line.startswith(keep)]


def representative_args(kernel: Path, disk: Path, log: Path) -> list[str]:
    return ["-machine", "pc,accel=tcg", "-m", "64M", "-smp", "1",
            "-kernel", KERNEL_AS_TYPED, "-append", "exit=3",
            "-drive", f"file={disk},format=raw,if=none,id=d0,cache=writeback",
            "-device", "virtio-blk-pci,drive=d0",
            "-serial", "stdio", "-display", "none", "-no-reboot", "-boot", "menu=off",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-d", "guest_errors", "-D", str(log)]


@pytest.fixture
def setup(tmp_path, monkeypatch, hello):
    kernel = hello
    monkeypatch.chdir(ROOT)           # the kernel path is typed relative to the repository
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(MiB))
    return kernel, disk, tmp_path / "log.txt"


def test_parsed_config(setup):
    kernel, disk, log = setup
    assert kernel == ROOT / KERNEL_AS_TYPED
    cfg = parse_args(representative_args(kernel, disk, log))
    assert cfg.ram_size == 64 * MiB and str(cfg.kernel) == KERNEL_AS_TYPED and cfg.append == "exit=3"
    assert cfg.serial == CharDev("stdio") and cfg.no_reboot and cfg.boot_menu is False
    assert [d.file for d in cfg.drives] == [disk] and cfg.log == ["guest_errors"]
    assert [d.driver for d in cfg.devices] == ["virtio-blk-pci", "isa-debug-exit"]


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
def test_same_command_line_runs_on_qemu(setup):
    kernel, disk, log = setup
    args = representative_args(kernel, disk, log)
    parse_args(args)                  # our parser accepts every option QEMU is about to get
    proc = subprocess.run([QEMU, *args], capture_output=True, timeout=120,
                          stdin=subprocess.DEVNULL, cwd=ROOT)
    # isa-debug-exit: the kernel writes 3, QEMU exits with (3 << 1) | 1.
    assert proc.returncode == 7, proc.stderr.decode(errors="replace")
    qemu_serial = essentials(proc.stdout)
    # The Multiboot command line is the kernel path as typed, a space, then -append.
    assert f'cmdline "{KERNEL_AS_TYPED} exit=3"' in qemu_serial

    assert run_ours(args) == qemu_serial


def run_ours(args: list[str]) -> list[str]:
    ours = subprocess.run([sys.executable, "-m", "machine", *args], capture_output=True,
                          timeout=120, stdin=subprocess.DEVNULL, cwd=ROOT)
    assert ours.returncode == 7, ours.stderr.decode(errors="replace")
    return essentials(ours.stdout)


def test_same_command_line_runs_on_our_machine(setup):
    """Our half needs no QEMU: the same options boot the kernel and exit through isa-debug-exit."""
    kernel, disk, log = setup
    lines = run_ours(representative_args(kernel, disk, log))
    assert f'cmdline "{KERNEL_AS_TYPED} exit=3"' in lines and any(l.startswith("hello") for l in lines)
