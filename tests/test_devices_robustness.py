"""Every device survives arbitrary guest accesses: no Python exception, bounded values."""

import io
import random
import struct
import sys

import pytest

from machine import trace
from machine.clock import VirtualClock
from machine.devices.cmos import Cmos
from machine.devices.debug_exit import DebugExit
from machine.devices.debugcon import DebugCon
from machine.devices.fw_cfg import FwCfg
from machine.devices.lapic import LocalApic
from machine.devices.pic import DualPic
from machine.devices.pit import Pit
from machine.devices.port92 import Port92
from machine.devices.serial import Uart16550
from machine.memory import GuestMemory


def build(clock):
    mem = GuestMemory(4 << 20)
    pic = DualPic()
    pit = Pit(pic.irq_line(0), clock)
    fw = FwCfg(mem)
    fw.add_file("etc/x", b"abc")
    return [
        ("serial", Uart16550(pic.irq_line(4), io.BytesIO()), 8),
        ("debug-exit", DebugExit(lambda s: None), 4),
        ("debugcon", DebugCon(io.BytesIO()), 1),
        ("fw_cfg", fw, 12),
        ("cmos", Cmos(pic.irq_line(8), clock, 4 << 20, start_time=0), 2),
        ("pic-master", pic.master_ops, 2),
        ("pic-slave", pic.slave_ops, 2),
        ("elcr", pic.elcr_ops, 2),
        ("pit", pit, 4),
        ("port61", pit.port61_ops, 1),
        ("port92", Port92(lambda: None), 1),
        ("lapic", LocalApic(clock), 0x1000),
    ], pic


@pytest.mark.parametrize("seed", range(4))
def test_random_accesses_never_raise(seed):
    if seed == 0:                                   # one run with every trace point and log on
        trace.set_output(io.StringIO())
        trace.enable("*")
        trace.enable_category("guest_errors")
    try:
        _random_accesses(seed)
    finally:
        trace.set_output(sys.stderr)


def _random_accesses(seed):
    rng = random.Random(seed)
    clock = VirtualClock()
    devices, pic = build(clock)
    for _ in range(4000):
        name, dev, size = devices[rng.randrange(len(devices))]
        width = rng.choice((1, 2, 4))
        offset = rng.randrange(size)
        if name == "lapic" and rng.random() < 0.7:
            offset &= 0x3F0                         # mostly real registers
        if rng.random() < 0.5:
            value = dev.read(offset, width)
            assert 0 <= value < (1 << (8 * width)), name
        else:
            dev.write(offset, width, rng.getrandbits(8 * width))
        if rng.random() < 0.1:
            clock.advance(rng.randrange(1, 5_000_000))
        if pic.pending():
            assert 0 <= pic.acknowledge() < 256


def test_fw_cfg_random_dma_descriptors_stay_in_bounds():
    rng = random.Random(7)
    mem = GuestMemory(4 << 20)
    fw = FwCfg(mem)
    fw.add_file("etc/blob", bytes(range(256)) * 4)
    writes = []
    mem.add_write_listener(lambda gpa, n: writes.append((gpa, n)))
    for _ in range(500):
        desc = rng.choice((0x1000, (4 << 20) - 8, 0x9FFF8, rng.getrandbits(64)))
        addr = rng.choice((0x2000, 0x9F000, (4 << 20) - 16, 0xA0000, rng.getrandbits(64)))
        control = rng.getrandbits(32) & 0xFFFF001F
        length = rng.choice((0, 1, 100, 4096, 0xFFFFFFFF, rng.getrandbits(32)))
        if mem.contains(desc, 16):
            mem.write(desc, struct.pack(">IIQ", control, length, addr))
        writes.clear()
        fw.write(4, 4, int.from_bytes(struct.pack(">Q", desc)[:4], "little"))
        fw.write(8, 4, int.from_bytes(struct.pack(">Q", desc)[4:], "little"))
        for gpa, n in writes:
            assert mem.contains(gpa, n)
            assert gpa == desc or (addr <= gpa and gpa + n <= addr + length)
        if mem.contains(desc, 16) and writes:
            assert mem.read_u32(desc) in (0, 0x01000000)          # big-endian 0 or ERROR
