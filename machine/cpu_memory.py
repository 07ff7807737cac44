"""Physical memory as the CPU sees it, and the translated code that depends on it.

* guest RAM (the GuestMemory mmap, mapped zero-copy), the firmware ROM at the top of 4 GiB with
  its isa-bios alias below 1 MiB, and the chipset's shadow-RAM windows under 0xA0000-0xFFFFF;
* the MemoryMap's MMIO regions (this is its backend), and open bus (all-ones) everywhere else;
* code invalidation: a host write into RAM (DMA, loaders, the debugger) drops the translated
  code there, once per callback.

The Cpu owns one CpuMemory (`cpu.physmem`) over its engine; the CPU-instruction side of ROM
writes (skipping the storing instruction) stays in cpu.py.
"""

from __future__ import annotations

import ctypes
import mmap
from bisect import bisect_right
from typing import Callable

from unicorn import Uc, UcError
from unicorn import unicorn_const as UC

from . import region_cache, store_path, trace
from . import unicorn_internals as ui
from .memory import PAGE, GuestMemory, GuestMemoryError, MmioRegion, ones

FOUR_GIB = 1 << 32
ISA_BIOS_MAX = 128 * 1024        # the part of the ROM also visible just below 1 MiB


class MemoryAccessError(ValueError):
    """A debugger access to a virtual range that is unmapped or not RAM/ROM (MMIO is refused so
    that a debugger read never triggers a device side effect)."""


class CpuMemory:
    """The physical address space of one engine. `sync_clock()` is called before every MMIO
    access (devices see the time of the access)."""

    MAX_OPEN_BUS_PAGES = 65536   # lazily mapped all-ones pages; beyond this, accesses are fatal

    def __init__(self, uc: Uc, mem: GuestMemory, sync_clock: Callable[[], None],
                 raw: ui.RawState | None = None):
        self.uc = uc
        self._raw = raw if raw is not None else ui.RawState(uc)
        self.mem = mem
        self._sync_clock = sync_clock
        self._rom: mmap.mmap | None = None
        self._rom_pristine = b""
        self._rom_ranges: list[tuple[int, int, int]] = []   # (gpa, size, offset in rom)
        self._ro_ram: list[tuple[int, int, int]] = []       # read-only RAM windows (gpa, size, offset in RAM)
        self._legacy_ram: list[tuple[int, int, int]] = []   # every RAM window set_legacy_window mapped
        self._wo_windows: dict[int, tuple[int, int]] = {}   # write-only shadow windows: gpa -> (size, RAM offset)
        self.layout_listener: Callable[[], None] | None = None   # told when direct_ranges() changes
        self._open_bus: set[int] = set()                     # page addresses mapped as all-ones
        self.callback_depth = 0                             # inside a device callback (nested)
        self.flush_pending = False
        self._dirty: list[tuple[int, int]] = []             # host-written ranges, see on_host_write
        self._remove_code = ui.code_remover(uc)
        self._raw = ui.RawState(uc)                         # for identity_walks around mem_unmap
        self._ram_ranges_seen: list | None = None          # mem.ranges the starts below are of
        self._ram_starts: list[int] = []
        self.paging = False                                 # CR0.PG, as the CPU last saw it
        self.map_ram()
        # From here on every map change goes through the cache's guard (region_cache.py).
        self.region_cache = region_cache.attach(uc)
        # Stores to base RAM without translated code on the TLB fast path (store_path.py).
        self._base_ram = [(r.gpa, r.size, r.host_offset) for r in mem.ranges]
        self.store_path = store_path.attach(uc, ctypes.addressof(self._ram_export), mem.size,
                                            self._base_ram)
        if self.store_path is not None:
            mem.add_map_listener(self._sync_store_path)
        # With the store path's record of code pages, writes elsewhere need nothing of us.
        mem.add_write_listener(self.on_host_write,
                               self.store_path.code_map if self.store_path is not None else 0)

    def _sync_store_path(self) -> None:
        """The RAM map changed: the fast path covers what is still base RAM (windows added
        later, like the chipset's shadow RAM, stay on Unicorn's own path)."""
        if self.store_path is not None:
            now = {(r.gpa, r.size, r.host_offset) for r in self.mem.ranges}
            self.store_path.set_ranges([r for r in self._base_ram if r in now])

    def reset(self) -> None:
        """A reset restores the ROM's bytes (a ROM is never written, but its copy here could be
        through a shadow window) and forgets paging."""
        if self._rom is not None:
            self._rom[:] = self._rom_pristine
        self.paging = False

    def read_physical(self, pa: int, n: int) -> bytes | None:
        """n bytes at a physical address wholly in RAM, ROM or a shadow-RAM window the CPU
        sees; None for anything else (MMIO, unassigned: a read there could have side effects)."""
        if self.mem.contains(pa, n):
            return self.mem.read(pa, n)
        for gpa, sz, off in self._rom_ranges:
            if gpa <= pa and pa + n <= gpa + sz:
                return bytes(self._rom[off + pa - gpa: off + pa - gpa + n])
        for gpa, sz, off in self._legacy_ram:      # shadow RAM the CPU sees, DMA not
            if gpa <= pa and pa + n <= gpa + sz:
                return bytes(self.mem.buf[off + pa - gpa: off + pa - gpa + n])
        return None

    def map_ram(self) -> None:
        # Holding the export keeps the buffer pinned: it can never be resized or closed while
        # Unicorn points into it.
        self._ram_export = ctypes.c_char.from_buffer(self.mem.buf)
        base = ctypes.addressof(self._ram_export)
        for r in self.mem.ranges:
            self.uc.mem_map_ptr(r.gpa, r.size, UC.UC_PROT_ALL, base + r.host_offset)

    LEGACY_HOLE = (0xA0000, 0x100000)

    def direct_ranges(self) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """(readable, writable): guest-physical ranges (gpa, size, host address) where a plain
        CPU load, respectively store, is exactly a host memory access, as mapped right now: RAM,
        ROM (reads), the shadow windows below 1 MiB by their mode. Everything else (MMIO, open
        bus, the bus side of a window) is in neither list."""
        ram = ctypes.addressof(self._ram_export)
        lo, hi = self.LEGACY_HOLE
        plain = [(r.gpa, r.size, ram + r.host_offset) for r in self.mem.ranges
                 if r.gpa + r.size <= lo or r.gpa >= hi]
        readable = plain + [(g, s, ram + off) for g, s, off in self._legacy_ram]
        if self._rom is not None:
            rom = ctypes.addressof(self._rom_export)
            readable += [(g, s, rom + off) for g, s, off in self._rom_ranges]
        ro = {g for g, _, _ in self._ro_ram}
        writable = plain + [(g, s, ram + off) for g, s, off in self._legacy_ram if g not in ro]
        writable += [(g, s, ram + off) for g, (s, off) in self._wo_windows.items()]
        return readable, writable

    def load_firmware(self, image: bytes) -> None:
        """Map the firmware ROM read-only at [4G - size, 4G) and its last min(size, 128 KiB)
        again ending at 1 MiB (the isa-bios alias real-mode code starts from). A guest write to
        either is ignored (see `_skip_rom_write`). The chipset's shadow RAM controls may later
        show RAM instead of parts of the alias (`set_legacy_window`)."""
        size = len(image)
        if size == 0 or size % PAGE or size > 16 * 1024 * 1024:
            raise ValueError("firmware size must be a non-zero multiple of 4 KiB, at most 16 MiB")
        for gpa, sz, _ in self._rom_ranges:
            self._unmap_range(gpa, sz)
        self._rom = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._rom[:] = image
        self._rom_pristine = bytes(image)
        self._rom_export = ctypes.c_char.from_buffer(self._rom)       # pinned, as RAM is
        ptr = ctypes.addressof(self._rom_export)
        alias = min(size, ISA_BIOS_MAX)
        self._rom_ranges = [(FOUR_GIB - size, size, 0), (0x100000 - alias, alias, size - alias)]
        for gpa, sz, off in self._rom_ranges:
            self._drop_open_bus(gpa, sz)
            self.uc.mem_map_ptr(gpa, sz, UC.UC_PROT_READ | UC.UC_PROT_EXEC, ptr + off)
        self.uc.ctl_flush_tb()
        if self.layout_listener is not None:
            self.layout_listener()

    def rom_ranges(self) -> list[tuple[int, int]]:
        return [(g, s) for g, s, _ in self._rom_ranges]

    # Shadow RAM below 1 MiB -----------------------------------------------------------------
    # The chipset (i440FX PAM and SMRAM registers, machine/shadow.py) decides per segment of
    # 0xA0000-0xFFFFF whether the CPU sees the bus there (the ROM alias, or nothing), or the RAM
    # under it read-write, read-only or write-only. Modes:
    #   'bus'     the isa-bios ROM alias where the image reaches, open bus elsewhere
    #   'ram'     RAM (buffer offset `ram_offset`), read-write
    #   'ram_ro'  RAM for reads and code; writes go to the bus and are ignored, as ROM writes
    #   'ram_wo'  reads (and code fetches) go to the bus, writes to RAM. Unicorn cannot fetch
    #             code from a split mapping, so this one is an MMIO window: data only.
    LEGACY_MODES = ("bus", "ram", "ram_ro", "ram_wo")

    def set_legacy_window(self, base: int, size: int, mode: str, ram_offset: int) -> None:
        if mode not in self.LEGACY_MODES:
            raise ValueError(f"unknown shadow mode {mode!r}")
        if base % PAGE or size % PAGE or not 0 <= ram_offset <= self.mem.size - size:
            raise ValueError(f"bad shadow window {base:#x}+{size:#x}")
        self._unmap_range(base, size)
        self._rom_ranges = _cut(self._rom_ranges, base, size)
        self._ro_ram = _cut(self._ro_ram, base, size)
        self._legacy_ram = _cut(self._legacy_ram, base, size)
        ram_ptr = ctypes.addressof(self._ram_export) + ram_offset
        try:
            if mode == "ram":
                self.uc.mem_map_ptr(base, size, UC.UC_PROT_ALL, ram_ptr)
                self._legacy_ram.append((base, size, ram_offset))
            elif mode == "ram_ro":
                self.uc.mem_map_ptr(base, size, UC.UC_PROT_READ | UC.UC_PROT_EXEC, ram_ptr)
                self._ro_ram.append((base, size, ram_offset))
                self._legacy_ram.append((base, size, ram_offset))
            elif mode == "ram_wo":
                self._map_write_only(base, size, ram_offset)
            else:
                self._map_rom_alias(base, size)
        except UcError as exc:
            trace.guest_error(f"shadow window {base:#x}+{size:#x} ({mode}) cannot be mapped: {exc}")
        # Translated code is keyed by where Unicorn found it, and the bytes behind these
        # addresses just changed owner: drop it all (PAM changes are rare).
        self.uc.ctl_flush_tb()
        if self.layout_listener is not None:
            self.layout_listener()

    def _rom_alias_window(self) -> tuple[int, int, int]:
        """(gpa, size, rom offset) of the isa-bios alias: the last 128 KiB at most, below 1 MiB."""
        size = len(self._rom_pristine)
        alias = min(size, ISA_BIOS_MAX)
        return 0x100000 - alias, alias, size - alias

    def _map_rom_alias(self, base: int, size: int) -> None:
        if self._rom is None:
            return
        a_base, a_size, a_off = self._rom_alias_window()
        lo, hi = max(base, a_base), min(base + size, a_base + a_size)
        if lo >= hi:
            return                                      # open bus (mapped lazily on access)
        off = a_off + lo - a_base
        ptr = ctypes.addressof(self._rom_export) + off
        self.uc.mem_map_ptr(lo, hi - lo, UC.UC_PROT_READ | UC.UC_PROT_EXEC, ptr)
        self._rom_ranges.append((lo, hi - lo, off))

    def _bus_reader(self, base: int):
        """What a data read of the bus returns at base+offset: the ROM alias, or all-ones."""
        a_base, a_size, a_off = self._rom_alias_window() if self._rom is not None else (0, 0, 0)

        def read(offset: int, size: int) -> int:
            value = 0
            for k in range(size):
                gpa = base + offset + k
                byte = self._rom[a_off + gpa - a_base] if a_base <= gpa < a_base + a_size else 0xFF
                value |= byte << (8 * k)
            return value
        return read

    def _map_write_only(self, base: int, size: int, ram_offset: int) -> None:
        bus_read = self._bus_reader(base)
        buf = self.mem.buf

        def write(offset, sz, value):
            off = ram_offset + offset
            buf[off:off + sz] = (value & ((1 << (8 * sz)) - 1)).to_bytes(sz, "little")

        ui.mmio_map(self.uc, base, size, bus_read, write)
        self._wo_windows[base] = (size, ram_offset)

    def _mem_unmap(self, base: int, size: int) -> None:
        # Unicorn drops translated code there through a page walk that would clobber CR2 and
        # leave a phantom #PF pending when paging is on (see identity_walks).
        with ui.identity_walks(self.uc, self._raw):
            self.uc.mem_unmap(base, size)

    def _unmap_range(self, base: int, size: int) -> None:
        """Unmap whatever is mapped in [base, base+size): RAM/ROM pieces, open-bus pages and
        write-only windows (each whole)."""
        self._drop_open_bus(base, size)
        for gpa, (sz, _) in list(self._wo_windows.items()):
            if gpa < base + size and base < gpa + sz:
                self._mem_unmap(gpa, sz)
                ui.forget_mmio_callbacks(self.uc, gpa, sz)
                del self._wo_windows[gpa]
        end = base + size
        for begin, last, _perms in list(self.uc.mem_regions()):
            lo, hi = max(begin, base), min(last + 1, end)
            if lo < hi:
                self._mem_unmap(lo, hi - lo)

    # MemoryMap backend ---------------------------------------------------------------------
    def map_mmio(self, region: MmioRegion) -> None:
        ops = region.ops
        mem = self

        ops_read, ops_write = ops.read, ops.write
        sync = self._sync_clock

        def read(offset, size):
            mem.callback_depth += 1
            sync()
            try:
                return ops_read(offset, size)
            finally:
                mem.callback_depth -= 1
                if mem.flush_pending:
                    mem.flush_now()

        def write(offset, size, value):
            mem.callback_depth += 1
            sync()
            try:
                ops_write(offset, size, value)
            finally:
                mem.callback_depth -= 1
                if mem.flush_pending:
                    mem.flush_now()

        self._drop_open_bus(region.base, region.size)
        try:
            # A device may put native code in front of its writes (virtio-blk's notify).
            ui.mmio_map(self.uc, region.base, region.size, read, write,
                        getattr(ops, "native_write_front", None))
        except UcError as exc:
            trace.guest_error(f"cannot map {region.name} at {region.base:#x}+{region.size:#x}: {exc}")

    def unmap_mmio(self, region: MmioRegion) -> None:
        try:
            self._mem_unmap(region.base, region.size)
        except UcError:
            pass
        ui.forget_mmio_callbacks(self.uc, region.base, region.size)

    # Open bus: an access to nothing maps an all-ones page there on first touch (lazy pages).
    # Chosen over one big all-ones MMIO region over the holes because it needs no carving when
    # BARs move and covers every address (also above 4 GiB) with no up-front mapping.
    def on_unmapped(self, uc, access, address, size, value, _ud) -> bool:
        page = address & ~(PAGE - 1)
        if len(self._open_bus) >= self.MAX_OPEN_BUS_PAGES:
            return False
        trace.guest_error(f"access to unassigned physical address {address:#x} (open bus)")
        pages = [page]
        if (address + size - 1) & ~(PAGE - 1) != page:        # access straddles two pages
            pages.append(page + PAGE)
        for p in pages:
            if p in self._open_bus:
                continue
            try:
                ui.mmio_map(uc, p, PAGE, _open_bus_read, _open_bus_write)
            except UcError:
                continue        # already mapped (the other page), or beyond the physical space
            self._open_bus.add(p)
        return True

    def _drop_open_bus(self, base: int, size: int) -> None:
        if not self._open_bus:
            return
        for p in [p for p in self._open_bus if base <= p < base + size]:
            self._mem_unmap(p, PAGE)
            ui.forget_mmio_callbacks(self.uc, p, PAGE)
            self._open_bus.discard(p)

    def is_read_only(self, addr: int) -> bool:
        """ROM, or RAM the chipset shows read-only: writes there are ignored."""
        return any(g <= addr < g + s for g, s, _ in self._rom_ranges) \
            or any(g <= addr < g + s for g, s, _ in self._ro_ram)

    # Host writes into RAM (DMA, loaders, the debugger) are invisible to Unicorn's translated
    # code: drop it, unless no code was ever translated on the pages written (store_path.py
    # keeps that record; most DMA lands in data pages). ctl_remove_cache takes a virtual address, so with paging on (virtual !=
    # physical) the only safe choice is a full flush.
    # Inside a device callback the work is deferred to the callback's return, still before the
    # guest's next instruction: a virtio request writes its data buffer, status byte and several
    # used-ring fields, and each removal costs ~2 µs, so we only note the ranges here and drop
    # each run of touching pages once (_flush_now), or flush everything once with paging on.
    def on_host_write(self, gpa: int, length: int) -> None:
        if length <= 0:
            return
        sp = self.store_path
        if sp is not None:         # no code was ever translated there: nothing to drop
            try:
                if not sp.holds_code(self.mem.host_offset(gpa, length), length):
                    return
            except GuestMemoryError:
                pass
        if self.callback_depth:
            self.flush_pending = True
            if not self.paging:
                self._dirty.append((gpa, gpa + length))
        elif not self.paging:
            self._remove_code(gpa, gpa + length)
        else:
            self.uc.ctl_flush_tb()

    def flush_now(self) -> None:
        if self.callback_depth == 0:
            self.flush_pending = False
            dirty = self._dirty
            if self.paging or not dirty:
                dirty.clear()
                self.uc.ctl_flush_tb()
                return
            self._dirty = []
            self._drop_code_in(dirty)

    def _drop_code_in(self, ranges: list[tuple[int, int]]) -> None:
        """Drop translated code over byte ranges, one removal per run of touching pages (the
        bytes between two ranges of a run lose their code too: harmless, only slower code).
        A run never crosses from one RAM range into another: Unicorn turns the start address
        into its own RAM offset and invalidates from there, and two RAM ranges that touch in
        guest-physical space (shadow RAM below 1 MiB) need not touch in that offset space."""
        remove = self._remove_code
        if len(ranges) == 1:
            begin, end = ranges[0]
            remove(begin, end)
            return
        ranges.sort()
        mem_ranges = self.mem.ranges
        if mem_ranges is not self._ram_ranges_seen:        # GuestMemory replaces the list on change
            self._ram_ranges_seen = mem_ranges
            self._ram_starts = [r.gpa for r in mem_ranges]
        starts = self._ram_starts
        begin, end = ranges[0]
        block = bisect_right(starts, begin)
        for b, e in ranges:
            if (b >> 12) <= ((end - 1) >> 12) + 1 and (b < end or bisect_right(starts, b) == block):
                if e > end:
                    end = e
            else:
                remove(begin, end)
                begin, end = b, e
                block = bisect_right(starts, b)
        remove(begin, end)

    def invalidate_code(self) -> None:
        self.uc.ctl_flush_tb()


def _cut(ranges: list[tuple[int, int, int]], base: int, size: int) -> list[tuple[int, int, int]]:
    """(gpa, size, offset) windows minus [base, base+size); a window cut in two keeps both
    ends, their offsets adjusted."""
    out = []
    end = base + size
    for gpa, sz, off in ranges:
        if gpa + sz <= base or end <= gpa:
            out.append((gpa, sz, off))
            continue
        if gpa < base:
            out.append((gpa, base - gpa, off))
        if end < gpa + sz:
            out.append((end, gpa + sz - end, off + end - gpa))
    return out


def _open_bus_read(offset, size) -> int:
    return ones(size)


def _open_bus_write(offset, size, value) -> None:
    pass
