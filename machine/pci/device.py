"""A conventional PCI function: the type 0 configuration header, BARs and the capability list.

Config space is 256 bytes held in `config` (the device's own view). What the guest may change
is described per byte by two masks, as the PCI Local Bus Specification 3.0 describes registers:
`wmask` (bits a write stores) and `w1cmask` (status bits a write of 1 clears). Every access is
applied byte by byte through those masks, so 1/2/4-byte accesses at any offset agree with each
other and read-only fields (IDs, class, header type, capabilities) simply ignore writes.

BARs are config dwords whose writable bits are the address bits above the BAR's size: writing
all-ones and reading back gives the size mask with the (read-only) type bits, which is how
firmware sizes them (PCI 3.0 section 6.2.5.1). Whenever a BAR or the command register's decode
bits change, the device (un)maps its BARs in the bus's IoSpace / MemoryMap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from .. import trace, vmstate
from ..irq import IrqLine
from ..memory import IoSpace, MemoryMap, ones
from .msix import Msix


class Bus(Protocol):
    """What a plugged function asks of its bus (pci/bus.py's PciBus, which imports this module)."""
    def claims_port_range(self, base: int, size: int) -> bool: ...


CONFIG_SIZE = 256

# Type 0 header offsets (PCI 3.0 section 6.1).
VENDOR_ID = 0x00
DEVICE_ID = 0x02
COMMAND = 0x04
STATUS = 0x06
REVISION_ID = 0x08
CLASS_PROG = 0x09
CACHE_LINE_SIZE = 0x0C
LATENCY_TIMER = 0x0D
HEADER_TYPE = 0x0E
BAR0 = 0x10
CARDBUS_CIS = 0x28
SUBSYSTEM_VENDOR_ID = 0x2C
SUBSYSTEM_ID = 0x2E
ROM_ADDRESS = 0x30
CAPABILITY_LIST = 0x34
INTERRUPT_LINE = 0x3C
INTERRUPT_PIN = 0x3D
CAPS_START = 0x40            # first byte after the predefined header

NUM_BARS = 6

# Command register bits (PCI 3.0 section 6.2.2).
CMD_IO = 1 << 0
CMD_MEMORY = 1 << 1
CMD_BUS_MASTER = 1 << 2
CMD_PARITY = 1 << 6
CMD_SERR = 1 << 8
CMD_INTX_DISABLE = 1 << 10
# Only the bits a device of ours actually implements are writable; the rest read as 0.
CMD_WRITABLE = CMD_IO | CMD_MEMORY | CMD_BUS_MASTER | CMD_PARITY | CMD_SERR | CMD_INTX_DISABLE

# Status register bits.
STS_INTERRUPT = 1 << 3
STS_CAP_LIST = 1 << 4
# Error bits: set by hardware, cleared by writing 1 (RW1C).
STS_MASTER_PARITY = 1 << 8
STS_SIG_TARGET_ABORT = 1 << 11
STS_RCV_TARGET_ABORT = 1 << 12
STS_RCV_MASTER_ABORT = 1 << 13
STS_SIG_SYSTEM_ERROR = 1 << 14
STS_DETECTED_PARITY = 1 << 15
STS_RW1C = (STS_MASTER_PARITY | STS_SIG_TARGET_ABORT | STS_RCV_TARGET_ABORT
            | STS_RCV_MASTER_ABORT | STS_SIG_SYSTEM_ERROR | STS_DETECTED_PARITY)

# BAR type bits (read-only low bits of the BAR).
BAR_IO = 0x1
BAR_MEM_64 = 0x4
BAR_MEM_PREFETCH = 0x8

# QEMU gives every emulated PCI function this subsystem ID; SeaBIOS reads it on 00:00.0 to tell
# it is running on QEMU (only its boot messages depend on it). The chipset functions use it too.
QEMU_SUBSYSTEM_VENDOR_ID = 0x1AF4
QEMU_SUBSYSTEM_ID = 0x1100

IO_SPACE_END = 0x10000
# x86-64 defines at most 52 physical address bits; a BAR placed above that cannot be reached.
PHYS_ADDR_LIMIT = 1 << 52

EV_MAP_ADD = trace.Event("pci_update_mappings_add")
EV_MAP_DEL = trace.Event("pci_update_mappings_del")
EV_SET_IRQ = trace.Event("pci_set_irq")


@dataclass(eq=False)
class Bar:
    """One implemented BAR: what it decodes, and where it is currently mapped (if anywhere)."""
    index: int
    size: int
    ops: Any
    is_io: bool
    is64: bool = False
    prefetchable: bool = False
    mapped_at: int | None = None     # base of the live mapping, None when not decoding
    handle: Any = None               # the IoRange / MmioRegion returned by the space

    @property
    def offset(self) -> int:
        return BAR0 + 4 * self.index


class PciDevice:
    """A PCI function with a type 0 header. Subclasses add BARs and capabilities in their
    constructor, may widen `wmask` for their own registers (`set_writable`), and may override
    config_read/config_write (calling super()) to give registers side effects."""

    # Config space (wmask too: a locked register changes its own writable bits), the device's
    # interrupt request and the INTx pin; BAR mappings are re-derived from config space.
    VMSTATE_FIELDS = (
        vmstate.Field("config", vmstate.Bytes(CONFIG_SIZE, CONFIG_SIZE)),
        vmstate.Field("wmask", vmstate.Bytes(CONFIG_SIZE, CONFIG_SIZE)),
        vmstate.Field("_irq_level", vmstate.BOOL),
        vmstate.Field("intx", vmstate.LINE))
    VMSTATE = vmstate.Description("pci-device", 1, VMSTATE_FIELDS)

    def __init__(self, name: str, vendor_id: int, device_id: int, class_code: int,
                 revision: int = 0, subsystem_vendor_id: int = 0, subsystem_id: int = 0,
                 interrupt_pin: int = 0, header_type: int = 0):
        if not 0 <= interrupt_pin <= 4:
            raise ValueError(f"{name}: interrupt pin {interrupt_pin} is not 0 (none) or 1..4 (INTA..INTD)")
        self.name = name
        self.config = bytearray(CONFIG_SIZE)
        self.wmask = bytearray(CONFIG_SIZE)
        self.w1cmask = bytearray(CONFIG_SIZE)
        # Power-on values of the writable bits (read-only bits keep whatever config holds).
        self._reset_values = bytearray(CONFIG_SIZE)
        self.bars: list[Bar | None] = [None] * NUM_BARS
        self._bar_upper: set[int] = set()         # indexes used as the high dword of a 64-bit BAR
        self._cap_end = CAPS_START                # first free byte for the next capability
        # Where the device lives once plugged (PciBus.plug fills these in).
        self.bus: Bus | None = None
        self.devfn: int | None = None
        self.io: IoSpace | None = None
        self.memory_map: MemoryMap | None = None
        self.intx: IrqLine | None = None          # the INTx pin's line, wired by the bus
        self._irq_level = False                   # what the device logic asks for, before INTx disable
        self.msix: Msix | None = None             # MSI-X capability, if add_msix() gave it one

        c = self.config
        c[VENDOR_ID:VENDOR_ID + 2] = (vendor_id & 0xFFFF).to_bytes(2, "little")
        c[DEVICE_ID:DEVICE_ID + 2] = (device_id & 0xFFFF).to_bytes(2, "little")
        c[REVISION_ID] = revision & 0xFF
        c[CLASS_PROG:CLASS_PROG + 3] = (class_code & 0xFFFFFF).to_bytes(3, "little")
        c[HEADER_TYPE] = header_type & 0xFF
        c[SUBSYSTEM_VENDOR_ID:SUBSYSTEM_VENDOR_ID + 2] = (subsystem_vendor_id & 0xFFFF).to_bytes(2, "little")
        c[SUBSYSTEM_ID:SUBSYSTEM_ID + 2] = (subsystem_id & 0xFFFF).to_bytes(2, "little")
        c[INTERRUPT_PIN] = interrupt_pin

        self.set_writable(COMMAND, 2, CMD_WRITABLE)
        self.w1cmask[STATUS:STATUS + 2] = STS_RW1C.to_bytes(2, "little")
        self.set_writable(CACHE_LINE_SIZE, 1)
        self.set_writable(LATENCY_TIMER, 1)
        self.set_writable(INTERRUPT_LINE, 1)
        # BARs, the expansion ROM BAR (no ROM), BIST, Min_Gnt/Max_Lat: read-only zeros until set up.

    # ------------------------------------------------------------------------------------------
    # Building the device (board time: errors here are programming errors, so they raise)
    # ------------------------------------------------------------------------------------------
    def set_writable(self, offset: int, size: int, mask: int | None = None, reset: int = 0) -> None:
        """Make bits of config[offset:offset+size] guest-writable (`mask`, default all bits of the
        field) with power-on value `reset`; `reset()` restores it. For subclasses' own registers
        (chipset registers, writable capability fields)."""
        if offset < 0 or size <= 0 or offset + size > CONFIG_SIZE:
            raise ValueError(f"{self.name}: writable field {offset:#x}+{size} outside config space")
        if mask is None:
            mask = ones(size)
        for i in range(size):
            m = (mask >> (8 * i)) & 0xFF
            r = (reset >> (8 * i)) & m
            self.wmask[offset + i] = m
            self._reset_values[offset + i] = r
            self.config[offset + i] = (self.config[offset + i] & ~m & 0xFF) | r

    def add_io_bar(self, index: int, size: int, ops) -> None:
        """An I/O BAR of `size` ports (a power of two, 4..64 KiB)."""
        if size < 4 or size > IO_SPACE_END or size & (size - 1):
            raise ValueError(f"{self.name}: I/O BAR size {size:#x} must be a power of two in 4..0x10000")
        self._claim_bar(index, 1)
        bar = Bar(index, size, ops, is_io=True)
        # All 32 address bits above the size are writable (as on QEMU's devices: SeaBIOS sizes an
        # I/O BAR from the full dword and would see a 4 GiB BAR if the upper half read 0); an
        # address past 0xFFFF just does not decode.
        self._init_bar_dword(bar.offset, BAR_IO, ~(size - 1) & 0xFFFFFFFC)
        self.bars[index] = bar

    def add_mem_bar(self, index: int, size: int, ops, *, is64: bool = False, prefetchable: bool = False) -> None:
        """A memory BAR of `size` bytes (a power of two, at least one 4 KiB page, because MMIO is
        mapped in whole pages). A 64-bit BAR uses index and index+1."""
        limit = 1 << 63 if is64 else 1 << 31
        if size < 0x1000 or size > limit or size & (size - 1):
            raise ValueError(f"{self.name}: memory BAR size {size:#x} must be a power of two >= 4 KiB")
        self._claim_bar(index, 2 if is64 else 1)
        bar = Bar(index, size, ops, is_io=False, is64=is64, prefetchable=prefetchable)
        type_bits = (BAR_MEM_64 if is64 else 0) | (BAR_MEM_PREFETCH if prefetchable else 0)
        addr_mask = ~(size - 1) & ((1 << 64) - 1) & ~0xF
        self._init_bar_dword(bar.offset, type_bits, addr_mask & 0xFFFFFFFF)
        if is64:
            self._init_bar_dword(bar.offset + 4, 0, addr_mask >> 32)
            self._bar_upper.add(index + 1)
        self.bars[index] = bar

    def _claim_bar(self, index: int, count: int) -> None:
        if index < 0 or index + count > NUM_BARS:
            raise ValueError(f"{self.name}: BAR index {index} out of range")
        for i in range(index, index + count):
            if self.bars[i] is not None or i in self._bar_upper:
                raise ValueError(f"{self.name}: BAR {i} already in use")

    def _init_bar_dword(self, offset: int, value: int, wmask: int) -> None:
        self.config[offset:offset + 4] = value.to_bytes(4, "little")
        self.wmask[offset:offset + 4] = wmask.to_bytes(4, "little")
        self._reset_values[offset:offset + 4] = bytes(4)

    def add_capability(self, cap_id: int, body: bytes) -> int:
        """Add a capability (ID, next pointer, then `body`) after the last one in config space
        and link it at the head of the list, as QEMU does (so a driver walking the list meets
        the newest capability first); returns the config offset of its ID byte. The whole
        structure is read-only until a subclass makes fields writable with set_writable()."""
        offset = self._cap_end
        length = 2 + len(body)
        if offset + length > CONFIG_SIZE:
            raise ValueError(f"{self.name}: no room for a {length}-byte capability at {offset:#x}")
        c = self.config
        c[offset] = cap_id & 0xFF
        c[offset + 1] = c[CAPABILITY_LIST]                  # the previous head (0: end of list)
        c[offset + 2:offset + length] = body
        c[CAPABILITY_LIST] = offset
        c[STATUS] |= STS_CAP_LIST
        self._cap_end = (offset + length + 3) & ~3           # capabilities are dword aligned
        return offset

    def add_msix(self, nvectors: int, bar: int, send: Callable[[int, int], object]) -> Msix:
        """Give the function an MSI-X capability with `nvectors` vectors, its table and PBA in
        memory BAR `bar`; messages go to `send(address, data)`."""
        self.msix = Msix(self, nvectors, bar, send)
        return self.msix

    def msix_changed(self) -> None:
        """The guest wrote MSI-X Message Control (enable, function mask). Subclasses that
        choose between INTx and MSI-X override it."""

    # ------------------------------------------------------------------------------------------
    # Config space accesses (guest-reachable: never raise)
    # ------------------------------------------------------------------------------------------
    def config_read(self, offset: int, size: int) -> int:
        if size not in (1, 2, 4) or offset < 0 or offset + size > CONFIG_SIZE:
            trace.guest_error(f"{self.name}: config read of {size} bytes at {offset:#x} ignored")
            return ones(size if size in (1, 2, 4) else 4)
        return int.from_bytes(self.config[offset:offset + size], "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        if size not in (1, 2, 4) or offset < 0 or offset + size > CONFIG_SIZE:
            trace.guest_error(f"{self.name}: config write of {size} bytes at {offset:#x} ignored")
            return
        c, wm, w1c = self.config, self.wmask, self.w1cmask
        for i in range(size):
            o = offset + i
            b = (value >> (8 * i)) & 0xFF
            old = c[o]
            new = (old & ~wm[o]) | (b & wm[o])
            new &= ~(b & w1c[o])
            c[o] = new & 0xFF
        end = offset + size
        # Side effects of the header registers.
        if offset < COMMAND + 2 and end > COMMAND:
            self._update_mappings()
            self._drive_intx()
        elif offset < BAR0 + 4 * NUM_BARS and end > BAR0:
            self._update_mappings()
        m = self.msix
        if m is not None and offset < m.control_offset + 2 and end > m.control_offset:
            m.control_written()
            self.msix_changed()

    # ------------------------------------------------------------------------------------------
    # BAR decoding
    # ------------------------------------------------------------------------------------------
    @property
    def command(self) -> int:
        return self.config[COMMAND] | (self.config[COMMAND + 1] << 8)

    @property
    def bus_master(self) -> bool:
        """Command bit 2: the device may start DMA only while this is set."""
        return bool(self.config[COMMAND] & CMD_BUS_MASTER)

    def _bar_dword(self, offset: int) -> int:
        return int.from_bytes(self.config[offset:offset + 4], "little")

    def _decoded_base(self, bar: Bar) -> int | None:
        """Where the BAR should decode now, or None (decoding off, unassigned, out of range)."""
        cmd = self.config[COMMAND]
        lo_off = bar.offset
        lo = self._bar_dword(lo_off)
        lo_mask = int.from_bytes(self.wmask[lo_off:lo_off + 4], "little")
        if bar.is_io:
            if not cmd & CMD_IO:
                return None
            base = lo & lo_mask
            # 0 is "not assigned"; all address bits set means the BAR is being sized.
            if base == 0 or base == lo_mask or base + bar.size > IO_SPACE_END:
                return None
            if self.bus is not None and self.bus.claims_port_range(base, bar.size):
                trace.guest_error(f"{self.name}: I/O BAR{bar.index} at {base:#x} overlaps the host bridge: not decoded")
                return None
            return base
        if not cmd & CMD_MEMORY:
            return None
        base = lo & lo_mask
        if lo_mask and base == lo_mask:           # low dword still all-ones from sizing
            return None
        if bar.is64:
            hi_off = lo_off + 4
            hi = self._bar_dword(hi_off)
            hi_mask = int.from_bytes(self.wmask[hi_off:hi_off + 4], "little")
            if hi_mask and (hi & hi_mask) == hi_mask:   # high dword being sized
                return None
            base |= (hi & hi_mask) << 32
        if base == 0 or base + bar.size > PHYS_ADDR_LIMIT:
            return None
        return base

    def post_load(self) -> None:
        self._update_mappings()

    def _update_mappings(self) -> None:
        for bar in self.bars:
            if bar is None:
                continue
            want = self._decoded_base(bar) if self.bus is not None else None
            if want == bar.mapped_at:
                continue
            if bar.mapped_at is not None:
                self._unmap_bar(bar)
            if want is not None:
                self._map_bar(bar, want)

    def _map_bar(self, bar: Bar, base: int) -> None:
        region_name = f"{self.name}.bar{bar.index}"
        try:
            if bar.is_io:
                bar.handle = self.io.add(region_name, base, bar.size, bar.ops)
            else:
                bar.handle = self.memory_map.add(region_name, base, bar.size, bar.ops)
        except ValueError as exc:                 # the space refuses it: the BAR just doesn't decode
            trace.guest_error(f"{self.name}: BAR{bar.index} at {base:#x} not mapped: {exc}")
            return
        bar.mapped_at = base
        if EV_MAP_ADD.enabled:
            EV_MAP_ADD.emit(dev=self.name, bar=bar.index, address=base, size=bar.size)

    def _unmap_bar(self, bar: Bar) -> None:
        if bar.is_io:
            self.io.remove(bar.handle)
        else:
            self.memory_map.remove(bar.handle)
        if EV_MAP_DEL.enabled:
            EV_MAP_DEL.emit(dev=self.name, bar=bar.index, address=bar.mapped_at, size=bar.size)
        bar.handle = None
        bar.mapped_at = None

    def bar_address(self, index: int) -> int | None:
        """The base the BAR currently decodes at (programmed, assigned, decoding enabled; a memory
        BAR that overlaps something else still reports its base), or None."""
        if not 0 <= index < NUM_BARS:
            return None
        bar = self.bars[index]
        return None if bar is None else bar.mapped_at

    # ------------------------------------------------------------------------------------------
    # INTx
    # ------------------------------------------------------------------------------------------
    def set_irq(self, level: bool) -> None:
        """Assert/deassert the INTx pin. Status bit 3 follows the device's request even while
        command bit 10 (INTx disable) keeps the pin itself deasserted (PCI 3.0 section 6.2.3)."""
        level = bool(level)
        if EV_SET_IRQ.enabled and level != self._irq_level:
            EV_SET_IRQ.emit(dev=self.name, pin=self.config[0x3D], level=level)     # pin 1 = INTA#
        self._irq_level = level
        if level:
            self.config[STATUS] |= STS_INTERRUPT
        else:
            self.config[STATUS] &= ~STS_INTERRUPT & 0xFF
        self._drive_intx()

    def _drive_intx(self) -> None:
        if self.intx is not None:
            self.intx.set(self._irq_level and not self.config[COMMAND + 1] & (CMD_INTX_DISABLE >> 8))

    @property
    def interrupt_pin(self) -> int:
        return self.config[INTERRUPT_PIN]

    # ------------------------------------------------------------------------------------------
    # Plugging and reset
    # ------------------------------------------------------------------------------------------
    def attach(self, bus: Bus, devfn: int, io: IoSpace, memory_map: MemoryMap,
               intx: IrqLine | None) -> None:
        """Called by PciBus.plug: from now on BARs decode in these spaces."""
        self.bus = bus
        self.devfn = devfn
        self.io = io
        self.memory_map = memory_map
        self.intx = intx
        self._update_mappings()
        self._drive_intx()

    def reset(self) -> None:
        """Power-on state: writable bits back to their reset values, error bits clear, INTx
        deasserted, every BAR unmapped (command = 0). Subclasses extend it."""
        c, rv = self.config, self._reset_values
        for o in range(CONFIG_SIZE):
            m = self.wmask[o] | self.w1cmask[o]
            if m:
                c[o] = (c[o] & ~m & 0xFF) | (rv[o] & m)
        self._irq_level = False
        c[STATUS] &= ~STS_INTERRUPT & 0xFF
        if self.msix is not None:
            self.msix.reset()
        self._update_mappings()
        self._drive_intx()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
