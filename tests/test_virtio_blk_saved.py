"""virtio-blk's own saved state, driven from Python without a guest: the requests a stop error
policy parked (saved as parsed, rebuilt against guest RAM on load), the completions a blkdebug
[delay] rule holds, and the checks that refuse saved values this device cannot take.
(tests/test_savevm.py does the same through a whole machine and a guest.)"""

from __future__ import annotations

import pytest

from machine import vmstate
from machine.clock import VirtualClock
from virtio_driver import S_OK, T_IN, T_OUT, T_WRITE_ZEROES, BlkRequests, Bench, pattern

RULES = ('[inject-error]\nevent = "write_aio"\nerrno = "5"\nonce = "on"\n'
         '[inject-error]\nevent = "read_aio"\nerrno = "5"\nonce = "on"\n'
         '[inject-error]\nevent = "pwritev_zero"\nerrno = "5"\nonce = "on"\n')


def bench(tmp_path, rules=RULES, **kw):
    conf = tmp_path / "rules.conf"
    conf.write_text(rules)
    return Bench(tmp_path, disk_size=1 << 20, blkdebug=conf, werror="stop", rerror="stop", **kw)


def saved(vdev) -> dict:
    """The device's section, through its byte encoding, as savevm writes and reads it."""
    desc = vdev.VMSTATE
    return vmstate.decode(desc, vmstate.encode(desc, vmstate.capture(vdev, desc)))


def load(vdev, values: dict) -> None:
    vmstate.check(vdev, vdev.VMSTATE, values)
    vmstate.apply(vdev, vdev.VMSTATE, values)


def parked(vdev) -> list:
    return [(q.index, req) for q, req in vdev.parked]


def seg(sector: int, n: int, flags: int = 0) -> bytes:
    return sector.to_bytes(8, "little") + n.to_bytes(4, "little") + flags.to_bytes(4, "little")


def test_parked_requests_of_every_shape_come_back_exactly_and_complete_on_cont(tmp_path):
    """A write (data in three descriptors) and a write-zeroes on queue 0, a read (data in two
    descriptors) on queue 1, all parked by werror/rerror=stop: saved, dropped by a reset,
    loaded, they are the same requests (guest addresses, lengths, RAM offsets, segment), and
    continuing completes each on its own queue."""
    b = bench(tmp_path, props={"num-queues": "2"}).start(nqueues=2)
    try:
        stops = []
        b.vdev.on_io_error = lambda: stops.append(True)
        q0, q1 = BlkRequests(b.vqs[0]), BlkRequests(b.vqs[1])
        w = q0.submit(T_OUT, 3, out=pattern(1024, 1), rcuts=[16, 300, 724])
        b.drv.kick(0)
        r = q1.submit(T_IN, 5, in_len=1024, wcuts=[512, 513])
        b.drv.kick(1)
        z = q0.submit(T_WRITE_ZEROES, 0, out=seg(8, 2))
        b.drv.kick(0)
        assert stops == [True] * 3 and b.vqs[0].get_used() == [] == b.vqs[1].get_used()
        before = parked(b.vdev)
        assert [(qi, req.head) for qi, req in before] == [(0, w.head), (1, r.head), (0, z.head)]
        assert before[2][1].segment == (8, 2, 0) and len(before[0][1].out_data) == 2

        values = saved(b.vdev)
        b.drv.set_status(0)                          # a reset drops them
        assert b.vdev.parked == []
        load(b.vdev, values)
        assert parked(b.vdev) == before
        assert [type(req.segment) for _, req in parked(b.vdev)] == [type(None), type(None), tuple]

        b.vdev.restart_parked()                      # `cont`: every rule has fired once
        assert [h for h, _ in b.vqs[0].get_used()] == [w.head, z.head]
        assert b.vqs[1].get_used() == [(r.head, 1025)]
        assert q0.result(w)[1] == q0.result(z)[1] == S_OK
        assert q1.result(r) == (pattern(1 << 20)[5 * 512:7 * 512], S_OK)
        image = b.image()
        assert image[3 * 512:5 * 512] == pattern(1024, 1) and image[8 * 512:10 * 512] == bytes(1024)
    finally:
        b.close()


def test_a_device_saved_with_nothing_parked_or_held_loads_so_and_works(tmp_path):
    b = bench(tmp_path, rules="").start()
    try:
        values = saved(b.vdev)
        assert values["parked_requests"] == () and values["delayed"] == ()
        load(b.vdev, values)
        assert b.vdev.parked == [] and b.vdev.delayed == []
        assert b.run(T_IN, 0, in_len=512)[1] == S_OK
    finally:
        b.close()


@pytest.mark.parametrize("field, item, message", [
    ("delayed", (1, 0, 1), "virtio-blk: a held completion on queue 1, which does not exist"),
    ("parked_requests", (1, 0, T_IN, 0, (), ((0x1000, 512),), 0x2000, None),
     "virtio-blk: a parked request on queue 1, which does not exist"),
])
def test_saved_work_on_a_queue_the_device_lacks_is_refused(tmp_path, field, item, message):
    b = bench(tmp_path).start()
    try:
        values = saved(b.vdev)
        ok = dict(values, **{field: ((0,) + item[1:],)})        # queue 0 exists
        vmstate.check(b.vdev, b.vdev.VMSTATE, ok)
        bad = dict(values, **{field: (ok[field][0], item)})
        with pytest.raises(vmstate.VMStateError) as e:
            vmstate.check(b.vdev, b.vdev.VMSTATE, bad)
        assert str(e.value) == message
    finally:
        b.close()


@pytest.mark.parametrize("out, into, status, bad", [
    (((0x10_0000, 512),), (), 0x1000, "0x40000000"),    # device-readable data outside RAM
    ((), ((0x10_0000, 512),), 0x1000, "0x40000000"),    # device-writable data outside RAM
    ((), ((0x10_0000, 512),), 0x1000, "status"),        # the status byte outside RAM
])
def test_a_parked_request_outside_ram_is_refused_on_load(tmp_path, out, into, status, bad):
    b = bench(tmp_path).start()
    try:
        values = saved(b.vdev)
        far = 0x4000_0000                                   # past the bench's 4 MiB of RAM
        out = tuple((far if bad == "0x40000000" else a, n) for a, n in out)
        into = tuple((far if bad == "0x40000000" else a, n) for a, n in into)
        status = far if bad == "status" else status
        item = (0, 7, T_OUT if out else T_IN, 0, out, into, status, None)
        values["parked_requests"] = (item,)
        vmstate.check(b.vdev, b.vdev.VMSTATE, values)       # the values fit their types
        with pytest.raises(vmstate.VMStateError) as e:
            vmstate.apply(b.vdev, b.vdev.VMSTATE, values)
        assert str(e.value).startswith("virtio-blk: parked request 7 on queue 0: ")
        assert f"{far:#x}" in str(e.value)
    finally:
        b.close()


def test_a_held_completion_comes_back_and_its_restored_timer_completes_it(tmp_path):
    """A [delay] rule holds a read's completion on a timer; after save, reset and load the
    device holds it again, and the callback a restored timer gets completes it once."""
    b = bench(tmp_path, rules='[delay]\nevent = "read_aio"\nlatency-ns = "5000"\n').start()
    try:
        b.vdev.clock = VirtualClock()
        b.vdev.timer_key = "virtio-blk0"
        req = BlkRequests(b.vqs[0]).submit(T_IN, 2, in_len=512)
        b.drv.kick(0)
        assert b.vdev.delayed == [(0, req.head, 513)] and b.vqs[0].get_used() == []
        values = saved(b.vdev)
        assert values["delayed"] == ((0, req.head, 513),)
        b.drv.set_status(0)
        assert b.vdev.delayed == []
        load(b.vdev, values)
        assert b.vdev.delayed == [(0, req.head, 513)] and b.vdev._held_timers == {}
        release = b.vdev.held_release(0, req.head, 513)
        release()
        release()                                           # a second firing finds nothing held
        assert b.vdev.delayed == [] and b.vqs[0].get_used() == [(req.head, 513)]
    finally:
        b.close()
