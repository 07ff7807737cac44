"""The common virtio-blk request in native code (native/blkfast.c), behind the Python model.

A 4 KiB read costs the Python path (chain walk, parse, preadv, status, used ring, kick re-arm)
several times what the guest's own driver code does. `FastPath.serve` hands a split queue's
available requests to one native call instead, which completes the plain ones (reads, and writes
where nothing more than a pwritev is needed) exactly as `VirtioBlk.handle_queue` would: same
bytes in RAM and in the image, same used ring, same indices, same kick re-arm. At the first
request it cannot complete that way (any other type, any error, any rule to report, a buffer on
a page holding translated code) it stops with the request still available, and the Python path
goes on from there with its statuses, reports and trace events.

`serve` is only used where nothing would tell the two apart (`usable`): a split queue whose used
ring is guest RAM, nothing in flight, no blkdebug rules, a raw image without undo logs for
writes, no trace event of the request path on, no listener that must hear of every guest RAM
write (a debugger's watchpoints, a test's) beyond the CPU, whose record of code pages the native
code checks, and no read or write method replaced on the backend object (a test's fault
injection). Without a C compiler the device runs all in Python, as before.
"""

from __future__ import annotations

import ctypes
import struct

from ..block.raw import RawImage
from ..block.undo import Journal
from ..toolchain import ToolchainError, load_library
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


# struct blkfast_queue, packed in one call (a ctypes field store each would cost more): the
# queue's state, then the device's as of this call; the indices and counts are read back.
_QUEUE = struct.Struct("<QQQIIHHIQIIQ" "QQiIIIIIQ")
_QUEUE_OUT = struct.Struct("<HHIQ")       # last_avail_idx, used_idx, done, nbytes
_QUEUE_OUT_AT = 32
assert _QUEUE.size == 112

_lib = None


def library() -> ctypes.CDLL:
    """native/blkfast.c, built on first use (ToolchainError when it cannot be)."""
    global _lib
    if _lib is None:
        lib = load_library("out/libblkfast.so")
        lib.blkfast_serve.restype = ctypes.c_int
        lib.blkfast_serve.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        _lib = lib
    return _lib


def image_of(backend):
    """The RawImage a backend reads through with nothing in between, or None (blkdebug rules,
    a -snapshot overlay). A Journal passes reads through; writes only while it keeps no log."""
    inner = backend.inner if type(backend) is Journal else backend
    return inner if type(inner) is RawImage else None


class FastPath:
    """The native request path of one VirtioBlk (see the module docstring)."""

    def __init__(self, dev, serve, events):
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
        self.requests = 0                        # completed natively (statistics, tests)

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

    def serve(self, q: SplitQueue, max_requests: int, max_bytes: int,
              request_max_bytes: int) -> tuple[int, int, int] | None:
        """Complete what the native code can of `q`'s available requests within a notify's
        budget: (DONE, MORE or BAIL, requests done, bytes of them), or None where nothing may
        be done natively now (see the module docstring), all left to the Python path."""
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
            return None
        code = mem.native_write_filter()
        if code is None or not self._sync_ranges():
            return None
        can_write = (not image.read_only and not getattr(backend, "logs", None)
                     and (image.cache == "unsafe" or dev.writeback()))
        _QUEUE.pack_into(self._qbuf, 0, q._d, q._a, q._u, q.size, q.event_idx,
                         q.last_avail_idx, q.used_idx, 0, 0, max_requests, 0, max_bytes,
                         code, dev.capacity, image.fd, image.regular, dev.lbs, dev.seg_max,
                         can_write, q.indirect, request_max_bytes)
        status = self._serve(self._dev_addr, self._q_addr)
        last, used, done, nbytes = _QUEUE_OUT.unpack_from(self._qbuf, _QUEUE_OUT_AT)
        q.last_avail_idx, q.used_idx = last, used
        self.requests += done
        return status, done, nbytes


def attach(dev, events) -> FastPath | None:
    """The native path for `dev`, whose request trace events are `events` (any of them on:
    Python's path), or None where no C compiler could build it."""
    try:
        lib = library()
    except ToolchainError:
        return None
    return FastPath(dev, lib.blkfast_serve, events)
