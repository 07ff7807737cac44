"""QEMU's firmware configuration device (fw_cfg), x86 I/O interface, per QEMU's docs/specs/fw_cfg.rst.

Ports (relative to 0x510):
    +0      selector, 16-bit write (little-endian); resets the data offset
    +1      data, 8-bit reads stream the selected item; past its end, or for an unknown key, 0
    +4..+11 DMA address, 64-bit big-endian: the high half at +4, the low half at +8; a write that
            completes the low half (touches +11) starts the transfer. Reads show "QEMU CFG".

DMA: the address points at FWCfgDmaAccess {be32 control; be32 length; be64 address} in guest RAM.
control: ERROR=1, READ=2, SKIP=4, SELECT=8 (selector in bits 31:16), WRITE=0x10. The device writes
control back as 0 on success or with ERROR set. Every guest access goes through GuestMemory with
its bounds checks: a descriptor or buffer outside RAM ends the transfer with ERROR (or, for the
descriptor itself, a logged guest error), never a host exception.

Items are byte strings under 16-bit keys. Numeric items are little-endian, as QEMU stores them.
Files get keys from 0x20 up in the order they are added (a key, once returned, stays valid); the
directory at 0x19 lists them sorted by name, which is what guests search. Writes (data port or DMA
WRITE) are refused, as in modern QEMU: no item here is writable.
"""

from __future__ import annotations

import struct

from .. import trace
from .. import vmstate
from ..vmstate import U32
from ..memory import GuestMemory, GuestMemoryError, ones

# Standard keys
SIGNATURE = 0x00
ID = 0x01
UUID = 0x02
RAM_SIZE = 0x03
NOGRAPHIC = 0x04
NB_CPUS = 0x05
MACHINE_ID = 0x06
KERNEL_ADDR = 0x07
KERNEL_SIZE = 0x08
KERNEL_CMDLINE = 0x09
INITRD_ADDR = 0x0A
INITRD_SIZE = 0x0B
BOOT_DEVICE = 0x0C
NUMA = 0x0D
BOOT_MENU = 0x0E
MAX_CPUS = 0x0F
KERNEL_ENTRY = 0x10
KERNEL_DATA = 0x11
INITRD_DATA = 0x12
CMDLINE_ADDR = 0x13
CMDLINE_SIZE = 0x14
CMDLINE_DATA = 0x15
SETUP_ADDR = 0x16
SETUP_SIZE = 0x17
SETUP_DATA = 0x18
FILE_DIR = 0x19
FILE_FIRST = 0x20

WRITE_CHANNEL = 0x4000      # legacy "write" bit of a selector: ignored (no writable items)
ARCH_LOCAL = 0x8000         # x86-specific keys (0x8000 ACPI tables, 0x8003 e820 reservations ...)
KEY_MASK = 0xFFFF & ~WRITE_CHANNEL

# ID feature bits
ID_TRADITIONAL = 0x01
ID_DMA = 0x02

# DMA control bits
DMA_ERROR = 0x01
DMA_READ = 0x02
DMA_SKIP = 0x04
DMA_SELECT = 0x08
DMA_WRITE = 0x10

DMA_SIGNATURE = b"QEMU CFG"
FILE_NAME_LEN = 56

E820_RAM = 1
E820_RESERVED = 2

_DMA_ACCESS = struct.Struct(">IIQ")
_DIR_ENTRY = struct.Struct(">IHH56s")
_E820_ENTRY = struct.Struct("<QQI")

EV_SELECT = trace.Event("fw_cfg_select")
EV_READ = trace.Event("fw_cfg_read")

_KEY_NAMES = {v: k.lower() for k, v in list(globals().items())
              if k.isupper() and isinstance(v, int) and v < FILE_FIRST and not k.startswith(("ID_", "DMA_", "E820"))}


def e820_table(entries: list[tuple[int, int, int]]) -> bytes:
    """The "etc/e820" file: packed little-endian {u64 address; u64 length; u32 type} per entry."""
    return b"".join(_E820_ENTRY.pack(addr, length, kind) for addr, length, kind in entries)


_ZEROS = memoryview(bytes(1 << 16))


def _zero(mem: GuestMemory, addr: int, length: int) -> None:
    """Zero-fill guest RAM in bounded chunks (a guest may ask for gigabytes)."""
    if not mem.contains(addr, length):
        raise GuestMemoryError(f"{addr:#x}+{length:#x}")
    done = 0
    while done < length:
        n = min(len(_ZEROS), length - done)
        mem.write(addr + done, _ZEROS[:n])
        done += n


class FwCfg:
    BASE = 0x510
    SIZE = 12

    def __init__(self, mem: GuestMemory, dma: bool = True):
        self.mem = mem
        self.dma_enabled = dma
        self._items: dict[int, bytes] = {}
        self._files: dict[str, int] = {}          # name -> key
        self.key = 0
        self._data = b""
        self.add_bytes(SIGNATURE, b"QEMU")
        self.add_u32(ID, ID_TRADITIONAL | (ID_DMA if dma else 0))
        self._rebuild_dir()
        self.reset()

    # The selected item and the read position; the items are the configuration's.
    VMSTATE = vmstate.Description("fw_cfg", 1, (
        vmstate.Field("key", vmstate.UInt(16)), vmstate.Field("offset", U32),
        vmstate.Field("_dma_addr", vmstate.Bytes(8, 8))))

    def vmstate_check(self, values: dict) -> None:
        if values["key"] & ~KEY_MASK:
            raise vmstate.VMStateError(f"fw_cfg: key {values['key']:#x} out of range")

    def post_load(self) -> None:
        self._data = self._items.get(self.key, b"")

    def reset(self) -> None:
        self.key = 0
        self._data: bytes = self._items.get(0, b"")
        self.offset = 0
        self._dma_addr = bytearray(8)

    # -- items (host side) --------------------------------------------------------------
    def add_bytes(self, key: int, data: bytes) -> None:
        key &= KEY_MASK
        self._items[key] = bytes(data)
        if key == self.key:
            self._data = self._items[key]

    def add_u16(self, key: int, value: int) -> None:
        self.add_bytes(key, struct.pack("<H", value))

    def add_u32(self, key: int, value: int) -> None:
        self.add_bytes(key, struct.pack("<I", value))

    def add_u64(self, key: int, value: int) -> None:
        self.add_bytes(key, struct.pack("<Q", value))

    def add_file(self, name: str, data: bytes) -> int:
        """Add (or replace) a named file; returns its selector key."""
        raw = name.encode()
        if not raw or len(raw) >= FILE_NAME_LEN:
            raise ValueError(f"fw_cfg file name '{name}' must be 1..{FILE_NAME_LEN - 1} bytes")
        key = self._files.get(name)
        if key is None:
            key = FILE_FIRST + len(self._files)
            if key >= ARCH_LOCAL:
                raise ValueError("fw_cfg: too many files")
            self._files[name] = key
        self.add_bytes(key, data)
        self._rebuild_dir()
        return key

    def file_key(self, name: str) -> int | None:
        return self._files.get(name)

    def item(self, key: int) -> bytes | None:
        return self._items.get(key & KEY_MASK)

    def _rebuild_dir(self) -> None:
        names = sorted(self._files)
        parts = [struct.pack(">I", len(names))]
        for name in names:
            key = self._files[name]
            parts.append(_DIR_ENTRY.pack(len(self._items[key]), key, 0, name.encode()))
        self.add_bytes(FILE_DIR, b"".join(parts))

    # -- guest side -----------------------------------------------------------------------
    def select(self, key: int) -> None:
        key &= KEY_MASK
        self.key = key
        self.offset = 0
        data = self._items.get(key)
        self._data = b"" if data is None else data
        if EV_SELECT.enabled:
            name = _KEY_NAMES.get(key) or next((n for n, k in self._files.items() if k == key), "unknown")
            EV_SELECT.emit(key=key, name=name, ret=int(data is not None))

    def _read_byte(self) -> int:
        off = self.offset
        data = self._data
        if off < len(data):
            self.offset = off + 1
            value = data[off]
        else:
            value = 0
        if EV_READ.enabled:
            EV_READ.emit(ret=value)
        return value

    def read(self, offset: int, size: int) -> int:
        if size == 1 and offset <= 1:
            return self._read_byte()       # QEMU answers a byte read at the selector port with data too
        if offset >= 4:
            return int.from_bytes(DMA_SIGNATURE[offset - 4:offset - 4 + size].ljust(size, b"\xff"), "little")
        trace.guest_error(f"fw_cfg: {size}-byte read at +{offset} ignored")
        return ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 2:
            self.select(value)
        elif offset <= 1 and size == 1:
            trace.guest_error(f"fw_cfg: data write {value:#x} to key {self.key:#x} ignored (read-only)")
        elif offset >= 4 and self.dma_enabled:
            start = offset - 4
            for i in range(size):
                if start + i < 8:
                    self._dma_addr[start + i] = (value >> (8 * i)) & 0xFF
            if start + size >= 8:          # the low half is complete: go
                addr = int.from_bytes(self._dma_addr, "big")
                self._dma_addr = bytearray(8)   # the next transfer starts from a zero address (QEMU)
                self._dma_transfer(addr)
        else:
            trace.guest_error(f"fw_cfg: {size}-byte write {value:#x} at +{offset} ignored")

    # -- DMA --------------------------------------------------------------------------------
    def _dma_transfer(self, desc: int) -> None:
        mem = self.mem
        try:
            control, length, addr = _DMA_ACCESS.unpack(mem.read(desc, _DMA_ACCESS.size))
        except GuestMemoryError:
            trace.guest_error(f"fw_cfg: DMA descriptor at {desc:#x} is not in RAM")
            return
        if control & DMA_SELECT:
            self.select(control >> 16)
        if control & DMA_READ:
            op = DMA_READ
        elif control & DMA_WRITE:
            op = DMA_WRITE
        elif control & DMA_SKIP:
            op = DMA_SKIP
        else:
            op = 0
            length = 0
        status = 0
        data = self._data
        while length > 0:
            avail = len(data) - self.offset
            try:
                if avail <= 0:
                    # Past the end (or no item): reads fill zeros, writes fail, skips just advance.
                    n = length
                    if op == DMA_READ:
                        _zero(mem, addr, n)
                    elif op == DMA_WRITE:
                        status = DMA_ERROR
                        break
                else:
                    n = min(length, avail)
                    if op == DMA_READ:
                        mem.write(addr, data[self.offset:self.offset + n])
                    elif op == DMA_WRITE:
                        trace.guest_error(f"fw_cfg: DMA write to read-only key {self.key:#x}")
                        status = DMA_ERROR
                        break
                    self.offset += n
            except GuestMemoryError:
                trace.guest_error(f"fw_cfg: DMA buffer {addr:#x}+{length:#x} is not in RAM")
                status = DMA_ERROR
                break
            addr += n
            length -= n
        try:
            mem.write(desc, struct.pack(">I", status))
        except GuestMemoryError:
            pass                                # the descriptor was readable, so this cannot happen
