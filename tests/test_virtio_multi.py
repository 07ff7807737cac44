"""Several virtio-blk disks on one machine: each at its own PCI slot (addr= as QEMU), named by
its id= in logs, trace events, monitor commands and device breakpoints."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from machine import trace
from machine.block import open_drive
from machine.config import CharDev, ConfigError, DeviceConfig, DriveConfig, MachineConfig
from machine.debug.monitor import Monitor
from machine.debug.session import Debugger
from machine.memory import GuestMemory, IoSpace, MemoryMap
from machine.pc import Machine
from machine.pci.bus import PciBus
from machine.virtio.blk_pci import create_virtio_blk_pci
from test_debug_fakes import FakeTarget
from virtio_driver import Allocator, BlkRequests, ModernPci, T_FLUSH, T_IN

MiB = 1 << 20


def images(tmp_path, n):
    out = []
    for i in range(n):
        p = tmp_path / f"d{i}.img"
        p.write_bytes(bytes([i]) * MiB)
        out.append(p)
    return out


def board(tmp_path, devices, drives):
    return Machine(MachineConfig(serial=CharDev("null"), drives=drives, devices=devices))


@pytest.fixture
def three(tmp_path):
    a, b, c = images(tmp_path, 3)
    m = board(tmp_path,
              [DeviceConfig("virtio-blk-pci", {"drive": "a", "id": "disk-a"}),
               DeviceConfig("virtio-blk-pci", {"drive": "b", "id": "disk-b", "addr": "6"})],
              [DriveConfig(file=a, id="a", interface="none"), DriveConfig(file=b, id="b", interface="none"),
               DriveConfig(file=c, interface="virtio")])
    yield m
    m.close()


def test_each_disk_has_its_own_slot_and_addr_places_it(three):
    bus = three.pci_bus
    assert bus.device(2).vdev.id == "disk-a" and bus.device(6).vdev.id == "disk-b"
    assert bus.device(3).vdev.id is None                 # the if=virtio drive: next free slot
    assert [bus.device(s).vdev.backend.size for s in (2, 3, 6)] == [MiB] * 3


def test_monitor_names_devices_by_id_and_qemu_path(three):
    mon = Monitor(None, machine=three)
    assert mon.execute("info virtio") == ("/machine/peripheral/disk-a/virtio-backend [virtio-blk]\n"
                                         "/machine/pci/03.0/virtio-backend [virtio-blk]\n"
                                         "/machine/peripheral/disk-b/virtio-backend [virtio-blk]\n")
    out = mon.execute("info virtio-status disk-b")
    assert out.startswith("/machine/peripheral/disk-b/virtio-backend:")
    assert mon.execute("info virtio-status /machine/peripheral/disk-b") == out
    assert mon.execute("info virtio-status 06.0") == out
    assert mon.execute("info virtio-queue-status disk-b 0").startswith("/machine/peripheral/disk-b/")
    assert mon.execute("info virtio-status virtio-blk").startswith("/machine/peripheral/disk-a/")
    assert 'id "disk-b"' in mon.execute("info pci")


def test_logs_and_trace_events_name_the_device(three, guest_errors):
    seen = []
    listener = lambda name, fields: seen.append(fields.get("vdev"))  # noqa: E731
    trace.add_listener(listener)
    try:
        trace.listen("virtio_queue_notify")
        three.pci_bus.device(6).vdev.queue_notify(9)
        three.pci_bus.device(3).vdev.queue_notify(9)
    finally:
        trace.remove_listener(listener)
    assert seen == ["virtio-blk/disk-b", "virtio-blk"]
    assert "virtio-blk/disk-b: notify for queue 9 which does not exist" in guest_errors.getvalue()


def test_duplicate_device_id_is_a_config_error(tmp_path):
    a, b = images(tmp_path, 2)
    with pytest.raises(ConfigError, match="Duplicate ID 'x' for device"):
        board(tmp_path, [DeviceConfig("virtio-blk-pci", {"drive": "a", "id": "x"}),
                         DeviceConfig("virtio-blk-pci", {"drive": "b", "id": "x"})],
              [DriveConfig(file=a, id="a", interface="none"), DriveConfig(file=b, id="b", interface="none")])


@pytest.mark.parametrize("addr,msg", [("2", "PCI: slot 2 function 0 not available"), ("1", "in use by"),
                                      ("20", "slot 0-1f"), ("x", "doesn't take value 'x'")])
def test_bad_or_taken_addr_is_a_config_error(tmp_path, addr, msg):
    a, b = images(tmp_path, 2)
    with pytest.raises(ConfigError, match=msg):
        board(tmp_path, [DeviceConfig("virtio-blk-pci", {"drive": "a"}),
                         DeviceConfig("virtio-blk-pci", {"drive": "b", "addr": addr})],
              [DriveConfig(file=a, id="a", interface="none"), DriveConfig(file=b, id="b", interface="none")])


# -- device breakpoints that name one device ---------------------------------------------------------

@pytest.fixture
def pair(tmp_path):
    mem = GuestMemory(16 * MiB)
    mmap, io = MemoryMap(mem), IoSpace()
    bus = PciBus(mmap, io)
    backends, drivers = [], {}
    alloc = Allocator(mem)
    for slot, (name, img) in enumerate(zip(("a", "b"), images(tmp_path, 2)), start=2):
        be = open_drive(DriveConfig(file=img))
        backends.append(be)
        dev = create_virtio_blk_pci(be, {"id": name}, mem)
        bus.plug(dev, slot)
        drv = ModernPci(dev, mem)
        vq = drv.init(alloc)[0]
        drivers[name] = (drv, BlkRequests(vq))
    target = FakeTarget(b"\x90")
    dbg = Debugger(target, SimpleNamespace(mem=mem, memory_map=mmap, io=io, pci_bus=bus, devices={}))
    yield SimpleNamespace(dbg=dbg, target=target, drivers=drivers)
    dbg.breakpoints.clear()
    for be in backends:
        be.close()


def kick(pair, name, rtype, **kw):
    drv, blk = pair.drivers[name]
    blk.submit(rtype, **kw)
    drv.kick(0)
    pending, pair.target.pending = pair.target.pending, None
    return None if pending is None else pending[1]


def test_dev_narrows_a_breakpoint_to_one_device(pair):
    out = pair.dbg.monitor.execute("break virtio-blk request type=flush dev=b")
    assert out == "Device breakpoint 1: virtio-blk request type=flush dev=b\n"
    assert kick(pair, "a", T_FLUSH) is None
    assert kick(pair, "b", T_IN, in_len=512) is None
    assert kick(pair, "b", T_FLUSH) == "device breakpoint 1 (virtio-blk request type=flush dev=b): request flush"


def test_a_breakpoint_without_dev_fires_for_every_device_and_the_id_names_one(pair):
    pair.dbg.monitor.execute("break virtio-blk request type=flush")
    assert kick(pair, "a", T_FLUSH) is not None and kick(pair, "b", T_FLUSH) is not None
    pair.dbg.breakpoints.clear()
    pair.dbg.monitor.execute("break a notify")
    assert kick(pair, "b", T_IN, in_len=512) is None
    assert kick(pair, "a", T_IN, in_len=512) == "device breakpoint 2 (a notify): queue notify, queue 0"
