"""Scatter/gather helpers shared by the block backends: whole transfers over lists of buffers.

`os.preadv`/`os.pwritev` may transfer less than asked (signals, end of file) and take at most
IOV_MAX buffers per call, so these loop until the whole list is done or the file ends.
"""

from __future__ import annotations

import os

try:
    IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024)
except (ValueError, OSError):       # pragma: no cover - every Linux has it
    IOV_MAX = 1024


def _advance(bufs: list[memoryview], done: int) -> list[memoryview]:
    """The part of `bufs` after the first `done` bytes."""
    i = 0
    while i < len(bufs) and done >= len(bufs[i]):
        done -= len(bufs[i])
        i += 1
    rest = bufs[i:]
    if rest and done:
        rest[0] = rest[0][done:]
    return rest


def _vectored_full(op, fd: int, bufs: list[memoryview], offset: int) -> int:
    """Repeat os.preadv/os.pwritev (`op`) past short transfers and IOV_MAX until `bufs` is
    done or a call moves nothing; returns the bytes moved."""
    total = 0
    while bufs:
        n = op(fd, bufs[:IOV_MAX], offset + total)
        if n == 0:
            break
        total += n
        bufs = _advance(bufs, n)
    return total


def preadv_full(fd: int, bufs: list[memoryview], offset: int) -> int:
    """Read into `bufs` from `offset`; returns the bytes read (less than asked only at EOF)."""
    return _vectored_full(os.preadv, fd, bufs, offset)


def pwritev_full(fd: int, bufs: list[memoryview], offset: int) -> int:
    """Write all of `bufs` at `offset`; returns the bytes written (short only if the OS refused)."""
    return _vectored_full(os.pwritev, fd, bufs, offset)


def split(bufs: list[memoryview], start: int, length: int) -> list[memoryview]:
    """Bytes [start, start+length) of the concatenation of `bufs`, as views (no copy)."""
    out: list[memoryview] = []
    for b in bufs:
        n = len(b)
        if start >= n:
            start -= n
            continue
        take = min(n - start, length)
        out.append(b[start:start + take])
        length -= take
        start = 0
        if not length:
            break
    return out
