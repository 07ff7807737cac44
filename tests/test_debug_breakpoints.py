"""Device breakpoints against the real virtio-blk device, driven through its PCI registers by the
test driver (no CPU): each kind of breakpoint fires for what it names and nothing else."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from machine import trace
from machine.block import open_drive
from machine.config import DriveConfig
from machine.debug.breakpoints import DeviceBreakpoints
from machine.debug.session import Debugger
from machine.memory import GuestMemory, IoSpace, MemoryMap
from machine.pci.bus import PciBus
from machine.virtio.blk_pci import create_virtio_blk_pci
from test_debug_fakes import FakeTarget
from virtio_driver import (ACK, DRIVER, FEATURES_OK, Allocator, BlkRequests, ModernPci, T_FLUSH,
                           T_GET_ID, T_IN, T_OUT)

MiB = 1 << 20


@pytest.fixture
def rig(tmp_path):
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(1 * MiB))
    mem = GuestMemory(16 * MiB)
    mmap = MemoryMap(mem)
    io = IoSpace()
    bus = PciBus(mmap, io)
    backend = open_drive(DriveConfig(file=img))
    dev = create_virtio_blk_pci(backend, {}, mem)
    bus.plug(dev, 2)
    dev.config_write(0x20, 4, 0xFE000000)
    dev.config_write(0x24, 4, 0)
    machine = SimpleNamespace(mem=mem, memory_map=mmap, io=io, pci_bus=bus, devices={})
    target = FakeTarget(b"\x90")
    dbg = Debugger(target, machine)
    drv = ModernPci(dev, mem)
    yield SimpleNamespace(dbg=dbg, target=target, drv=drv, mem=mem, dev=dev)
    dbg.breakpoints.clear()
    backend.close() if hasattr(backend, "close") else None


def hit(rig) -> str | None:
    pending, rig.target.pending = rig.target.pending, None
    if pending is None:
        return None
    assert pending[0] == "device"
    return pending[1]


def start(rig):
    vq = rig.drv.init(Allocator(rig.mem))[0]
    return vq, BlkRequests(vq)


def test_request_type_breakpoint_fires_only_for_that_type(rig):
    out = rig.dbg.monitor.execute("break virtio-blk request type=flush")
    assert out == "Device breakpoint 1: virtio-blk request type=flush\n"
    vq, blk = start(rig)
    blk.submit(T_OUT, 8, out=bytes(512))
    rig.drv.kick(0)
    assert hit(rig) is None
    blk.submit(T_FLUSH)
    rig.drv.kick(0)
    msg = hit(rig)
    assert msg == "device breakpoint 1 (virtio-blk request type=flush): request flush"
    assert "1    1     virtio-blk request type=flush" in rig.dbg.monitor.execute("info breakpoints")


def test_sector_range_breakpoint(rig):
    rig.dbg.monitor.execute("break virtio-blk request sector=64-127")
    vq, blk = start(rig)
    blk.submit(T_IN, 0, in_len=64 * 512)            # sectors 0..63: just below the range
    rig.drv.kick(0)
    assert hit(rig) is None
    blk.submit(T_GET_ID, in_len=20)                  # no sectors at all
    rig.drv.kick(0)
    assert hit(rig) is None
    blk.submit(T_OUT, 120, out=bytes(16 * 512))      # 120..135 overlaps
    rig.drv.kick(0)
    assert hit(rig) == "device breakpoint 1 (virtio-blk request sector=64-127): request out sector 120"


def test_notify_breakpoint_with_queue_filter(rig):
    rig.dbg.monitor.execute("break virtio-blk notify queue=1")
    rig.dbg.monitor.execute("break virtio-blk notify queue=0")
    vq, blk = start(rig)
    rig.drv.kick(0)
    assert hit(rig) == "device breakpoint 2 (virtio-blk notify queue=0): queue notify, queue 0"


def test_status_and_feature_negotiation_breakpoints(rig):
    rig.dbg.monitor.execute("break virtio-blk features")
    drv = rig.drv
    drv.set_status(0)
    drv.set_status(ACK)
    drv.set_status(ACK | DRIVER)
    assert hit(rig) is None
    drv.write_features(drv.device_features())
    drv.set_status(ACK | DRIVER | FEATURES_OK)
    assert hit(rig) == ("device breakpoint 1 (virtio-blk features): feature negotiation "
                        "(FEATURES_OK written, status 0x0b)")
    rig.dbg.monitor.execute("delete 1")
    rig.dbg.monitor.execute("break virtio-blk status")
    drv.set_status(0)
    assert hit(rig) == "device breakpoint 2 (virtio-blk status): status write 0x00"


def test_needs_reset_breakpoint(rig):
    rig.dbg.monitor.execute("break virtio-blk needs-reset")
    vq, blk = start(rig)
    vq.mem.write_u16(vq.avail + 4, 200)               # a head beyond the queue size
    vq.set_avail_idx(1)
    rig.drv.kick(0)
    msg = hit(rig)
    assert msg.startswith("device breakpoint 1 (virtio-blk needs-reset): device needs reset:"), msg
    assert rig.drv.status & 0x40


def test_breakpoints_enable_events_only_while_they_exist_and_print_nothing(rig, capsys):
    from machine.virtio import device as vdevice
    assert not vdevice.EV_QUEUE_NOTIFY.enabled
    rig.dbg.monitor.execute("break virtio-blk notify")
    assert vdevice.EV_QUEUE_NOTIFY.enabled and not vdevice.EV_QUEUE_NOTIFY.printed
    start(rig)
    rig.drv.kick(0)
    assert hit(rig)
    rig.dbg.monitor.execute("delete 1")
    assert not vdevice.EV_QUEUE_NOTIFY.enabled
    assert "virtio_queue_notify" not in capsys.readouterr().err


def test_listener_without_a_machine_uses_per_type_events():
    hits = []
    bps = DeviceBreakpoints(lambda bp, msg: hits.append(msg))
    bps.add("virtio-blk request type=write sector=10")
    bps.listener("virtio_blk_handle_write", {"vdev": "virtio-blk", "req": 0, "sector": 8, "nsectors": 4})
    bps.listener("virtio_blk_handle_read", {"vdev": "virtio-blk", "req": 0, "sector": 8, "nsectors": 4})
    bps.listener("virtio_blk_handle_write", {"vdev": "virtio-net", "req": 0, "sector": 8, "nsectors": 4})
    assert hits == ["device breakpoint 1 (virtio-blk request type=out sector=10): request out sector 8"]
    bps.clear()
    assert bps.listener not in trace._listeners
