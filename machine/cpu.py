"""The CPU: a Unicorn x86 engine made to behave like a PC processor.

Unicorn executes instructions; this module supplies what a bare engine lacks on a PC:
* power-on state: a UC_MODE_64 engine (the only one that can resume protected/long-mode code
  after a stop) reset by hand to real mode at F000:FFF0;
* interrupt and exception delivery through the IVT (real mode) and the IDT (32-bit protected
  and long mode) for `int n`, CPU faults (with error code and CR2) and hardware IRQs; a fault
  while delivering becomes #DF, a fault while delivering #DF is a triple fault;
* physical memory: guest RAM (the GuestMemory mmap, zero-copy), the firmware ROM at the top of
  4 GiB with its isa-bios alias below 1 MiB, MMIO regions mirrored from the MemoryMap, open bus
  (all-ones) everywhere else, IN/OUT dispatched to the IoSpace;
* CPUID with a stable feature set matching the devices we model, RDTSC from virtual time;
* debugger services: registers by name, virtual memory access, breakpoints, single step.

Run model: the board calls `run(count)` with count > 0 (always: see unicorn_internals) and acts on
the returned `SliceResult` between slices. Device callbacks never stop the engine (Unicorn would
replay the instruction); they only record, and `request_stop_after_instruction()` ends the slice
cleanly right after the current instruction.

Only this module and unicorn_internals import unicorn.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from bisect import bisect_right
from dataclasses import dataclass

from unicorn import Uc, UcError
from unicorn import unicorn_const as UC
from unicorn import x86_const as X

from . import trace
from . import unicorn_internals as ui
from .clock import VirtualClock
from .x86 import log
from .memory import PAGE, GuestMemory, IoSpace, MemoryMap, MmioRegion, ones

FOUR_GIB = 1 << 32
ISA_BIOS_MAX = 128 * 1024        # the part of the ROM also visible just below 1 MiB
# Virtual time one IN/OUT takes, on top of its instruction: about what a cycle on the ISA/LPC bus
# costs on real hardware. Without it a guest polling a port for time to pass (the PIT channel 2
# calibration loop of every BIOS) would spin about 1000 times more often than on a real PC, each
# spin a Python callback.
IO_PORT_NS = 1000

# Exceptions that push an error code (when raised by the CPU, never for `int n`).
ERROR_CODE_VECTORS = frozenset((8, 10, 11, 12, 13, 14, 17, 21))
VEC_DF = 8

EFLAGS_TF = 1 << 8
EFLAGS_IF = 1 << 9
EFLAGS_NT = 1 << 14
EFLAGS_RF = 1 << 16
EFLAGS_VM = 1 << 17
EFLAGS_AC = 1 << 18

EV_INT = trace.Event("cpu_interrupt", "vector={vector:#x} kind={kind} mode={mode} err={err}")

_SEG_REGS = {"es": X.UC_X86_REG_ES, "cs": X.UC_X86_REG_CS, "ss": X.UC_X86_REG_SS,
             "ds": X.UC_X86_REG_DS, "fs": X.UC_X86_REG_FS, "gs": X.UC_X86_REG_GS}
_GPRS = {name: getattr(X, f"UC_X86_REG_{name.upper()}") for name in (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "eflags",
    "cr0", "cr2", "cr3", "cr4", "fs_base", "gs_base")}
# 32-bit names are views of the 64-bit registers (the debugger's i386 target uses them).
_ALIASES32 = {"eax": "rax", "ebx": "rbx", "ecx": "rcx", "edx": "rdx", "esi": "rsi", "edi": "rdi",
              "ebp": "rbp", "esp": "rsp", "eip": "rip"}
_REG_RAX, _REG_RCX, _REG_RDX, _REG_RBX = X.UC_X86_REG_RAX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_RBX
_REG_RIP, _REG_RSP, _REG_EFLAGS = X.UC_X86_REG_RIP, X.UC_X86_REG_RSP, X.UC_X86_REG_EFLAGS
_REG_RSI, _REG_RDI = X.UC_X86_REG_RSI, X.UC_X86_REG_RDI
EFER = 0xC0000080


class MemoryAccessError(ValueError):
    """A debugger access to a virtual range that is unmapped or not RAM/ROM (MMIO is refused so
    that a debugger read never triggers a device side effect)."""


class _DeliveryFault(Exception):
    """Delivering an interrupt faulted. `vector`/`error` is the exception the CPU raises for it
    (#GP, #NP with the IDT/selector error code), or vector None for faults we do not model in
    detail (a page fault while pushing the frame): those go straight to #DF."""

    def __init__(self, message: str, vector: int | None = None, error: int = 0):
        super().__init__(message)
        self.vector = vector
        self.error = error


_CPUID_ZERO = (0, 0, 0, 0)
CONTRIBUTORY = frozenset((0, 10, 11, 12, 13))
VEC_NP, VEC_GP, VEC_PF = 11, 13, 14


@dataclass
class SliceResult:
    """Why `Cpu.run()` returned.
    kind: 'count' (budget used up), 'halt' (HLT executed), 'stop' (a stop was requested),
          'breakpoint' (at `address`), 'fatal' (`report` says why; the guest cannot go on),
          'triple_fault' (`report` says why).
    retired: instructions executed in this slice.
    io_ns: virtual time the slice's port accesses took (see IO_PORT_NS); the slice lasted
          retired + io_ns nanoseconds."""
    kind: str
    retired: int
    address: int = 0
    report: str = ""
    io_ns: int = 0


# ------------------------------------------------------------------------------------------
# CPUID: a fixed, modest feature set that TCG implements and our board backs
# ------------------------------------------------------------------------------------------

def _regs4(s: bytes) -> tuple[int, ...]:
    return struct.unpack("<4I", s.ljust(16, b"\0"))


_BRAND = b"Python PC emulator virtual CPU".ljust(48, b"\0")
# leaf 1 EDX: FPU DE PSE TSC MSR PAE CX8 [APIC] SEP PGE CMOV PAT PSE36 CLFSH MMX FXSR SSE SSE2
_LEAF1_EDX = sum(1 << b for b in (0, 2, 3, 4, 5, 6, 8, 11, 13, 15, 16, 17, 19, 23, 24, 25, 26))
# leaf 1 ECX: SSE3 SSSE3 CX16 SSE4.1 SSE4.2 POPCNT, hypervisor; no x2APIC, no TSC-deadline, no XSAVE
_LEAF1_ECX = sum(1 << b for b in (0, 9, 13, 19, 20, 23, 31))


def cpuid_table(apic: bool) -> dict[int, tuple[int, int, int, int]]:
    """(eax, ebx, ecx, edx) per leaf. Unlisted leaves answer zeros."""
    vendor = b"GenuineIntel"
    hv = b"PyPCemulator"
    brand = [_regs4(_BRAND[i:i + 16]) for i in (0, 16, 32)]
    return {
        0x0: (0x7, *struct.unpack("<I", vendor[0:4]), *struct.unpack("<I", vendor[8:12]),
              *struct.unpack("<I", vendor[4:8])),
        # family 6 model 0x3c stepping 3; 1 logical CPU, APIC ID 0, CLFLUSH line 64 bytes
        0x1: (0x000306C3, (1 << 16) | (8 << 8), _LEAF1_ECX, _LEAF1_EDX | ((1 << 9) if apic else 0)),
        0x40000000: (0x40000000, *struct.unpack("<3I", hv)),
        0x80000000: (0x80000008, 0, 0, 0),
        0x80000001: (0, 0, 1, (1 << 11) | (1 << 20) | (1 << 29)),   # LAHF; SYSCALL NX LM
        0x80000002: brand[0], 0x80000003: brand[1], 0x80000004: brand[2],
        0x80000008: (0x3024, 0, 0, 0),                              # 36-bit physical, 48-bit virtual
    }


# ------------------------------------------------------------------------------------------
# The CPU
# ------------------------------------------------------------------------------------------

class Cpu:
    """One x86 CPU attached to guest RAM, the physical memory map and the port I/O space.

    `clock` gives virtual time to RDTSC (1 instruction = 1 ns; the TSC ticks at 1 GHz)."""

    MAX_OPEN_BUS_PAGES = 65536   # lazily mapped all-ones pages; beyond this, accesses are fatal

    def __init__(self, mem: GuestMemory, memory_map: MemoryMap, io: IoSpace, clock: VirtualClock,
                 apic: bool = False):
        ui.self_test()
        self.mem = mem
        self.memory_map = memory_map
        self.io = io
        self.clock = clock
        self.uc = uc = Uc(UC.UC_ARCH_X86, UC.UC_MODE_64)
        self._raw = ui.RawState(uc)
        self._reg = ui.RawReg(uc)
        self._counter = ui.emu_counter(uc)
        self._budget = ui.emu_count(uc)                     # lowered to stop after an instruction
        self._cpuid = cpuid_table(apic)
        self._rom: mmap.mmap | None = None
        self._rom_pristine = b""
        self._rom_ranges: list[tuple[int, int, int]] = []   # (gpa, size, offset in rom)
        self._ro_ram: list[tuple[int, int, int]] = []       # read-only RAM windows (gpa, size, offset in RAM)
        self._legacy_ram: list[tuple[int, int, int]] = []   # every RAM window set_legacy_window mapped
        self._wo_windows: dict[int, int] = {}               # write-only shadow windows: gpa -> size
        self._open_bus: set[int] = set()                     # page addresses mapped as all-ones
        self._slice_start_ns = 0
        self._io_ns = 0                                     # port access time in this slice
        self._stop_cause: str | None = None
        self._fatal_report = ""
        self._write_prot_addr: int | None = None
        self._breakpoints: dict[int, int] = {}              # linear address -> hook handle
        self._bp_hit: int | None = None
        self._bp_skip: int | None = None
        self._dead_hooks: list = []                         # callbacks kept alive after hook_del
        self._dynamic_hook: int | None = None
        self._if_watch: int | None = None                   # block hook, see watch_interrupt_enable
        self._if_waiting = False                            # an interrupt waits for IF=1
        self._if_calls = 0                                  # block starts since the watch last hit
        self._if_gave_up = False                            # the watch gave up on this wait
        self._callback_depth = 0
        self._flush_pending = False
        self._dirty: list[tuple[int, int]] = []             # host-written ranges, see _on_host_write
        self._remove_code = ui.code_remover(uc)
        self._ram_ranges_seen: list | None = None          # mem.ranges the starts below are of
        self._ram_starts: list[int] = []
        self.running = False                                # inside emu_start (hooks are live)
        self.paging = False

        self._map_ram()
        memory_map.attach(self)
        mem.add_write_listener(self._on_host_write)

        uc.hook_add(UC.UC_HOOK_INTR, self._on_intr)
        uc.hook_add(UC.UC_HOOK_INSN_INVALID, self._on_invalid)
        # The hot exits (ports, CPUID, RDTSC) bypass the binding's per-call wrappers.
        ui.hook_in(uc, self._on_in)
        ui.hook_out(uc, self._on_out)
        ui.hook_cpuid(uc, self._on_cpuid)
        ui.hook_rdtsc(uc, self._on_rdtsc)
        uc.hook_add(UC.UC_HOOK_MEM_READ_UNMAPPED | UC.UC_HOOK_MEM_WRITE_UNMAPPED, self._on_unmapped)
        uc.hook_add(UC.UC_HOOK_MEM_WRITE_PROT, self._on_write_prot)
        self.reset()

    # -------------------------------------------------------------------------------------
    # memory
    # -------------------------------------------------------------------------------------
    def _map_ram(self) -> None:
        # Holding the export keeps the buffer pinned: it can never be resized or closed while
        # Unicorn points into it.
        self._ram_export = ctypes.c_char.from_buffer(self.mem.buf)
        base = ctypes.addressof(self._ram_export)
        for r in self.mem.ranges:
            self.uc.mem_map_ptr(r.gpa, r.size, UC.UC_PROT_ALL, base + r.host_offset)

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
        self._wo_windows[base] = size

    def _unmap_range(self, base: int, size: int) -> None:
        """Unmap whatever is mapped in [base, base+size): RAM/ROM pieces, open-bus pages and
        write-only windows (each whole)."""
        self._drop_open_bus(base, size)
        for gpa, sz in list(self._wo_windows.items()):
            if gpa < base + size and base < gpa + sz:
                self.uc.mem_unmap(gpa, sz)
                ui.forget_mmio_callbacks(self.uc, gpa, sz)
                del self._wo_windows[gpa]
        end = base + size
        for begin, last, _perms in list(self.uc.mem_regions()):
            lo, hi = max(begin, base), min(last + 1, end)
            if lo < hi:
                self.uc.mem_unmap(lo, hi - lo)

    # MemoryMap backend ---------------------------------------------------------------------
    def map_mmio(self, region: MmioRegion) -> None:
        ops = region.ops
        cpu = self

        ops_read, ops_write = ops.read, ops.write
        sync = self._sync_clock

        def read(offset, size):
            cpu._callback_depth += 1
            sync()
            try:
                return ops_read(offset, size)
            finally:
                cpu._callback_depth -= 1
                if cpu._flush_pending:
                    cpu._flush_now()

        def write(offset, size, value):
            cpu._callback_depth += 1
            sync()
            try:
                ops_write(offset, size, value)
            finally:
                cpu._callback_depth -= 1
                if cpu._flush_pending:
                    cpu._flush_now()

        self._drop_open_bus(region.base, region.size)
        try:
            ui.mmio_map(self.uc, region.base, region.size, read, write)
        except UcError as exc:
            trace.guest_error(f"cannot map {region.name} at {region.base:#x}+{region.size:#x}: {exc}")

    def unmap_mmio(self, region: MmioRegion) -> None:
        try:
            self.uc.mem_unmap(region.base, region.size)
        except UcError:
            pass
        ui.forget_mmio_callbacks(self.uc, region.base, region.size)

    # Open bus: an access to nothing maps an all-ones page there on first touch (lazy pages).
    # Chosen over one big all-ones MMIO region over the holes because it needs no carving when
    # BARs move and covers every address (also above 4 GiB) with no up-front mapping.
    def _on_unmapped(self, uc, access, address, size, value, _ud) -> bool:
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
            self.uc.mem_unmap(p, PAGE)
            ui.forget_mmio_callbacks(self.uc, p, PAGE)
            self._open_bus.discard(p)

    # ROM writes: Unicorn either stops (read-only mapping) or performs the write (with a
    # WRITE_PROT hook returning True). We let it stop, then skip the storing instruction, which
    # is exactly "the write was ignored" for ordinary stores; string stores also step their
    # index/count registers as the hardware would.
    def _on_write_prot(self, uc, access, address, size, value, _ud) -> bool:
        self._write_prot_addr = address
        return False

    def _in_rom(self, addr: int) -> bool:
        """ROM, or RAM the chipset shows read-only: writes there are ignored."""
        return any(g <= addr < g + s for g, s, _ in self._rom_ranges) \
            or any(g <= addr < g + s for g, s, _ in self._ro_ram)

    def _skip_rom_write(self) -> bool:
        from .x86 import decode         # capstone is loaded only when a guest writes its ROM
        rip = self._reg.read(_REG_RIP)
        lin = self.linear_pc()
        bits = self.code_bits()
        code = ui.vmem_read(self.uc, lin, 16, UC.UC_PROT_EXEC) or ui.vmem_read(self.uc, lin, 16)
        if code is None:
            return False
        length = decode.instruction_length(code, lin, bits)
        if length is None:
            return False
        sop = decode.string_op(code, lin, bits)
        if sop is not None:
            kind, elem, rep = sop
            asz = 8 if bits == 64 else 4 if bits == 32 else 2      # ignoring 0x67 overrides
            amask = (1 << (8 * asz)) - 1
            count = (self._reg.read(_REG_RCX) & amask) if rep else 1
            step = -elem if self._reg.read(_REG_EFLAGS) & (1 << 10) else elem
            regs = [_REG_RDI] + ([_REG_RSI] if kind == "movs" else [])
            for r in regs:
                v = self._reg.read(r)
                self._reg.write(r, (v & ~amask) | ((v + step * count) & amask))
            if rep:
                self._reg.write(_REG_RCX, self._reg.read(_REG_RCX) & ~amask)
        trace.guest_error(f"write to ROM at {self._write_prot_addr:#x} ignored")
        # The instruction pointer wraps at the code size, as on the CPU (an instruction ending
        # at 4 GiB continues at 0 in 32-bit code, at IP 0 in 16-bit code).
        self._reg.write(_REG_RIP, (rip + length) & (0xFFFFFFFFFFFFFFFF if bits == 64 else 0xFFFFFFFF
                                                   if bits == 32 else 0xFFFF))
        return True

    # Host writes into RAM (DMA, loaders, the debugger) are invisible to Unicorn's translated
    # code: drop it. ctl_remove_cache takes a virtual address, so with paging on (virtual !=
    # physical) the only safe choice is a full flush.
    # Inside a device callback the work is deferred to the callback's return, still before the
    # guest's next instruction: a virtio request writes its data buffer, status byte and several
    # used-ring fields, and each removal costs ~2 µs, so we only note the ranges here and drop
    # each run of touching pages once (_flush_now), or flush everything once with paging on.
    def _on_host_write(self, gpa: int, length: int) -> None:
        if length <= 0:
            return
        if self._callback_depth:
            self._flush_pending = True
            if not self.paging:
                self._dirty.append((gpa, gpa + length))
        elif not self.paging:
            self._remove_code(gpa, gpa + length)
        else:
            self.uc.ctl_flush_tb()

    def _flush_now(self) -> None:
        if self._callback_depth == 0:
            self._flush_pending = False
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

    # -------------------------------------------------------------------------------------
    # reset and state
    # -------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Power-on/reset state: real mode, CS=F000 (base F0000) IP=FFF0, caches off."""
        uc = self.uc
        # A fresh UC_MODE_64 engine is in long mode. PG 0->1->0 is the only path that clears
        # EFER.LMA and the 64-bit hflags; then EFER and CR4 can be zeroed.
        uc.reg_write(X.UC_X86_REG_CR0, 0x80000001)
        uc.reg_write(X.UC_X86_REG_CR0, 0x60000010)
        uc.reg_write(X.UC_X86_REG_MSR, (EFER, 0))
        uc.reg_write(X.UC_X86_REG_CR4, 0)
        uc.reg_write(X.UC_X86_REG_CR3, 0)
        uc.reg_write(X.UC_X86_REG_CR2, 0)
        uc.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0x3FF, 0))
        uc.reg_write(X.UC_X86_REG_GDTR, (0, 0, 0xFFFF, 0))
        for r in _GPRS:
            if r.startswith("r") and r != "rip":
                uc.reg_write(_GPRS[r], 0)
        uc.reg_write(X.UC_X86_REG_RDX, 0x0600)          # family 6 after reset, as hardware does
        uc.reg_write(_REG_EFLAGS, 0x2)
        for name in ("ds", "es", "ss", "fs", "gs"):
            ui.load_seg(uc, _SEG_REGS[name], 0)
        ui.load_seg(uc, X.UC_X86_REG_CS, 0xF000)
        uc.reg_write(_REG_RIP, 0xFFF0)
        self._raw.save()
        self._raw.clear_old_exception()
        self._raw.restore()
        if self._rom is not None:
            self._rom[:] = self._rom_pristine
        self.paging = False
        self._stop_cause = None
        self._bp_skip = None
        uc.ctl_flush_tb()

    @property
    def mode(self) -> str:
        """'real' | 'protected' | 'long' (long includes compatibility mode)."""
        hf = self._raw.save().hflags
        if hf & ui.HF_LMA:
            return "long"
        return "protected" if hf & ui.HF_PE else "real"

    def code_bits(self) -> int:
        """Width the CPU decodes instructions at right now: 16, 32 or 64."""
        hf = self._raw.save().hflags
        if hf & ui.HF_CS64:
            return 64
        return 32 if hf & ui.HF_CS32 else 16

    def segment(self, name: str) -> tuple[int, int, int, int]:
        """(selector, base, limit, flags) of a segment register from the hidden cache."""
        return self._raw.save().seg(("es", "cs", "ss", "ds", "fs", "gs").index(name))

    def linear_pc(self) -> int:
        rip = self._reg.read(_REG_RIP)
        self._raw.save()
        base = self._raw.seg(ui.SEG_CS)[1]
        if self._raw.hflags & ui.HF_CS64:
            return rip
        return (base + rip) & 0xFFFFFFFF

    def interrupts_enabled(self) -> bool:
        return bool(self._reg.read(_REG_EFLAGS) & EFLAGS_IF)

    def interrupt_shadow(self) -> bool:
        """True right after STI / MOV SS: the next instruction runs before any interrupt."""
        return bool(self._raw.save().hflags & ui.HF_INHIBIT_IRQ)

    def _update_paging(self) -> None:
        self.paging = bool(self._reg.read(X.UC_X86_REG_CR0) & 0x80000000)

    # -------------------------------------------------------------------------------------
    # registers for the debugger / Python API
    # -------------------------------------------------------------------------------------
    def read_registers(self) -> dict[str, int]:
        """All general registers (64-bit names plus 32-bit aliases eax..eip), rip, eflags, the
        segment selectors, CR0/2/3/4, EFER, fs_base/gs_base and the descriptor-table bases."""
        regs = {name: self._reg.read(rid) for name, rid in _GPRS.items()}
        for alias, full in _ALIASES32.items():
            regs[alias] = regs[full] & 0xFFFFFFFF
        self._raw.save()
        for i, name in enumerate(("es", "cs", "ss", "ds", "fs", "gs")):
            regs[name] = self._raw.seg(i)[0] & 0xFFFF
        regs["efer"] = self.uc.reg_read(X.UC_X86_REG_MSR, EFER)
        _, gbase, glimit, _ = self.uc.reg_read(X.UC_X86_REG_GDTR)
        _, ibase, ilimit, _ = self.uc.reg_read(X.UC_X86_REG_IDTR)
        regs.update(gdtr_base=gbase, gdtr_limit=glimit, idtr_base=ibase, idtr_limit=ilimit)
        return regs

    def write_register(self, name: str, value: int) -> None:
        """Write one register by the names read_registers() uses. Segment registers are loaded
        as the CPU would (descriptor fetch in protected mode)."""
        name = name.lower()
        if name in _SEG_REGS:
            ui.load_seg(self.uc, _SEG_REGS[name], value & 0xFFFF)
            return
        if name in _ALIASES32:
            full = _ALIASES32[name]
            old = self._reg.read(_GPRS[full])
            self._reg.write(_GPRS[full], (old & ~0xFFFFFFFF) | (value & 0xFFFFFFFF))
            return
        if name == "efer":
            self.uc.reg_write(X.UC_X86_REG_MSR, (EFER, value))
            return
        if name not in _GPRS:
            raise KeyError(f"unknown register '{name}'")
        self._reg.write(_GPRS[name], value)
        if name in ("cr0", "cr3", "cr4"):
            self._update_paging()
            self.uc.ctl_flush_tb()

    # -------------------------------------------------------------------------------------
    # virtual memory for the debugger
    # -------------------------------------------------------------------------------------
    def translate(self, vaddr: int) -> int | None:
        """Guest-physical address of linear address `vaddr` through the current page tables,
        or None when it is not mapped."""
        return ui.vmem_translate(self.uc, vaddr)

    def _phys_chunks(self, vaddr: int, n: int):
        while n > 0:
            chunk = min(n, PAGE - (vaddr & (PAGE - 1)))
            pa = self.translate(vaddr)
            if pa is None:
                raise MemoryAccessError(f"virtual address {vaddr:#x} is not mapped")
            yield pa, chunk
            vaddr += chunk
            n -= chunk

    def read_virtual(self, vaddr: int, n: int) -> bytes:
        """Read guest memory at a virtual (linear) address. RAM and ROM only: MMIO and unassigned
        addresses raise MemoryAccessError (no device side effects)."""
        out = bytearray()
        for pa, chunk in self._phys_chunks(vaddr, n):
            if self.mem.contains(pa, chunk):
                out += self.mem.read(pa, chunk)
                continue
            for gpa, sz, off in self._rom_ranges:
                if gpa <= pa and pa + chunk <= gpa + sz:
                    out += self._rom[off + pa - gpa: off + pa - gpa + chunk]
                    break
            else:
                for gpa, sz, off in self._legacy_ram:      # shadow RAM the CPU sees, DMA not
                    if gpa <= pa and pa + chunk <= gpa + sz:
                        out += self.mem.buf[off + pa - gpa: off + pa - gpa + chunk]
                        break
                else:
                    raise MemoryAccessError(f"{vaddr:#x} (physical {pa:#x}) is not RAM")
        return bytes(out)

    def write_virtual(self, vaddr: int, data: bytes) -> None:
        """Write guest RAM at a virtual address (translated code there is dropped). ROM, MMIO and
        unassigned addresses raise MemoryAccessError."""
        parts = []
        pos = 0
        for pa, chunk in self._phys_chunks(vaddr, len(data)):
            if not self.mem.contains(pa, chunk):
                raise MemoryAccessError(f"{vaddr:#x} (physical {pa:#x}) is not RAM")
            parts.append((pa, data[pos:pos + chunk]))
            pos += chunk
        for pa, part in parts:
            self.mem.write(pa, part)           # notifies -> _on_host_write drops stale code

    # -------------------------------------------------------------------------------------
    # breakpoints and stepping
    # -------------------------------------------------------------------------------------
    def add_breakpoint(self, linear: int) -> None:
        """Stop *before* executing the instruction at linear address `linear` (run() returns
        kind 'breakpoint'). Resuming from it executes that instruction (skip-once)."""
        if linear in self._breakpoints:
            return
        self._breakpoints[linear] = self.uc.hook_add(UC.UC_HOOK_CODE, self._on_breakpoint, None, linear, linear)
        self.uc.ctl_remove_cache(linear, linear + 1)     # already translated code would miss it

    def remove_breakpoint(self, linear: int) -> None:
        h = self._breakpoints.pop(linear, None)
        if h is None:
            return
        self._delete_code_hook(h)
        # Stale translated code may still call the deleted hook's thunk: drop it all.
        self.uc.ctl_flush_tb()

    def _delete_code_hook(self, handle: int) -> None:
        # Translated blocks may still call a deleted code hook's thunk until the next flush
        # (the callers flush): keep the callback alive so such a call is harmless.
        self._dead_hooks.append(ui.hook_callback(self.uc, handle))
        self.uc.hook_del(handle)

    def breakpoints(self) -> list[int]:
        return sorted(self._breakpoints)

    def add_block_hook(self, fn) -> int:
        """fn(linear_address, size) before every executed translated block (for -d in_asm/exec/
        cpu). It slows the guest about tenfold: add it only while such a log is on. Returns the
        handle for remove_block_hook."""
        handle = self.uc.hook_add(UC.UC_HOOK_BLOCK, lambda _uc, addr, size, _ud: fn(addr, size))
        self.uc.ctl_flush_tb()           # code translated without the hook would never call it
        return handle

    def remove_block_hook(self, handle: int) -> None:
        self._delete_code_hook(handle)
        self.uc.ctl_flush_tb()

    def _on_breakpoint(self, uc, address, size, _ud) -> None:
        if self._bp_skip == address:
            self._bp_skip = None
            return
        self._bp_skip = None
        self._bp_hit = address
        self._stop_cause = "breakpoint"
        uc.emu_stop()

    def set_dynamic_hooks(self, on: bool) -> None:
        """'Dynamic-hook mode': a never-matching code hook makes every translated block call the
        hook dispatcher, so code hooks added later take effect at the very next instruction.
        Costs ~30 % speed. Stops after an instruction no longer need it (they are exact in every
        mode, see request_stop_after_instruction); kept for debugger front ends that ask."""
        if on and self._dynamic_hook is None:
            self._dynamic_hook = self.uc.hook_add(UC.UC_HOOK_CODE, _noop_code, None,
                                                  0xFFFFFFFFFFFFF000, 0xFFFFFFFFFFFFF000)
        elif not on and self._dynamic_hook is not None:
            self._delete_code_hook(self._dynamic_hook)
            self._dynamic_hook = None
        self.uc.ctl_flush_tb()

    def request_stop_after_instruction(self) -> None:
        """Callable from inside any callback (port, MMIO, CPUID, RDTSC, memory or interrupt
        hook): end the current slice cleanly once the current instruction completes (never
        emu_stop there: Unicorn would replay the access). Exact in every hook mode: lowering
        the engine's instruction budget to the count retired so far makes Unicorn's counting
        hook, which runs before every instruction, stop before the next one."""
        if self._stop_cause is None:
            self._stop_cause = "stop"
        if self.running:
            self._budget.value = self._counter.value

    # Interrupt enable. An interrupt that became pending while IF=0 must be taken as soon as IF
    # goes to 1 (after the instruction following STI, right after POPF or IRET), not at the
    # slice end. Unicorn ends a translated block after each of those instructions, so while the
    # board has such an interrupt waiting, a block hook checks IF at every block start and ends
    # the slice there. The hook is a Python call per block, and adding or removing it costs a
    # flush of all translated code, so it is bounded both ways: it stays installed while it
    # keeps being useful (an interrupt storm: waits come and go every few blocks), and it gives
    # up after IF_WATCH_BLOCKS block starts without a hit (a BIOS polling a port with IF=0 while
    # the keyboard's or the timer's interrupt waits): then the board shortens its slices
    # instead, until that wait is over.
    IF_WATCH_BLOCKS = 4096

    @property
    def watching_interrupt_enable(self) -> bool:
        return self._if_waiting

    def watch_interrupt_enable(self, on: bool) -> bool:
        """Say (between slices) whether an interrupt waits for IF=1. While one does, the slice
        ends before the first instruction of a translated block that starts with IF=1 (an STI
        shadow, if any, is still pending then: see interrupt_shadow). Returns False when the
        watch gave up on this wait: the caller should then keep its slices short."""
        self._if_waiting = on
        if not on:
            self._if_gave_up = False
            if self._if_watch is not None and self._if_calls > self.IF_WATCH_BLOCKS:
                self._drop_if_watch()
            return True
        if self._if_gave_up:
            if self._if_watch is not None:
                self._drop_if_watch()
            return False
        if self._if_watch is None:
            self._if_calls = 0
            self._if_watch = ui.hook_block(self.uc, self._on_block_if_watch)
            self.uc.ctl_flush_tb()           # code translated without the hook never calls it
        return True

    def _drop_if_watch(self) -> None:
        # No stale block can call the deleted hook: the flush comes before any code runs again
        # (so, unlike _delete_code_hook, nothing needs keeping alive).
        self.uc.hook_del(self._if_watch)
        self._if_watch = None
        self.uc.ctl_flush_tb()

    def _on_block_if_watch(self, _address: int) -> None:
        if self._if_waiting and self._reg.read(_REG_EFLAGS) & EFLAGS_IF:
            self._if_calls = 0
            self.request_stop_after_instruction()
            return
        self._if_calls += 1
        if self._if_calls > self.IF_WATCH_BLOCKS:
            if self._if_waiting:
                self._if_gave_up = True
            self.request_stop_after_instruction()       # the board drops the hook

    def step(self) -> SliceResult:
        """Execute exactly one instruction (an interrupt/exception it raises is delivered, so a
        step over `int n` ends at the handler's first instruction)."""
        return self.run(1)

    # -------------------------------------------------------------------------------------
    # running
    # -------------------------------------------------------------------------------------
    def run(self, count: int) -> SliceResult:
        """Execute at most `count` (> 0) instructions and say why it stopped. Virtual time
        moves on by `retired + io_ns` of the result (the caller advances the clock); devices
        called during the slice see `clock.now` at their own access."""
        self._io_ns = 0
        result = self._run_slice(count)
        result.io_ns = self._io_ns
        return result

    def _sync_clock(self) -> None:
        """Bring clock.now to this instant of the slice (from inside a hook), and end the slice
        right after the current instruction if that reaches the next timer deadline."""
        if not self.running:
            return
        now = self._slice_start_ns + self._counter.value + self._io_ns
        clock = self.clock
        deadline = clock.next_deadline()
        if deadline is not None and now >= deadline:
            # Devices see time stop at the deadline until the run loop fires the timer there
            # (its callback then runs at exactly its deadline, as VirtualClock promises).
            now = deadline
            self.request_stop_after_instruction()
        if now > clock.now:
            clock.now = now

    def _run_slice(self, count: int) -> SliceResult:
        if count <= 0:
            raise ValueError("count must be positive")
        self._slice_start_ns = self.clock.now
        self._bp_hit = None
        if self._stop_cause == "stop":
            self._stop_cause = None
        pc = self._wrapped_pc()
        if self._breakpoints:
            lin = self.linear_pc()
            if lin in self._breakpoints:
                self._bp_skip = lin          # resuming at a breakpoint executes it once
        retired = 0
        while True:
            self._write_prot_addr = None
            error = None
            self.running = True
            try:
                self.uc.emu_start(pc, 0xFFFFFFFFFFFFFFFF, 0, count - retired)
            except UcError as exc:
                error = exc
            finally:
                self.running = False
            counted = self._counter.value
            # The budget this emu_start ended with: `count - retired`, or lower when a callback
            # asked to stop after its instruction (Unicorn counts one past it when it stops).
            budget = self._budget.value
            retired += budget if counted > budget else counted
            if error is not None and self._stop_cause is None and error.errno == UC.UC_ERR_WRITE_PROT \
                    and self._write_prot_addr is not None and self._in_rom(self._write_prot_addr) \
                    and self._skip_rom_write():
                if retired >= count:
                    return SliceResult("count", retired)
                pc = self._wrapped_pc()
                self._slice_start_ns = self._slice_start_ns + counted    # the counter restarts
                continue
            break
        cause = self._stop_cause
        self._update_paging()
        self._wrapped_pc()

        if cause in ("fatal", "triple_fault"):
            self._stop_cause = None
            return SliceResult(cause, retired, report=self._fatal_report)
        if error is not None:
            why = _ENGINE_ERRORS.get(error.errno, f"the CPU cannot go on: {error}")
            return SliceResult("fatal", retired, report=self.fault_report(why))
        if cause == "breakpoint":
            self._stop_cause = None
            return SliceResult("breakpoint", retired, address=self._bp_hit or 0)
        if cause == "stop":
            self._stop_cause = None
            return SliceResult("stop", retired)
        if counted > budget:
            return SliceResult("count", retired)
        if self._just_halted():
            return SliceResult("halt", retired)
        return SliceResult("count", retired)

    def _wrapped_pc(self) -> int:
        """RIP, wrapped to 32 bits outside 64-bit code. Unicorn does not wrap EIP: 32-bit code
        running through 0xFFFFFFFF goes on at "EIP" 0x1_0000_0000 (fetching from physical 0,
        as the CPU would), a state no x86 CPU can be in; it would show in the debugger and fault
        reports and be pushed by the next interrupt. Fixed at every slice boundary."""
        rip = self._reg.read(_REG_RIP)
        if rip >> 32 and not self._raw.save().hflags & ui.HF_CS64:
            rip &= 0xFFFFFFFF
            self._reg.write(_REG_RIP, rip)
        return rip

    def _just_halted(self) -> bool:
        lin = self.linear_pc()
        b = ui.vmem_read(self.uc, (lin - 1) & 0xFFFFFFFFFFFFFFFF, 1, UC.UC_PROT_EXEC) \
            or ui.vmem_read(self.uc, (lin - 1) & 0xFFFFFFFFFFFFFFFF, 1)
        return b == b"\xf4"

    def _fatal(self, kind: str, message: str, back: int = 0) -> None:
        """From inside a hook: end the run with a report (delivery is impossible)."""
        self._fatal_report = self.fault_report(message, back)
        self._stop_cause = kind
        self.uc.emu_stop()

    # -------------------------------------------------------------------------------------
    # hooks: port I/O, CPUID, RDTSC, interrupts
    # -------------------------------------------------------------------------------------
    def _on_in(self, port: int, size: int) -> int:
        self._io_ns += IO_PORT_NS
        self._sync_clock()
        self._callback_depth += 1
        try:
            return self.io.read(port, size)
        finally:
            self._callback_depth -= 1
            if self._flush_pending:
                self._flush_now()

    def _on_out(self, port: int, size: int, value: int) -> None:
        self._io_ns += IO_PORT_NS
        self._sync_clock()
        self._callback_depth += 1
        try:
            self.io.write(port, size, value)
        finally:
            self._callback_depth -= 1
            if self._flush_pending:
                self._flush_now()

    def _on_cpuid(self, leaf: int, _subleaf: int) -> tuple[int, int, int, int]:
        return self._cpuid.get(leaf, _CPUID_ZERO)

    def _on_rdtsc(self) -> int:
        # Virtual time at this instruction: slice start + instructions retired and port
        # access time so far.
        return self._slice_start_ns + self._counter.value + self._io_ns

    def _on_intr(self, uc, intno, _ud) -> None:
        err, is_int = ui.take_exception_info(self._raw)
        if intno in ERROR_CODE_VECTORS and not is_int:
            self.deliver_exception(intno, err)
        else:
            self.deliver_exception(intno, None, software=is_int)

    def _on_invalid(self, uc, _ud) -> bool:
        ui.take_exception_info(self._raw)
        self.deliver_exception(6, None)
        return self._stop_cause not in ("fatal", "triple_fault")

    def deliver_exception(self, vector: int, error_code: int | None, software: bool = False,
                          hardware: bool = False) -> None:
        """Deliver a CPU exception or `int n` (from a hook), or an external interrupt
        (`hardware`). A delivery that faults raises that fault in turn (#GP/#NP naming the IDT
        entry), or #DF for a contributory pair; a failed #DF is a triple fault."""
        if not (software or hardware) and trace.category_enabled("int"):
            log.log_check_exception(None, vector)
        back = self._trap_length() if software else 0
        try:
            self.deliver(vector, error_code, software=software)
            return
        except _DeliveryFault as first:
            if vector == VEC_DF:
                self._fatal("triple_fault", f"triple fault: cannot deliver #DF ({first})", back)
                return
            reason = f"cannot deliver vector {vector:#x} ({first})"
            second, second_error = first.vector, first.error
        # The fault raised while delivering is delivered in turn, unless the pair makes a
        # double fault (contributory after contributory, or #PF then #PF/contributory).
        benign_pair = second is not None and not (
            (vector in CONTRIBUTORY and second in CONTRIBUTORY)
            or (vector == VEC_PF and (second in CONTRIBUTORY or second == VEC_PF)))
        if benign_pair:
            try:
                self.deliver(second, second_error)
                return
            except _DeliveryFault as again:
                reason += f", then vector {second:#x} ({again})"
        try:
            self.deliver(VEC_DF, 0)
        except _DeliveryFault as df:
            self._fatal("triple_fault", f"triple fault: {reason}, then #DF ({df})", back)

    def _trap_length(self) -> int:
        """Length of the `int n` / int3 / into / int1 that RIP has just passed."""
        lin = self.linear_pc()
        two = ui.vmem_read(self.uc, lin - 2, 2, UC.UC_PROT_EXEC) or b""
        return 2 if two[:1] == b"\xcd" else 1

    def deliver_irq(self, vector: int) -> bool:
        """Deliver a hardware interrupt between slices (the caller checked IF and the shadow).
        Returns False when delivery is impossible (the machine must stop: see `fatal_report`)."""
        self._stop_cause = None
        if trace.category_enabled("int"):
            log.log_hardware_interrupt(vector)
        self.deliver_exception(vector, None, hardware=True)
        if self._stop_cause in ("fatal", "triple_fault"):
            self._stop_cause = None
            return False
        return True

    @property
    def fatal_report(self) -> str:
        return self._fatal_report

    # The delivery itself ------------------------------------------------------------------
    def _vread(self, lin: int, n: int) -> bytes:
        data = ui.vmem_read(self.uc, lin, n)
        if data is None:
            raise _DeliveryFault(f"cannot read {n} bytes at {lin:#x}")
        return data

    def _vwrite(self, lin: int, data: bytes) -> None:
        if not ui.vmem_write(self.uc, lin, data):
            raise _DeliveryFault(f"cannot write the interrupt frame at {lin:#x}")

    def deliver(self, vector: int, error_code: int | None = None, software: bool = False) -> None:
        """Transfer control to the handler of `vector` as the CPU would, in the current mode.
        Raises _DeliveryFault when the IVT/IDT entry, the target segment or the stack is bad."""
        self._raw.save()
        hf = self._raw.hflags
        if EV_INT.enabled:
            EV_INT.emit(vector=vector, kind="int" if software else "exc/irq",
                        mode="long" if hf & ui.HF_LMA else "protected" if hf & ui.HF_PE else "real",
                        err="-" if error_code is None else hex(error_code))
        if trace.category_enabled("int"):
            log.log_interrupt(self, vector, error_code, software)
        if hf & ui.HF_LMA:
            self._deliver_long(vector, error_code, software, hf)
        elif hf & ui.HF_PE:
            self._deliver_protected(vector, error_code, software, hf)
        else:
            self._deliver_real(vector)
        self._raw.save()
        self._raw.clear_old_exception()
        self._raw.restore()

    def _deliver_real(self, vector: int) -> None:
        reg = self._reg
        _, ibase, ilimit, _ = self.uc.reg_read(X.UC_X86_REG_IDTR)
        if vector * 4 + 3 > ilimit:
            raise _DeliveryFault(f"vector {vector:#x} is beyond the IVT limit {ilimit:#x}",
                                 VEC_GP, vector * 8 + 2)
        off, seg = struct.unpack("<HH", self._vread(ibase + vector * 4, 4))
        ss_sel, ss_base, _, _ = self._raw.seg(ui.SEG_SS)
        cs_sel = self._raw.seg(ui.SEG_CS)[0]
        ss32 = self._raw.hflags & ui.HF_SS32
        mask = 0xFFFFFFFF if ss32 else 0xFFFF
        rsp = reg.read(_REG_RSP)
        sp = (rsp - 6) & mask
        flags = reg.read(_REG_EFLAGS)
        ip = reg.read(_REG_RIP) & 0xFFFF
        frame = struct.pack("<HHH", ip, cs_sel, flags & 0xFFFF)
        if sp + 6 <= mask + 1:
            self._vwrite(ss_base + sp, frame)
        else:                                   # the frame wraps around the 64 KiB segment
            for i in range(3):
                self._vwrite(ss_base + ((rsp - 2 * (i + 1)) & mask), frame[4 - 2 * i:6 - 2 * i])
        reg.write(_REG_RSP, (rsp & ~mask) | sp)
        reg.write(_REG_EFLAGS, flags & ~(EFLAGS_IF | EFLAGS_TF | EFLAGS_AC))
        ui.load_seg(self.uc, X.UC_X86_REG_CS, seg)
        reg.write(_REG_RIP, off)

    def _descriptor(self, selector: int, ext: int) -> int:
        """The 8-byte GDT descriptor for `selector` (LDT selectors are not supported)."""
        err = (selector & 0xFFFC) + ext
        if selector & 4:
            raise _DeliveryFault(f"LDT selector {selector:#x} in a gate", VEC_GP, err)
        _, gbase, glimit, _ = self.uc.reg_read(X.UC_X86_REG_GDTR)
        index = selector & ~7
        if index == 0 or index + 7 > glimit:
            raise _DeliveryFault(f"selector {selector:#x} is null or beyond the GDT limit", VEC_GP, err)
        desc = struct.unpack("<Q", self._vread(gbase + index, 8))[0]
        if not desc >> 47 & 1:
            raise _DeliveryFault(f"segment {selector:#x} is not present", VEC_NP, err)
        return desc

    def _tss_base(self) -> int:
        _, base, limit, _ = self.uc.reg_read(X.UC_X86_REG_TR)
        return base

    def _enter_ring(self, cpl: int, ss: int, sp: int, bits: int) -> int:
        """Switch to the inner stack SS:SP at privilege `cpl`; returns the new SS base."""
        ui.set_cpl(self._raw, cpl)
        try:
            ui.load_seg(self.uc, X.UC_X86_REG_SS, ss)
        except UcError as exc:
            raise _DeliveryFault(f"cannot load the inner stack segment {ss:#x}: {exc}")
        self._reg.write(_REG_RSP, sp)
        return self._raw.save().seg(ui.SEG_SS)[1]

    def _deliver_protected(self, vector: int, error_code: int | None, software: bool, hf: int) -> None:
        self._as_supervisor(self._deliver_protected_inner, vector, error_code, software, hf)

    def _deliver_long(self, vector: int, error_code: int | None, software: bool, hf: int) -> None:
        self._as_supervisor(self._deliver_long_inner, vector, error_code, software, hf)

    def _as_supervisor(self, deliver, vector, error_code, software, hf) -> None:
        """IDT, GDT and TSS reads are implicit supervisor accesses even from ring 3 (a user
        program's pages may be the only user-accessible ones): run the delivery at CPL 0 for
        its table reads; the frame goes to the handler's stack at the handler's privilege."""
        cpl = hf & ui.HF_CPL_MASK
        if cpl:
            ui.set_cpl(self._raw, 0)
        try:
            deliver(vector, error_code, software, hf)
        except _DeliveryFault:
            if cpl:
                ui.set_cpl(self._raw, cpl)
            raise

    def _deliver_protected_inner(self, vector: int, error_code: int | None, software: bool, hf: int) -> None:
        reg = self._reg
        _, ibase, ilimit, _ = self.uc.reg_read(X.UC_X86_REG_IDTR)
        ext = 0 if software else 1
        idt_err = vector * 8 + 2 + ext
        if vector * 8 + 7 > ilimit:
            raise _DeliveryFault(f"vector {vector:#x} is beyond the IDT limit {ilimit:#x}", VEC_GP, idt_err)
        gate = struct.unpack("<Q", self._vread(ibase + vector * 8, 8))[0]
        gtype = (gate >> 40) & 0x1F
        gdpl = (gate >> 45) & 3
        if gtype not in (0x06, 0x07, 0x0E, 0x0F):
            raise _DeliveryFault(f"IDT gate {vector:#x} has unsupported type {gtype:#x}", VEC_GP, idt_err)
        cpl = hf & ui.HF_CPL_MASK
        if software and gdpl < cpl:
            raise _DeliveryFault(f"int {vector:#x} from CPL{cpl} through a DPL{gdpl} gate", VEC_GP, idt_err)
        if not gate >> 47 & 1:
            raise _DeliveryFault(f"IDT gate {vector:#x} is not present", VEC_NP, idt_err)
        sel = (gate >> 16) & 0xFFFF
        offset = (gate & 0xFFFF) | ((gate >> 32) & 0xFFFF0000)
        desc = self._descriptor(sel, ext)
        if not (desc >> 43 & 1):
            raise _DeliveryFault(f"gate {vector:#x} points at a non-code segment {sel:#x}",
                                 VEC_GP, (sel & 0xFFFC) + ext)
        dpl = (desc >> 45) & 3
        conforming = bool(desc >> 42 & 1)
        wide = gtype & 0x8                      # 32-bit gate: 4-byte pushes
        size = 4 if wide else 2
        fmt = "<I" if wide else "<H"
        flags = reg.read(_REG_EFLAGS)
        eip = reg.read(_REG_RIP) & 0xFFFFFFFF
        old_cs = self._raw.seg(ui.SEG_CS)[0]
        old_ss = self._raw.seg(ui.SEG_SS)[0]
        old_esp = reg.read(_REG_RSP) & 0xFFFFFFFF
        if flags & EFLAGS_VM:
            raise _DeliveryFault("interrupt from virtual-8086 mode is not supported")
        values = []
        if not conforming and dpl < cpl:
            tss = self._tss_base()
            new_esp, new_ss = struct.unpack("<IH", self._vread(tss + 4 + 8 * dpl, 6))
            values += [old_ss, old_esp]
            ss_base = self._enter_ring(dpl, new_ss, new_esp, 32)
            esp = new_esp
            ss32 = self._raw.hflags & ui.HF_SS32
        else:
            if cpl:
                ui.set_cpl(self._raw, cpl)      # same privilege: push at the current CPL
            ss_base = self._raw.seg(ui.SEG_SS)[1]
            esp = old_esp
            ss32 = hf & ui.HF_SS32
        values += [flags, old_cs, eip]
        if error_code is not None:
            values.append(error_code)
        smask = 0xFFFFFFFF if ss32 else 0xFFFF
        for v in values:
            esp = (esp - size) & smask
            self._vwrite(ss_base + esp, struct.pack(fmt, v & ((1 << (8 * size)) - 1)))
        old_rsp = reg.read(_REG_RSP)
        reg.write(_REG_RSP, (old_rsp & ~smask) | esp)
        self._enter_handler(flags, gtype, sel, offset)

    def _enter_handler(self, flags: int, gtype: int, sel: int, target: int) -> None:
        """The common end of a protected/long-mode gate delivery: flags as the gate type says,
        the handler's CS loaded as a full descriptor, RIP at the handler."""
        new_flags = flags & ~(EFLAGS_TF | EFLAGS_NT | EFLAGS_RF | EFLAGS_VM)
        if not gtype & 1:                       # interrupt gate (not trap gate): IF off
            new_flags &= ~EFLAGS_IF
        self._reg.write(_REG_EFLAGS, new_flags)
        try:
            ui.load_seg(self.uc, X.UC_X86_REG_CS, sel)
        except UcError as exc:
            raise _DeliveryFault(f"cannot load handler CS {sel:#x}: {exc}")
        self._reg.write(_REG_RIP, target)

    def _deliver_long_inner(self, vector: int, error_code: int | None, software: bool, hf: int) -> None:
        reg = self._reg
        _, ibase, ilimit, _ = self.uc.reg_read(X.UC_X86_REG_IDTR)
        ext = 0 if software else 1
        idt_err = vector * 8 + 2 + ext      # the error code names the IDT entry (index << 3)
        if vector * 16 + 15 > ilimit:
            raise _DeliveryFault(f"vector {vector:#x} is beyond the IDT limit {ilimit:#x}", VEC_GP, idt_err)
        lo, hi = struct.unpack("<QQ", self._vread(ibase + vector * 16, 16))
        gtype = (lo >> 40) & 0x1F
        gdpl = (lo >> 45) & 3
        if gtype not in (0x0E, 0x0F):
            raise _DeliveryFault(f"IDT gate {vector:#x} has type {gtype:#x} (not a 64-bit gate)",
                                 VEC_GP, idt_err)
        cpl = hf & ui.HF_CPL_MASK
        if software and gdpl < cpl:
            raise _DeliveryFault(f"int {vector:#x} from CPL{cpl} through a DPL{gdpl} gate", VEC_GP, idt_err)
        if not lo >> 47 & 1:
            raise _DeliveryFault(f"IDT gate {vector:#x} is not present", VEC_NP, idt_err)
        sel = (lo >> 16) & 0xFFFF
        ist = (lo >> 32) & 7
        target = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF0000) | ((hi & 0xFFFFFFFF) << 32)
        desc = self._descriptor(sel, ext)
        dpl = (desc >> 45) & 3
        if not (desc >> 43 & 1) or not (desc >> 53 & 1):
            raise _DeliveryFault(f"gate {vector:#x} does not point at a 64-bit code segment",
                                 VEC_GP, (sel & 0xFFFC) + ext)
        flags = reg.read(_REG_EFLAGS)
        rip = reg.read(_REG_RIP)
        old_cs = self._raw.seg(ui.SEG_CS)[0]
        old_ss = self._raw.seg(ui.SEG_SS)[0]
        old_rsp = reg.read(_REG_RSP)
        rsp = old_rsp
        if ist or dpl < cpl:
            tss = self._tss_base()
            off = 0x24 + 8 * (ist - 1) if ist else 4 + 8 * dpl
            rsp = struct.unpack("<Q", self._vread(tss + off, 8))[0]
        if dpl < cpl:
            ui.set_cpl(self._raw, dpl)
            try:
                ui.load_seg(self.uc, X.UC_X86_REG_SS, dpl)      # null SS with RPL = new CPL
            except UcError as exc:
                raise _DeliveryFault(f"cannot load a null SS: {exc}")
        elif cpl:
            ui.set_cpl(self._raw, cpl)          # same privilege: push at the current CPL
        rsp &= ~0xF
        values = [old_ss, old_rsp, flags, old_cs, rip]
        if error_code is not None:
            values.append(error_code)
        frame = b"".join(struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF) for v in reversed(values))
        rsp -= len(frame)
        self._vwrite(rsp, frame)
        reg.write(_REG_RSP, rsp)
        self._enter_handler(flags, gtype, sel, target)

    # -------------------------------------------------------------------------------------
    # fatal fault report
    # -------------------------------------------------------------------------------------
    def fault_report(self, why: str, back: int = 0) -> str:
        """The report printed for a fatal guest fault (machine/x86/report.py)."""
        from .x86 import report         # capstone is loaded only when a guest faults fatally
        return report.fault_report(self, why, back)


_ENGINE_ERRORS = {
    UC.UC_ERR_FETCH_UNMAPPED: "the CPU fetched an instruction from unassigned physical memory",
    UC.UC_ERR_FETCH_PROT: "the CPU fetched an instruction from device memory (MMIO)",
    UC.UC_ERR_READ_UNMAPPED: "the CPU read beyond the physical address space",
    UC.UC_ERR_WRITE_UNMAPPED: "the CPU wrote beyond the physical address space",
    UC.UC_ERR_INSN_INVALID: "invalid instruction that could not be delivered as #UD",
    UC.UC_ERR_EXCEPTION: "an exception the CPU layer could not deliver",
}

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


def _noop_code(uc, address, size, _ud) -> None:
    pass
