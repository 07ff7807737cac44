"""Guest RAM and the two address spaces (physical memory and port I/O), as plain Python objects.

Nothing here imports Unicorn: the CPU layer attaches itself as a *backend* of the memory map
(so that RAM and MMIO regions get mapped into the engine), while devices and unit tests use the
same objects with no CPU at all.

Device ops protocol, shared by MMIO regions and I/O port ranges:
    read(offset, size) -> int          offset is relative to the region base; size in 1, 2, 4
    write(offset, size, value) -> None
"""

from __future__ import annotations

import mmap
import struct
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Callable, Protocol

from . import trace

FOUR_GIB = 1 << 32
PAGE = 0x1000

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class GuestMemoryError(Exception):
    """A guest-physical range that is not wholly inside guest RAM."""


class DeviceOps(Protocol):
    def read(self, offset: int, size: int) -> int: ...
    def write(self, offset: int, size: int, value: int) -> None: ...


def ones(size: int) -> int:
    """What a read of nothing returns on a PC bus: all ones of the access width."""
    return (1 << (8 * size)) - 1


# --------------------------------------------------------------------------------------------
# Guest RAM
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RamRange:
    """One guest-physical window onto the RAM buffer. A read-only window (shadow RAM the chipset
    write-protects) is read by DMA; a device's writes there go nowhere, as on a PC."""
    gpa: int
    size: int
    host_offset: int
    read_only: bool = False

    @property
    def end(self) -> int:
        return self.gpa + self.size


def pc_ram_layout(ram_size: int, low_limit: int = 0xC0000000) -> list[RamRange]:
    """Where a PC puts `ram_size` bytes of RAM: below the legacy VGA/ROM hole, from 1 MiB up to the
    PCI hole, and the rest above 4 GiB (as QEMU's i440FX `pc` machine splits it)."""
    if ram_size < 2 * 1024 * 1024:
        raise ValueError("RAM size must be at least 2 MiB")
    low = ram_size if ram_size < 0xE0000000 else low_limit
    ranges = [RamRange(0, 0xA0000, 0), RamRange(0x100000, low - 0x100000, 0x100000)]
    if ram_size > low:
        ranges.append(RamRange(FOUR_GIB, ram_size - low, low))
    return ranges


class GuestMemory:
    """Guest RAM: one host buffer (anonymous mmap) seen at one or more guest-physical ranges.

    Device DMA goes only through here: every access is checked to lie wholly inside RAM, so a
    guest can never aim a device at MMIO, at the ROM or outside its memory. `view()` gives a
    zero-copy memoryview for bulk data (preadv/pwritev); whoever writes guest RAM through a view
    calls `notify_write()` afterwards so that translated code over that range is dropped.
    """

    def __init__(self, ram_size: int, ranges: list[RamRange] | None = None):
        self.size = ram_size
        self.ranges = ranges if ranges is not None else pc_ram_layout(ram_size)
        self.buf = mmap.mmap(-1, ram_size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            # Transparent huge pages where the host offers them on request, as QEMU asks for
            # guest RAM: a request's copy between RAM and the page cache then walks few TLB
            # entries (1 MiB requests at 16 in flight move about 5-10% more per second).
            try:
                self.buf.madvise(mmap.MADV_HUGEPAGE)
            except OSError:
                pass
        self._mv = memoryview(self.buf)
        self._starts = [r.gpa for r in self.ranges]
        self._write_listeners: list[Callable[[int, int], None]] = []
        self._code_maps: list[int] = []           # per listener, see add_write_listener
        self._map_listeners: list[Callable[[], None]] = []

    # -- windows that come and go (chipset shadow RAM) ------------------------------------------
    def add_range(self, rng: RamRange) -> None:
        """Expose more of the buffer at a guest-physical range (e.g. the RAM under the BIOS area
        that the i440FX PAM registers switch in). It must not overlap a current range."""
        self.update_ranges([], [rng])

    def remove_range(self, gpa: int) -> None:
        """Withdraw the window that add_range() put at `gpa` (DMA there fails again)."""
        self.update_ranges([gpa], [])

    def update_ranges(self, remove: list[int], add: list[RamRange]) -> None:
        """Withdraw the windows at the `remove` addresses and expose `add`, as one change of the
        map: the map listeners run once, after it (a device never sees a half-updated map)."""
        ranges = [r for r in self.ranges if r.gpa not in remove]
        for rng in add:
            if rng.size <= 0 or rng.host_offset < 0 or rng.host_offset + rng.size > self.size:
                raise ValueError(f"RAM window {rng.gpa:#x}+{rng.size:#x} is outside the buffer")
            if any(r.gpa < rng.end and rng.gpa < r.end for r in ranges):
                raise ValueError(f"RAM window {rng.gpa:#x}+{rng.size:#x} overlaps guest RAM")
            ranges.append(rng)
        self.ranges = sorted(ranges, key=lambda r: r.gpa)
        self._starts = [r.gpa for r in self.ranges]
        for fn in self._map_listeners:
            fn()

    def add_map_listener(self, fn: Callable[[], None]) -> None:
        """fn() runs after every change of the map (QEMU's memory listener commit): devices that
        cache where their rings are look them up again."""
        self._map_listeners.append(fn)

    # -- translation ---------------------------------------------------------------------
    def host_offset(self, gpa: int, length: int, write: bool = False) -> int:
        """Offset into `buf` of [gpa, gpa+length), or GuestMemoryError if not wholly in RAM
        (with `write`, in RAM a device may write: not a read-only window)."""
        if length < 0 or gpa < 0:
            raise GuestMemoryError(f"bad guest range {gpa:#x}+{length:#x}")
        i = bisect_right(self._starts, gpa) - 1
        if i >= 0:
            r = self.ranges[i]
            if gpa + length <= r.end:
                if write and r.read_only:
                    raise GuestMemoryError(f"guest range {gpa:#x}+{length:#x} is read-only")
                return r.host_offset + (gpa - r.gpa)
        raise GuestMemoryError(f"guest range {gpa:#x}+{length:#x} is not RAM")

    def writable(self, gpa: int, length: int) -> bool:
        """Is [gpa, gpa+length) RAM a device may write?"""
        try:
            self.host_offset(gpa, length, True)
            return True
        except GuestMemoryError:
            return False

    def contains(self, gpa: int, length: int) -> bool:
        try:
            self.host_offset(gpa, length)
            return True
        except GuestMemoryError:
            return False

    # -- bulk access -----------------------------------------------------------------------
    def view(self, gpa: int, length: int) -> memoryview:
        """A zero-copy window onto guest RAM. Call notify_write() after writing through it."""
        off = self.host_offset(gpa, length)
        return self._mv[off:off + length]

    def read(self, gpa: int, length: int) -> bytes:
        off = self.host_offset(gpa, length)
        return self.buf[off:off + length]

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        off = self.host_offset(gpa, n, True)
        self._mv[off:off + n] = data
        self.notify_write(gpa, n)

    def fill(self, gpa: int, length: int, byte: int = 0) -> None:
        off = self.host_offset(gpa, length, True)
        self._mv[off:off + length] = bytes([byte]) * length
        self.notify_write(gpa, length)

    # -- little-endian scalars (ring fields); each is one read of guest memory ------------------
    def read_u8(self, gpa: int) -> int:
        return self.buf[self.host_offset(gpa, 1)]

    def read_u16(self, gpa: int) -> int:
        return _U16.unpack_from(self.buf, self.host_offset(gpa, 2))[0]

    def read_u32(self, gpa: int) -> int:
        return _U32.unpack_from(self.buf, self.host_offset(gpa, 4))[0]

    def read_u64(self, gpa: int) -> int:
        return _U64.unpack_from(self.buf, self.host_offset(gpa, 8))[0]

    def write_u8(self, gpa: int, value: int) -> None:
        self.buf[self.host_offset(gpa, 1, True)] = value & 0xFF
        self.notify_write(gpa, 1)

    def write_u16(self, gpa: int, value: int) -> None:
        _U16.pack_into(self.buf, self.host_offset(gpa, 2, True), value & 0xFFFF)
        self.notify_write(gpa, 2)

    def write_u32(self, gpa: int, value: int) -> None:
        _U32.pack_into(self.buf, self.host_offset(gpa, 4, True), value & 0xFFFFFFFF)
        self.notify_write(gpa, 4)

    def write_u64(self, gpa: int, value: int) -> None:
        _U64.pack_into(self.buf, self.host_offset(gpa, 8, True), value & 0xFFFFFFFFFFFFFFFF)
        self.notify_write(gpa, 8)

    # -- coherence with translated code ------------------------------------------------------
    def add_write_listener(self, fn: Callable[[int, int], None], code_map: int = 0) -> None:
        """fn(gpa, length) runs after every host-side write into guest RAM (the CPU layer uses it
        to drop translated code; tests use it to watch DMA). `code_map`, for a listener that
        acts only on writes to pages holding translated code: the address of its byte per page
        of the buffer, non-zero where code is (native/storepath.c keeps one)."""
        self._write_listeners.append(fn)
        self._code_maps.append(code_map)

    def native_write_filter(self) -> int | None:
        """For native code writing guest RAM without calling notify_write (the virtio-blk fast
        path): None when some listener must hear of every write; else the address of the one
        page map whose marked pages it must leave to notify_write, or 0 when nobody listens."""
        if "notify_write" in self.__dict__:      # replaced on the object: a test watches
            return None
        maps = self._code_maps
        if not maps:
            return 0
        if len(maps) == 1 and maps[0]:
            return maps[0]
        return None

    def notify_write(self, gpa: int, length: int) -> None:
        for fn in self._write_listeners:
            fn(gpa, length)


# --------------------------------------------------------------------------------------------
# Physical address space (MMIO regions)
# --------------------------------------------------------------------------------------------

@dataclass(eq=False)
class MmioRegion:
    """A device's window in the physical address space. Base and size are page multiples
    (Unicorn maps whole 4 KiB pages); `active` is False while it conflicts with another region."""
    name: str
    base: int
    size: int
    ops: DeviceOps
    active: bool = field(default=False)

    @property
    def end(self) -> int:
        return self.base + self.size

    def overlaps(self, base: int, size: int) -> bool:
        return self.base < base + size and base < self.end


class MemoryMapBackend(Protocol):
    """What the CPU layer implements to mirror the map into the engine."""
    def map_mmio(self, region: MmioRegion) -> None: ...
    def unmap_mmio(self, region: MmioRegion) -> None: ...


class MemoryMap:
    """The physical address space as the devices see it: RAM ranges (fixed at build time) plus
    MMIO regions that come and go (PCI BARs). A region that would overlap RAM or another active
    region is kept but not mapped, and reported under `-d guest_errors`, until the conflict goes
    away: a guest that programs overlapping BARs gets a dead BAR, not a crashed emulator."""

    def __init__(self, ram: GuestMemory | None = None, reserved: list[tuple[int, int, str]] | None = None):
        self.ram = ram
        # Fixed, non-MMIO ranges (RAM, ROM) that no BAR may cover: (base, size, name).
        self.reserved: list[tuple[int, int, str]] = list(reserved or [])
        if ram is not None:
            self.reserved += [(r.gpa, r.size, "ram") for r in ram.ranges]
        self.regions: list[MmioRegion] = []
        self.backend: MemoryMapBackend | None = None

    def attach(self, backend: MemoryMapBackend) -> None:
        self.backend = backend
        for r in self.regions:
            if r.active:
                backend.map_mmio(r)

    def _conflict(self, region: MmioRegion) -> str | None:
        for base, size, name in self.reserved:
            if region.overlaps(base, size):
                return name
        for other in self.regions:
            if other is not region and other.active and region.overlaps(other.base, other.size):
                return other.name
        return None

    def add(self, name: str, base: int, size: int, ops: DeviceOps) -> MmioRegion:
        if base % PAGE or size % PAGE or size == 0:
            raise ValueError(f"MMIO region {name} at {base:#x}+{size:#x} is not page aligned")
        region = MmioRegion(name, base, size, ops)
        self.regions.append(region)
        self._try_activate(region)
        return region

    def remove(self, region: MmioRegion) -> None:
        if region not in self.regions:
            return
        self.regions.remove(region)
        if region.active:
            region.active = False
            if self.backend is not None:
                self.backend.unmap_mmio(region)
            for other in self.regions:
                if not other.active:
                    self._try_activate(other)

    def _try_activate(self, region: MmioRegion) -> None:
        clash = self._conflict(region)
        if clash is not None:
            trace.guest_error(f"{region.name} at {region.base:#x}+{region.size:#x} overlaps {clash}: not mapped")
            return
        region.active = True
        if self.backend is not None:
            self.backend.map_mmio(region)

    def find(self, addr: int) -> MmioRegion | None:
        for r in self.regions:
            if r.active and r.base <= addr < r.end:
                return r
        return None

    # Python-side dispatch (used by tests, the debugger's physical reads and the PCI_CFG window).
    def read(self, addr: int, size: int) -> int:
        r = self.find(addr)
        return ones(size) if r is None else r.ops.read(addr - r.base, size)

    def write(self, addr: int, size: int, value: int) -> None:
        r = self.find(addr)
        if r is not None:
            r.ops.write(addr - r.base, size, value)


# --------------------------------------------------------------------------------------------
# Port I/O space
# --------------------------------------------------------------------------------------------

@dataclass(eq=False)
class IoRange:
    name: str
    base: int
    size: int
    ops: DeviceOps


class _Unclaimed:
    """Ports nobody decodes: reads float high, writes vanish."""
    def read(self, offset: int, size: int) -> int:
        return ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        pass


class IoSpace:
    """The 64 KiB x86 port space. A flat table from port to range makes each IN/OUT one list
    index; later registrations win over earlier ones for the ports they cover (PCI I/O BARs
    over open bus), and removing a range restores whatever it covered."""

    SIZE = 0x10000

    def __init__(self):
        self._unclaimed = IoRange("unclaimed", 0, self.SIZE, _Unclaimed())
        self._table: list[IoRange] = [self._unclaimed] * self.SIZE
        self.ranges: list[IoRange] = []

    def add(self, name: str, base: int, size: int, ops: DeviceOps) -> IoRange:
        if base < 0 or size <= 0 or base + size > self.SIZE:
            raise ValueError(f"I/O range {name} at {base:#x}+{size:#x} is outside the port space")
        rng = IoRange(name, base, size, ops)
        self.ranges.append(rng)
        for p in range(base, base + size):
            self._table[p] = rng
        return rng

    def remove(self, rng: IoRange) -> None:
        if rng not in self.ranges:
            return
        self.ranges.remove(rng)
        for p in range(rng.base, rng.base + rng.size):
            self._table[p] = self._unclaimed
        for other in self.ranges:            # re-expose what the removed range was hiding
            for p in range(max(other.base, rng.base), min(other.base + other.size, rng.base + rng.size)):
                self._table[p] = other

    def lookup(self, port: int) -> IoRange:
        return self._table[port & 0xFFFF]

    def read(self, port: int, size: int) -> int:
        rng = self._table[port & 0xFFFF]
        return rng.ops.read(port - rng.base, size) & ones(size)

    def write(self, port: int, size: int, value: int) -> None:
        rng = self._table[port & 0xFFFF]
        rng.ops.write(port - rng.base, size, value & ones(size))
