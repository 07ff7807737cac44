"""What a -kernel file is: a Multiboot v1 ELF32 kernel or a Linux bzImage (boot protocol 2.06+).

The host only recognises and splits the file, as QEMU does: the firmware loads it (see
firmware/multiboot.c and firmware/linux.c). A Linux kernel reaches the firmware in fw_cfg's
SETUP item (boot sector, setup header and real-mode setup code) and KERNEL item (the
protected-mode kernel); the firmware builds the zero page and places the initrd."""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .config import split_commas

MULTIBOOT_MAGIC = 0x1BADB002
MULTIBOOT_SEARCH = 8192          # the Multiboot v1 header lies in the first 8 KiB, 4-aligned

LINUX_MIN_VERSION = 0x0206       # cmdline_size in the header; every kernel since 2.6.22
PROT_MODE_ADDR = 0x100000        # where the firmware loads the protected-mode kernel
INITRD_TOP_RESERVE = 0x20000     # room the firmware's ACPI tables may take at the RAM top
_LOADED_HIGH = 0x01

MODULES_FILE = "opt/machine/modules"   # the fw_cfg file firmware/multiboot.c loads modules from
MODS_MAX = 32                    # firmware/multiboot.c's table sizes
MOD_STRINGS_MAX = 4096


@dataclass(frozen=True)
class LinuxKernel:
    setup: bytes                 # boot sector + setup header + real-mode setup code
    kernel: bytes                # the protected-mode kernel (loaded at 1 MiB)
    version: int                 # boot protocol, e.g. 0x020f
    initrd_addr_max: int         # highest address the initrd may reach
    cmdline_size: int            # longest command line the kernel takes (without the NUL)

    def initrd_room(self, low_ram_top: int) -> int:
        """Bytes of initrd the firmware can surely place: below the RAM top (less the room its
        ACPI tables may take there) and initrd_addr_max, above the protected-mode kernel, page
        aligned. (As QEMU's initrd_max, which keeps 128 KiB of ACPI data below the top.)"""
        top = min(low_ram_top - INITRD_TOP_RESERVE, self.initrd_addr_max + 1)
        bottom = (PROT_MODE_ADDR + len(self.kernel) + 0xFFF) & ~0xFFF
        return max(0, (top & ~0xFFF) - bottom)


def is_multiboot(head: bytes) -> bool:
    """A Multiboot v1 header (magic, flags, checksum summing to zero) 4-aligned in the first
    8 KiB."""
    for off in range(0, min(len(head) - 11, MULTIBOOT_SEARCH), 4):
        magic, flags, checksum = struct.unpack_from("<3I", head, off)
        if magic == MULTIBOOT_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            return True
    return False


def is_linux(head: bytes) -> bool:
    return len(head) >= 0x206 and head[0x202:0x206] == b"HdrS"


def parse_linux(data: bytes) -> LinuxKernel:
    """Split a bzImage. Raises ValueError saying what is wrong with it."""
    version = struct.unpack_from("<H", data, 0x206)[0] if len(data) >= 0x208 else 0
    if version < LINUX_MIN_VERSION:
        raise ValueError(f"Linux kernel boot protocol {version >> 8}.{version & 0xff:02d} is too "
                         "old (2.06 or newer needed)")
    if len(data) < 0x240:
        raise ValueError(f"Linux kernel is truncated ({len(data)} bytes)")
    setup_sects = data[0x1F1] or 4          # 0 means 4, as the protocol says
    setup_size = (setup_sects + 1) * 512
    syssize = struct.unpack_from("<I", data, 0x1F4)[0]
    loadflags = data[0x211]
    if not loadflags & _LOADED_HIGH:
        raise ValueError("Linux kernel is a zImage (loaded low): only bzImage kernels are supported")
    expected = setup_size + syssize * 16
    if len(data) < expected:
        raise ValueError(f"Linux kernel is truncated: {len(data)} bytes, the setup header "
                         f"says {expected}")
    initrd_addr_max, = struct.unpack_from("<I", data, 0x22C)
    cmdline_size, = struct.unpack_from("<I", data, 0x238)
    return LinuxKernel(setup=bytes(data[:setup_size]), kernel=bytes(data[setup_size:]),
                       version=version, initrd_addr_max=initrd_addr_max, cmdline_size=cmdline_size)


def probe(path) -> LinuxKernel | None:
    """None for a Multiboot kernel, the split kernel for a Linux bzImage. Raises ValueError when
    the file is neither (or a broken bzImage), OSError when it cannot be read."""
    with open(path, "rb") as f:
        data = f.read()
    head = data[:MULTIBOOT_SEARCH + 12]
    if is_multiboot(head):
        if head[:4] != b"\x7fELF" or head[4] != 1:
            raise ValueError("the Multiboot kernel is not an ELF32 file "
                             "(this machine's firmware loads ELF kernels only)")
        return None
    if is_linux(head):
        return parse_linux(data)
    raise ValueError("not a Multiboot kernel or a Linux bzImage (no Multiboot header with a "
                     "valid checksum in the first 8192 bytes, no Linux setup header)")


def multiboot_module_specs(initrd: str) -> list[tuple[str, str]]:
    """-initrd for a Multiboot kernel, as QEMU reads it: modules separated by commas (",," is a
    comma inside a name), each "FILE ARGS...": the file is the first word, and the module's
    command line is the whole entry. Returns (file, command line) pairs; "" gives none."""
    entries = split_commas(initrd)
    return [(entry.split(" ", 1)[0], entry) for entry in entries if entry]


def multiboot_modules_blob(modules: list[tuple[str, bytes]]) -> bytes:
    """The fw_cfg file firmware/multiboot.c reads: u32 count, u32 strings_len, then per module
    u32 size and u32 offset of its command line, the NUL-terminated command lines, then the
    modules' bytes in order. Raises ValueError for more than the firmware's tables hold."""
    strings = b"".join(cmdline.encode() + b"\0" for cmdline, _ in modules)
    if len(modules) > MODS_MAX:
        raise ValueError(f"{len(modules)} Multiboot modules (at most {MODS_MAX})")
    if len(strings) > MOD_STRINGS_MAX:
        raise ValueError(f"the Multiboot modules' command lines take {len(strings)} bytes "
                         f"(at most {MOD_STRINGS_MAX})")
    table, offset = [], 0
    for cmdline, data in modules:
        table.append(struct.pack("<II", len(data), offset))
        offset += len(cmdline.encode()) + 1
    return (struct.pack("<II", len(modules), len(strings)) + b"".join(table) + strings
            + b"".join(data for _, data in modules))
