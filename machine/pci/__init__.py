"""PCI: configuration mechanism #1, bus 0, the PciDevice base (type 0 header, BARs, capabilities)
and the i440FX/PIIX3 chipset functions."""

from .bus import PciBus
from .device import PciDevice
from .host import I440fx, PciConfigIo
from .piix3 import Piix3

__all__ = ["PciBus", "PciDevice", "PciConfigIo", "I440fx", "Piix3"]
