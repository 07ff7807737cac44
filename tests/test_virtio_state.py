"""Typed state snapshots of virtio devices and queues (`VirtioDevice.state()`,
`SplitQueue.state()`): what the monitor, the breakpoints and the Python API read."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from virtio_driver import S_OK, T_IN, T_OUT, benches, pattern
from machine.debug.breakpoints import DeviceBreakpoints
from machine.debug.monitor import Monitor
from machine.memory import IoSpace, MemoryMap
from machine.pci.bus import PciBus
from machine.virtio.queue import BadHeadIndex
from machine.virtio.spec import DEVICE_NEEDS_RESET, DRIVER_OK, VIRTIO_F_VERSION_1
from test_debug_fakes import FakeTarget


@pytest.fixture
def make(tmp_path):
    yield from benches(tmp_path)


def monitor_for(bench) -> Monitor:
    bus = PciBus(MemoryMap(bench.mem), IoSpace())
    bus.plug(bench.dev, 2)
    machine = SimpleNamespace(mem=bench.mem, pci_bus=bus, devices={})
    return Monitor(FakeTarget(b"\x90"), machine, DeviceBreakpoints(lambda bp, msg: None))


def test_device_and_queue_state_after_requests(make):
    b = make().start()
    assert b.run(T_OUT, 0, out=pattern(1024))[1] == S_OK
    assert b.run(T_IN, 0, in_len=512)[1] == S_OK
    st = b.vdev.state()
    assert (st.name, st.device_id, st.broken, st.error, st.started) == ("virtio-blk", 2, False, None, True)
    assert st.status & DRIVER_OK and st.guest_features >> VIRTIO_F_VERSION_1 & 1
    assert st.config == bytes(b.vdev.config)
    q = st.queues[0]
    vq = b.vqs[0]
    assert (q.index, q.size, q.max_size, q.enabled, q.active) == (0, 256, 256, True, True)
    assert (q.desc_addr, q.avail_addr, q.used_addr) == (vq.desc, vq.avail, vq.used)
    assert (q.last_avail_idx, q.used_idx, q.inflight, q.inflight_count) == (2, 2, (), 0)


def test_a_snapshot_is_a_value_not_a_view(make):
    b = make().start()
    before = b.vdev.state()
    assert b.run(T_IN, 0, in_len=512)[1] == S_OK
    assert before.queues[0].used_idx == 0 and b.vdev.state().queues[0].used_idx == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.status = 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.queues[0].size = 2


def test_a_broken_device_says_why_until_reset(make):
    b = make().start()
    vq = b.vqs[0]
    vq.publish(300)                             # a head beyond the table
    b.drv.kick(0)
    st = b.vdev.state()
    assert st.broken and st.status & DEVICE_NEEDS_RESET
    assert st.error == "Guest says index 300 is available" and type(b.vdev.error) is BadHeadIndex
    b.start()
    assert not b.vdev.state().broken and b.vdev.state().error is None


@pytest.mark.parametrize("legacy", [False, True])
def test_info_virtio_status_shows_a_broken_device_as_broken(make, legacy):
    # A legacy driver has no DEVICE_NEEDS_RESET bit: the device is broken all the same, and
    # the monitor shows the device's own flag, not a guess from the status byte.
    b = make(legacy=legacy).start()
    mon = monitor_for(b)
    assert "broken:                  false" in mon.execute("info virtio-status virtio-blk")
    b.vqs[0].publish(300)
    b.drv.kick(0)
    assert b.vdev.broken and bool(b.vdev.status & DEVICE_NEEDS_RESET) is not legacy
    assert "broken:                  true" in mon.execute("info virtio-status virtio-blk")


def test_info_virtio_status_shows_the_transport_queue_select(make):
    b = make().start(nqueues=1)
    mon = monitor_for(b)
    b.drv.common_write(0x16, 2, 0)              # queue_select = 0
    assert "queue_sel:               0" in mon.execute("info virtio-status virtio-blk")
    b.drv.common_write(0x16, 2, 5)              # a queue that does not exist: still selected
    assert "queue_sel:               5" in mon.execute("info virtio-status virtio-blk")


def test_queue_state_carries_the_negotiated_ring_features_and_interrupt_bookkeeping(make):
    b = make()
    b.start(features=b.drv.device_features() & ~(1 << 28))          # no INDIRECT_DESC
    q = b.vdev.queues[0].state()
    assert (q.event_idx, q.indirect, q.pending_kick) == (True, False, False)
    assert (q.signalled_used, q.signalled_valid) == (0, False)
    b.run(T_IN, 0, in_len=512)                                       # interrupts: used idx 1
    q = b.vdev.queues[0].state()
    assert (q.signalled_used, q.signalled_valid) == (1, True)
    early = make(props={"strict": "on"})
    early.start(driver_ok=False)
    early.blk = None
    early.drv.kick(0)                                                # before DRIVER_OK: held
    assert early.vdev.queues[0].state().pending_kick is True


def test_the_state_carries_the_isr_and_the_config_generation(make):
    import io
    import sys
    from machine import trace
    b = make().start()
    assert (b.vdev.state().isr, b.vdev.state().config_generation) == (0, 0)
    out = io.StringIO()
    trace.set_output(out)
    trace.enable("virtio_notify_config")
    try:
        b.vdev.config_changed()                     # a live driver hears of it
    finally:
        trace.disable_all()
        trace.set_output(sys.stderr)
    st = b.vdev.state()
    assert (st.isr, st.config_generation) == (2, 1)
    assert out.getvalue() == "virtio_notify_config vdev=virtio-blk\n"



def test_a_fresh_queue_has_no_ring_features_until_negotiation(make):
    q = make().vdev.queues[0].state()
    assert q.event_idx is False and q.indirect is False and q.active is False
