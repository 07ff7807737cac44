"""System Control Port A (port 0x92, the PS/2 "fast A20 and reset" port).

Bit 1 is the A20 gate and reads back as written; bit 0 is the fast reset: a 0-to-1 transition
resets the CPU, which the board carries out through `on_reset` (this device only records the
request). Other bits are stored and read back. This machine never masks address line 20 (the
CPU emulator has no A20 gate), so a guest that turns A20 off still sees memory above 1 MiB; PC
firmware and kernels only ever turn it on.
"""

from __future__ import annotations

from typing import Callable

from .. import trace
from .. import vmstate
from ..vmstate import U8
from ..memory import ones

A20 = 0x02
FAST_RESET = 0x01


class Port92:
    VMSTATE = vmstate.Description("port92", 1, (
        vmstate.Field("value", U8),))

    BASE = 0x92
    SIZE = 1

    def __init__(self, on_reset: Callable[[], None]):
        self.on_reset = on_reset
        self.value = 0

    def reset(self) -> None:
        self.value = 0

    @property
    def a20(self) -> bool:
        return bool(self.value & A20)

    def read(self, offset: int, size: int) -> int:
        return self.value | (ones(size) & ~0xFF)

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        old, self.value = self.value, value
        if not value & A20 and old & A20:
            trace.log("unimp", "port 0x92: A20 disabled by the guest; this machine keeps A20 on")
        if value & FAST_RESET and not old & FAST_RESET:
            self.on_reset()
