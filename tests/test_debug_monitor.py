"""Monitor commands against real address spaces, a real PCI bus and a virtio stand-in whose
rings live in guest RAM."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest

from machine.debug.breakpoints import DeviceBreakpoints
from machine.debug.monitor import Monitor, parse_format
from machine.memory import GuestMemory, IoSpace, MemoryMap
from machine.pci.bus import PciBus
from machine.pci.device import PciDevice
from machine.virtio.device import VirtioDevice
from machine.virtio.queue import SplitQueue
from test_debug_fakes import FakeTarget

MiB = 1 << 20


class Ops:
    def read(self, offset, size):
        raise AssertionError("the monitor must never access device registers")

    def write(self, offset, size, value):
        raise AssertionError("the monitor must never access device registers")


def fake_queue(mem, size, desc, avail, used):
    """A queue in the state a driver and a device left it, without running either."""
    q = SplitQueue(0, size, lambda q: None, mem)
    q.enabled = True
    q.desc_addr, q.avail_addr, q.used_addr = desc, avail, used
    q.last_avail_idx, q.used_idx = 1, 1
    return q


class FakeVirtioBlk(VirtioDevice):
    """A virtio-blk device in a set state, with no behaviour behind it."""

    def __init__(self, queues, mem):
        super().__init__("virtio-blk", 2, mem)
        self.status = 0x0F
        self.host_features = (1 << 32) | (1 << 28) | (1 << 29) | (1 << 9) | (1 << 6)
        self.guest_features = (1 << 32) | (1 << 9)
        self.queues = queues


class FakeVirtioPci(PciDevice):
    def __init__(self, vdev):
        super().__init__("virtio-blk-pci", 0x1AF4, 0x1001, 0x010000, subsystem_vendor_id=0x1AF4,
                         subsystem_id=2, interrupt_pin=1)
        self.add_io_bar(0, 0x80, Ops())
        self.add_mem_bar(4, 0x4000, Ops(), is64=True, prefetchable=True)
        self.add_capability(0x09, bytes([16, 1, 4, 0, 0, 0]) + bytes(10))
        self.vdev = vdev


def build_machine():
    mem = GuestMemory(16 * MiB)
    mmap = MemoryMap(mem, reserved=[(0xFFFE0000, 0x20000, "bios.rom")])
    io = IoSpace()
    io.add("serial", 0x3F8, 8, Ops())
    bus = PciBus(mmap, io)
    host = PciDevice("i440fx", 0x8086, 0x1237, 0x060000, revision=2)
    bus.plug(host, 0)
    # A descriptor chain at avail slot 1: header (16 bytes), data (512, device-writable), status.
    desc, avail, used = 0x10000, 0x11000, 0x12000
    q = fake_queue(mem, 8, desc, avail, used)
    mem.write(desc + 16 * 3, struct.pack("<QIHH", 0x20000, 16, 1, 5))
    mem.write(desc + 16 * 5, struct.pack("<QIHH", 0x21000, 512, 3, 6))
    mem.write(desc + 16 * 6, struct.pack("<QIHH", 0x22000, 1, 2, 0))
    mem.write(avail, struct.pack("<HHHH", 0, 2, 0, 3))      # flags, idx, ring[0], ring[1]
    mem.write(used, struct.pack("<HH", 0, 1))
    # An indirect chain at ring[0]: one descriptor pointing at a two-entry table.
    mem.write(desc, struct.pack("<QIHH", 0x30000, 32, 4, 0))
    mem.write(0x30000, struct.pack("<QIHH", 0x31000, 16, 1, 1) + struct.pack("<QIHH", 0x32000, 1, 2, 0))
    vdev = FakeVirtioBlk([q], mem)
    dev = FakeVirtioPci(vdev)
    bus.plug(dev, 2)
    dev.config_write(0x10, 4, 0xC000)
    dev.config_write(0x20, 4, 0xFE000000)
    dev.config_write(0x24, 4, 0)
    dev.config_write(0x3C, 1, 11)
    dev.config_write(0x04, 2, 0x7)
    machine = SimpleNamespace(mem=mem, memory_map=mmap, io=io, pci_bus=bus, devices={}, cpu=SimpleNamespace(mode="protected"))
    return machine, vdev


@pytest.fixture
def mon():
    machine, vdev = build_machine()
    target = FakeTarget(bytes([0x90, 0x55, 0x89, 0xE5, 0xC3]))
    target.regs["eax"] = 0xDEADBEEF
    target.mem[0x4000:0x4010] = bytes(range(0x41, 0x51))
    return Monitor(target, machine, DeviceBreakpoints(lambda bp, msg: None))


def test_info_registers(mon):
    out = mon.execute("info registers")
    assert "EAX=deadbeef" in out and "EIP=00001000" in out and "ESP=00008000" in out
    assert "CS =0008" in out


def test_info_pci_decodes_config_space_and_bars(mon):
    out = mon.execute("info pci")
    assert "Bus  0, device   0, function 0:" in out and "Host bridge: PCI device 8086:1237" in out
    assert "Bus  0, device   2, function 0:" in out
    assert "SCSI controller: PCI device 1af4:1001" in out
    assert "PCI subsystem 1af4:0002" in out
    assert "IRQ 11, pin A" in out
    assert "BAR0: I/O at 0xc000 [0xc07f]." in out
    assert "BAR4: 64 bit prefetchable memory at 0xfe000000 [0xfe003fff]." in out
    assert "vendor@0x40(virtio common)" in out


def test_info_mtree_lists_ram_rom_mmio_and_ports(mon):
    out = mon.execute("info mtree")
    assert "0000000000000000-000000000009ffff (prio 0, ram)" in out
    assert "00000000fffe0000-00000000ffffffff (prio 0, rom): bios.rom" in out
    assert "00000000fe000000-00000000fe003fff (prio 1, i/o): virtio-blk-pci.bar4" in out
    assert "00000000000003f8-00000000000003ff (prio 0, i/o): serial" in out
    assert "000000000000c000-000000000000c07f (prio 0, i/o): virtio-blk-pci.bar0" in out


def test_info_virtio_and_status(mon):
    assert mon.execute("info virtio") == "/machine/pci/02.0/virtio-backend [virtio-blk]\n"
    out = mon.execute("info virtio-status virtio-blk")
    assert "device_name:             virtio-blk" in out
    assert "ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK" in out
    guest = out.split("Guest features")[1].split("Host features")[0]
    assert "VERSION_1" in guest and "FLUSH" in guest and "RING_INDIRECT_DESC" not in guest
    host = out.split("Host features")[1]
    assert "RING_INDIRECT_DESC: Indirect descriptors supported" in host and "BLK_SIZE" in host
    assert mon.execute("info virtio-status 02.0") == out     # by slot, too
    assert "no virtio device 'nope'" in mon.execute("info virtio-status nope")


def test_info_virtio_queue_status(mon):
    out = mon.execute("info virtio-queue-status virtio-blk 0")
    assert "queue_index:          0" in out and "last_avail_idx:       1" in out
    assert "shadow_avail_idx:     2" in out
    assert "desc:         0x0000000000010000" in out and "used:         0x0000000000012000" in out
    assert "invalid queue index 3" in mon.execute("info virtio-queue-status virtio-blk 3")


def test_info_virtio_queue_element_decodes_chains(mon):
    out = mon.execute("info virtio-queue-element virtio-blk 0")          # next: avail slot 1
    assert "addr 0x20000 len 16\n" in out
    assert "addr 0x21000 len 512 (write)" in out and "addr 0x22000 len 1 (write)" in out
    assert "ring:  3" in out and "idx:   2" in out
    out = mon.execute("info virtio-queue-element virtio-blk 0 0")        # slot 0: indirect
    assert "len 32 (indirect)" in out and "addr 0x31000 len 16" in out and "addr 0x32000 len 1 (write)" in out


def test_queue_element_survives_a_looping_chain(mon):
    mem = mon.machine.mem
    mem.write(0x10000 + 16 * 3, struct.pack("<QIHH", 0x20000, 16, 1, 3))    # next -> itself
    out = mon.execute("info virtio-queue-element virtio-blk 0 1")
    assert "loop in descriptor chain" in out


def test_x_and_xp_formats(mon):
    assert mon.execute("x /4xb 0x4000") == "00004000: 0x41 0x42 0x43 0x44\n"
    assert mon.execute("x/2xw 0x4000") == "00004000: 0x44434241 0x48474645\n"
    assert mon.execute("x /1xg 0x4000") == "00004000: 0x4847464544434241\n"
    assert mon.execute("x /4c 0x4000") == "00004000: ABCD\n"
    assert mon.execute("x /2dh 0x4000").split(":")[1].split() == ["16961", "17475"]
    assert "push ebp" in mon.execute("x /3i $eip+1")
    assert mon.execute("x /1xw 0xf000").startswith("cannot access memory")
    mon.machine.mem.write(0x5000, b"\x78\x56\x34\x12")
    assert mon.execute("xp /1xw 0x5000") == "00005000: 0x12345678\n"
    assert "cannot read guest-physical" in mon.execute("xp /1xw 0xfe000000")     # MMIO: refused


def test_parse_format():
    assert parse_format("10xb") == (10, "x", 1)
    assert parse_format("i") == (1, "i", 4)
    with pytest.raises(ValueError):
        parse_format("4q")


def test_break_delete_and_info_breakpoints(mon):
    assert mon.execute("break virtio-blk request type=flush") == "Device breakpoint 1: virtio-blk request type=flush\n"
    assert mon.execute("break virtio-blk request sector=0-63").startswith("Device breakpoint 2")
    assert "unknown request type" in mon.execute("break virtio-blk request type=bogus")
    assert "unknown device event" in mon.execute("break virtio-blk frobnicate")
    listing = mon.execute("info breakpoints")
    assert "virtio-blk request type=flush" in listing and "sector=0-63" in listing
    assert mon.execute("delete 1") == ""
    assert "No device breakpoint number 1" in mon.execute("delete 1")
    assert "type=flush" not in mon.execute("info breakpoints")


def test_control_commands_and_errors(mon):
    calls = []
    mon.on_quit = lambda: calls.append("quit")
    mon.on_reset = lambda: calls.append("reset")
    mon.execute("system_reset")
    mon.execute("quit")
    assert calls == ["reset", "quit"]
    assert "unknown command" in mon.execute("frobnicate")
    assert "info registers" in mon.execute("help")
    assert mon.execute("") == ""
    assert "unknown subcommand" in mon.execute("info nothing")
    assert mon.execute("x") == "x: missing address\n"


def test_system_powerdown_presses_the_acpi_power_button(mon):
    from types import SimpleNamespace

    from machine.clock import VirtualClock
    from machine.devices.acpi_pm import PWRBTN_EN, PWRBTN_STS, AcpiPm
    from machine.irq import IrqLine

    assert "not available" in mon.execute("system_powerdown")      # a board without a PM block
    sci = IrqLine("sci")
    pm = AcpiPm(VirtualClock(), sci, lambda: None)
    pm.write(2, 2, PWRBTN_EN)
    mon.machine = SimpleNamespace(devices={"acpi-pm": pm})
    assert mon.execute("system_powerdown") == ""
    assert pm.read(0, 2) & PWRBTN_STS and sci.level
    assert "system_powerdown" in mon.execute("help")
