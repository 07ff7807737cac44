"""Debian 12's cloud kernel and an initramfs around tests/linux/init.c, for the Linux end-to-end
tests and bench/linux_boot.py.

The kernel package is fetched with `apt-get download` (the linux-image-*-cloud-amd64 package
that linux-image-cloud-amd64 depends on) into a cache outside the tree: $MACHINE_LINUX_CACHE,
or ~/.cache/machine-linux. The initramfs holds the static init, /dev/console, and the virtio
modules with their dependencies (from each module's .modinfo `depends=`), listed in load order
in /modules."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from guest_pattern import pattern_sector

META_PACKAGE = "linux-image-cloud-amd64"
WANTED_MODULES = ("virtio_pci", "virtio_blk")
SECTOR = 512
DISK_SECTORS = 16384                     # an 8 MiB image
READ_LBA, WRITE_LBA, ZERO_LBA, DISCARD_LBA, REGION_SECTORS = 0, 2048, 4096, 6144, 2048
WRITE_SEED = 1000000                     # as tests/linux/init.c
SERIAL = "LNX-SER-42"
EXIT_PASS = 1                            # isa-debug-exit status for out(0): (0 << 1) | 1


class Unavailable(Exception):
    """The kernel package cannot be had here; the message says why."""


@dataclass(frozen=True)
class Kernel:
    vmlinuz: Path
    modules: Path                        # .../lib/modules/<version>/kernel
    version: str


def cache_dir() -> Path:
    return Path(os.environ.get("MACHINE_LINUX_CACHE") or Path.home() / ".cache" / "machine-linux")


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"{cmd[0]}: {exc}") from None
    if proc.returncode != 0:
        raise Unavailable(f"{' '.join(cmd)} failed: {proc.stdout.strip().splitlines()[-1:]}")
    return proc.stdout


def fetch_kernel() -> Kernel:
    """The extracted kernel package, downloaded on first use. Raises Unavailable."""
    for tool in ("apt-cache", "apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise Unavailable(f"'{tool}' not found (a Debian-based host is needed to fetch the kernel)")
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    deps = _run(["apt-cache", "depends", META_PACKAGE])
    names = [line.split(":", 1)[1].strip() for line in deps.splitlines()
             if line.strip().startswith("Depends:") and "-cloud-amd64" in line]
    if not names:
        raise Unavailable(f"apt knows no {META_PACKAGE} (run apt-get update)")
    package = names[0]
    version = package.removeprefix("linux-image-")
    root = cache / package
    vmlinuz = root / "boot" / f"vmlinuz-{version}"
    modules = root / "lib" / "modules" / version / "kernel"
    if not vmlinuz.exists() or not modules.is_dir():
        debs = sorted(cache.glob(f"{package}_*.deb"))
        if not debs:
            _run(["apt-get", "download", package], cwd=cache)
            debs = sorted(cache.glob(f"{package}_*.deb"))
        if not debs:
            raise Unavailable(f"apt-get download {package} left no .deb")
        tmp = cache / f"{package}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        _run(["dpkg-deb", "-x", str(debs[-1]), str(tmp)])
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    return Kernel(vmlinuz, modules, version)


def _modinfo_depends(ko: bytes) -> list[str]:
    """The `depends=` entry of a module's .modinfo section (NUL-separated key=value strings;
    scanning the whole file for the key is enough: it occurs once)."""
    i = ko.find(b"\0depends=")
    if i < 0:
        return []
    value = ko[i + 9:ko.index(b"\0", i + 9)].decode()
    return [d for d in value.split(",") if d]


def module_load_order(kernel: Kernel, wanted=WANTED_MODULES) -> list[Path]:
    """The .ko files for `wanted` and their dependencies, dependencies first. Modules in this
    package are stored uncompressed (.ko); compressed ones (.ko.xz/.zst) are refused."""
    index = {}
    for path in kernel.modules.rglob("*.ko*"):
        if path.suffix != ".ko":
            raise Unavailable(f"{path.name}: compressed modules are not supported")
        index[path.stem.replace("-", "_")] = path
    order: list[Path] = []

    def visit(name: str, stack: tuple = ()) -> None:
        name = name.replace("-", "_")
        if name in stack:
            raise Unavailable(f"module dependency cycle at {name}")
        path = index.get(name)
        if path is None:
            raise Unavailable(f"module {name} is not in the kernel package")
        if path in order:
            return
        for dep in _modinfo_depends(path.read_bytes()):
            visit(dep, stack + (name,))
        order.append(path)

    for name in wanted:
        visit(name)
    return order


def _cpio_entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
                ino: int = 1) -> bytes:
    """One "newc" cpio entry (header, name, data, each padded to 4 bytes)."""
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
    head = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = head + name.encode() + b"\0"
    out += b"\0" * (-len(out) % 4)
    out += data + b"\0" * (-len(data) % 4)
    return out


def build_initramfs(kernel: Kernel, init: Path, out: Path) -> Path:
    """An uncompressed newc initramfs: /init, /dev/console, /lib/modules/*.ko, /modules."""
    modules = module_load_order(kernel)
    entries = [("dev", 0o040755, b"", (0, 0)), ("dev/console", 0o020600, b"", (5, 1)),
               ("proc", 0o040755, b"", (0, 0)), ("sys", 0o040755, b"", (0, 0)),
               ("lib", 0o040755, b"", (0, 0)), ("lib/modules", 0o040755, b"", (0, 0)),
               ("init", 0o100755, init.read_bytes(), (0, 0)),
               ("modules", 0o100644, "".join(f"{m.name}\n" for m in modules).encode(), (0, 0))]
    entries += [(f"lib/modules/{m.name}", 0o100644, m.read_bytes(), (0, 0)) for m in modules]
    blob = b"".join(_cpio_entry(n, mode, data, rdev, ino)
                    for ino, (n, mode, data, rdev) in enumerate(entries, start=1))
    blob += _cpio_entry("TRAILER!!!", 0, ino=0)
    out.write_bytes(blob + b"\0" * (-len(blob) % 512))
    return out


# ---- the disk -----------------------------------------------------------------------------

def _pattern(first: int, count: int, seed: int = 0) -> bytes:
    return b"".join(pattern_sector(lba + seed) for lba in range(first, first + count))


def make_disk(path: Path) -> Path:
    """The image the init expects: the read, zero and discard regions hold pattern(lba), the
    write region zeros, the rest zeros."""
    img = bytearray(DISK_SECTORS * SECTOR)
    for first in (READ_LBA, ZERO_LBA, DISCARD_LBA):
        img[first * SECTOR:(first + REGION_SECTORS) * SECTOR] = _pattern(first, REGION_SECTORS)
    path.write_bytes(img)
    return path


def disk_problems(path: Path, read_only: bool) -> list[str]:
    """What differs from what the init should have left in the image (host-side check)."""
    img = path.read_bytes()
    problems = []
    if len(img) != DISK_SECTORS * SECTOR:
        problems.append(f"image size {len(img)}")

    def region(lba: int) -> bytes:
        return img[lba * SECTOR:(lba + REGION_SECTORS) * SECTOR]
    if region(READ_LBA) != _pattern(READ_LBA, REGION_SECTORS):
        problems.append("read region changed")
    want_write = bytes(REGION_SECTORS * SECTOR) if read_only else \
        _pattern(WRITE_LBA, REGION_SECTORS, WRITE_SEED)
    if region(WRITE_LBA) != want_write:
        problems.append("write region does not hold what the guest wrote")
    want_zero = _pattern(ZERO_LBA, REGION_SECTORS) if read_only else bytes(REGION_SECTORS * SECTOR)
    if region(ZERO_LBA) != want_zero:
        problems.append("zeroed region is not zero" if not read_only else "zero region changed")
    if read_only and region(DISCARD_LBA) != _pattern(DISCARD_LBA, REGION_SECTORS):
        problems.append("discard region changed on a read-only disk")
    if img[(DISCARD_LBA + REGION_SECTORS) * SECTOR:] != bytes(len(img) - (DISCARD_LBA + REGION_SECTORS) * SECTOR):
        problems.append("bytes past the test regions changed")
    return problems


RTC_BASE = "2024-01-01T00:00:00"


def command_line(kernel: Kernel, initrd: Path, disk: Path, device_props: str = "",
                 drive_props: str = "", lbs: int = 512, read_only: bool = False,
                 rebind: bool = False, end: str = "exit") -> list[str]:
    """The options (without the program name) that run the test, the same for this machine
    and qemu-system-x86_64. `end`: how the init ends the machine (exit: isa-debug-exit with
    the verdict; poweroff, reboot: Linux's own paths, status 0 under -no-reboot)."""
    append = (f"console=ttyS0 vt_sectors={DISK_SECTORS} vt_serial={SERIAL} vt_lbs={lbs} "
              f"vt_ro={int(read_only)} vt_rebind={int(rebind)}")
    if end != "exit":
        append += f" vt_end={end}"
    drive = f"file={disk},format=raw,if=none,id=d0" + (f",{drive_props}" if drive_props else "")
    device = f"virtio-blk-pci,drive=d0,serial={SERIAL}" + (f",{device_props}" if device_props else "")
    return ["-machine", "pc", "-m", "256", "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd),
            "-append", append, "-serial", "stdio", "-display", "none", "-no-reboot",
            "-rtc", f"base={RTC_BASE}",            # no host time: runs repeat exactly
            "-drive", drive, "-device", device,
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
