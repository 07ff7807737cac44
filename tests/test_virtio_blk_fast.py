"""The native request path (machine/virtio/blk_fast.py, native/blkfast.c) against the Python
one: the same request streams, plain and hostile, on two devices, one with the native path and
one without, must leave the same guest RAM, image, queue state, device status and interrupts
after every kick. And the native path must actually carry the plain requests."""

from __future__ import annotations

import ctypes
import random
import struct

import pytest

from machine.toolchain import ToolchainError
from machine.virtio import blk_fast
from virtio_driver import (F_EVENT_IDX, F_INDIRECT, INDIRECT, NEXT, S_IOERR, S_OK, T_FLUSH,
                           T_GET_ID, T_IN, T_OUT, WRITE, Bench, BlkRequests)

try:
    blk_fast.library()
except ToolchainError as exc:             # no compiler here; anything else is a bug to report
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
            list(b.irq_levels), v.capacity, list(getattr(b, "sent", ())))


def assert_same(fast: Bench, slow: Bench) -> None:
    a, b = state(fast), state(slow)
    if a[0] != b[0]:
        first = next(i for i in range(len(a[0])) if a[0][i] != b[0][i])
        raise AssertionError(f"RAM differs from {first:#x}: native {a[0][first:first + 16].hex()} "
                             f"python {b[0][first:first + 16].hex()}")
    names = ("ram", "image", "status", "isr", "broken", "error", "queues", "irq", "capacity", "msi")
    for name, x, y in zip(names, a, b):
        assert x == y, f"{name}: native {x!r} python {y!r}"


_WRITE_T = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint, ctypes.c_uint64,
                            ctypes.c_void_p)


class Front:
    """The modern BAR's native write (the notify front) driven as the CPU would: every kick a
    write of the notify address through it, Python's BAR write as its fallback, all within
    "fast-mode slices" whose token the test moves on as the run loop would."""

    def __init__(self, b: Bench):
        from machine.virtio.pci import NOTIFY_MULT, NOTIFY_OFF
        self.b, self.errors = b, []
        self.bar = b.dev._modern_ops
        self.token = ctypes.c_uint64(1)
        self.counter = ctypes.c_uint64(0)            # the CPU's instruction clock, standing still
        self.limit = (1 << 64) - 1                   # ... and no timer due
        assert b.vdev.bind_cpu(ctypes.addressof(self.token),
                               lambda: (self.token.value, ctypes.addressof(self.counter), self.limit))

        def python_write(_uc, offset, size, value, _ud):
            try:
                self.bar.write(offset, size, value)
            except BaseException as exc:            # noqa: BLE001 - reported by kick()
                self.errors.append(exc)
        self._py = _WRITE_T(python_write)
        fn, self.ud = self.bar.native_write_front(ctypes.cast(self._py, ctypes.c_void_p).value)
        self.fn = _WRITE_T(fn)
        self.notify = lambda q: NOTIFY_OFF + NOTIFY_MULT * q

    def kick(self, q: int) -> None:
        self.fn(None, self.notify(q), 2, q, self.ud)
        if self.errors:
            raise self.errors.pop()

    def new_slice(self) -> None:
        self.b.vdev.native_sync()                    # as the board does after every slice
        self.token.value += 1


class Stream:
    """Random requests for one bench; the same seed gives the same stream on both."""

    def __init__(self, b: Bench, seed: int, hostile: bool):
        self.b, self.rng, self.hostile = b, random.Random(seed), hostile
        self.vq = b.vqs[0]
        self.blk = BlkRequests(self.vq)
        self.ndesc: dict[int, int] = {}
        self.front: Front | None = None

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
        if self.front is not None:
            self.front.kick(0)
        else:
            self.b.drv.kick(0)
        for head, _ in self.vq.get_used():
            self.vq.recycle(head, self.ndesc.pop(head))


def start_msix(b: Bench, features: int) -> None:
    """MSI-X on, every vector programmed, the queue on vector 1 (the Linux order), messages
    recorded in b.sent."""
    from test_virtio_msix import APIC, enable, program
    b.sent = []
    b.dev.msix.send = lambda address, data: b.sent.append((address, data)) or True
    b.dev.config_write(0x04, 2, 0x0007)
    for v in range(b.dev.msix.nvectors):
        program(b, v, APIC, 0x40 + v)
    enable(b)
    b.start(features=features)
    b.drv.common_write(0x10, 2, 0)
    b.drv.common_write(0x16, 2, 0)
    b.drv.common_write(0x1A, 2, 1)


@pytest.mark.parametrize("event_idx", [True, False])
@pytest.mark.parametrize("hostile", [False, True])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("through", ["handler", "front", "front-msix"])
def test_random_streams_leave_the_same_machine_with_and_without_the_native_path(tmp_path, seed, hostile,
                                                                                event_idx, through):
    fast, slow = pair(tmp_path)
    try:
        streams = []
        for b in (fast, slow):
            feats = b.drv.device_features() & ~(0 if event_idx else 1 << F_EVENT_IDX)
            if through == "front-msix":
                start_msix(b, feats)              # every message counts: none may be missed
            else:
                b.start(features=feats)
            streams.append(Stream(b, seed, hostile))
        if through.startswith("front"):
            streams[0].front = Front(fast)
        rng = random.Random(1000 + seed)
        for _batch in range(40):
            kicks = [rng.randrange(1, 5) for _ in range(rng.randrange(1, 4))]
            acks = [rng.random() < 0.5 for _ in kicks]     # the driver reads the ISR after a kick
            flags = rng.randrange(3)                  # interrupts wanted, suppressed, as they were
            delta = rng.randrange(-2, 3)
            for s in streams:
                for n, ack in zip(kicks, acks):
                    for _ in range(n):
                        s.one()
                    if flags < 2:
                        s.vq.set_avail_flags(flags)   # NO_INTERRUPT or not
                        s.vq.set_used_event(s.vq.avail_idx + delta)
                    s.kick()
                    if ack:
                        s.b.drv.isr()                 # lowers the line: the next interrupt shows
            if streams[0].front is not None and rng.random() < 0.2:
                streams[0].front.new_slice()
            fast.vdev.native_sync()                  # (what a debugger would see)
            assert_same(fast, slow)
            if fast.vdev.broken:
                break
        assert fast.vdev._fast.requests > 0 or fast.vdev.broken
        if through.startswith("front") and not hostile:
            assert fast.vdev._fast.front_kicks > 0
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


def add_windows(b: Bench, total: int) -> list[int]:
    """RAM windows of 4 KiB in the legacy hole (as the chipset's shadow RAM adds them) until
    guest RAM is `total` ranges, the first one read-only: their guest-physical addresses."""
    from machine.memory import RamRange
    gpas = [0xC0000 + 0x2000 * i for i in range(total - len(b.mem.ranges))]
    b.mem.update_ranges([], [RamRange(a, 0x1000, a, read_only=i == 0) for i, a in enumerate(gpas)])
    assert len(b.mem.ranges) == total
    return gpas


def window_request(b: Bench, rtype: int, buf: int, sector: int) -> None:
    """Kick a 4 KiB read or write whose data buffer is at `buf` (in a window)."""
    vq = b.vqs[0]
    hdr, status = b.alloc.alloc(16, 8), b.alloc.alloc(1, 8)
    b.mem.write(hdr, struct.pack("<IIQ", rtype, 0, sector))
    vq.publish(vq.add_chain([(hdr, 16, False), (buf, 0x1000, rtype == T_IN), (status, 1, True)]))
    b.drv.kick(0)


@pytest.mark.parametrize("then", ["read-only", "beyond"])
def test_buffers_in_ram_windows_get_what_python_gives_them(tmp_path, then):
    """RAM windows switched in after the first request are seen by the native path, up to as
    many as it maps. Past that, Python serves every request, one into a window gone included;
    a read into a read-only window is a ring error on both paths."""
    from machine.memory import RamRange
    fast, slow = pair(tmp_path)
    try:
        for b in (fast, slow):
            b.start()
            b.run(T_IN, 0, in_len=512)
            gpas = add_windows(b, blk_fast.MAX_RANGES)
            for i, gpa in enumerate(gpas):
                window_request(b, T_OUT, gpa, 8 * i)             # from the window to the disk
                if i:
                    window_request(b, T_IN, gpa, 64 + 8 * i)     # from the disk into it
        assert_same(fast, slow)
        native = fast.vdev._fast.requests
        assert native == 2 * len(gpas) and not fast.vdev.broken
        for b in (fast, slow):
            if then == "read-only":
                window_request(b, T_IN, gpas[0], 0)
            else:                                     # one more window than the native path maps
                more = [0xC0000 + 0x2000 * i for i in range(len(gpas), len(gpas) + 2)]
                b.mem.update_ranges([gpas[-1]], [RamRange(a, 0x1000, a) for a in more])
                for i, gpa in enumerate(more):
                    window_request(b, T_OUT, gpa, 128 + 8 * i)
                window_request(b, T_IN, gpas[-1], 0)    # no longer RAM
        assert_same(fast, slow)
        assert fast.vdev.broken and fast.vdev._fast.requests == native
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


@pytest.mark.parametrize("method", ["readv", "writev"])
@pytest.mark.parametrize("on", ["image", "journal", "image-under-journal"])
def test_a_read_or_write_method_replaced_on_the_backend_sees_every_such_request(tmp_path, on, method):
    """Fault injection replaces one method on the backend object (the image, the undo journal
    in front of it, or the image behind such a journal): every request of that kind must
    reach it."""
    import errno

    from machine.block.undo import Journal
    b = Bench(tmp_path, disk_size=DISK, ram=16 << 20, native=True)
    try:
        b.start()
        image = b.vdev.backend
        if on != "image":
            b.vdev.backend = Journal(image)
        calls = []

        def failing(offset, bufs):
            calls.append(offset)
            raise OSError(errno.EIO, "injected")
        setattr(image if on == "image-under-journal" else b.vdev.backend, method, failing)
        failed, other = (T_IN, T_OUT) if method == "readv" else (T_OUT, T_IN)
        assert b.run(failed, 8, in_len=512 if failed == T_IN else 0,
                     out=b"" if failed == T_IN else b"\1" * 512)[1] == S_IOERR
        assert calls == [8 * 512]
        assert b.run(other, 16, in_len=512 if other == T_IN else 0,
                     out=b"" if other == T_IN else b"\2" * 512)[1] == S_OK
        assert b.run(failed, 24, in_len=512 if failed == T_IN else 0,
                     out=b"" if failed == T_IN else b"\3" * 512)[1] == S_IOERR
        assert calls == [8 * 512, 24 * 512]
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


# --------------------------------------------------------------------------- the notify front

def run_guest(tmp_path, name: str, append: str, *, front: bool, icount: str = "off",
              extra: tuple = (), monkeypatch=None) -> tuple[str, bytes, object, int]:
    """The bundled guest in this process (machine.cli's parse_args, as the command line), its
    serial output, the image afterwards and the device."""
    from dataclasses import replace

    from machine.cli import parse_args
    from machine.config import CharDev
    from machine.pc import Machine
    from machine.toolchain import ensure_built
    from machine.virtio.blk import VirtioBlk
    guest = ensure_built("guest", "out/guest.elf")
    img = tmp_path / f"{name}.img"
    img.write_bytes(bytes(4 << 20))
    out = tmp_path / f"{name}.out"
    cfg = parse_args(["-icount", icount, "-kernel", str(guest), "-append", append, "-no-reboot",
                      "-m", "64", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                      "-drive", f"file={img},format=raw,if=none,id=d0", *extra,
                      "-device", "virtio-blk-pci,drive=d0" + ("" if not extra else ",iothread=io0")])
    if not front:
        monkeypatch.setattr(VirtioBlk, "bind_cpu", lambda self, address, window: False)
    m = Machine(replace(cfg, serial=CharDev("file", out)))
    try:
        status = m.run()
        vdev = m.pci_bus.device(2).vdev
        instructions = m.instructions
    finally:
        m.close()
        monkeypatch.undo() if not front else None
    assert status == 1, out.read_text()
    return out.read_text(), img.read_bytes(), vdev, instructions


def without_ticks(text: str) -> list[str]:
    return [" ".join(w for w in line.split() if not w.startswith("ticks=")) for line in text.splitlines()]


@pytest.mark.parametrize("iothread", [False, True], ids=["default", "iothread"])
def test_the_front_serves_a_polling_driver_alone_and_the_guest_sees_what_python_gives(tmp_path, monkeypatch, iothread):
    """In the fast mode the bench guest's kicks (a driver that polls) are served by the front
    with no Python; its results and the image are those of the Python notify path."""
    append = "mode=bench bench_mib=1 bench_ops=300"
    extra = ("-object", "iothread,id=io0") if iothread else ()
    out_py, img_py, _, _ = run_guest(tmp_path, "python", append, front=False, extra=extra, monkeypatch=monkeypatch)
    out_nat, img_nat, vdev, _ = run_guest(tmp_path, "native", append, front=True, extra=extra)
    assert without_ticks(out_nat) == without_ticks(out_py)
    assert "bench done status=ok" in out_nat
    assert img_nat == img_py
    assert vdev._fast.front_kicks > 500 and vdev._fast.front_requests >= vdev._fast.front_kicks


def test_the_whole_self_test_passes_in_the_fast_mode_with_the_front(tmp_path):
    """Interrupt-driven and polled completions, many in flight, FLUSH, GET_ID: the front serves
    what it can and hands the rest (a due interrupt, another request type) to Python."""
    out, _img, vdev, _ = run_guest(tmp_path, "selftest", "tests=all", front=True)
    assert "not ok" not in out and "ok " in out, out
    assert vdev._fast.front_kicks > 0


@pytest.mark.parametrize("append", ["mode=bench bench_mib=1 bench_ops=200", "tests=all"], ids=["bench", "selftest"])
def test_in_the_exact_mode_the_front_changes_nothing_the_guest_can_count(tmp_path, monkeypatch, append):
    """Deterministic mode: the same output, virtual TSC ticks included, and the same instruction
    count with the front as with every kick in Python (timers still fire where they did)."""
    out_py, img_py, _, n_py = run_guest(tmp_path, "python", append, front=False, icount="shift=0",
                                        monkeypatch=monkeypatch)
    out_nat, img_nat, vdev, n_nat = run_guest(tmp_path, "native", append, front=True, icount="shift=0")
    assert out_nat == out_py
    assert img_nat == img_py and n_nat == n_py
    assert vdev._fast.front_kicks > 0


def test_the_front_leaves_a_kick_to_python_once_the_next_timer_is_due(tmp_path):
    """Python brings the clock up to date at every access and ends the slice when a timer falls
    due: past the armed limit the front must let it."""
    b = Bench(tmp_path, disk_size=DISK, ram=16 << 20, native=True)
    try:
        b.start()
        b.vqs[0].set_avail_flags(1)                    # a polling driver: nothing else needs Python
        front = Front(b)
        blk = BlkRequests(b.vqs[0])
        for _ in range(3):
            blk.submit(T_IN, 0, in_len=512)
            front.kick(0)
        assert b.vdev._fast.front_kicks == 2           # the first armed it
        front.limit = 100                              # a timer due at count 100
        front.new_slice()
        blk.submit(T_IN, 0, in_len=512)
        front.kick(0)                                  # Python's: arms with that limit
        front.counter.value = 99
        blk.submit(T_IN, 0, in_len=512)
        front.kick(0)
        assert b.vdev._fast.front_kicks == 3           # below it: natively
        front.counter.value = 100                      # the timer is due now
        blk.submit(T_IN, 0, in_len=512)
        front.kick(0)
        assert b.vdev._fast.front_kicks == 3           # Python's
        assert b.vqs[0].used_idx() == 6
    finally:
        b.close()


@pytest.mark.parametrize("icount", [True, False], ids=["exact", "fast"])
def test_every_clock_update_inside_a_slice_gives_the_cpu_a_new_token(tmp_path, icount):
    """The front's window lasts until the CPU next runs Python: each port access (which adds
    port time and may arm timers) must change the token and move the limit down by that time."""
    from asm import build_machine
    from machine.cpu import IO_PORT_NS
    seen = []

    class Probe:
        def read(self, offset, size):
            return 0

        def write(self, offset, size, value):
            seen.append(m.cpu.native_window())
    m = build_machine(tmp_path, "    mov $0x81, %dx\n" + "    out %al, %dx\n" * 4 + "    EXIT 0\n", icount=icount)
    m.io.add("probe", 0x81, 1, Probe())
    m.clock.oneshot(lambda: None, m.clock.now + 10_000_000)     # a timer well ahead
    try:
        m.run()
    finally:
        m.close()
    tokens = [t for t, _, _ in seen]
    assert len(seen) == 4 and 0 not in tokens and len(set(tokens)) == 4
    limits = [limit for _, _, limit in seen]
    assert all(a - b == IO_PORT_NS for a, b in zip(limits, limits[1:]))


def test_odd_notify_writes_through_the_front_get_what_python_gives_them(tmp_path):
    """Unaligned notify offsets, queues that do not exist, any access size: the front leaves
    them all to Python (which logs and ignores them), and a real kick still works after."""
    b = Bench(tmp_path, disk_size=DISK, ram=16 << 20, native=True)
    try:
        b.start()
        b.vqs[0].set_avail_flags(1)
        front = Front(b)
        blk = BlkRequests(b.vqs[0])
        blk.submit(T_IN, 0, in_len=512)
        front.kick(0)                                   # Python's: arms queue 0
        req = blk.submit(T_IN, 1, in_len=512)
        for offset, size in ((front.notify(0) + 1, 1), (front.notify(0) + 2, 2), (front.notify(1), 2),
                             (front.notify(7), 4),
                             (front.notify(200), 2), (front.notify(0) - 4, 4)):
            front.fn(None, offset, size, 0xFFFF, front.ud)
            assert not front.errors
        assert b.vqs[0].used_idx() == 1 and b.vdev._fast.front_kicks == 0 and not b.vdev.broken
        front.kick(0)                                   # a BAR access disarmed it: Python's again
        assert [h for h, _ in b.vqs[0].get_used()][-1] == req.head
    finally:
        b.close()


@pytest.mark.parametrize("event_idx", [True, False])
def test_with_an_iothread_a_polling_driver_gets_large_requests_inside_the_kick_too(tmp_path, event_idx):
    """A driver with interrupts off for what it submits spins until its requests are done: a
    hand-over to the thread gains it nothing, so the native path runs them all in the kick."""
    from machine.iothread import IoThread
    b = Bench(tmp_path, disk_size=DISK, ram=16 << 20, native=True)
    b.io = b.vdev.iothread = IoThread("io0")
    try:
        b.start(features=b.drv.device_features() & ~(0 if event_idx else 1 << F_EVENT_IDX))
        vq = b.vqs[0]
        if event_idx:
            vq.set_used_event(0xFFFF)                  # behind used_idx: no interrupt coming
        else:
            vq.set_avail_flags(1)                      # NO_INTERRUPT
        assert b.vdev.queues[0].suppresses_interrupts()
        blk = BlkRequests(vq)
        reqs = [blk.submit(T_IN, 0, in_len=b.vdev.inline_max_bytes + 512) for _ in range(3)]
        b.drv.kick(0)
        assert b.vdev._fast.requests == 3 and b.io.in_flight == 0
        assert [h for h, _ in vq.get_used()] == [r.head for r in reqs]
        vq.set_used_event(vq.used_idx()) if event_idx else vq.set_avail_flags(0)
        assert not b.vdev.queues[0].suppresses_interrupts()
        big = blk.submit(T_IN, 0, in_len=b.vdev.inline_max_bytes + 512)
        b.drv.kick(0)                                  # wants an interrupt: the thread's
        assert b.vdev._fast.requests == 3
        b.io.drain()
        assert [h for h, _ in vq.get_used()] == [big.head]
    finally:
        b.io.close()
        b.close()


def test_with_an_iothread_a_kick_that_hands_everything_to_the_thread_interrupts_only_at_completion(tmp_path):
    from machine.iothread import IoThread
    b = Bench(tmp_path, disk_size=DISK, ram=16 << 20, native=True)
    b.io = b.vdev.iothread = IoThread("io0")
    try:
        b.start(features=b.drv.device_features() & ~(1 << F_EVENT_IDX))
        blk = BlkRequests(b.vqs[0])
        big = blk.submit(T_IN, 0, in_len=b.vdev.inline_max_bytes + 512)
        b.drv.kick(0)
        assert True not in b.irq_levels and b.vqs[0].used_idx() == 0
        b.io.drain()
        b.vdev.io_batch_done()
        assert [h for h, _ in b.vqs[0].get_used()] == [big.head] and b.irq_levels == [True]
    finally:
        b.io.close()
        b.close()


def test_with_an_iothread_the_fronts_kicks_interrupt_a_driver_that_wants_it(tmp_path):
    """The front completes the small requests of a kick natively and hands it to Python for
    the interrupt they owe: every kick's completions are signalled (one MSI-X message each),
    as Python signals them."""
    from machine.iothread import IoThread
    fast, slow = pair(tmp_path)
    fast.io = fast.vdev.iothread = IoThread("io0")
    try:
        front = Front(fast)
        for b in (fast, slow):
            start_msix(b, b.drv.device_features() & ~(1 << F_EVENT_IDX))
        streams = [BlkRequests(b.vqs[0]) for b in (fast, slow)]
        for kick in range(6):
            for blk in streams:
                for i in range(2):
                    blk.submit(T_IN, 8 * (2 * kick + i), in_len=4096)
            front.kick(0)
            slow.drv.kick(0)
            for b in (fast, slow):
                assert b.vqs[0].used_idx() == 2 * (kick + 1)
                assert len(b.sent) == kick + 1, (kick, b is fast)
        assert fast.vdev._fast.requests >= 10
        assert state(fast)[:6] == state(slow)[:6]
    finally:
        fast.io.close()
        fast.close()
        slow.close()


@pytest.mark.parametrize("why", ["broken", "failed", "bus-master-off", "before-driver-ok", "traced"])
def test_kicks_the_device_must_not_serve_are_not_served_by_the_front_either(tmp_path, why):
    """A broken or FAILED device, bus mastering off: Python ignores the kick, and the front,
    which would serve the next ones alone, stays unarmed. A driver not yet DRIVER_OK (served
    by default, as QEMU does) and a kick trace event on: every kick reaches Python."""
    from machine import trace
    b = Bench(tmp_path, disk_size=DISK, ram=16 << 20, native=True)
    kicks = []
    listener = lambda name, fields: kicks.append(fields["n"]) if name == "virtio_queue_notify" else None
    try:
        b.start(driver_ok=why != "before-driver-ok")
        vq, blk = b.vqs[0], BlkRequests(b.vqs[0])
        vq.set_avail_flags(1)                          # a polling driver: nothing else needs Python
        front = Front(b)
        if why == "broken":                            # an available index past the ring's size
            vq.set_avail_idx(vq.avail_idx + vq.size + 1)
            front.kick(0)
            assert b.vdev.broken and not b.vdev.queues[0].inflight
            vq.set_avail_idx(vq.avail_idx - vq.size - 1)   # the driver goes on as if nothing was
        elif why == "failed":
            b.drv.set_status(b.drv.status | 128)
        elif why == "bus-master-off":
            b.dev.config_write(0x04, 2, b.dev.config_read(0x04, 2) & ~4)
        elif why == "traced":
            trace.add_listener(listener)
            trace.listen("virtio_queue_notify")
        used = vq.used_idx()
        for _ in range(3):
            blk.submit(T_IN, 8, in_len=512)
            front.kick(0)
        if why in ("traced", "before-driver-ok"):
            assert vq.used_idx() == used + 3
            assert kicks == [0, 0, 0] or why != "traced"
        else:
            assert vq.used_idx() == used
        assert b.vdev._fast.front_kicks == 0
    finally:
        if why == "traced":
            trace.unlisten("virtio_queue_notify")
            trace.remove_listener(listener)
        b.close()


def test_a_packed_ring_is_served_by_python_through_the_handler_and_the_front(tmp_path):
    """The native path knows only the split ring: a packed one's requests all run in Python,
    kicked through the notify front too, and complete as there."""
    from test_virtio_packed import start as start_packed
    from virtio_driver import pattern
    b = Bench(tmp_path, disk_size=DISK, ram=16 << 20, native=True, props={"packed": "on"})
    try:
        ring = start_packed(b)
        front = Front(b)
        blk = BlkRequests(ring)
        for i in range(3):
            req = blk.submit(T_IN, 8 * i, in_len=4096)
            (front.kick if i else b.drv.kick)(0)
            assert [h for h, _ in ring.get_used()] == [req.head]
            assert blk.result(req) == (pattern(DISK)[8 * i * 512:][:4096], S_OK)
        assert b.vdev._fast.requests == 0 and b.vdev._fast.front_kicks == 0
    finally:
        b.close()


class _UsedRingAt:
    """The test driver's allocator, but the used ring (the one ring aligned to 4) at `gpa`."""

    def __init__(self, alloc, gpa: int):
        self._alloc, self._gpa = alloc, gpa

    def alloc(self, size: int, align: int = 16) -> int:
        if align == 4 and self._gpa is not None:
            gpa, self._gpa = self._gpa, None
            return gpa
        return self._alloc.alloc(size, align)


def test_a_used_ring_in_ram_made_read_only_is_left_to_the_python_path(tmp_path):
    """A used ring in a shadow window the chipset has since write-protected: the device's writes
    there are lost to RAM (the driver sees nothing used), as Python does them; the native code,
    which writes guest RAM, must leave such a queue alone."""
    from machine.memory import RamRange
    window = 0xC0000
    fast, slow = pair(tmp_path)
    try:
        for b in (fast, slow):
            b.mem.add_range(RamRange(window, 0x1000, window))
            b.vqs = b.drv.init(_UsedRingAt(b.alloc, window), size=16)
            b.mem.update_ranges([window], [RamRange(window, 0x1000, window, read_only=True)])
            blk = BlkRequests(b.vqs[0])
            for sector in (0, 8):
                blk.submit(T_IN, sector, in_len=512)
                b.drv.kick(0)
            assert b.vqs[0].used_idx() == 0                # RAM kept what the driver put there
            assert b.vdev.queues[0].used_idx == 2
        assert fast.vdev._fast.requests == 0
        assert_same(fast, slow)
    finally:
        fast.close()
        slow.close()


def test_kicks_of_a_queue_the_driver_did_not_enable_are_ignored_by_the_front_too(tmp_path):
    """A driver that enabled one queue of two and kicks the other: Python ignores the kick
    (a guest error), and the front must not be armed for that queue, whose rings it would
    read at whatever addresses the registers hold."""
    b = Bench(tmp_path, disk_size=DISK, ram=16 << 20, native=True, props={"num-queues": "2"})
    try:
        b.vqs = b.drv.init(b.alloc, nqueues=1)
        assert b.vdev.queues[1].active is False
        front = Front(b)
        for _ in range(3):
            front.kick(1)
        assert b.vdev._fast.front_kicks == 0 and b.vdev._fast.requests == 0
        assert not b.vdev.broken
        assert b.run(T_IN, 8, in_len=512)[1] == S_OK      # queue 0 is served as ever
    finally:
        b.close()


def test_the_front_serves_each_queue_of_a_multiqueue_driver_from_its_own_slot(tmp_path):
    """A polling driver with three queues: after a kick of a queue in Python, the next kick of
    it is served by the front alone, from that queue's rings, with what Python would read."""
    from virtio_driver import pattern
    nq = 3
    b = Bench(tmp_path, disk_size=DISK, ram=16 << 20, native=True, props={"num-queues": str(nq)})
    try:
        b.start(nqueues=nq)
        front = Front(b)
        for vq in b.vqs:
            vq.set_avail_flags(1)
        blks = [BlkRequests(vq) for vq in b.vqs]
        for kicks, qi in enumerate((2, 1, 0)):
            for sector in (8 * qi, 100 + qi):           # Python's (it arms the queue), the front's
                req = blks[qi].submit(T_IN, sector, in_len=1024)
                front.kick(qi)
                assert [h for h, _ in b.vqs[qi].get_used()][-1] == req.head
                assert blks[qi].result(req) == (pattern(DISK)[sector * 512:][:1024], S_OK)
            assert b.vdev._fast.front_kicks == kicks + 1, qi
        assert not b.vdev.broken
    finally:
        b.close()


def test_the_notify_byte_budget_counts_each_request_once_on_the_native_path(tmp_path):
    """A byte budget one more than a request's bytes (header, data, status): the first request
    stays under it, the second crosses it and completes, the third waits, on both paths."""
    fast, slow = pair(tmp_path)
    try:
        for b in (fast, slow):
            b.start()
            b.vdev.notify_max_bytes = 16 + 512 + 1 + 1
            b.vdev.defer = lambda fn, qi: None           # the rest waits for the next kick
            blk = BlkRequests(b.vqs[0])
            for i in range(3):
                blk.submit(T_IN, i, in_len=512)
            b.drv.kick(0)
        assert fast.vqs[0].used_idx() == 2 and fast.vdev._fast.requests == 2
        assert state(fast) == state(slow)
    finally:
        fast.close()
        slow.close()


def test_with_cache_unsafe_writes_run_natively_even_in_writethrough_mode(tmp_path):
    """cache=unsafe drops flushes, so writethrough asks nothing of a write beyond the write:
    the native path keeps serving writes when the driver turns writeback off."""
    fast, slow = pair(tmp_path, cache="unsafe")
    try:
        for b in (fast, slow):
            b.start()
            b.drv.cfg_write(32, 1, 0)                   # writeback off: writethrough
            assert b.run(T_OUT, 0, out=b"\4" * 512)[1:] == (S_OK, 1)
        assert fast.vdev._fast.requests == 1
        assert state(fast) == state(slow)
    finally:
        fast.close()
        slow.close()
