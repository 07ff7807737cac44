"""The native request path (machine/virtio/blk_fast.py, native/blkfast.c) against the Python
one: the same request streams, plain and hostile, on two devices, one with the native path and
one without, must leave the same guest RAM, image, queue state, device status and interrupts
after every kick. And the native path must actually carry the plain requests."""

from __future__ import annotations

import ctypes
import random
import struct

import pytest

from machine.virtio import blk_fast
from virtio_driver import (F_EVENT_IDX, F_INDIRECT, INDIRECT, NEXT, S_IOERR, S_OK, T_FLUSH,
                           T_GET_ID, T_IN, T_OUT, WRITE, Bench, BlkRequests)

try:
    blk_fast.library()
except Exception as exc:                              # noqa: BLE001 - any build failure
    pytest.skip(f"the native request path cannot be built here: {exc}", allow_module_level=True)

DISK = 1 << 20
SECTORS = DISK // 512


def pair(tmp_path, **kw) -> tuple[Bench, Bench]:
    """Two identical benches: the first with the native path, the second without."""
    fast = Bench(tmp_path, disk_size=DISK, ram=16 << 20, native=True, **kw)
    slow = Bench(tmp_path, disk_size=DISK, ram=16 << 20, **kw)
    assert fast.vdev._fast is not None and slow.vdev._fast is None
    return fast, slow


def state(b: Bench) -> tuple:
    v = b.vdev
    return (bytes(b.mem.buf[:b.alloc.next + 64]), b.image(), v.status, v.isr, v.broken,
            None if v.error is None else str(v.error), [q.state() for q in v.queues],
            list(b.irq_levels), v.capacity)


def assert_same(fast: Bench, slow: Bench) -> None:
    a, b = state(fast), state(slow)
    if a[0] != b[0]:
        first = next(i for i in range(len(a[0])) if a[0][i] != b[0][i])
        raise AssertionError(f"RAM differs from {first:#x}: native {a[0][first:first + 16].hex()} "
                             f"python {b[0][first:first + 16].hex()}")
    names = ("ram", "image", "status", "isr", "broken", "error", "queues", "irq", "capacity")
    for name, x, y in zip(names, a, b):
        assert x == y, f"{name}: native {x!r} python {y!r}"


class Stream:
    """Random requests for one bench; the same seed gives the same stream on both."""

    def __init__(self, b: Bench, seed: int, hostile: bool):
        self.b, self.rng, self.hostile = b, random.Random(seed), hostile
        self.vq = b.vqs[0]
        self.blk = BlkRequests(self.vq)
        self.ndesc: dict[int, int] = {}

    def one(self) -> None:
        r, vq = self.rng, self.vq
        kind = r.random()
        indirect = r.random() < 0.3
        nsect = r.choice([1, 1, 2, 8, 16])
        sector = r.randrange(SECTORS - nsect + 1)
        cuts = [r.choice([1, 7, 512, 1000, 4096])] * r.randrange(3) or None
        if kind < 0.45:
            req = self.blk.submit(T_IN, sector, in_len=512 * nsect, wcuts=cuts, indirect=indirect, publish=False)
        elif kind < 0.85:
            out = bytes(r.randrange(256) for _ in range(8)) * (64 * nsect)
            req = self.blk.submit(T_OUT, sector, out=out, rcuts=cuts, indirect=indirect, publish=False)
        elif kind < 0.90:
            req = self.blk.submit(T_FLUSH, 0, in_len=0, indirect=indirect, publish=False)
        elif kind < 0.93:
            req = self.blk.submit(T_GET_ID, 0, in_len=20, indirect=indirect, publish=False)
        elif kind < 0.96:                               # past the end, or misaligned length
            req = self.blk.submit(T_IN, SECTORS - 1 + r.randrange(3), in_len=512 * r.randrange(1, 3) + r.choice([0, 1]),
                                  indirect=indirect, publish=False)
        else:                                           # header split over two descriptors
            req = self.blk.submit(T_IN, sector, in_len=512, rcuts=[8, 8], publish=False)
        count = 1 if indirect else len(req.readable) + len(req.writable)
        self.ndesc[req.head] = count
        if self.hostile and r.random() < 0.03:
            self.spoil(req.head, indirect)
        vq.publish(req.head)

    def spoil(self, head: int, indirect: bool) -> None:
        """Break the chain as a hostile driver would (the device then needs a reset)."""
        r, vq, mem = self.rng, self.vq, self.b.mem
        addr, length, flags, nxt = struct.unpack("<QIHH", mem.read(vq.desc + 16 * head, 16))
        how = r.randrange(5)
        if how == 0:
            length = 0                                  # a zero-sized buffer (or indirect table)
        elif how == 1:
            addr = 0xFFFF_F000                          # not RAM
        elif how == 2 and not indirect:
            flags |= NEXT
            nxt = head                                  # a loop
        elif how == 3:
            flags |= INDIRECT | (NEXT if indirect else 0)
        else:
            flags ^= WRITE
        vq.write_desc(vq.desc, head, addr, length, flags, nxt)

    def kick(self) -> None:
        self.b.drv.kick(0)
        for head, _ in self.vq.get_used():
            self.vq.recycle(head, self.ndesc.pop(head))


@pytest.mark.parametrize("event_idx", [True, False])
@pytest.mark.parametrize("hostile", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_random_streams_leave_the_same_machine_with_and_without_the_native_path(tmp_path, seed, hostile, event_idx):
    fast, slow = pair(tmp_path)
    try:
        streams = []
        for b in (fast, slow):
            feats = b.drv.device_features() & ~(0 if event_idx else 1 << F_EVENT_IDX)
            b.start(features=feats)
            streams.append(Stream(b, seed, hostile))
        rng = random.Random(1000 + seed)
        for _batch in range(40):
            n = rng.randrange(1, 9)
            flags = rng.random() < 0.3
            delta = rng.randrange(-2, 3)
            for s in streams:
                for _ in range(n):
                    s.one()
                if flags:
                    s.vq.set_avail_flags(1)           # NO_INTERRUPT
                    s.vq.set_used_event(s.vq.avail_idx + delta)
                s.kick()
            assert_same(fast, slow)
            if fast.vdev.broken:
                break
        assert fast.vdev._fast.requests > 0 or fast.vdev.broken
    finally:
        fast.close()
        slow.close()


def test_plain_reads_and_writes_complete_natively_and_the_rest_in_python(tmp_path):
    fast, slow = pair(tmp_path)
    try:
        for b in (fast, slow):
            b.start()
        for b in (fast, slow):
            assert b.run(T_OUT, 8, out=b"\x5a" * 4096)[1:] == (S_OK, 1)
            assert b.run(T_IN, 8, in_len=4096) == (b"\x5a" * 4096, S_OK, 4097)
            assert b.run(T_IN, SECTORS, in_len=512)[1] == S_IOERR     # past the end: Python's
            assert b.run(T_FLUSH)[1] == S_OK
        assert fast.vdev._fast.requests == 2
        assert state(fast) == state(slow)
    finally:
        fast.close()
        slow.close()


def test_a_buffer_on_a_page_with_translated_code_is_left_to_the_python_path(tmp_path):
    """The CPU drops translated code only for writes it hears of: a read into such a page must
    go through notify_write; one elsewhere need not."""
    fast = Bench(tmp_path, disk_size=DISK, ram=16 << 20, native=True)
    try:
        code = (ctypes.c_uint8 * (fast.mem.size >> 12))()
        heard = []
        fast.mem.add_write_listener(lambda gpa, n: heard.append((gpa, n)), ctypes.addressof(code))
        fast.start()
        blk = BlkRequests(fast.vqs[0])
        blk.submit(T_IN, 0, in_len=512)
        del heard[:]                                     # the driver's own writes
        fast.drv.kick(0)
        assert fast.vdev._fast.requests == 1 and heard == []
        req = blk.submit(T_IN, 0, in_len=512, publish=False)
        page = req.writable[0][0] >> 12                  # RAM from 1 MiB is at the same offset
        code[page] = 1
        fast.vqs[0].publish(req.head)
        del heard[:]
        fast.drv.kick(0)
        assert fast.vdev._fast.requests == 1             # Python's
        assert any(a >> 12 == page for a, _ in heard)
    finally:
        fast.close()


def test_writes_with_an_undo_log_or_in_writethrough_mode_are_left_to_the_python_path(tmp_path):
    b = Bench(tmp_path, disk_size=DISK, ram=16 << 20, native=True)
    try:
        b.start()
        b.run(T_OUT, 0, out=b"\1" * 512)
        assert b.vdev._fast.requests == 1
        from machine.block.undo import Journal
        journal = Journal(b.vdev.backend)
        b.vdev.backend = journal
        log = journal.start_log()
        b.run(T_OUT, 0, out=b"\2" * 512)
        assert b.vdev._fast.requests == 1 and log.blocks    # the old block was kept
        b.run(T_IN, 0, in_len=512)
        assert b.vdev._fast.requests == 2                   # reads go on natively
        journal.stop_log(log)
        b.drv.cfg_write(32, 1, 0)                           # writeback off: writethrough
        b.run(T_OUT, 0, out=b"\3" * 512)
        assert b.vdev._fast.requests == 2
        assert b.image()[:512] == b"\3" * 512
    finally:
        b.close()


def test_the_notify_budget_is_kept_by_the_native_path(tmp_path):
    fast, slow = pair(tmp_path)
    try:
        deferred = {id(fast): [], id(slow): []}
        for b in (fast, slow):
            b.start()
            b.vdev.notify_max_requests = 3
            b.vdev.defer = lambda fn, qi, b=b: deferred[id(b)].append(fn)
            blk = BlkRequests(b.vqs[0])
            for i in range(7):
                blk.submit(T_IN, i, in_len=512)
            b.drv.kick(0)
        assert fast.vqs[0].used_idx() == 3 and len(deferred[id(fast)]) == 1
        assert state(fast) == state(slow)
        for b in (fast, slow):
            while deferred[id(b)]:
                deferred[id(b)].pop()()
        assert fast.vqs[0].used_idx() == 7
        assert state(fast) == state(slow)
    finally:
        fast.close()
        slow.close()


def test_a_trace_event_on_the_request_path_sends_requests_through_python(tmp_path):
    from machine import trace
    b = Bench(tmp_path, disk_size=DISK, ram=16 << 20, native=True)
    seen = []
    try:
        b.start()
        listener = lambda name, fields: seen.append(fields["sector"]) if name == "virtio_blk_handle_read" else None
        trace.add_listener(listener)
        trace.listen("virtio_blk_handle_read")
        try:
            b.run(T_IN, 5, in_len=512)
        finally:
            trace.unlisten("virtio_blk_handle_read")
            trace.remove_listener(listener)
        assert seen == [5] and b.vdev._fast.requests == 0
        b.run(T_IN, 6, in_len=512)
        assert b.vdev._fast.requests == 1
    finally:
        b.close()


def test_with_an_iothread_small_requests_run_natively_in_the_kick_and_large_ones_on_the_thread(tmp_path):
    from machine.iothread import IoThread
    b = Bench(tmp_path, disk_size=DISK, ram=16 << 20, native=True)
    b.io = b.vdev.iothread = IoThread("io0")
    try:
        b.start()
        blk = BlkRequests(b.vqs[0])
        small = [blk.submit(T_IN, 8 * i, in_len=4096) for i in range(4)]
        big = blk.submit(T_IN, 0, in_len=b.vdev.inline_max_bytes + 512)
        after = blk.submit(T_IN, 64, in_len=512)        # behind the big one: the thread's too
        b.drv.kick(0)
        assert b.vdev._fast.requests == 4
        used = [h for h, _ in b.vqs[0].get_used()]
        assert used[:4] == [r.head for r in small]      # done inside the kick, in order
        while len(used) < 6:
            b.io.settle(0.01)
            b.vdev.io_batch_done()
            used += [h for h, _ in b.vqs[0].get_used()]
        assert used[4:] == [big.head, after.head]
        data, status = blk.result(big)
        assert status == S_OK and data == b.image()[:len(data)]
        assert b.vdev._fast.requests == 4
    finally:
        b.io.close()
        b.close()
