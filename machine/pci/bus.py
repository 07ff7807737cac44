"""PCI bus 0: which function answers at which device/function number, and where INTx goes.

The bus owns no registers. It routes configuration cycles to the function plugged at a devfn
(devfn = slot << 3 | function), gives each function the address spaces its BARs decode in, and
hands each INTx pin to an interrupt router (the PIIX3's PIRQ logic on a PC). Bus numbers other
than 0 and empty functions answer like an unclaimed configuration cycle: a master abort, which
reads all-ones (so the vendor ID reads 0xFFFF) and drops writes.
"""

from __future__ import annotations

from typing import Callable

from .. import trace, vmstate
from ..irq import IrqLine
from ..memory import IoSpace, MemoryMap, ones
from .device import PciDevice

IntxRouter = Callable[[int, int, bool], None]       # route(devfn, pin 1..4, level)

NUM_SLOTS = 32
NUM_FUNCTIONS = 8

EV_CFG_READ = trace.Event("pci_cfg_read")
EV_CFG_WRITE = trace.Event("pci_cfg_write")


class PciBus:
    def __init__(self, memory_map: MemoryMap, io: IoSpace):
        self.memory_map = memory_map
        self.io = io
        self.devices: dict[int, PciDevice] = {}
        # Ports the host bridge claims before anything reaches the bus (0xCF8-0xCFF): an I/O BAR
        # placed over them cannot decode, or the guest would lose config access for good.
        self.host_ports: list[tuple[int, int]] = []
        self._router: IntxRouter | None = None
        # Last level of every INTx pin, so a router connected late (or replaced) starts right.
        self._intx_levels: dict[int, bool] = {}

    VMSTATE = vmstate.Description("pci-bus", 1, (
        vmstate.Field("intx_levels", vmstate.List(vmstate.Tuple(vmstate.U16, vmstate.BOOL), 256 * 8)),))

    @property
    def intx_levels(self) -> tuple:
        return tuple(sorted(self._intx_levels.items()))

    @intx_levels.setter
    def intx_levels(self, items) -> None:
        self._intx_levels = dict(items)

    # -- topology ---------------------------------------------------------------------------
    def plug(self, dev: PciDevice, slot: int, function: int = 0) -> None:
        """Connect `dev` at slot/function: its BARs decode in this bus's spaces, its INTx pin
        (if it has one) goes to the router."""
        if not 0 <= slot < NUM_SLOTS or not 0 <= function < NUM_FUNCTIONS:
            raise ValueError(f"PCI address {slot:#x}.{function} out of range")
        devfn = (slot << 3) | function
        if devfn in self.devices:
            raise ValueError(f"PCI slot {slot:#04x}.{function} already holds {self.devices[devfn].name}")
        if dev.bus is not None:
            raise ValueError(f"{dev.name} is already plugged")
        self.devices[devfn] = dev
        pin = dev.interrupt_pin
        intx = None
        if pin:
            intx = IrqLine(f"{dev.name}.INT{'ABCD'[pin - 1]}",
                           lambda level, _devfn=devfn, _pin=pin: self._intx(_devfn, _pin, level))
        dev.attach(self, devfn, self.io, self.memory_map, intx)

    def device(self, slot: int, function: int = 0) -> PciDevice | None:
        return self.devices.get((slot << 3) | function)

    def claims_port_range(self, base: int, size: int) -> bool:
        """True if the host bridge owns any port of [base, base+size)."""
        return any(b < base + size and base < b + n for b, n in self.host_ports)

    # -- configuration cycles (guest-reachable) ------------------------------------------------
    def config_read(self, bus: int, devfn: int, offset: int, size: int) -> int:
        dev = self.devices.get(devfn) if bus == 0 else None
        if dev is None:
            return ones(size if size in (1, 2, 4) else 4)
        value = dev.config_read(offset, size)
        if EV_CFG_READ.enabled:
            EV_CFG_READ.emit(dev=dev.name, offset=offset, size=size, value=value)
        return value

    def config_write(self, bus: int, devfn: int, offset: int, size: int, value: int) -> None:
        dev = self.devices.get(devfn) if bus == 0 else None
        if dev is None:
            return
        if EV_CFG_WRITE.enabled:
            EV_CFG_WRITE.emit(dev=dev.name, offset=offset, size=size, value=value)
        dev.config_write(offset, size, value)

    # -- INTx ---------------------------------------------------------------------------------
    def set_intx_router(self, route: IntxRouter) -> None:
        """route(devfn, pin, level) receives every INTx change; pins already asserted are
        replayed so nothing is lost when the router arrives after the devices."""
        self._router = route
        for key, level in self._intx_levels.items():
            if level:
                route(key >> 3, key & 7, True)

    def _intx(self, devfn: int, pin: int, level: bool) -> None:
        self._intx_levels[(devfn << 3) | pin] = level
        if self._router is not None:
            self._router(devfn, pin, level)

    def reset(self) -> None:
        """Reset every function on the bus (system reset)."""
        for dev in self.devices.values():
            dev.reset()
