"""QEMU's ACPI table-loader interface (fw_cfg file "etc/table-loader"): a list of 128-byte
commands that tell firmware how to place fw_cfg blobs in guest memory and link them.

    u32 command, then per command (names are NUL-padded 56-byte fw_cfg file names):
    1 ALLOCATE      file, u32 align, u8 zone (1 = high memory, 2 = the F segment below 1 MiB)
    2 ADD_POINTER   dest file, src file, u32 offset, u8 size: the little-endian `size`-byte
                    value at dest+offset gets the address src was allocated at added to it
    3 ADD_CHECKSUM  file, u32 offset, u32 start, u32 length: the byte at offset is adjusted so
                    that bytes [start, start+length) sum to zero

SeaBIOS and our firmware (firmware/acpi.c) both execute it. `execute()` is the same algorithm in
Python, over a dict of blobs and the addresses chosen for them, for the tests.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

COMMAND_SIZE = 128
FILE_NAME_LEN = 56
ALLOCATE, ADD_POINTER, ADD_CHECKSUM = 1, 2, 3
ZONE_HIGH, ZONE_FSEG = 1, 2

_ALLOCATE = struct.Struct("<I56sIB")
_ADD_POINTER = struct.Struct("<I56s56sIB")
_ADD_CHECKSUM = struct.Struct("<I56sIII")


def _name(file: str) -> bytes:
    raw = file.encode()
    if len(raw) >= FILE_NAME_LEN:
        raise ValueError(f"fw_cfg file name {file!r} too long")
    return raw


@dataclass
class TableLoader:
    commands: list[bytes] = field(default_factory=list)

    def allocate(self, file: str, align: int, zone: int) -> None:
        self.commands.append(_ALLOCATE.pack(ALLOCATE, _name(file), align, zone))

    def add_pointer(self, dest: str, src: str, offset: int, size: int) -> None:
        if size not in (1, 2, 4, 8):
            raise ValueError("pointer size must be 1, 2, 4 or 8")
        self.commands.append(_ADD_POINTER.pack(ADD_POINTER, _name(dest), _name(src), offset, size))

    def add_checksum(self, file: str, offset: int, start: int, length: int) -> None:
        self.commands.append(_ADD_CHECKSUM.pack(ADD_CHECKSUM, _name(file), offset, start, length))

    def blob(self) -> bytes:
        return b"".join(c.ljust(COMMAND_SIZE, b"\0") for c in self.commands)


@dataclass(frozen=True)
class Command:
    kind: int
    file: str
    src: str = ""
    align: int = 0
    zone: int = 0
    offset: int = 0
    size: int = 0
    start: int = 0
    length: int = 0


def _str(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode()


def parse(blob: bytes) -> list[Command]:
    if len(blob) % COMMAND_SIZE:
        raise ValueError("table-loader blob is not a whole number of commands")
    out = []
    for pos in range(0, len(blob), COMMAND_SIZE):
        entry = blob[pos:pos + COMMAND_SIZE]
        kind = struct.unpack_from("<I", entry)[0]
        if kind == ALLOCATE:
            _, f, align, zone = _ALLOCATE.unpack_from(entry)
            out.append(Command(kind, _str(f), align=align, zone=zone))
        elif kind == ADD_POINTER:
            _, d, s, offset, size = _ADD_POINTER.unpack_from(entry)
            out.append(Command(kind, _str(d), _str(s), offset=offset, size=size))
        elif kind == ADD_CHECKSUM:
            _, f, offset, start, length = _ADD_CHECKSUM.unpack_from(entry)
            out.append(Command(kind, _str(f), offset=offset, start=start, length=length))
        else:
            out.append(Command(kind, ""))
    return out


def execute(blob: bytes, files: dict[str, bytes], addresses: dict[str, int]) -> dict[str, bytes]:
    """Run the commands on copies of `files`, as placed at `addresses`; returns the linked blobs.
    Raises ValueError for a command firmware would refuse (unknown file, out-of-bounds field)."""
    linked: dict[str, bytearray] = {}
    for cmd in parse(blob):
        if cmd.kind == ALLOCATE:
            if cmd.file not in files or cmd.align & (cmd.align - 1):
                raise ValueError(f"bad ALLOCATE of {cmd.file!r}")
            if addresses[cmd.file] % max(cmd.align, 1):
                raise ValueError(f"{cmd.file!r} placed at a misaligned address")
            linked[cmd.file] = bytearray(files[cmd.file])
        elif cmd.kind == ADD_POINTER:
            dest = linked.get(cmd.file)
            if dest is None or cmd.src not in linked or cmd.offset + cmd.size > len(dest):
                raise ValueError(f"bad ADD_POINTER {cmd}")
            value = int.from_bytes(dest[cmd.offset:cmd.offset + cmd.size], "little")
            value = (value + addresses[cmd.src]) & ((1 << (8 * cmd.size)) - 1)
            dest[cmd.offset:cmd.offset + cmd.size] = value.to_bytes(cmd.size, "little")
        elif cmd.kind == ADD_CHECKSUM:
            data = linked.get(cmd.file)
            if data is None or cmd.offset >= len(data) or cmd.start + cmd.length > len(data):
                raise ValueError(f"bad ADD_CHECKSUM {cmd}")
            data[cmd.offset] = (data[cmd.offset] - sum(data[cmd.start:cmd.start + cmd.length])) & 0xFF
        # Unknown commands are skipped, as firmware does (newer QEMUs add WRITE_POINTER etc.).
    return {k: bytes(v) for k, v in linked.items()}
