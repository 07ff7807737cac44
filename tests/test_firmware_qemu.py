"""Our firmware (firmware/out/bios.bin) and the hello Multiboot kernel (tests/kernels/out/hello.elf),
run on QEMU's `pc` machine, which the emulator's board follows: the reference the emulator's own
boot tests are compared with.

The firmware reports on the debug console (port 0x402); the kernel on COM1 and, through
isa-debug-exit, in QEMU's exit status ((value << 1) | 1)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from building import built

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")

RAM_MIB = 128
PIRQ_IRQ = (10, 10, 11, 11)
IO_WINDOW = (0xC000, 0x10000)
MEM_WINDOW_END = 0xFEC00000
FW_RAM = (0x7000, 0x20000)
WAIT_LIMIT = 60.0       # seconds; only a guard against a hung QEMU, never an assertion

BAR_RE = re.compile(r" (BAR\d|ROM) (io|mem|mem64|rom) 0x([0-9a-f]+)\+0x([0-9a-f]+)")
FUNC_RE = re.compile(r"^00:([0-9a-f]{2})\.(\d) ([0-9a-f]{4}):([0-9a-f]{4})(.*)$", re.M)
ACPI_RE = re.compile(r"^acpi: RSDP at 0x([0-9a-f]+), tables 0x([0-9a-f]+)-0x([0-9a-f]+)$", re.M)
MMAP_RE = re.compile(r"^mmap 0x([0-9a-f]{16}) 0x([0-9a-f]{16}) type (\d+)$", re.M)


@pytest.fixture(scope="module")
def bios() -> Path:
    return built("firmware", "out/bios.bin")


def qemu_args(tmp_path: Path, *extra: str) -> list[str]:
    return [QEMU, "-nodefaults", "-display", "none", "-no-reboot", "-m", str(RAM_MIB),
            "-serial", f"file:{tmp_path / 'serial.log'}",
            "-chardev", f"file,id=dbgcon,path={tmp_path / 'debugcon.log'}",
            "-device", "isa-debugcon,iobase=0x402,chardev=dbgcon",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", *extra]


def run_to_exit(tmp_path: Path, *extra: str) -> tuple[int, str, str]:
    """Run QEMU until the guest exits through isa-debug-exit: (status, debugcon, serial)."""
    proc = subprocess.run(qemu_args(tmp_path, *extra), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=WAIT_LIMIT)
    debugcon = tmp_path / "debugcon.log"
    return (proc.returncode, debugcon.read_text() if debugcon.exists() else "",
            (tmp_path / "serial.log").read_text())


class HaltedQemu:
    """QEMU running firmware that is expected to stop with `cli; hlt`; QMP lets the test look at
    the machine afterwards."""

    def __init__(self, tmp_path: Path, *extra: str):
        self.log = tmp_path / "debugcon.log"
        self.qmp_path = tmp_path / "qmp.sock"
        self.proc = subprocess.Popen(
            qemu_args(tmp_path, "-qmp", f"unix:{self.qmp_path},server=on,wait=off", *extra),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_halted(self) -> str:
        deadline = time.monotonic() + WAIT_LIMIT
        while time.monotonic() < deadline:
            text = self.log.read_text() if self.log.exists() else ""
            if text.endswith("halted\n"):
                return text
            if self.proc.poll() is not None:
                pytest.fail(f"QEMU exited ({self.proc.returncode}) before the firmware halted:\n{text}")
            time.sleep(0.02)
        pytest.fail(f"the firmware did not halt:\n{text}")

    def qmp(self, command: str, **arguments) -> object:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.qmp_path))
            f = s.makefile("rw")
            json.loads(f.readline())                        # greeting
            for cmd, args in (("qmp_capabilities", {}), (command, arguments)):
                f.write(json.dumps({"execute": cmd, "arguments": args}) + "\n")
                f.flush()
                while True:
                    reply = json.loads(f.readline())
                    if "return" in reply or "error" in reply:
                        break
            return reply["return"]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def halted_qemu(tmp_path):
    machines = []

    def start(*extra: str) -> HaltedQemu:
        machines.append(HaltedQemu(tmp_path, *extra))
        return machines[-1]
    yield start
    for m in machines:
        m.close()


def disks(tmp_path: Path, n: int) -> list[str]:
    args = []
    for i in range(n):
        img = tmp_path / f"disk{i}.img"
        img.write_bytes(bytes(64 * 1024))
        args += ["-drive", f"if=none,id=d{i},file={img},format=raw"]
    return args


# Transitional virtio-blk in the first free slot, a modern-only one (64-bit BAR) and a
# multifunction pair, so the scan has to look past function 0.
VIRTIO_DEVICES = ["-device", "virtio-blk-pci,drive=d0",
                  "-device", "virtio-blk-pci,drive=d1,disable-legacy=on,addr=05.0",
                  "-device", "virtio-blk-pci,drive=d2,addr=06.0,multifunction=on",
                  "-device", "virtio-blk-pci,drive=d3,addr=06.1"]


def parse_functions(log: str) -> dict[tuple[int, int], dict]:
    funcs = {}
    for m in FUNC_RE.finditer(log):
        rest = m.group(5)
        pin = re.search(r" pin ([A-D]) irq (\d+)", rest)
        funcs[(int(m.group(1), 16), int(m.group(2)))] = {
            "id": f"{m.group(3)}:{m.group(4)}",
            "bars": [(name, kind, int(addr, 16), int(size, 16))
                     for name, kind, addr, size in BAR_RE.findall(rest)],
            "pin": ord(pin.group(1)) - ord("A") + 1 if pin else 0,
            "irq": int(pin.group(2)) if pin else None,
        }
    return funcs


def check_pci_log(log: str) -> dict[tuple[int, int], dict]:
    funcs = parse_functions(log)
    assert funcs[(0, 0)]["id"] == "8086:1237"
    assert funcs[(1, 0)]["id"] == "8086:7000"
    assert funcs[(2, 0)]["id"] == "1af4:1001"
    assert funcs[(5, 0)]["id"] == "1af4:1042"
    assert funcs[(6, 0)]["id"] == funcs[(6, 1)]["id"] == "1af4:1001"
    assert "pci: PIRQ A-D -> IRQ 10 10 11 11 (level)" in log

    ranges = {"io": [], "mem": []}
    for (slot, fn), f in funcs.items():
        for name, kind, addr, size in f["bars"]:
            where = f"00:{slot:02x}.{fn} {name}"
            assert size & (size - 1) == 0 and addr and addr % size == 0, where
            if kind == "io":
                assert IO_WINDOW[0] <= addr and addr + size <= IO_WINDOW[1], where
            else:
                assert RAM_MIB << 20 <= addr and addr + size <= MEM_WINDOW_END, where
            if kind != "io":        # a page at least, so no two memory BARs share a page
                assert addr % 0x1000 == 0, where
                size = max(size, 0x1000)
            ranges["io" if kind == "io" else "mem"].append((addr, addr + size, where))
        if f["pin"]:
            assert f["irq"] == PIRQ_IRQ[(slot - 1 + f["pin"] - 1) & 3], (slot, fn)
    for space in ranges.values():
        space.sort()
        for (_, end, a), (start, _, b) in zip(space, space[1:]):
            assert end <= start, f"{a} overlaps {b}"

    # virtio-blk: legacy I/O BAR0 when transitional, 64-bit BAR4 for the modern capabilities
    assert [b[:2] for b in funcs[(2, 0)]["bars"] if b[0] in ("BAR0", "BAR4")] == \
        [("BAR0", "io"), ("BAR4", "mem64")]
    assert not any(b[1] == "io" for b in funcs[(5, 0)]["bars"])
    assert any(b[:2] == ("BAR4", "mem64") for b in funcs[(5, 0)]["bars"])
    return funcs


def elf_entry_and_segments(path: Path) -> tuple[int, list[tuple[int, int]]]:
    data = path.read_bytes()
    entry, phoff = struct.unpack_from("<II", data, 24)
    phnum = struct.unpack_from("<H", data, 44)[0]
    segs = []
    for i in range(phnum):
        ptype, _off, _va, pa, _fsz, msz = struct.unpack_from("<6I", data, phoff + 32 * i)
        if ptype == 1 and msz:
            segs.append((pa, pa + msz - 1))
    return entry, segs


def check_hello_serial(serial: str, cmdline: str) -> list[tuple[int, int, int]]:
    assert "hello from multiboot" in serial
    assert "magic 0x2badb002 ok" in serial
    assert f'cmdline "{cmdline}"' in serial
    mmap = [(int(a, 16), int(n, 16), int(t)) for a, n, t in MMAP_RE.findall(serial)]
    assert mmap, serial
    return mmap


@pytest.mark.parametrize("dma", [True, False], ids=["dma", "port-io"])
def test_firmware_boots_hello(tmp_path, bios, hello, dma):
    extra = [] if dma else ["-global", "fw_cfg_io.dma_enabled=off"]
    status, log, serial = run_to_exit(
        tmp_path, "-bios", str(bios),
        "-fw_cfg", f"name=opt/machine/kernel,file={hello}",
        "-fw_cfg", "name=opt/machine/cmdline,string=hello.elf exit=5",
        *disks(tmp_path, 4), *VIRTIO_DEVICES, *extra)

    assert f"fw_cfg: {'DMA' if dma else 'port I/O'}" in log
    assert f"ram: 0x{RAM_MIB << 20:x} bytes ({RAM_MIB} MiB)" in log
    assert "cpus: 1" in log
    check_pci_log(log)
    assert "pic: vectors 0x08/0x70, all IRQs masked but the cascade" in log
    entry, segs = elf_entry_and_segments(hello)
    for start, end in segs:
        assert f"kernel: load 0x{start:08x}-0x{end:08x}" in log
    assert f"kernel: entry 0x{entry:08x}" in log
    assert "error" not in log

    assert status == (5 << 1) | 1, serial
    mmap = check_hello_serial(serial, "hello.elf exit=5")
    assert "flags 0x00000245" in serial       # MEM | CMDLINE | MMAP | BOOT_LOADER_NAME
    assert 'boot_loader_name "machine firmware"' in serial
    # QEMU's own ACPI tables, installed by the firmware through etc/table-loader at the top of
    # RAM (whole pages, reserved), with the RSDP first in the F segment.
    m = ACPI_RE.search(log)
    assert m, log
    rsdp, low, high = (int(x, 16) for x in m.groups())
    assert rsdp == 0xE0000 and high == (RAM_MIB << 20) - 1
    tables = low & ~0xFFF
    assert (tables, (RAM_MIB << 20) - tables, 2) in mmap
    assert f"mem_lower 640 KiB mem_upper {(tables - 0x100000) >> 10} KiB" in serial
    ram = sorted((a, n) for a, n, t in mmap if t == 1)
    assert ram == [(0, 0xA0000), (0x100000, tables - 0x100000)]
    assert "exit 5" in serial


def test_pci_programming_seen_by_devices(halted_qemu, tmp_path, bios):
    """Without a kernel the firmware halts after PCI setup; QEMU's own view of each function
    must match what the firmware logged (addresses only show while decoding is enabled)."""
    vm = halted_qemu("-bios", str(bios), *disks(tmp_path, 4), *VIRTIO_DEVICES)
    log = vm.wait_halted()
    assert "error: no kernel" in log
    logged = check_pci_log(log)
    seen = {}
    for bus in vm.qmp("query-pci"):
        for dev in bus["devices"]:
            bars = {f"BAR{b['bar']}": (b["address"], b["size"]) for b in dev["regions"]}
            seen[(dev["slot"], dev["function"])] = (bars, dev.get("irq"))
    assert set(seen) == set(logged)
    for key, f in logged.items():
        bars, irq = seen[key]
        for name, _kind, addr, size in f["bars"]:
            if name != "ROM":
                assert bars[name] == (addr, size), (key, name)
        if f["pin"]:
            assert irq == f["irq"], key

    # Both 8259s as the firmware left them: vector bases, masks, and IRQ 10/11 level-triggered
    pics = dict(re.findall(r"^(pic[01]): (.*)$", vm.qmp("human-monitor-command",
                                                          **{"command-line": "info pic"}), re.M))
    assert re.search(r"imr=fb .*irq_base=08 .*elcr=00", pics["pic0"])
    assert re.search(r"imr=ff .*irq_base=70 .*elcr=0c", pics["pic1"])


def big_host() -> bool:
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        return False
    total_kib = int(re.search(r"MemTotal:\s+(\d+)", meminfo.read_text()).group(1))
    return total_kib >= 8 << 20


@pytest.mark.skipif(not big_host(), reason="needs a host with 8 GiB of RAM (4 GiB of guest RAM and BAR)")
def test_bar_without_space_stays_disabled(halted_qemu, bios):
    """2 GiB of RAM leaves less than 2 GiB below 0xFEC00000: a 2 GiB BAR cannot fit. It must be
    reported and the function's memory decoding left off (QEMU then shows no BAR mapped)."""
    vm = halted_qemu("-bios", str(bios), "-m", "2048",
                     "-object", "memory-backend-ram,id=m0,size=2G",
                     "-device", "ivshmem-plain,memdev=m0,addr=03.0")
    log = vm.wait_halted()
    assert "pci: no memory space for 00:03.0 BAR2 (0x80000000 bytes)" in log
    dev = next(d for bus in vm.qmp("query-pci") for d in bus["devices"] if d["slot"] == 3)
    assert [r["address"] for r in dev["regions"]] == [-1, -1]


# ---- Kernels the firmware must refuse ---------------------------------------------------------

MB_MAGIC = 0x1BADB002
# cmp eax, 0x2BADB002; jne fail; cmp dword [ebx], 0x245; jne fail; out 0xF4 <- 7; fail: out <- 9
PROBE_CODE = bytes.fromhex("3d02b0ad2b" "750f" "813b45020000" "7507" "b807000000" "e7f4"
                           "b809000000" "e7f4" "f4")


PROBE_CODE_OFFSET = 52 + 32 + 12       # ELF header, one program header, Multiboot header


def make_kernel(*, elf_class=1, machine=3, mb_flags=0x3, multiboot=True, paddr=0x100000,
                vaddr=None, bss=0x1000) -> bytes:
    """A one-segment ELF32 Multiboot kernel whose segment starts at file offset 0 and whose code
    (PROBE_CODE) exits with 7 when it sees the boot magic and the firmware's flags."""
    vaddr = paddr if vaddr is None else vaddr
    header = struct.pack("<3I", MB_MAGIC, mb_flags, -(MB_MAGIC + mb_flags) & 0xFFFFFFFF) \
        if multiboot else bytes(12)
    code_off = PROBE_CODE_OFFSET
    size = code_off + len(PROBE_CODE)
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9)
    ehdr = ident + struct.pack("<HHIIIIIHHHHHH", 2, machine, 1, vaddr + code_off, 52, 0, 0,
                               52, 32, 1, 0, 0, 0)
    phdr = struct.pack("<8I", 1, 0, vaddr, paddr, size, size + bss, 7, 0x1000)
    return ehdr + phdr + header + PROBE_CODE


def test_firmware_translates_higher_half_entry(tmp_path, bios):
    kernel = tmp_path / "k.elf"
    kernel.write_bytes(make_kernel(vaddr=0xC0100000))
    status, log, _ = run_to_exit(tmp_path, "-bios", str(bios),
                                 "-fw_cfg", f"name=opt/machine/kernel,file={kernel}")
    assert f"kernel: entry 0x{0x100000 + PROBE_CODE_OFFSET:08x}" in log    # physical, not 0xC01...
    assert status == (7 << 1) | 1, log


@pytest.mark.parametrize("content, message", [
    (b"#!/bin/sh\necho not a kernel\n", "is not an ELF file"),
    (make_kernel(elf_class=2), "is not a 32-bit little-endian i386 ELF file"),
    (make_kernel(machine=62), "is not a 32-bit little-endian i386 ELF file"),
    (make_kernel(multiboot=False), "has no Multiboot header in its first 8 KiB"),
    (make_kernel(mb_flags=0x7), "requires Multiboot features this loader lacks (flags 0x4)"),
    (make_kernel(paddr=FW_RAM[0] + 0x1000), "overlaps the firmware's RAM 0x7000-0x1ffff"),
    (make_kernel(paddr=0xB8000), "is not in RAM"),
    (make_kernel(paddr=(RAM_MIB << 20) - 0x100), "is not in RAM"),
    (make_kernel(paddr=0xFFFFF000, bss=0x2000), "wraps past 4 GiB"),
], ids=["text", "elf64", "x86_64", "no-header", "video-flag", "fw-ram", "vga-hole", "past-ram",
        "wrap"])
def test_firmware_refuses_bad_kernel(halted_qemu, tmp_path, bios, content, message):
    kernel = tmp_path / "k.bin"
    kernel.write_bytes(content)
    vm = halted_qemu("-bios", str(bios), "-fw_cfg", f"name=opt/machine/kernel,file={kernel}")
    log = vm.wait_halted()
    assert f"kernel: opt/machine/kernel, {len(content)} bytes" in log
    error = [line for line in log.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and message in error[0], log
    assert "kernel: load" not in log             # nothing is loaded unless every segment passes


def test_firmware_without_kernel_halts(halted_qemu, bios):
    log = halted_qemu("-bios", str(bios)).wait_halted()
    assert "error: no kernel: fw_cfg KERNEL_SIZE is 0 and there is no opt/machine/kernel file" in log


# ---- The hello kernel on its own, loaded by QEMU's Multiboot loader ----------------------------

@pytest.mark.parametrize("append, exit_value", [("exit=5", 5), ("", 0), ("quiet exit=0x10", 16)])
def test_hello_kernel_on_qemu(tmp_path, hello, append, exit_value):
    status, _, serial = run_to_exit(tmp_path, "-kernel", str(hello), "-append", append)
    assert status == (exit_value << 1) | 1, serial
    # QEMU puts the kernel's file name and a space in front of -append
    mmap = check_hello_serial(serial, f"{hello} {append}")
    assert any(t == 1 and a <= 0x100000 < a + n for a, n, t in mmap)
    assert f"exit {exit_value}" in serial


def test_firmware_zeroes_bss_through_fw_cfg_dma_on_qemu(tmp_path, bios):
    # The .bss zeroing relies on QEMU's fw_cfg writing zeros for a DMA read past an item's end.
    from bss_kernel import EXIT_ZEROED, bss_kernel
    kernel = tmp_path / "bss.elf"
    kernel.write_bytes(bss_kernel(1 << 20))
    status, log, _ = run_to_exit(tmp_path, "-bios", str(bios),
                                 "-fw_cfg", f"name=opt/machine/kernel,file={kernel}")
    assert status == (EXIT_ZEROED << 1) | 1, log
