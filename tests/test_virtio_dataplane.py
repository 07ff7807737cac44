"""Where virtio-blk requests run. With an I/O thread (-object iothread, iothread=) a kick only
hands requests over: they run on the worker while the caller goes on, and reach the used ring
when the CPU thread polls. Resets wait for them and drop their completions; a FLUSH runs after
the writes before it; a stop error policy still parks. Without one (the deterministic default),
one notify does a bounded amount of work and leaves the rest to a bottom half."""

from __future__ import annotations

import threading

import pytest

from machine.config import ConfigError
from machine.iothread import IoThread
from machine.virtio.queue import BadHeadIndex
from virtio_driver import (S_OK, T_FLUSH, T_IN, T_OUT, BlkRequests, Bench, RamWatch, pattern)

DISK = 1 << 20


class Gated:
    """A backend that records each call and, while `gate` is clear, blocks in it (a slow disk)."""

    def __init__(self, inner):
        self.inner = inner
        self.gate = threading.Event()
        self.calls: list[tuple[str, int]] = []       # (what, thread id)
        self.entered = threading.Event()
        self.passes = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _wait(self, what):
        self.calls.append((what, threading.get_ident()))
        if self.passes:                            # let this many calls through first
            self.passes -= 1
            return
        self.entered.set()
        assert self.gate.wait(10), "test gate never opened"

    def readv(self, offset, bufs):
        self._wait("readv")
        return self.inner.readv(offset, bufs)

    def writev(self, offset, bufs):
        self._wait("writev")
        return self.inner.writev(offset, bufs)

    def flush(self):
        self._wait("flush")
        return self.inner.flush()


@pytest.fixture
def rig(tmp_path):
    made = []

    def make(gated=True, **drive):
        b = Bench(tmp_path, disk_size=DISK, **drive)
        b.io = IoThread("io0")
        b.vdev.iothread = b.io
        b.vdev.inline_max_bytes = -1           # every request to the worker (see the inline tests)
        if gated:
            b.vdev.backend = b.gated = Gated(b.vdev.backend)
        b.start()
        made.append(b)
        return b
    yield make
    for b in made:
        b.io.close()
        b.close()


def test_a_kick_returns_before_the_request_runs_and_the_cpu_thread_completes_it(rig):
    b = rig()
    vq = b.vqs[0]
    req = BlkRequests(vq).submit(T_IN, 8, in_len=4096)
    b.drv.kick(0)                                  # returns with the backend still blocked
    assert b.gated.entered.wait(10)
    assert b.io.in_flight == 1 and vq.used_idx() == 0
    assert b.io.running and b.io.run_stale(0) == 0     # the worker is on it: nothing to take over
    b.gated.gate.set()
    b.io.wait(10)
    assert vq.used_idx() == 0                      # finished, but only the CPU thread completes
    isr_before = b.vdev.isr
    assert b.io.poll() == 1
    assert vq.get_used() == [(req.head, 4097)]
    data, status = BlkRequests(vq).result(req)
    assert status == S_OK and data == pattern(DISK)[8 * 512:8 * 512 + 4096]
    assert b.vdev.isr & 1 and not isr_before & 1  # one used-buffer interrupt for the batch
    assert b.gated.calls[0][1] != threading.get_ident()     # it ran on the worker


def test_many_requests_complete_in_order_with_one_poll(rig):
    b = rig(gated=False)
    vq = b.vqs[0]
    blk = BlkRequests(vq)
    reqs = [blk.submit(T_IN, 2 * i, in_len=1024) for i in range(16)]
    b.drv.kick(0)
    b.vdev.drain()
    assert b.io.in_flight == 0
    assert [h for h, _ in vq.get_used()] == [r.head for r in reqs]
    for i, r in enumerate(reqs):
        assert blk.result(r) == (pattern(DISK)[i * 1024:(i + 1) * 1024], S_OK)


def test_a_reset_with_a_request_in_flight_waits_for_it_and_writes_no_used_entry(rig):
    b = rig()
    vq = b.vqs[0]
    used_ring = (vq.used, 6 + 8 * vq.size)
    req = BlkRequests(vq).submit(T_IN, 0, in_len=512)
    b.drv.kick(0)
    assert b.gated.entered.wait(10)                # the request is inside the backend
    watch = RamWatch(b.mem)
    opener = threading.Timer(0.05, b.gated.gate.set)
    opener.start()
    b.drv.set_status(0)                            # reset: waits for the request to end
    opener.join()
    assert b.io.in_flight == 0 and b.vdev.status == 0
    changed = watch.changed()
    data = req.writable                            # the data buffer and the status byte
    assert changed and all(any(a <= s and e <= a + n for a, n in data) for s, e in changed), changed
    assert not any(s < 4096 for s, _ in changed)   # nothing near guest address 0
    assert not any(used_ring[0] <= s < sum(used_ring) for s, _ in changed)
    b.start()                                      # the device works again after the reset
    vq = b.vqs[0]
    req = BlkRequests(vq).submit(T_IN, 1, in_len=512)
    b.drv.kick(0)
    b.vdev.drain()
    assert [h for h, _ in vq.get_used()] == [req.head]
    assert BlkRequests(vq).result(req) == (pattern(DISK)[512:1024], S_OK)


def test_a_completion_after_a_queue_reset_is_dropped(rig):
    b = rig()
    vq = b.vqs[0]
    BlkRequests(vq).submit(T_IN, 0, in_len=512)
    b.drv.kick(0)
    assert b.gated.entered.wait(10)
    watch = RamWatch(b.mem)
    threading.Timer(0.05, b.gated.gate.set).start()
    b.drv.common_write(0x16, 2, 0)                 # queue_select 0
    b.drv.common_write(0x3A, 2, 1)                 # queue_reset
    assert b.io.in_flight == 0
    assert not any(vq.used <= s < vq.used + 6 + 8 * vq.size for s, _ in watch.changed())
    assert not any(s < 4096 for s, _ in watch.changed())


def test_push_on_a_reset_queue_writes_nothing(rig):
    """The latent hazard itself: a reset queue has no rings (its used address is 0)."""
    b = rig(gated=False)
    q = b.vdev.queues[0]
    q.reset()
    watch = RamWatch(b.mem)
    q.push(0, 1)
    assert watch.changed() == []


def test_a_flush_runs_after_the_writes_before_it(rig):
    b = rig()
    vq = b.vqs[0]
    blk = BlkRequests(vq)
    w1 = blk.submit(T_OUT, 0, out=b"a" * 512)
    w2 = blk.submit(T_OUT, 1, out=b"b" * 512)
    fl = blk.submit(T_FLUSH)
    b.drv.kick(0)
    b.gated.gate.set()
    b.vdev.drain()
    assert [c for c, _ in b.gated.calls] == ["writev", "writev", "flush"]
    assert [h for h, _ in vq.get_used()] == [w1.head, w2.head, fl.head]
    assert b.image()[:1024] == b"a" * 512 + b"b" * 512


def test_a_stop_policy_parks_a_request_run_inside_the_kick(rig, tmp_path):
    """A lone small write runs in the kick (inline); a stop policy parks it there as on the
    worker, and `cont` hands it to the I/O thread."""
    conf = tmp_path / "r.conf"
    conf.write_text('[inject-error]\nevent = "write_aio"\nerrno = "5"\nonce = "on"\n')
    b = rig(gated=False, blkdebug=conf, werror="stop")
    b.vdev.inline_max_bytes = 4096
    stops = []
    b.vdev.on_io_error = lambda: stops.append(True)
    vq = b.vqs[0]
    req = BlkRequests(vq).submit(T_OUT, 5, out=b"q" * 512)
    b.drv.kick(0)
    assert b.io.in_flight == 0                     # it ran here
    assert stops == [True] and vq.get_used() == [] and len(b.vdev.parked) == 1
    b.vdev.restart_parked()
    b.vdev.drain()
    assert [h for h, _ in vq.get_used()] == [req.head]
    assert b.image()[5 * 512:6 * 512] == b"q" * 512


def test_a_stop_policy_parks_on_the_io_thread_too_and_restart_runs_it_there(rig, tmp_path):
    conf = tmp_path / "r.conf"
    conf.write_text('[inject-error]\nevent = "write_aio"\nerrno = "5"\nonce = "on"\n')
    b = rig(gated=False, blkdebug=conf, werror="stop")
    stops = []
    b.vdev.on_io_error = lambda: stops.append(True)
    vq = b.vqs[0]
    req = BlkRequests(vq).submit(T_OUT, 3, out=b"p" * 512)
    b.drv.kick(0)
    b.vdev.drain()
    assert stops == [True] and vq.get_used() == [] and len(b.vdev.parked) == 1
    b.vdev.restart_parked()                        # `cont`: back to the I/O thread
    assert b.io.in_flight == 1
    b.vdev.drain()
    assert [h for h, _ in vq.get_used()] == [req.head]
    assert b.image()[3 * 512:4 * 512] == b"p" * 512


def test_an_error_in_the_worker_reaches_the_cpu_thread(rig):
    io = IoThread("t")
    try:
        class Owner:
            def io_batch_done(self):
                pass

        def work():
            raise ValueError("boom")
        io.submit(Owner(), work, lambda r: None)
        with pytest.raises(ValueError, match="boom"):
            io.drain()
    finally:
        io._results.clear()
        io.in_flight = 0
        io.close()


def test_jobs_the_worker_has_not_started_run_on_the_cpu_thread_in_order():
    """On a busy host a woken worker may wait milliseconds for a core: the run loop then runs
    the waiting jobs itself (run_stale), still one at a time and in order."""
    io = IoThread("t")
    io._thread = threading.current_thread()        # a worker the host never schedules
    ran, got = [], []

    class Owner:
        batches = 0

        def io_batch_done(self):
            Owner.batches += 1
    for i in range(3):
        io.submit(Owner(), lambda i=i: ran.append((i, threading.get_ident())) or i, got.append)
    assert io.run_stale(10 ** 12) == 0             # not waiting long enough yet
    assert io.run_stale(0) == 3 and io.poll() == 3
    assert got == [0, 1, 2] and {t for _, t in ran} == {threading.get_ident()}
    io._thread = None
    io.close()


# ------------------------------------------------------------------ completing at the kick


def test_a_lone_small_request_runs_inside_the_kick_and_the_rest_of_the_batch_on_the_worker(rig):
    """Nothing in flight: the first small read runs on the calling thread (a hand-over costs
    more than a 4 KiB read) and completes before the kick returns; the others of the same kick
    go to the worker, and complete in order after it."""
    b = rig()
    b.vdev.inline_max_bytes = 4096
    b.gated.passes = 1                             # the first call does not block
    vq = b.vqs[0]
    blk = BlkRequests(vq)
    first = blk.submit(T_IN, 8, in_len=4096)
    rest = [blk.submit(T_IN, 16 + 8 * i, in_len=4096) for i in range(3)]
    b.drv.kick(0)
    assert b.gated.calls[0][1] == threading.get_ident()     # the first ran here
    assert vq.get_used() == [(first.head, 4097)] and b.io.in_flight == 3
    assert b.gated.entered.wait(10) and b.gated.calls[1][1] != threading.get_ident()
    b.gated.gate.set()
    b.vdev.drain()
    assert [h for h, _ in vq.get_used()] == [r.head for r in rest]
    for r, sector in zip([first, *rest], (8, 16, 24, 32)):
        assert blk.result(r) == (pattern(DISK)[sector * 512:sector * 512 + 4096], S_OK)


def test_a_big_request_goes_to_the_worker_even_with_nothing_in_flight(rig):
    b = rig()
    b.vdev.inline_max_bytes = 4096
    vq = b.vqs[0]
    req = BlkRequests(vq).submit(T_IN, 0, in_len=8192)
    b.drv.kick(0)                                  # returns with the backend still blocked
    assert b.gated.entered.wait(10)
    assert b.gated.calls[0][1] != threading.get_ident() and vq.used_idx() == 0
    b.gated.gate.set()
    b.vdev.drain()
    assert [h for h, _ in vq.get_used()] == [req.head]


def test_a_kick_completes_what_the_worker_finished_before_it(rig):
    """Completions reach the ring at the next kick too, not only when the run loop polls."""
    b = rig()
    vq = b.vqs[0]
    blk = BlkRequests(vq)
    a = blk.submit(T_IN, 0, in_len=512)
    b.drv.kick(0)
    b.gated.gate.set()
    b.io.wait(10)
    assert vq.used_idx() == 0
    c = blk.submit(T_IN, 1, in_len=512)
    b.drv.kick(0)                                  # completes a (and perhaps c already)
    assert [h for h, _ in vq.get_used()][:1] == [a.head]
    b.vdev.drain()
    assert blk.result(a) == (pattern(DISK)[:512], S_OK) and blk.result(c) == (pattern(DISK)[512:1024], S_OK)


@pytest.mark.parametrize("how", ["no_interrupt", "used_event"])
def test_a_polling_driver_finds_its_oldest_request_done_when_the_kick_returns(rig, how):
    """A driver that switched used-buffer interrupts off will spin on the used ring: the kick
    has the oldest request finished (on the worker) and completes it before returning, so the
    guest needs no slice boundary to see it. The later ones complete later, in order."""
    b = rig(gated=False)
    vq = b.vqs[0]
    if how == "no_interrupt":
        b.vdev.queues[0].event_idx = False
        vq.set_avail_flags(1)                      # VIRTQ_AVAIL_F_NO_INTERRUPT
    else:
        vq.set_used_event(0xFFFF)                  # as far behind as it goes
    blk = BlkRequests(vq)
    reqs = [blk.submit(T_IN, 2 * i, in_len=1024) for i in range(4)]
    b.drv.kick(0)
    assert vq.used_idx() >= 1
    assert vq.get_used()[0][0] == reqs[0].head
    b.vdev.drain()
    for i, r in enumerate(reqs):
        assert blk.result(r) == (pattern(DISK)[i * 1024:(i + 1) * 1024], S_OK)


def test_a_driver_that_wants_interrupts_is_not_held_at_the_kick(rig):
    b = rig()                                      # used_event 0: the next completion interrupts
    vq = b.vqs[0]
    BlkRequests(vq).submit(T_IN, 0, in_len=512)
    b.drv.kick(0)                                  # returns with the backend still blocked
    assert b.gated.entered.wait(10) and vq.used_idx() == 0
    assert not b.vdev.queues[0].driver_polls()
    b.gated.gate.set()
    b.vdev.drain()
    assert vq.used_idx() == 1


def test_driver_polls_reads_the_drivers_interrupt_suppression(rig):
    b = rig(gated=False)
    q, vq = b.vdev.queues[0], b.vqs[0]
    assert q.event_idx and not q.inflight
    vq.set_used_event(0)
    assert q.driver_polls()                        # nothing in flight: no interrupt will come
    q.inflight.update({0, 3})                      # two in flight, used_idx 0
    assert not q.driver_polls()                    # used_event 0 is reached by the first
    vq.set_used_event(1)
    assert not q.driver_polls()                    # ... by the second
    vq.set_used_event(2)
    assert q.driver_polls()                        # by neither
    vq.set_used_event(0xFFFF)
    assert q.driver_polls()
    q.used_idx = 5                                 # later on the ring: the distance counts
    vq.set_used_event(5)
    assert not q.driver_polls()                    # reached by the first of the two
    vq.set_used_event(7)
    assert q.driver_polls()
    q.used_idx = 0
    q.event_idx = False
    vq.set_avail_flags(0)
    assert not q.driver_polls()
    vq.set_avail_flags(1)
    assert q.driver_polls()
    q.inflight.clear()
    q.reset()
    assert not q.driver_polls()                    # no rings, nothing to say


def test_the_worker_looks_for_work_before_it_sleeps():
    """Within its polling window (poll-max-ns) a new job needs no wake-up token; with a
    window of 0 the worker sleeps at once, and each job after a pause sends one."""
    import time

    class Owner:
        def io_batch_done(self):
            pass

    for poll_ns, tokens_expected in ((10 ** 10, 0), (0, 2)):
        io = IoThread("t", poll_ns)
        puts: list = []
        for i in range(3):
            io.submit(Owner(), lambda: 1, lambda r: None)
            io.drain()
            if i == 0:                             # the thread exists now: count from here
                io._tokens = _Counting(io._tokens, puts)
            deadline = time.monotonic() + 5
            while poll_ns == 0 and not io._idle and time.monotonic() < deadline:
                time.sleep(0.001)                  # let it fall asleep
        assert len(puts) == tokens_expected, poll_ns
        io.close()


class _Counting:
    def __init__(self, inner, puts):
        self.inner, self.puts = inner, puts

    def put(self, v):
        self.puts.append(v)
        self.inner.put(v)

    def get(self, *a):
        return self.inner.get(*a)


# ------------------------------------------------------------------ bounded work per notify


def test_one_notify_does_bounded_work_and_a_bottom_half_goes_on(tmp_path):
    b = Bench(tmp_path, disk_size=DISK).start()
    try:
        deferred = []
        b.vdev.defer = lambda fn, queue=None: deferred.append(fn)
        b.vdev.notify_max_bytes = 8192            # two 4 KiB reads (plus header and status)
        vq = b.vqs[0]
        blk = BlkRequests(vq)
        reqs = [blk.submit(T_IN, 8 * i, in_len=4096) for i in range(7)]
        b.drv.kick(0)
        assert [h for h, _ in vq.get_used()] == [r.head for r in reqs[:2]]
        done = 2
        while deferred:
            deferred.pop(0)()                     # the run loop's bottom half
            used = vq.get_used()
            assert 1 <= len(used) <= 2
            done += len(used)
        assert done == 7
        for i, r in enumerate(reqs):
            assert blk.result(r) == (pattern(DISK)[8 * i * 512:8 * i * 512 + 4096], S_OK)
    finally:
        b.close()


def test_without_a_bottom_half_the_rest_waits_for_the_next_kick(tmp_path):
    b = Bench(tmp_path, disk_size=DISK).start()
    try:
        b.vdev.notify_max_requests = 3
        vq = b.vqs[0]
        blk = BlkRequests(vq)
        for i in range(5):
            blk.submit(T_IN, i, in_len=512)
        b.drv.kick(0)
        assert len(vq.get_used()) == 3
        b.drv.kick(0)
        assert len(vq.get_used()) == 2
    finally:
        b.close()


def test_a_bottom_half_after_a_reset_does_nothing(tmp_path):
    b = Bench(tmp_path, disk_size=DISK).start()
    try:
        deferred = []
        b.vdev.defer = lambda fn, queue=None: deferred.append(fn)
        b.vdev.notify_max_requests = 1
        vq = b.vqs[0]
        blk = BlkRequests(vq)
        blk.submit(T_IN, 0, in_len=512)
        blk.submit(T_IN, 1, in_len=512)
        b.drv.kick(0)
        assert len(vq.get_used()) == 1 and len(deferred) == 1
        b.drv.set_status(0)
        watch = RamWatch(b.mem)
        deferred.pop()()
        assert watch.changed() == []
    finally:
        b.close()



@pytest.mark.parametrize("state", ["live", "replaced", "past-the-end", "inactive", "broken",
                                   "not-driver-ok", "no-bus-master"])
def test_a_bottom_half_serves_its_queue_only_while_queue_and_device_are_live(tmp_path, state):
    """resume_queue (the bottom half of a bounded notify) runs the queue's handler again only
    for the device's current, active queue of a working, DRIVER_OK device that may do DMA."""
    from machine.virtio.queue import SplitQueue
    from virtio_driver import DRIVER_OK
    b = Bench(tmp_path, disk_size=DISK).start()
    try:
        q = b.vdev.queues[0]
        if state == "replaced":                   # a queue object from before a layout swap
            q = SplitQueue.like(q)
            q.activate()
        elif state == "past-the-end":             # a queue the device no longer has
            q = SplitQueue(1, 256, None, b.mem)
        elif state == "inactive":
            b.drv.common_write(0x16, 2, 0)
            b.drv.common_write(0x3A, 2, 1)        # queue_reset
        elif state == "broken":
            b.vdev.virtio_error(BadHeadIndex("broken on purpose"))
        elif state == "not-driver-ok":
            b.vdev.status &= ~DRIVER_OK
        elif state == "no-bus-master":
            b.dev.config_write(0x04, 2, 0x0003)
        served = []
        q.handler = served.append
        b.vdev.resume_queue(q)
        assert served == ([q] if state == "live" else [])
    finally:
        b.close()


def test_a_ring_error_in_a_bottom_half_breaks_the_device_with_its_reason(tmp_path):
    b = Bench(tmp_path, disk_size=DISK).start()
    try:
        error = BadHeadIndex("Guest says index 300 is available")

        def handler(q):
            raise error
        q = b.vdev.queues[0]
        q.handler = handler
        b.vdev.resume_queue(q)
        assert b.vdev.broken and b.vdev.error is error
        assert b.vdev.state().error == "Guest says index 300 is available"
    finally:
        b.close()


# ------------------------------------------------------------------ the board and the command line


def test_the_board_gives_devices_their_iothread_and_a_bottom_half(tmp_path):
    from machine.cli import parse_args
    from machine.pc import Machine
    img, img2 = tmp_path / "d.img", tmp_path / "e.img"
    img.write_bytes(bytes(DISK))
    img2.write_bytes(bytes(DISK))
    cfg = parse_args(["-object", "iothread,id=io0,poll-max-ns=1000", "-drive",
                      f"file={img},format=raw,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0,iothread=io0",
                      "-drive", f"file={img2},format=raw,if=none,id=d1",
                      "-device", "virtio-blk-pci,drive=d1", "-serial", "null"])
    assert cfg.iothreads == {"io0": {"poll-max-ns": "1000"}}
    m = Machine(cfg)
    try:
        d0, d1 = m.drives["d0"][1], m.drives["d1"][1]
        assert d0.iothread is m.iothreads["io0"] and d1.iothread is None
        assert m.iothreads["io0"].poll_ns == 1000  # the worker's polling window, as QEMU's
        ran = []
        m.bottom_half(lambda: ran.append(m.clock.now))
        m.run(max_instructions=5000)
        assert ran == [1000]                       # a slice boundary, at its virtual time
    finally:
        m.close()


@pytest.mark.parametrize("args, message", [
    (["-object", "iothread"], "Parameter 'id' is missing"),
    (["-object", "foo,id=x"], "Parameter 'qom-type' does not accept value 'foo'"),
    (["-object", "iothread,id=io0,bogus=1"], "Invalid parameter 'bogus'"),
    (["-object", "iothread,id=io0,poll-max-ns=x"], "Parameter 'poll-max-ns' expects an int64 value"),
    (["-object", "iothread,id=io0", "-object", "iothread,id=io0"], "Duplicate ID 'io0' for object"),
])
def test_bad_iothread_objects_are_refused_in_qemus_words(args, message):
    from machine.cli import parse_args
    with pytest.raises(ConfigError, match=message):
        parse_args(args)


def test_an_unknown_iothread_is_refused_as_qemu_does(tmp_path):
    from machine.cli import parse_args
    from machine.pc import Machine
    img = tmp_path / "d.img"
    img.write_bytes(bytes(DISK))
    cfg = parse_args(["-drive", f"file={img},format=raw,if=none,id=d0",
                      "-device", "virtio-blk-pci,drive=d0,iothread=nope", "-serial", "null"])
    with pytest.raises(ConfigError, match="Device 'nope' not found"):
        Machine(cfg)


def test_a_queue_of_big_requests_is_served_across_slices_with_the_poll_hooks_in_between(tmp_path):
    """The monitor and the gdb stub are poll hooks of the run loop: between two bounded parts
    of one kick's work they run, and the guest keeps its instructions and timers."""
    from asm import rom_image
    from machine.config import CharDev, DriveConfig, MachineConfig
    from machine.pc import Machine
    from virtio_driver import Allocator, ModernPci
    rom = tmp_path / "rom.bin"
    rom.write_bytes(rom_image("reset: jmp reset\n"))
    img = tmp_path / "disk.img"
    img.write_bytes(pattern(4 << 20))
    m = Machine(MachineConfig(bios=rom, serial=CharDev("null"), ram_size=64 << 20,
                              drives=[DriveConfig(file=img, interface="virtio")]))
    try:
        vdev = m.drives[list(m.drives)[0]][1]
        drv = ModernPci(m.devices["virtio-blk0"], m.mem)
        vq = drv.init(Allocator(m.mem, start=8 << 20))[0]
        blk = BlkRequests(vq)
        reqs = [blk.submit(T_IN, 0, in_len=4 << 20) for _ in range(12)]   # 48 MiB in one kick
        seen = []
        m.add_poll_hook(lambda: seen.append(vq.used_idx()))
        drv.kick(0)
        first = vq.used_idx()
        assert first == 4                          # 16 MiB: four requests inside the notify
        m.run(max_instructions=5000)
        assert vq.used_idx() == 12 and [h for h, _ in vq.get_used()] == [r.head for r in reqs]
        assert seen[:3] == [4, 8, 12]              # a poll hook ran between two parts
        assert m.instructions >= 2000              # and the guest 1000 instructions each time
        assert blk.result(reqs[-1]) == (pattern(4 << 20), S_OK) and vdev.iothread is None
    finally:
        m.close()


def test_the_cpu_hears_of_every_byte_an_io_thread_request_wrote(tmp_path):
    """Translated code over RAM that DMA rewrote must go: the worker cannot touch Unicorn, so
    the run loop reports the data, status and used-ring bytes when it completes the request."""
    from asm import rom_image
    from machine.cli import parse_args
    from machine.pc import Machine
    from virtio_driver import Allocator, ModernPci
    rom = tmp_path / "rom.bin"
    rom.write_bytes(rom_image("reset: jmp reset\n"))
    img = tmp_path / "d.img"
    img.write_bytes(pattern(DISK))
    m = Machine(parse_args(["-bios", str(rom), "-serial", "null", "-object", "iothread,id=io0",
                            "-drive", f"file={img},format=raw,if=none,id=d0",
                            "-device", "virtio-blk-pci,drive=d0,iothread=io0"]))
    try:
        m.drives[list(m.drives)[0]][1].inline_max_bytes = -1     # to the worker, not inline
        drv = ModernPci(m.devices["virtio-blk0"], m.mem)
        vq = drv.init(Allocator(m.mem, start=8 << 20))[0]
        req = BlkRequests(vq).submit(T_IN, 0, in_len=8192)
        heard = []
        m.mem.add_write_listener(lambda gpa, n: heard.append((gpa, gpa + n)))
        drv.kick(0)
        heard.clear()                              # (the kick re-armed kicks: avail_event)
        m.iothreads["io0"].wait(10)
        assert heard == []                         # nothing from the worker itself
        m.run(max_instructions=100)                # the run loop completes it
        assert vq.get_used() == [(req.head, 8193)]
        covered = set()
        for b, e in heard:
            covered.update(range(b, e))
        for a, n in req.writable:                  # data buffer and status byte, every byte
            assert set(range(a, a + n)) <= covered, (a, n, heard)
        assert any(b <= vq.used + 2 < e for b, e in heard)   # the used index
    finally:
        m.close()


def test_a_read_past_an_image_truncated_behind_the_device_updates_the_capacity(rig):
    """On the I/O thread too: a failed read tells the CPU thread to look at the image size
    again, which then shrinks the capacity and raises a config change."""
    import os
    b = rig(gated=False)
    os.truncate(b.path, DISK // 2)
    assert b.vdev.capacity == DISK // 512
    vq = b.vqs[0]
    req = BlkRequests(vq).submit(T_IN, DISK // 512 - 1, in_len=512)
    b.drv.kick(0)
    b.vdev.drain()
    assert BlkRequests(vq).result(req)[1] != S_OK
    assert b.vdev.capacity == DISK // 2 // 512 and b.vdev.isr & 2


def test_a_completion_for_a_device_broken_meanwhile_is_dropped(rig):
    b = rig()
    vq = b.vqs[0]
    BlkRequests(vq).submit(T_IN, 0, in_len=512)
    b.drv.kick(0)
    assert b.gated.entered.wait(10)
    b.vdev.virtio_error(BadHeadIndex("Guest says index 300 is available"))   # the queue stays active
    b.gated.gate.set()
    b.vdev.drain()
    assert b.vdev.queues[0].active and vq.get_used() == []


def test_a_bottom_half_is_deferred_with_its_queue_index(tmp_path):
    """The bottom half names its queue, so a snapshot can save it as that queue's."""
    b = Bench(tmp_path, disk_size=DISK, props={"num-queues": "2"}).start(nqueues=2)
    try:
        deferred = []
        b.vdev.defer = lambda fn, queue=None: deferred.append(queue)
        b.vdev.notify_max_requests = 1
        blk = BlkRequests(b.vqs[1])
        blk.submit(T_IN, 0, in_len=512)
        blk.submit(T_IN, 1, in_len=512)
        b.drv.kick(1)
        assert deferred == [1]
    finally:
        b.close()


def test_the_byte_budget_stops_a_notify_once_reached(tmp_path):
    """notify_max_bytes: the request that reaches the budget is the last of the notify."""
    b = Bench(tmp_path, disk_size=DISK).start()
    try:
        b.vdev.notify_max_bytes = 16 + 512 + 1          # exactly one read of a sector
        blk = BlkRequests(b.vqs[0])
        for i in range(3):
            blk.submit(T_IN, i, in_len=512)
        b.drv.kick(0)
        assert len(b.vqs[0].get_used()) == 1
    finally:
        b.close()


@pytest.mark.parametrize("held_sectors, interrupt", [((0, 1), False), ((0,), True), ((), True)])
def test_requests_held_by_a_delay_rule_do_not_interrupt(tmp_path, held_sectors, interrupt):
    """A kick whose requests a [delay] rule all holds raises no interrupt; one that completes
    any does."""
    from machine.clock import VirtualClock
    conf = tmp_path / "delay.conf"
    conf.write_text("".join(f'[delay]\nevent = "read_aio"\nsector = "{s}"\nlatency-ns = "5000"\n'
                            for s in held_sectors) or '[delay]\nevent = "read_aio"\nsector = "99"\nlatency-ns = "5"\n')
    b = Bench(tmp_path, disk_size=DISK, blkdebug=conf).start()
    try:
        b.vdev.clock = VirtualClock()
        b.vdev.timer_key = "virtio-blk0"
        b.drv.isr()
        blk = BlkRequests(b.vqs[0])
        blk.submit(T_IN, 0, in_len=512)
        blk.submit(T_IN, 1, in_len=512)
        b.drv.kick(0)
        assert len(b.vdev.delayed) == len(held_sectors)
        assert bool(b.vdev.isr & 1) is interrupt
    finally:
        b.close()



def test_discard_and_write_zeroes_on_the_io_thread(rig):
    import struct
    from virtio_driver import T_DISCARD, T_WRITE_ZEROES
    b = rig(gated=False, discard="unmap")
    vq = b.vqs[0]
    blk = BlkRequests(vq)
    reqs = [blk.submit(t, 0, out=struct.pack("<QII", 8, 8, 0)) for t in (T_WRITE_ZEROES, T_DISCARD)]
    b.drv.kick(0)
    b.vdev.drain()
    assert [blk.result(r)[1] for r in reqs] == [S_OK, S_OK]
    assert b.image()[8 * 512:16 * 512] == bytes(8 * 512)
    blk.submit(T_DISCARD, 0, out=b"\0" * 8)                # a segment cut short: a ring error
    b.drv.kick(0)
    b.vdev.drain()
    assert b.needs_reset and b.vdev.state().error == "virtio-blk discard/write_zeroes header too short"


def test_a_request_the_worker_had_not_started_when_its_queue_was_reset_never_runs(tmp_path):
    """A queue reset with a request still waiting for the I/O thread: the request is dropped
    (its write never reaches the image), as every request of a reset queue."""
    b = Bench(tmp_path, disk_size=DISK)
    io = IoThread("io0")
    io._thread = threading.current_thread()        # a worker the host never schedules
    b.vdev.iothread = io
    b.vdev.inline_max_bytes = 0                    # a lone small request would run in the kick
    try:
        b.start()
        before = b.image()
        BlkRequests(b.vqs[0]).submit(T_OUT, 0, out=b"w" * 512)
        b.drv.kick(0)
        assert io.in_flight == 1
        b.drv.common_write(0x16, 2, 0)
        b.drv.common_write(0x3A, 2, 1)             # queue reset: drains, the job runs here
        assert io.in_flight == 0 and b.image() == before
    finally:
        io._thread = None
        io.close()
        b.close()
