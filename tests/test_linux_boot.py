"""The Linux/x86 boot protocol behind -kernel/-initrd/-append, with a tiny fake bzImage (no real
kernel needed): the host recognises and splits it, the firmware builds the zero page and enters
code32_start as the 32-bit protocol says, and bad kernels or initrds are refused on the host
with one error line and status 1."""
from __future__ import annotations

import struct

import pytest

from asm import assemble
from machine import kernel_image
from machine.cli import main
from machine.config import CharDev, DeviceConfig, MachineConfig
from machine.pc import Machine

PASS, FAIL = 1, 3                      # isa-debug-exit statuses for out 0 / out 1
INITRD_MAGIC = b"INRD"


def protected_mode_code(initrd_size: int, initrd_lo: int, initrd_hi: int) -> bytes:
    """32-bit code checking the hand-off: CS/DS are __BOOT_CS/__BOOT_DS, ESI the zero page with
    type_of_loader set, e820 entries, the initrd where expected, then echo the command line to
    COM1 and exit 0 through isa-debug-exit."""
    return assemble(f"""
        .code32
        mov %cs, %eax
        cmp $0x10, %eax
        jne fail
        mov %ds, %eax
        cmp $0x18, %eax
        jne fail
        cmpb $0xff, 0x210(%esi)         # type_of_loader
        jne fail
        cmpb $0, 0x1e8(%esi)            # e820_entries
        je fail
        cmpl $1, 0x2d0 + 16(%esi)       # first e820 entry is RAM
        jne fail
        mov 0x218(%esi), %ebx           # ramdisk_image: page aligned, as high as allowed
        test $0xfff, %ebx
        jnz fail
        cmp ${initrd_lo:#x}, %ebx
        jb fail
        cmp ${initrd_hi:#x}, %ebx
        ja fail
        cmpl ${int.from_bytes(INITRD_MAGIC, 'little'):#x}, (%ebx)
        jne fail
        cmpl ${initrd_size:#x}, 0x21c(%esi)
        jne fail
        mov 0x228(%esi), %ebx           # cmd_line_ptr
        mov $0x3f8, %dx
    1:  movb (%ebx), %al
        test %al, %al
        jz 2f
        out %al, %dx
        inc %ebx
        jmp 1b
    2:  mov $0, %al
        out %al, $0xf4
    fail:
        mov $1, %al
        out %al, $0xf4
        hlt
    """, base=0x100000)


def fake_bzimage(code: bytes, version: int = 0x020F, initrd_addr_max: int = 0x7FFFFFFF,
                 loadflags: int = 1, truncate: int = 0) -> bytes:
    setup = bytearray(2 * 512)                  # boot sector + one setup sector
    setup[0x1F1] = 1                            # setup_sects
    struct.pack_into("<I", setup, 0x1F4, (len(code) + 15) // 16)      # syssize
    setup[0x1FE:0x200] = b"\x55\xAA"
    setup[0x200:0x202] = bytes([0xEB, 0x66])    # jmp: the header ends at 0x268
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = loadflags
    struct.pack_into("<I", setup, 0x214, 0x100000)          # code32_start
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    struct.pack_into("<I", setup, 0x238, 2047)               # cmdline_size
    body = code + bytes(-len(code) % 16)
    image = bytes(setup) + body
    return image[:len(image) - truncate] if truncate else image


def expected_initrd_range(size: int, ram: int, initrd_addr_max: int) -> tuple[int, int]:
    """Where the firmware may put the initrd: page aligned right under the lower of RAM's top
    and initrd_addr_max, less at most the room the ACPI tables take at the top of RAM."""
    top = min(ram, initrd_addr_max + 1)
    hi = (top - size) & ~0xFFF
    lo = hi if initrd_addr_max + 1 < ram - kernel_image.INITRD_TOP_RESERVE \
        else (top - kernel_image.INITRD_TOP_RESERVE - size) & ~0xFFF
    return lo, hi


@pytest.mark.parametrize("initrd_addr_max", [0x7FFFFFFF, 0x37FFFFF])
def test_firmware_hands_a_bzimage_the_zero_page(tmp_path, initrd_addr_max):
    initrd = INITRD_MAGIC + bytes(10000)
    ram = 128 << 20
    lo, hi = expected_initrd_range(len(initrd), ram, initrd_addr_max)
    image = fake_bzimage(protected_mode_code(len(initrd), lo, hi), initrd_addr_max=initrd_addr_max)
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(image)
    (tmp_path / "initrd").write_bytes(initrd)
    serial = tmp_path / "serial.txt"
    config = MachineConfig(ram_size=ram, kernel=kernel, append="console=ttyS0 quiet",
                           initrd=tmp_path / "initrd", serial=CharDev("file", str(serial)),
                           devices=[DeviceConfig("isa-debug-exit", {"iobase": "0xf4", "iosize": "4"})])
    m = Machine(config)
    status = m.run(max_instructions=50_000_000)
    m.close()
    assert status == PASS
    assert serial.read_text() == "console=ttyS0 quiet"     # no kernel path, unlike Multiboot


def test_host_splits_a_bzimage_as_qemu_does():
    image = fake_bzimage(b"\x90" * 100)
    linux = kernel_image.parse_linux(image)
    assert linux.setup == image[:1024]
    assert linux.kernel == image[1024:]
    assert linux.version == 0x020F and linux.cmdline_size == 2047


BAD = [
    ("truncated", dict(truncate=32), "Linux kernel is truncated"),
    ("old protocol", dict(version=0x0204), "too old"),
    ("zImage", dict(loadflags=0), "zImage"),
]


@pytest.mark.parametrize("what,kw,message", BAD, ids=[b[0] for b in BAD])
def test_bad_bzimage_is_one_error_line(tmp_path, capsys, what, kw, message):
    k = tmp_path / "bzImage"
    k.write_bytes(fake_bzimage(b"\x90" * 64, **kw))
    assert main(["-kernel", str(k), "-display", "none"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("machine: ") and message in err[0], err


def test_neither_multiboot_nor_linux(tmp_path, capsys):
    k = tmp_path / "blob"
    k.write_bytes(bytes(20000))
    assert main(["-kernel", str(k)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "not a Multiboot kernel or a Linux bzImage" in err[0]


def test_missing_initrd(tmp_path, capsys):
    k = tmp_path / "bzImage"
    k.write_bytes(fake_bzimage(b"\x90" * 64))
    assert main(["-kernel", str(k), "-initrd", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "nope" in err[0] and "No such file" in err[0], err


@pytest.mark.parametrize("ram,initrd_addr_max,size", [
    ("16", 0x7FFFFFFF, 16 << 20),              # larger than the RAM
    ("128", 0xFFFFFF, 15 << 20),               # fits the RAM, not under initrd_addr_max
])
def test_initrd_too_large(tmp_path, capsys, ram, initrd_addr_max, size):
    k = tmp_path / "bzImage"
    k.write_bytes(fake_bzimage(b"\x90" * 64, initrd_addr_max=initrd_addr_max))
    rd = tmp_path / "initrd"
    with open(rd, "wb") as f:
        f.truncate(size)
    assert main(["-m", ram, "-kernel", str(k), "-initrd", str(rd), "-display", "none"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "initrd is too large" in err[0], err
