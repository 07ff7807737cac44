"""A small PC for robustness runs: the stub ROM jumps to a 32-bit protected-mode prologue in RAM
that fills the IDT, places the first virtio-blk-pci's BARs, turns its decoding on and jumps to
the payload (arbitrary bytes at PAYLOAD). Nothing here knows what the payload does.

    m = build(tmp_path, payload, readonly=False)
    status = m.run(max_instructions=50_000)

Layout (physical = linear, no paging): IDT at asm.IDT, stack below 0x70000, payload at PAYLOAD,
scratch RAM for rings and buffers from RING_AREA. A CPU exception ends the run through
isa-debug-exit with FAULT_EXIT; an external interrupt is answered by a bare IRET (no EOI:
an unacknowledged level-triggered line keeps firing, which is the point).
"""

from __future__ import annotations

import struct
from pathlib import Path

from asm import EXIT_PORT, IDT, PM32_PROLOGUE, PROGRAM_BASE, STUB_ROM_SOURCE, assemble, rom_image
from machine.config import CharDev, DeviceConfig, DriveConfig, MachineConfig
from machine.pc import Machine

MiB = 1 << 20
RAM_SIZE = 16 * MiB
PAYLOAD = 0x10000               # up to IDT (0x20000): 64 KiB of payload
PAYLOAD_MAX = IDT - PAYLOAD
RING_AREA = 0x300000            # descriptor tables, rings, request headers, data buffers
RING_AREA_SIZE = 0x40000
MODERN_BAR_BASE = 0xFE000000    # where the prologue puts the first virtio device's BAR 4
LEGACY_IO_BASE = 0xC000         # ... and its I/O BAR 0
VIRTIO_DEVFN = 2 << 3           # 00:02.0
FAULT_EXIT = 0x3F               # isa-debug-exit value the exception handler writes
FAULT_STATUS = (FAULT_EXIT << 1) | 1
IMAGE_SECTORS = 2048
STOP_KINDS = {"exited", "fault", "limit", "interrupt"}


def cfg_addr(devfn: int, reg: int) -> int:
    """The CONFIG_ADDRESS (0xCF8) value for bus 0, `devfn`, dword register `reg`."""
    return 0x80000000 | (devfn << 8) | (reg & 0xFC)


PROLOGUE = PM32_PROLOGUE + f"""
main:
    xor %ecx, %ecx
1:  cmp $32, %ecx
    mov $fault, %eax
    jb 2f
    mov $irq, %eax
2:  mov %ax, IDT(,%ecx,8)
    movw $0x08, IDT + 2(,%ecx,8)
    movw $0x8e00, IDT + 4(,%ecx,8)
    shr $16, %eax
    mov %ax, IDT + 6(,%ecx,8)
    inc %ecx
    cmp $256, %ecx
    jne 1b
    # 00:02.0: BAR0 (I/O), BAR4/5 (64-bit memory), command = I/O + memory + bus master
    mov $0xcf8, %dx
    mov ${cfg_addr(VIRTIO_DEVFN, 0x10):#x}, %eax
    out %eax, %dx
    mov $0xcfc, %dx
    mov ${LEGACY_IO_BASE | 1:#x}, %eax
    out %eax, %dx
    mov $0xcf8, %dx
    mov ${cfg_addr(VIRTIO_DEVFN, 0x20):#x}, %eax
    out %eax, %dx
    mov $0xcfc, %dx
    mov ${MODERN_BAR_BASE:#x}, %eax
    out %eax, %dx
    mov $0xcf8, %dx
    mov ${cfg_addr(VIRTIO_DEVFN, 0x24):#x}, %eax
    out %eax, %dx
    mov $0xcfc, %dx
    xor %eax, %eax
    out %eax, %dx
    mov $0xcf8, %dx
    mov ${cfg_addr(VIRTIO_DEVFN, 0x04):#x}, %eax
    out %eax, %dx
    mov $0xcfc, %dx
    mov $7, %ax
    out %ax, %dx
    jmp {PAYLOAD:#x}
fault:
    mov ${FAULT_EXIT}, %al
    out %al, ${EXIT_PORT:#x}
    cli
    hlt
irq:
    iret
"""

EXIT0 = bytes([0xB0, 0x00, 0xE6, EXIT_PORT])          # mov $0, %al; out %al, $EXIT_PORT


def sector_pattern(lba: int) -> bytes:
    return struct.pack("<128I", *(((lba * 0x9E3779B1) + i * 0x01000193) & 0xFFFFFFFF for i in range(128)))


def make_image(path: Path, sectors: int = IMAGE_SECTORS) -> bytes:
    data = b"".join(sector_pattern(lba) for lba in range(sectors))
    path.write_bytes(data)
    return data


def build(tmp_path: Path, payload: bytes, *, readonly: bool = False, snapshot: bool = False,
          device_props: dict[str, str] | None = None, no_reboot: bool = True,
          ram_size: int = RAM_SIZE, image: Path | None = None, rom_source: str = STUB_ROM_SOURCE,
          exit_after: bool = True, extra_drives: int = 0, icount: bool = True) -> Machine:
    """The machine with `payload` (+ an exit with status 1 after it when `exit_after`) at
    PAYLOAD, in the exact clock mode or (`icount=False`) the fast one. The image must exist
    (make_image)."""
    rom = tmp_path / "rom.bin"
    if not rom.exists() or rom_source != STUB_ROM_SOURCE:
        rom.write_bytes(rom_image(rom_source))
    image = image if image is not None else tmp_path / "disk.img"
    props = {"drive": "d0"}
    props.update(device_props or {})
    config = MachineConfig(
        ram_size=ram_size, bios=rom, serial=CharDev("null"), no_reboot=no_reboot, icount=icount,
        drives=[DriveConfig(file=image, interface="none", id="d0", readonly=readonly,
                            snapshot=snapshot)],
        devices=[DeviceConfig("isa-debug-exit", {"iobase": hex(EXIT_PORT), "iosize": "1"}),
                 DeviceConfig("virtio-blk-pci", props)])
    for n in range(1, extra_drives + 1):      # more virtio-blk-pci, at 00:03.0, 00:04.0, ...
        extra = tmp_path / f"disk{n}.img"
        if not extra.exists():
            make_image(extra)
        config.drives.append(DriveConfig(file=extra, interface="none", id=f"d{n}"))
        config.devices.append(DeviceConfig("virtio-blk-pci", {"drive": f"d{n}"}))
    m = Machine(config)
    m.mem.write(PROGRAM_BASE, assemble(PROLOGUE, base=PROGRAM_BASE))
    code = payload + (EXIT0 if exit_after else b"")
    assert len(code) <= PAYLOAD_MAX, len(code)
    m.mem.write(PAYLOAD, code)
    return m


def program(m: Machine, source: str, prologue: bool = True) -> None:
    """Replace the payload with assembled GNU as source (32-bit code at PAYLOAD)."""
    code = assemble(".code32\n" + source, base=PAYLOAD)
    assert len(code) <= PAYLOAD_MAX
    m.mem.write(PAYLOAD, code)


# ------------------------------------------------------------------------------------------
# Targeted programs: GNU as source for 32-bit code at PAYLOAD, with these macros and symbols.
# ------------------------------------------------------------------------------------------
DESC_TABLE, AVAIL, USED = RING_AREA, RING_AREA + 0x1000, RING_AREA + 0x2000
REQ_BUF = RING_AREA + 0x10000          # header @+0, data @+0x100, status @+0xFF0

MACROS = f"""
.set BAR, {MODERN_BAR_BASE:#x}
.set LEGACY, {LEGACY_IO_BASE:#x}
.set LAPIC, 0xfee00000
.set DESC, {DESC_TABLE:#x}
.set AVAIL, {AVAIL:#x}
.set USED, {USED:#x}
.set REQ, {REQ_BUF:#x}
.set VIRTIO, {VIRTIO_DEVFN:#x}
.macro CFGW devfn, reg, value              # PCI config dword write, bus 0
    mov $0xcf8, %dx
    mov $(0x80000000 | ((\\devfn) << 8) | (\\reg)), %eax
    out %eax, %dx
    mov $0xcfc, %dx
    mov $\\value, %eax
    out %eax, %dx
.endm
.macro CFGWB devfn, reg, value             # PCI config byte write
    mov $0xcf8, %dx
    mov $(0x80000000 | ((\\devfn) << 8) | ((\\reg) & 0xfc)), %eax
    out %eax, %dx
    mov $(0xcfc + ((\\reg) & 3)), %dx
    mov $\\value, %al
    out %al, %dx
.endm
.macro CFGR devfn, reg                     # PCI config dword read into %eax
    mov $0xcf8, %dx
    mov $(0x80000000 | ((\\devfn) << 8) | (\\reg)), %eax
    out %eax, %dx
    mov $0xcfc, %dx
    in %dx, %eax
.endm
.macro OUTB port, value                   # any port (through %dx)
    mov $\\port, %dx
    mov $\\value, %al
    out %al, %dx
.endm
# The modern driver sequence for queue 0 at DESC/AVAIL/USED, VERSION_1 only, up to DRIVER_OK.
.macro MODERN_UP base=BAR
    movb $0, \\base + 0x14
    movb $1, \\base + 0x14
    movb $3, \\base + 0x14
    movl $1, \\base + 0x08
    movl $1, \\base + 0x0c
    movl $0, \\base + 0x08
    movl $0, \\base + 0x0c
    movb $0xb, \\base + 0x14
    movw $0, \\base + 0x16
    movl $DESC, \\base + 0x20
    movl $0, \\base + 0x24
    movl $AVAIL, \\base + 0x28
    movl $0, \\base + 0x2c
    movl $USED, \\base + 0x30
    movl $0, \\base + 0x34
    movw $1, \\base + 0x1c
    movb $0xf, \\base + 0x14
.endm
.macro NOTIFY base=BAR
    movw $0, \\base + 0x3000
.endm
"""


def put_requests(m: Machine, requests: list[tuple[int, int, int]]) -> None:
    """Queue 0's rings at DESC/AVAIL/USED holding `requests` [(type, sector, data bytes)], each a
    3-descriptor chain (header, data, status) in its own 4 KiB buffer from REQ_BUF; the avail
    index counts them all."""
    descs = b""
    heads = []
    for k, (rtype, sector, nbytes) in enumerate(requests):
        buf = REQ_BUF + k * 0x1000
        m.mem.write(buf, struct.pack("<IIQ", rtype, 0, sector))
        m.mem.write(buf + 0xFF0, b"\xEE")
        data_flags = 2 if rtype in (0, 8) else 0
        heads.append(len(descs) // 16)
        n = heads[-1]
        descs += struct.pack("<QIHH", buf, 16, 1, n + 1)
        descs += struct.pack("<QIHH", buf + 0x100, nbytes, data_flags | 1, n + 2)
        descs += struct.pack("<QIHH", buf + 0xFF0, 1, 2, 0)
    m.mem.write(DESC_TABLE, descs)
    m.mem.write(AVAIL, struct.pack(f"<HH{len(heads)}H", 0, len(heads), *heads))
    m.mem.write(USED, bytes(8))


def used_idx(m: Machine) -> int:
    return struct.unpack("<H", m.mem.read(USED + 2, 2))[0]


def req_status(m: Machine, k: int = 0) -> int:
    return m.mem.read(REQ_BUF + k * 0x1000 + 0xFF0, 1)[0]


def build_asm(tmp_path: Path, source: str, **kw) -> Machine:
    """build() with `source` (GNU as, MACROS available) assembled as the payload."""
    code = assemble(".code32\n" + MACROS + source, base=PAYLOAD)
    return build(tmp_path, code, **kw)
