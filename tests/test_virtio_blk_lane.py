"""The native I/O lane (native/blkfast.c "the I/O lane", blk_fast.FastPath.arm_lane): with
iothread=, a polling driver's kicks through the notify front queue plain requests to a worker
thread, which completes them on the used ring while the guest runs on. Python gets the queue
back whole at every drain (FastPath.sync), runs what the lane left to it, and sends the
notification the completions owe."""

from __future__ import annotations

import contextlib
import os
import random
import struct
import time

import pytest

from machine.iothread import IoThread
from machine.toolchain import ToolchainError
from machine.virtio import blk_fast
from test_virtio_blk_fast import DISK, Front, Stream, assert_same, pair
from virtio_driver import F_EVENT_IDX, S_OK, T_FLUSH, T_IN, T_OUT, Bench, BlkRequests, pattern

try:
    blk_fast.library()
except ToolchainError as exc:             # no compiler here; anything else is a bug to report
    pytest.skip(f"the native request path cannot be built here: {exc}", allow_module_level=True)


def polling(b: Bench, event_idx: bool) -> None:
    """The driver asks for no used-buffer notification (as the bundled guest's bench does)."""
    b.start(features=b.drv.device_features() & ~(0 if event_idx else 1 << F_EVENT_IDX))
    vq = b.vqs[0]
    if event_idx:
        vq.set_used_event(0xFFFF)                     # behind used_idx: none coming
    else:
        vq.set_avail_flags(1)                         # NO_INTERRUPT
    assert b.vdev.queues[0].suppresses_interrupts()


def with_lane(b: Bench, threads: int) -> Front:
    b.io = b.vdev.iothread = IoThread("io0")
    b.vdev.lane_threads = threads
    return Front(b)


@contextlib.contextmanager
def lane_bench(tmp_path, threads: int):
    """A bench with the native path, an I/O thread and a lane of `threads` workers, and the
    front in front of it: (bench, front), closed afterwards."""
    b = Bench(tmp_path, disk_size=DISK, ram=16 << 20, native=True)
    front = with_lane(b, threads)
    try:
        yield b, front
    finally:
        b.io.close()
        b.close()


def open_lane(front: Front, blk: BlkRequests, n: int = 3) -> list:
    """A first kick with several requests (Python's): the front then has the lane."""
    reqs = [blk.submit(T_IN, 8 * i, in_len=4096) for i in range(n)]
    front.kick(0)
    assert front.b.vdev._fast._front.slot[0].lane, "the lane is not armed"
    return reqs


def wait_used(vq, n: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while vq.used_idx() < n:
        assert time.monotonic() < end, f"used index {vq.used_idx()}, waiting for {n}"
        time.sleep(0.0005)


@pytest.mark.parametrize("event_idx", [True, False])
def test_a_polling_drivers_requests_complete_on_the_ring_without_any_python(tmp_path, event_idx):
    with lane_bench(tmp_path, 1) as (b, front):
        polling(b, event_idx)
        vq, blk = b.vqs[0], BlkRequests(b.vqs[0])
        first = open_lane(front, blk)
        irqs = list(b.irq_levels)                     # (with EVENT_IDX the first one is sent)
        writes = [blk.submit(T_OUT, 64 + 16 * i, out=bytes([i + 1]) * 8192) for i in range(6)]
        reads = [blk.submit(T_IN, 256 + 16 * i, in_len=8192) for i in range(6)]
        front.kick(0)                                 # queued: no Python runs from here ...
        assert b.vdev._fast.front_kicks == 1
        wait_used(vq, len(first) + 12)                # ... until the worker put them on the ring
        used = [h for h, _ in vq.get_used()]
        assert used == [r.head for r in first + writes + reads]     # one worker: in order
        image, disk = b.image(), pattern(DISK)
        for i, r in enumerate(writes):
            assert blk.result(r)[1] == S_OK
            assert image[(64 + 16 * i) * 512:][:8192] == bytes([i + 1]) * 8192
        for i, r in enumerate(reads):
            assert blk.result(r) == (disk[(256 + 16 * i) * 512:][:8192], S_OK)
        q = b.vdev.queues[0]
        assert q.used_idx == len(first)               # Python's copy: stale until the drain
        front.new_slice()
        assert (q.last_avail_idx, q.used_idx, q.inflight) == (15, 15, set())
        assert b.vdev._fast.lane_requests == 12
        assert b.irq_levels == irqs                   # the driver polls


@pytest.mark.parametrize("threads", [0, 1])
@pytest.mark.parametrize("event_idx", [True, False])
@pytest.mark.parametrize("hostile", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_random_streams_leave_the_same_machine_as_the_python_model(tmp_path, seed, hostile, event_idx, threads):
    """Plain, other and broken requests from a polling driver, the lane's device against the
    deterministic Python one: after each drain, the same RAM, image, rings and interrupts."""
    fast, slow = pair(tmp_path)
    front = with_lane(fast, threads)
    try:
        streams = []
        for b in (fast, slow):
            polling(b, event_idx)
            streams.append(Stream(b, seed, hostile))
        rng = random.Random(2000 + seed)
        for _batch in range(40):
            for n in [rng.randrange(1, 6) for _ in range(rng.randrange(1, 4))]:
                for s in streams:                     # kicks within one slice: the first is
                    for _ in range(n):                # Python's, the next ones the lane's
                        s.one()
                front.kick(0)
                slow.drv.kick(0)
            front.new_slice()                         # the drain (the end of a CPU slice)
            fast.io.drain()                           # and what Python gave the I/O thread
            if fast.vdev.broken or slow.vdev.broken:
                # Requests Python gave the I/O thread before the broken one are dropped with
                # the device (the iothread model), where the deterministic one completed them:
                # only the error must be the same.
                assert str(fast.vdev.error) == str(slow.vdev.error)
                break
            for s in streams:
                for head, _ in s.vq.get_used():
                    s.vq.recycle(head, s.ndesc.pop(head))
            assert_same(fast, slow)
        assert fast.vdev._fast.lane_requests > 0 or fast.vdev.broken
    finally:
        fast.io.close()
        fast.close()
        slow.close()


def test_two_polled_queues_take_the_lane_in_turn(tmp_path):
    """One lane per device: a kick of another queue is Python's, which drains the lane first
    and then gives it to that queue."""
    b = Bench(tmp_path, disk_size=DISK, ram=16 << 20, native=True, props={"num-queues": "2"})
    front = with_lane(b, 1)
    try:
        b.start(nqueues=2)
        blks = []
        for vq in b.vqs:
            vq.set_avail_flags(1)
            blks.append(BlkRequests(vq))
        sent = [[], []]
        disk = pattern(DISK)
        for round_ in range(3):
            for qi in (0, 1):
                for kick in range(2):                 # Python's kick, then the lane's
                    for k in range(3):
                        sector = 8 * (12 * round_ + 6 * qi + 3 * kick + k)
                        sent[qi].append((blks[qi].submit(T_IN, sector, in_len=4096), sector))
                    front.kick(qi)
        front.new_slice()
        for qi, vq in enumerate(b.vqs):
            assert [h for h, _ in vq.get_used()] == [r.head for r, _ in sent[qi]]
            for r, sector in sent[qi]:
                assert blks[qi].result(r) == (disk[sector * 512:][:4096], S_OK)
        assert b.vdev._fast.lane_requests > 0
        assert [q.used_idx for q in b.vdev.queues] == [18, 18]
    finally:
        b.io.close()
        b.close()


def test_a_write_the_worker_cannot_complete_is_run_by_python_at_the_drain(tmp_path):
    """The image shrank under the lane: the worker leaves the write (its size check fails) and
    Python runs it at the drain, with the error status Python gives."""
    b = Bench(tmp_path, disk_size=DISK, ram=16 << 20, native=True)
    slow = Bench(tmp_path, disk_size=DISK, ram=16 << 20)
    front = with_lane(b, 0)
    try:
        polling(b, False)
        polling(slow, False)
        blk = BlkRequests(b.vqs[0])
        open_lane(front, blk)
        tail = DISK // 512 - 8
        late = blk.submit(T_OUT, tail, out=b"\x55" * 4096)
        ok = blk.submit(T_OUT, 0, out=b"\x66" * 4096)
        front.kick(0)                                 # queued; nothing runs before the drain
        os.truncate(b.path, DISK // 2)
        os.truncate(slow.path, DISK // 2)
        front.new_slice()
        _, want, _ = slow.run(T_OUT, tail, out=b"\x55" * 4096)
        assert want != S_OK
        assert blk.result(late)[1] == want and blk.result(ok)[1] == S_OK
        assert sorted(h for h, _ in b.vqs[0].get_used()[-2:]) == sorted([late.head, ok.head])
        assert b.vdev._fast.lane_requests == 1 and not b.vdev.broken
    finally:
        b.io.close()
        b.close()
        slow.close()


def test_a_head_made_available_again_while_the_lane_has_it_breaks_the_device(tmp_path):
    with lane_bench(tmp_path, 0) as (b, front):
        polling(b, False)
        blk = BlkRequests(b.vqs[0])
        open_lane(front, blk)
        req = blk.submit(T_IN, 0, in_len=4096)
        blk.submit(T_IN, 8, in_len=4096)
        front.kick(0)                                 # both in the lane, not done
        b.vqs[0].publish(req.head)                    # the same head, still in flight
        front.kick(0)
        assert b.needs_reset
        assert "in flight" in str(b.vdev.error)


def test_a_reset_with_requests_in_the_lane_waits_for_them_and_nothing_completes_after(tmp_path):
    with lane_bench(tmp_path, 0) as (b, front):
        polling(b, False)
        vq, blk = b.vqs[0], BlkRequests(b.vqs[0])
        first = open_lane(front, blk)
        writes = [blk.submit(T_OUT, 16 * i, out=bytes([0x70 + i]) * 4096) for i in range(4)]
        front.kick(0)
        assert vq.used_idx() == len(first)            # still queued
        b.drv.set_status(0)                           # reset: the lane is drained first
        assert b.vdev.status == 0 and not b.vdev.queues[0].active
        image = b.image()
        for i in range(4):
            assert image[16 * i * 512:][:4096] == bytes([0x70 + i]) * 4096
        used = vq.used_idx()
        front.kick(0)                                 # nothing of the old rings is used again
        front.new_slice()
        assert vq.used_idx() == used
        b.start()                                     # and the device works again
        assert b.run(T_IN, 0, in_len=512)[1] == S_OK


def test_a_driver_that_wants_interrupts_again_gets_one_at_the_drain(tmp_path):
    with lane_bench(tmp_path, 0) as (b, front):
        polling(b, False)
        vq, blk = b.vqs[0], BlkRequests(b.vqs[0])
        open_lane(front, blk)
        assert not any(b.irq_levels)
        blk.submit(T_IN, 0, in_len=4096)
        blk.submit(T_IN, 8, in_len=4096)
        front.kick(0)
        vq.set_avail_flags(0)                         # interrupts wanted from now on
        front.new_slice()
        assert b.irq_levels[-1] is True


def test_a_flush_behind_queued_writes_waits_for_them(tmp_path):
    """A FLUSH is Python's: the front hands the kick over and Python drains the lane first."""
    with lane_bench(tmp_path, 0) as (b, front):
        polling(b, False)
        vq, blk = b.vqs[0], BlkRequests(b.vqs[0])
        first = open_lane(front, blk)
        writes = [blk.submit(T_OUT, 16 * i, out=b"\x33" * 4096) for i in range(3)]
        flush = blk.submit(T_FLUSH)
        front.kick(0)
        b.io.drain()
        b.vdev.io_batch_done()
        used = [h for h, _ in vq.get_used()]
        assert used == [r.head for r in first + writes + [flush]]
        assert blk.result(flush)[1] == S_OK


def lane_threads() -> int:
    n = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                n += f.read().strip() == "virtio-blk-lane"
        except OSError:                               # ended meanwhile
            pass
    return n


def test_the_lanes_worker_ends_with_its_io_thread(tmp_path):
    b = Bench(tmp_path, disk_size=DISK, ram=16 << 20, native=True)
    before = lane_threads()
    front = with_lane(b, 1)
    try:
        polling(b, False)
        blk = BlkRequests(b.vqs[0])
        open_lane(front, blk)
        for i in range(4):
            blk.submit(T_IN, 8 * i, in_len=4096)
        front.kick(0)
        wait_used(b.vqs[0], 7)
        assert lane_threads() == before + 1
    finally:
        b.io.close()
        b.close()
    assert lane_threads() == before


# --------------------------------------------------------------------------- the bundled guest

@pytest.mark.parametrize("icount", ["off", "shift=0"], ids=["fast", "exact"])
def test_the_bench_guest_with_an_iothread_gets_what_python_gives_it(tmp_path, monkeypatch, icount):
    """Its many-in-flight cases go through the lane; output and image are the Python path's."""
    from test_virtio_blk_fast import run_guest, without_ticks
    append = "mode=bench bench_mib=2 bench_ops=300"
    extra = ("-object", "iothread,id=io0")
    out_py, img_py, _, _ = run_guest(tmp_path, "python", append, front=False, icount=icount,
                                     extra=extra, monkeypatch=monkeypatch)
    out_nat, img_nat, vdev, _ = run_guest(tmp_path, "native", append, front=True, icount=icount, extra=extra)
    assert without_ticks(out_nat) == without_ticks(out_py)
    assert "bench done status=ok" in out_nat
    assert img_nat == img_py
    assert vdev._fast.lane_requests > 50


def test_the_whole_self_test_passes_with_an_iothread_and_the_lane(tmp_path):
    from test_virtio_blk_fast import run_guest
    out, _img, vdev, _ = run_guest(tmp_path, "selftest", "tests=all", front=True,
                                   extra=("-object", "iothread,id=io0"))
    assert "not ok" not in out and "ok " in out, out


@pytest.mark.parametrize("lane", [False, True], ids=["front", "lane"])
def test_queues_past_the_fronts_slots_are_served_by_python(tmp_path, lane):
    """The front has FRONT_QUEUES slots: a polling driver's kicks of a queue past them, with or
    without an I/O lane, all go to Python, and complete as they would there."""
    nq = blk_fast.FRONT_QUEUES + 2
    b = Bench(tmp_path, disk_size=DISK, ram=16 << 20, native=True, props={"num-queues": str(nq)})
    front = with_lane(b, 1) if lane else Front(b)
    try:
        b.start(nqueues=nq, features=b.drv.device_features() & ~(1 << F_EVENT_IDX))
        for qi in (blk_fast.FRONT_QUEUES, nq - 1):
            vq, blk = b.vqs[qi], BlkRequests(b.vqs[qi])
            vq.set_avail_flags(1)                     # a polling driver
            for kick in range(3):
                reqs = [blk.submit(T_IN, 8 * i, in_len=4096) for i in range(3)]
                front.kick(qi)
                assert [h for h, _ in vq.get_used()] == [r.head for r in reqs], (qi, kick)
                for r in reqs:
                    assert blk.result(r) == (pattern(DISK)[8 * reqs.index(r) * 512:][:4096], S_OK)
        front.new_slice()
        assert b.vdev._fast.front_kicks == 0 and b.vdev._fast.lane_requests == 0
        assert not b.vdev.broken
    finally:
        if lane:
            b.io.close()
        b.close()


def test_a_write_the_lane_leaves_that_fails_under_werror_stop_is_parked_until_the_machine_continues(tmp_path):
    """The image shrank under the lane and werror=stop: Python's retry of the write the worker
    left fails on the host too, so it is parked (not completed), and completes once the image
    is back and the machine continues; the queue keeps nothing in flight after."""
    b = Bench(tmp_path, disk_size=DISK, ram=16 << 20, native=True, werror="stop")
    front = with_lane(b, 0)
    stops = []
    b.vdev.on_io_error = lambda: stops.append(True)
    try:
        polling(b, False)
        vq, blk = b.vqs[0], BlkRequests(b.vqs[0])
        first = open_lane(front, blk)
        tail = DISK // 512 - 8
        late = blk.submit(T_OUT, tail, out=b"\x55" * 4096)
        blk.submit(T_OUT, 0, out=b"\x66" * 4096)
        front.kick(0)
        os.truncate(b.path, DISK // 2)
        front.new_slice()
        assert stops == [True] and not b.vdev.broken
        assert late.head not in [h for h, _ in vq.get_used()]
        assert vq.used_idx() == len(first) + 1
        os.truncate(b.path, DISK)                     # the host gives the space back
        b.vdev.update_capacity()
        b.vdev.restart_parked()
        b.io.drain()
        b.vdev.io_batch_done()
        assert [h for h, _ in vq.get_used()] == [late.head]
        assert blk.result(late)[1] == S_OK
        assert b.image()[tail * 512:][:4096] == b"\x55" * 4096
        assert not b.vdev.queues[0].inflight
    finally:
        b.io.close()
        b.close()


def test_a_request_the_lane_leaves_whose_chain_the_driver_broke_meanwhile_breaks_the_device(tmp_path):
    """Python walks the chain of a request the worker left again at the drain: a descriptor
    rewritten meanwhile to point outside RAM is a ring error, with its reason kept."""
    with lane_bench(tmp_path, 0) as (b, front):
        polling(b, False)
        vq, blk = b.vqs[0], BlkRequests(b.vqs[0])
        open_lane(front, blk)
        late = blk.submit(T_OUT, DISK // 512 - 8, out=b"\x55" * 4096)
        front.kick(0)
        os.truncate(b.path, DISK // 2)                # the worker leaves it to Python
        addr, length, flags, nxt = struct.unpack("<QIHH", b.mem.read(vq.desc + 16 * late.head, 16))
        vq.write_desc(vq.desc, late.head, 0xFFFF_F000, length, flags, nxt)
        front.new_slice()
        assert b.needs_reset and b.vdev.broken
        assert "not RAM" in str(b.vdev.error)
