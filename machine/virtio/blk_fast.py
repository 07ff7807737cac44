"""The common virtio-blk request in native code (native/blkfast.c), behind the Python model.

A 4 KiB read costs the Python path (chain walk, parse, preadv, status, used ring, kick re-arm)
several times what the guest's own driver code does. `FastPath.serve` hands a split queue's
available requests to one native call instead, which completes the plain ones (reads, and writes
where nothing more than a pwritev is needed) exactly as `VirtioBlk.handle_queue` would: same
bytes in RAM and in the image, same used ring, same indices, same kick re-arm. At the first
request it cannot complete that way (any other type, any error, any rule to report, a buffer on
a page holding translated code) it stops with the request still available, and the Python path
goes on from there with its statuses, reports and trace events.

Native code is only used where nothing would tell the two apart (`_pack`): a split queue whose
used ring is guest RAM, nothing in flight, no blkdebug rules, a raw image without undo logs for
writes, no trace event of the request path on, no listener that must hear of every guest RAM
write (a debugger's watchpoints, a test's) beyond the CPU, whose record of code pages the native
code checks, and no read or write method replaced on the backend object (a test's fault
injection). Without a C compiler the device runs all in Python, as before.

The same code also sits in front of the modern BAR's write (the *notify front*: `front`,
`arm`, `sync`), so that a kick which needs nothing else costs no Python at all;
docs/ARCHITECTURE.md ("The notify front") says when it may act and how its state gets back.
"""

from __future__ import annotations

import ctypes
import struct

from ..block.raw import RawImage
from ..block.undo import Journal
from ..toolchain import ToolchainError, native_library
from .queue import EV_FILL, EV_POP, SplitQueue

DONE, MORE, BAIL = 0, 1, 2          # blkfast_serve's results
MAX_RANGES = 8                      # native/blkfast.c MAX_RANGES


class _Range(ctypes.Structure):
    _fields_ = [("gpa", ctypes.c_uint64), ("size", ctypes.c_uint64), ("offset", ctypes.c_uint64),
                ("read_only", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class _Dev(ctypes.Structure):
    """struct blkfast_dev: guest RAM as the native code sees it."""
    _fields_ = [("ram", ctypes.c_void_p), ("ram_size", ctypes.c_uint64),
                ("range", _Range * MAX_RANGES), ("nranges", ctypes.c_uint32),
                ("pad", ctypes.c_uint32)]


FRONT_QUEUES = 8                    # native/blkfast.c FRONT_QUEUES


class _Slot(ctypes.Structure):
    """struct blkfast_slot: one queue of the notify front."""
    _fields_ = [("token", ctypes.c_uint64), ("signalled_used", ctypes.c_uint32),
                ("signalled_valid", ctypes.c_uint32), ("fell_back", ctypes.c_uint32),
                ("pad", ctypes.c_uint32), ("counter", ctypes.c_void_p), ("limit", ctypes.c_uint64),
                ("lane", ctypes.c_void_p), ("q", ctypes.c_char * 112)]


class _Front(ctypes.Structure):
    """struct blkfast_front: the modern BAR's native write (native/blkfast.c)."""
    _fields_ = [("fallback", ctypes.c_void_p), ("token", ctypes.c_void_p), ("dev", ctypes.c_void_p),
                ("notify_off", ctypes.c_uint64), ("notify_mult", ctypes.c_uint32),
                ("nqueues", ctypes.c_uint32), ("kicks", ctypes.c_uint64),
                ("requests", ctypes.c_uint64), ("slot", _Slot * FRONT_QUEUES)]


# struct blkfast_queue, packed in one call (a ctypes field store each would cost more): the
# queue's state, then the device's as of this call; the indices and counts are read back.
_QUEUE = struct.Struct("<QQQIIHHIQIIQ" "QQiIIIIIQ")
_QUEUE_OUT = struct.Struct("<HHIQ")       # last_avail_idx, used_idx, done, nbytes
_QUEUE_OUT_AT = 32
assert _QUEUE.size == 112 and _Slot.q.offset == 48 and _Front.slot.offset == 56

LANE_JOBS = 1024                    # native/blkfast.c LANE_JOBS


class _LaneOut(ctypes.Structure):
    """What a drained struct blkfast_lane tells Python (its fields after the queue)."""
    _fields_ = [("completed", ctypes.c_uint64), ("nleft", ctypes.c_uint32),
                ("reused", ctypes.c_uint32), ("deep", ctypes.c_uint32),
                ("idle_kicks", ctypes.c_uint32), ("left", ctypes.c_uint16 * LANE_JOBS)]


_PROTOTYPES = {
    "blkfast_serve": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p]),
    "blkfast_lane_new": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_uint32]),
    "blkfast_lane_drain": (None, [ctypes.c_void_p]),
    "blkfast_lane_reset_results": (None, [ctypes.c_void_p]),
    "blkfast_lane_close": (None, [ctypes.c_void_p]),
}


def library() -> ctypes.CDLL:
    """native/blkfast.c, built on first use (ToolchainError when it cannot be)."""
    return native_library("out/libblkfast.so", _PROTOTYPES)


def image_of(backend):
    """The RawImage a backend reads through with nothing in between, or None (blkdebug rules,
    a -snapshot overlay). A Journal passes reads through; writes only while it keeps no log."""
    inner = backend.inner if type(backend) is Journal else backend
    return inner if type(inner) is RawImage else None


class FastPath:
    """The native request path of one VirtioBlk (see the module docstring)."""

    def __init__(self, dev, serve, front_fn, events):
        self._dev_obj = dev
        self._events = (EV_POP, EV_FILL) + tuple(events)
        self._serve = serve
        self._backend = dev.backend
        self.image = image_of(dev.backend)
        self.mem = dev.mem
        d = self._d = _Dev()
        export = ctypes.c_char.from_buffer(dev.mem.buf)
        d.ram = ctypes.addressof(export)         # the mmap lives as long as the machine
        del export                               # (no export kept: RAM can still be closed)
        d.ram_size = dev.mem.size
        self._dev_addr = ctypes.addressof(d)
        self._qbuf = bytearray(_QUEUE.size)
        self._q = (ctypes.c_char * _QUEUE.size).from_buffer(self._qbuf)
        self._q_addr = ctypes.addressof(self._q)
        self._ranges_seen = None
        self.requests = 0                        # completed natively in Python's kicks
        self.lane_requests = 0                   # completed by the I/O lane's workers
        self._front = _Front()
        self._front.dev = self._dev_addr
        self._front.nqueues = FRONT_QUEUES
        self._front_fn = front_fn
        self._token: ctypes.c_uint64 | None = None
        self._armed: set[SplitQueue] = set()
        self._carry: tuple | None = None         # (queue, status, done, nbytes) of a kick begun natively
        base = ctypes.addressof(self._front) + _Front.slot.offset
        self._slot_q = [(ctypes.c_char * _QUEUE.size).from_address(base + i * ctypes.sizeof(_Slot) + _Slot.q.offset)
                        for i in range(FRONT_QUEUES)]
        self._lane = 0                           # struct blkfast_lane *, made at first use
        self._lane_q = self._lane_out = None     # its queue and its results, seen from here
        # What drained lanes did, for the device to finish (VirtioBlk._lane_drained):
        # (queue, requests completed, heads left to Python, reused head or None).
        self.lane_results: list[tuple[SplitQueue, int, list[int], int | None]] = []

    def _sync_ranges(self) -> bool:
        ranges = self.mem.ranges
        if ranges is self._ranges_seen:
            return True
        if len(ranges) > MAX_RANGES:
            return False
        d = self._d
        for i, r in enumerate(ranges):
            d.range[i] = _Range(r.gpa, r.size, r.host_offset, int(r.read_only), 0)
        d.nranges = len(ranges)
        self._ranges_seen = ranges
        return True

    def _pack(self, buf, q: SplitQueue, max_requests: int, max_bytes: int,
              request_max_bytes: int) -> bool:
        """Fill a struct blkfast_queue in `buf` for `q` as things are now: False (nothing
        written) where nothing may be done natively (see the module docstring)."""
        dev = self._dev_obj
        backend = dev.backend
        if backend is not self._backend:         # swapped (a test's wrapper, block_resize...)
            self._backend, self.image = backend, image_of(backend)
        image, mem = self.image, self.mem
        if (image is None or type(q) is not SplitQueue or not q.active or q.inflight
                or q._uw_buf is not mem.buf or dev._take_delay is not None or dev.parked
                or dev.delayed or any(ev.enabled for ev in self._events) or image.fd < 0
                or "readv" in image.__dict__ or "writev" in image.__dict__
                or "readv" in backend.__dict__ or "writev" in backend.__dict__):
            return False
        code = mem.native_write_filter()
        if code is None or not self._sync_ranges():
            return False
        can_write = (not image.read_only and not getattr(backend, "logs", None)
                     and (image.cache == "unsafe" or dev.writeback()))
        _QUEUE.pack_into(buf, 0, q._d, q._a, q._u, q.size, q.event_idx,
                         q.last_avail_idx, q.used_idx, 0, 0, max_requests, 0, max_bytes,
                         code, dev.capacity, image.fd, image.regular, dev.lbs, dev.seg_max,
                         can_write, q.indirect, request_max_bytes)
        return True

    def serve(self, q: SplitQueue, max_requests: int, max_bytes: int,
              request_max_bytes: int) -> tuple[int, int, int] | None:
        """Complete what the native code can of `q`'s available requests within a notify's
        budget: (DONE, MORE or BAIL, requests done, bytes of them), or None where nothing may
        be done natively now (see the module docstring), all left to the Python path."""
        if not self._pack(self._qbuf, q, max_requests, max_bytes, request_max_bytes):
            return None
        status = self._serve(self._dev_addr, self._q_addr)
        last, used, done, nbytes = _QUEUE_OUT.unpack_from(self._qbuf, _QUEUE_OUT_AT)
        q.last_avail_idx, q.used_idx = last, used
        self.requests += done
        return status, done, nbytes

    def take_carry(self, q: SplitQueue) -> tuple[int, int, int] | None:
        """What the notify front did of this kick of `q` before it handed it to Python, as
        `serve` returns it (the kick goes on from there), or None."""
        carry = self._carry
        if carry is None or carry[0] is not q:
            return None
        self._carry = None
        return carry[1:]

    # -- the notify front -----------------------------------------------------
    def bind_cpu(self, token_address: int, window) -> None:
        """The CPU's token (Cpu.slice_token_address) and `window() -> (token, counter address,
        limit)` (Cpu.native_window): the front acts only under the token it was armed with, and
        only while the instruction counter is below the limit."""
        self._token = ctypes.c_uint64.from_address(token_address)
        self._window = window
        self._front.token = token_address

    def token_live(self) -> bool:
        """May the front be armed now (the CPU runs a slice that lets it)?"""
        return self._token is not None and self._token.value != 0

    def front(self, fallback: int, notify_off: int, notify_mult: int) -> tuple[int, int]:
        """The modern BAR's write as native code: (function, its user data), calling
        `fallback` (the region's Python write) for all it leaves to Python."""
        f = self._front
        self.sync()
        f.fallback, f.notify_off, f.notify_mult = fallback, notify_off, notify_mult
        return self._front_fn, ctypes.addressof(f)

    def arm(self, q: SplitQueue, max_requests: int, max_bytes: int, request_max_bytes: int) -> None:
        """Let the front serve `q`'s next kicks until the CPU next runs Python, as `serve` would with these
        limits, when the caller (the end of a kick in Python) found nothing that needs Python
        (queue_notify's own conditions are the device's: checked by VirtioBlk)."""
        if not self.token_live() or q.index >= FRONT_QUEUES:
            return
        self.sync()                              # (nothing armed: a kick in Python disarmed)
        slot = self._front.slot[q.index]
        if not self._pack(self._slot_q[q.index], q, max_requests, max_bytes, request_max_bytes):
            return
        slot.signalled_used, slot.signalled_valid = q._signalled_used, q._signalled_valid
        slot.fell_back = 0
        token, slot.counter, slot.limit = self._window()
        slot.token = token
        self._armed.add(q)

    def arm_lane(self, q: SplitQueue, io, threads: int, deep: bool) -> None:
        """As `arm`, but the front hands `q`'s kicks to the I/O lane (native/blkfast.c, "the
        I/O lane"): `threads` workers of `io`'s complete the requests on the used ring while
        the guest runs on. For a driver that polls: a notification the completions owe is sent
        when the lane is drained (`sync`), after the slice at the latest. `deep`: the kick just
        handled found several requests (the driver keeps them in flight: queue them)."""
        if not self.token_live() or q.index >= FRONT_QUEUES:
            return
        self.sync()
        if not self._lane:
            lane = library().blkfast_lane_new(self._dev_addr, threads)
            if not lane:
                return
            self._lane = lane
            self._lane_q = (ctypes.c_char * _QUEUE.size).from_address(lane)
            self._lane_out = _LaneOut.from_address(lane + _QUEUE.size)
            io.on_close(self.close_lane)
        if not self._pack(self._lane_q, q, 0xFFFFFFFF, 1 << 63, 1 << 63):
            return
        if deep:
            self._lane_out.deep, self._lane_out.idle_kicks = 1, 0
        slot = self._front.slot[q.index]
        slot.signalled_used, slot.signalled_valid = q._signalled_used, q._signalled_valid
        slot.fell_back = 0
        slot.lane = self._lane
        token, slot.counter, slot.limit = self._window()
        slot.token = token
        self._armed.add(q)

    def close_lane(self) -> None:
        """End the lane's workers (its I/O thread closes)."""
        self.sync()
        lane, self._lane = self._lane, 0
        if lane:
            self._lane_q = self._lane_out = None
            library().blkfast_lane_close(lane)

    def sync(self) -> None:
        """Disarm, and give the queues back what the front did: their indices and interrupt
        bookkeeping, a kick it handed over half done (`serve` returns it first), and what a
        lane did once it is drained (`lane_results`). Called before any Python code of the
        device runs, and after every slice."""
        self._carry = None                       # a kick's own, taken by its handler or dropped
        if not self._armed:
            return
        slots = self._front.slot
        for q in self._armed:
            slot = slots[q.index]
            slot.token = 0
            qbuf = self._slot_q[q.index]
            lane = slot.lane
            if lane:
                slot.lane = None
                lib = library()
                lib.blkfast_lane_drain(lane)     # (the GIL is let go meanwhile)
                qbuf, out = self._lane_q, self._lane_out
                if out.completed or out.nleft or out.reused:
                    self.lane_results.append((q, out.completed, list(out.left[:out.nleft]),
                                              out.reused - 1 if out.reused else None))
                    self.lane_requests += out.completed
                    lib.blkfast_lane_reset_results(lane)
            last, used, done, nbytes = _QUEUE_OUT.unpack_from(qbuf, _QUEUE_OUT_AT)
            q.last_avail_idx, q.used_idx = last, used
            q._signalled_used, q._signalled_valid = slot.signalled_used, bool(slot.signalled_valid)
            if slot.fell_back:
                self._carry = (q, slot.fell_back - 1, done, nbytes)
                self.requests += done
                slot.fell_back = 0
        self._armed.clear()

    @property
    def front_kicks(self) -> int:
        """Kicks the front served whole (statistics, tests)."""
        return self._front.kicks

    @property
    def front_requests(self) -> int:
        return self._front.requests


def attach(dev, events) -> FastPath | None:
    """The native path for `dev`, whose request trace events are `events` (any of them on:
    Python's path), or None where no C compiler could build it."""
    try:
        lib = library()
    except ToolchainError:
        return None
    return FastPath(dev, lib.blkfast_serve, ctypes.cast(lib.blkfast_front_write, ctypes.c_void_p).value,
                    events)
