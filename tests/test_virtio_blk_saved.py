"""virtio-blk's own saved state, driven from Python without a guest: the requests a stop error
policy parked (saved as parsed, rebuilt against guest RAM on load), the completions a blkdebug
[delay] rule holds, and the checks that refuse saved values this device cannot take.
(tests/test_savevm.py does the same through a whole machine and a guest.)"""

from __future__ import annotations

import pytest

from machine import vmstate
from machine.clock import VirtualClock
from machine.memory import RamRange
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
    """A write (data in two descriptors, the first after the header in its descriptor) and a write-zeroes on queue 0, a read (data in two
    descriptors) on queue 1, all parked by werror/rerror=stop: saved, dropped by a reset,
    loaded, they are the same requests (guest addresses, lengths, RAM offsets, segment), and
    continuing completes each on its own queue."""
    b = bench(tmp_path, props={"num-queues": "2"}).start(nqueues=2)
    try:
        stops = []
        b.vdev.on_io_error = lambda: stops.append(True)
        q0, q1 = BlkRequests(b.vqs[0]), BlkRequests(b.vqs[1])
        w = q0.submit(T_OUT, 3, out=pattern(1024, 1), rcuts=[16 + 300, 724])   # header and data share one
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


ROM = 0x0100_0000                       # a read-only window the tests add past the 4 MiB of RAM
FAR = 0x4000_0000                       # nothing there


@pytest.mark.parametrize("out, into, status, error", [
    (((FAR, 512),), (), 0x1000, f"guest range {FAR:#x}+0x200 is not RAM"),      # readable data
    ((), ((FAR, 512),), 0x1000, f"guest range {FAR:#x}+0x200 is not RAM"),      # writable data
    ((), ((0x2000, 512),), FAR, f"guest range {FAR:#x}+0x1 is not RAM"),        # the status byte
    ((), ((ROM, 512),), 0x1000, f"guest range {ROM:#x}+0x200 is read-only"),    # written there
    ((), ((0x2000, 512),), ROM, f"guest range {ROM:#x}+0x1 is read-only"),
])
def test_a_parked_request_the_device_cannot_use_is_refused_on_load(tmp_path, out, into, status, error):
    b = bench(tmp_path).start()
    try:
        b.mem.add_range(RamRange(ROM, 0x1000, 0, read_only=True))
        values = saved(b.vdev)
        values["parked_requests"] = ((0, 7, T_OUT if out else T_IN, 0, out, into, status, None),)
        vmstate.check(b.vdev, b.vdev.VMSTATE, values)       # the values fit their types
        with pytest.raises(vmstate.VMStateError) as e:
            vmstate.apply(b.vdev, b.vdev.VMSTATE, values)
        assert str(e.value) == f"virtio-blk: parked request 7 on queue 0: {error}"
    finally:
        b.close()


def test_a_parked_request_may_read_from_rom_and_end_at_the_last_byte_of_ram(tmp_path):
    b = bench(tmp_path).start()
    try:
        b.mem.add_range(RamRange(ROM, 0x1000, 0, read_only=True))
        last = (4 << 20) - 1
        values = saved(b.vdev)
        values["parked_requests"] = ((0, 7, T_OUT, 1, ((ROM, 512),), (), last, None),)
        load(b.vdev, values)
        (q, req), = b.vdev.parked
        assert (q.index, req.head, req.out_data, req.out_len, req.status_addr, req.status_host) == \
            (0, 7, ((ROM, 512, 0),), 512, last, last)
    finally:
        b.close()


def held_bench(tmp_path):
    b = bench(tmp_path, rules='[delay]\nevent = "read_aio"\nlatency-ns = "5000"\n').start()
    b.vdev.clock = VirtualClock()
    b.vdev.timer_key = "virtio-blk0"
    return b


def test_a_delay_rule_without_a_clock_completes_at_once(tmp_path):
    """A device used without a board has no virtual clock: a blkdebug [delay] rule cannot hold
    the completion, which is pushed at once."""
    b = bench(tmp_path, rules='[delay]\nevent = "read_aio"\nlatency-ns = "5000"\n').start()
    try:
        req = BlkRequests(b.vqs[0]).submit(T_IN, 2, in_len=512)
        b.drv.kick(0)
        assert b.vqs[0].get_used() == [(req.head, 513)] and b.vdev.delayed == []
    finally:
        b.close()


def test_a_held_completion_completes_when_its_timer_fires_and_leaves_nothing_behind(tmp_path):
    b = held_bench(tmp_path)
    try:
        req = BlkRequests(b.vqs[0]).submit(T_IN, 2, in_len=512)
        b.drv.kick(0)
        assert b.vdev.delayed == [(0, req.head, 513)] and b.vqs[0].get_used() == []
        b.vdev.clock.advance_to(4999)
        assert b.vqs[0].get_used() == []
        b.vdev.clock.advance_to(5000)
        assert b.vqs[0].get_used() == [(req.head, 513)]
        assert b.vdev.delayed == [] and b.vdev._held_timers == {}
    finally:
        b.close()


def test_a_held_completion_comes_back_and_its_restored_timer_completes_it(tmp_path):
    """A [delay] rule holds a read's completion on a timer; after save, reset and load the
    device holds it again, and the callback a restored timer gets completes it once. A held
    completion whose head is not in flight on an active queue is dropped."""
    b = held_bench(tmp_path)
    try:
        req = BlkRequests(b.vqs[0]).submit(T_IN, 2, in_len=512)
        b.drv.kick(0)
        values = saved(b.vdev)
        assert values["delayed"] == ((0, req.head, 513),)
        values["delayed"] += ((0, 9, 1),)                    # head 9 was never made available
        b.drv.set_status(0)
        assert b.vdev.delayed == []
        load(b.vdev, values)
        assert b.vdev.delayed == [(0, req.head, 513), (0, 9, 1)] and b.vdev._held_timers == {}
        stray = b.vdev.held_release(0, 9, 1)
        stray()
        assert b.vdev.delayed == [(0, req.head, 513)] and b.vqs[0].get_used() == []
        release = b.vdev.held_release(0, req.head, 513)
        release()
        release()                                           # a second firing finds nothing held
        assert b.vdev.delayed == [] and b.vqs[0].get_used() == [(req.head, 513)]
    finally:
        b.close()


# ------------------------------------------------------------------ the core's and the transport's checks

def refused(obj, values, message):
    with pytest.raises(vmstate.VMStateError) as e:
        vmstate.check(obj, obj.VMSTATE, values)
    assert str(e.value) == message


def with_queue(values, **changes):
    q = dict(values["queues"][0], **changes)
    return dict(values, queues=(q,) + values["queues"][1:])


def test_the_core_refuses_a_config_space_or_features_this_device_cannot_have(tmp_path):
    b = bench(tmp_path, rules="").start()
    try:
        values = saved(b.vdev)
        vmstate.check(b.vdev, b.vdev.VMSTATE, values)
        refused(b.vdev, dict(values, config=values["config"] + b"\0"),
                f"virtio-blk: config space of {len(b.vdev.config) + 1} bytes, this device has {len(b.vdev.config)}")
        unoffered = values["guest_features"] | 1 << 63
        refused(b.vdev, dict(values, guest_features=unoffered),
                f"virtio-blk: features {unoffered:#x} were never offered")
    finally:
        b.close()


def test_a_saved_queue_is_checked_as_the_layout_it_was_saved_in(tmp_path):
    """A packed ring may have any size up to its maximum, a split one only a power of 2: the
    saved layout decides which rules apply."""
    b = bench(tmp_path, rules="").start()
    try:
        values = saved(b.vdev)
        assert values["queues"][0]["active"] and not values["queues"][0]["packed"]
        vmstate.check(b.vdev, b.vdev.VMSTATE, with_queue(values, packed=True, size=100))
        refused(b.vdev, with_queue(values, size=100), "virtio-blk: queue 0: bad size 100")
        refused(b.vdev, with_queue(values, packed=True, size=100, avail_addr=values["queues"][0]["avail_addr"] + 2),
                "virtio-blk: queue 0: misaligned rings desc={desc_addr:#x} driver={a:#x} device={used_addr:#x}"
                .format(a=values["queues"][0]["avail_addr"] + 2, **values["queues"][0]))
    finally:
        b.close()


@pytest.mark.parametrize("changes, fits", [
    (dict(size=256, inflight=(255,), ndescs=((255, 256),)), True),
    (dict(size=257), False),                                   # more than the queue's maximum
    (dict(size=256, inflight=(256,)), False),                  # a head past the ring
    (dict(size=1, inflight=(1,)), False),
    (dict(size=0, inflight=(0,)), True),                       # an unused queue of size 0
    (dict(size=0, inflight=(1,)), False),
    (dict(size=256, ndescs=((256, 1),)), False),               # a packed buffer id past the ring
    (dict(size=256, ndescs=((0, 257),)), False),               # more slots than the ring has
    (dict(size=1, ndescs=((1, 1),)), False),
])
def test_a_saved_queue_must_fit_its_size(tmp_path, changes, fits):
    b = bench(tmp_path, rules="").start()
    try:
        values = with_queue(saved(b.vdev), active=False, **changes)
        if fits:
            vmstate.check(b.vdev, b.vdev.VMSTATE, values)
        else:
            refused(b.vdev, values, "virtio-blk: queue 0 state does not fit its size")
    finally:
        b.close()


@pytest.mark.parametrize("props", [{}, {"vectors": "0"}])
def test_the_transport_refuses_queue_vectors_or_msix_this_device_does_not_have(tmp_path, props):
    b = bench(tmp_path, rules="", props=props).start()
    try:
        dev = b.dev
        values = vmstate.capture(dev, dev.VMSTATE)
        vmstate.check(dev, dev.VMSTATE, values)
        refused(dev, dict(values, queue_vectors=values["queue_vectors"] + (0,)),
                f"{dev.name}: 2 queue vectors, this device has 1")
        other = None if dev.msix is not None else {"table": bytes(16), "pending": bytes(1)}
        refused(dev, dict(values, msix=other),
                f"{dev.name}: MSI-X present in only one of the snapshot and this machine")
        if dev.msix is not None:
            msix = dict(values["msix"], table=values["msix"]["table"] + bytes(16))
            refused(dev, dict(values, msix=msix),
                    f"msix: {dev.name} has {dev.msix.nvectors} vectors, the snapshot another count")
    finally:
        b.close()


def test_a_held_completions_timer_is_saved_by_its_key_only_when_the_device_has_one(tmp_path):
    b = held_bench(tmp_path)
    try:
        req = BlkRequests(b.vqs[0]).submit(T_IN, 2, in_len=512)
        b.drv.kick(0)
        assert b.vdev.clock.armed == ((-1, 5000, f"virtio-blk0/delay/0/{req.head}/513"),)
    finally:
        b.close()
    b = bench(tmp_path, rules='[delay]\nevent = "read_aio"\nlatency-ns = "5000"\n').start()
    try:
        b.vdev.clock = VirtualClock()           # a device the board did not name (no timer_key)
        BlkRequests(b.vqs[0]).submit(T_IN, 2, in_len=512)
        b.drv.kick(0)
        with pytest.raises(vmstate.VMStateError, match="cannot be saved"):
            b.vdev.clock.armed
    finally:
        b.close()


def test_a_queue_reset_drops_the_parked_requests_of_that_queue_only(tmp_path):
    b = bench(tmp_path, props={"num-queues": "2"}).start(nqueues=2)
    try:
        BlkRequests(b.vqs[0]).submit(T_OUT, 3, out=b"w" * 512)
        b.drv.kick(0)
        r = BlkRequests(b.vqs[1]).submit(T_IN, 5, in_len=512)
        b.drv.kick(1)
        assert [qi for qi, _ in parked(b.vdev)] == [0, 1]
        b.drv.common_write(0x16, 2, 0)
        b.drv.common_write(0x3A, 2, 1)          # queue_reset of queue 0
        assert [(qi, req.head) for qi, req in parked(b.vdev)] == [(1, r.head)]
    finally:
        b.close()


@pytest.mark.parametrize("saved_packed", [True, False])
def test_a_queue_comes_back_in_the_ring_layout_it_was_saved_in(tmp_path, saved_packed):
    """The layout is the negotiated VIRTIO_F_RING_PACKED's: loading a packed device's state
    into a split one (or the reverse) swaps the queue for one of the saved layout, which then
    serves requests."""
    from machine.virtio.packed import PackedQueue
    from test_virtio_packed import start
    packed, split = Bench(tmp_path, props={"packed": "on"}), Bench(tmp_path, props={"packed": "on"})
    try:
        ring = start(packed)
        split.start(features=split.drv.device_features() & ~(1 << 34))     # no RING_PACKED
        src, dst = (packed, split) if saved_packed else (split, packed)
        req = BlkRequests(ring).submit(T_IN, 1, in_len=512)   # made available, not yet kicked
        values = saved(src.vdev)
        dst.mem.buf[:] = src.mem.buf                    # the guest's RAM comes with the state
        load(dst.vdev, values)
        assert isinstance(dst.vdev.queues[0], PackedQueue) is saved_packed
        assert dst.vdev.queues[0].index == 0 and dst.vdev.queues[0].max_size == 256
        if saved_packed:
            ring.mem = dst.mem
            dst.drv.kick(0)
            assert [h for h, _ in ring.get_used()] == [req.head]
    finally:
        packed.close()
        split.close()


def test_continuing_interrupts_for_the_retried_requests(tmp_path):
    b = bench(tmp_path).start()
    try:
        r = BlkRequests(b.vqs[0]).submit(T_IN, 5, in_len=512)
        b.drv.kick(0)
        b.drv.isr()                                    # nothing completed yet: clears nothing new
        assert b.vdev.parked and not b.vdev.isr
        b.vdev.restart_parked()
        assert b.vqs[0].get_used() == [(r.head, 513)] and b.vdev.isr & 1
    finally:
        b.close()


def test_a_retried_request_is_not_held_by_a_delay_rule_nor_is_the_next_one(tmp_path):
    """A [delay] rule that matches the retried read is consumed by the retry (QEMU restarts
    failed requests without a new delay); the next request, which no rule matches, is not
    held by it either."""
    rules = ('[inject-error]\nevent = "read_aio"\nerrno = "5"\nonce = "on"\n'
             '[delay]\nevent = "read_aio"\nsector = "8"\nlatency-ns = "5000"\n')
    b = bench(tmp_path, rules=rules).start()
    try:
        b.vdev.clock = VirtualClock()
        b.vdev.timer_key = "virtio-blk0"
        blk = BlkRequests(b.vqs[0])
        first = blk.submit(T_IN, 8, in_len=512)
        b.drv.kick(0)
        assert b.vdev.parked
        b.vdev.restart_parked()
        assert b.vqs[0].get_used() == [(first.head, 513)] and b.vdev.delayed == []
        second = blk.submit(T_IN, 0, in_len=512)
        b.drv.kick(0)
        assert b.vqs[0].get_used() == [(second.head, 513)] and b.vdev.delayed == []
    finally:
        b.close()


def test_a_reset_cancels_a_held_completion_restored_from_a_snapshot(tmp_path):
    """Restored held completions have no Timer object of the device's, only a keyed one-shot
    on the clock: a reset cancels that by its key."""
    b = held_bench(tmp_path)
    try:
        req = BlkRequests(b.vqs[0]).submit(T_IN, 2, in_len=512)
        b.drv.kick(0)
        values = saved(b.vdev)
        key = f"virtio-blk0/delay/0/{req.head}/513"
        clock = b.vdev.clock = VirtualClock()              # the board's clock, restored
        clock.oneshot(b.vdev.held_release(0, req.head, 513), 5000, key)
        load(b.vdev, values)
        assert clock.armed == ((-1, 5000, key),) and b.vdev._held_timers == {}
        b.drv.set_status(0)
        assert clock.armed == () and b.vdev.delayed == []
    finally:
        b.close()
