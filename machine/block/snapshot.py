"""`snapshot=on`: the image is opened read-only and every write goes to a throw-away overlay.

The overlay is an unlinked sparse temp file the size of the disk plus a map with one byte per
512-byte sector saying whether the sector lives in the overlay. Reads split the range into runs
of overlay and base sectors (found with bytearray.find, so the scan runs in C). The map costs
1/512 of the disk size in host memory, which suits the small images snapshot mode is used with.
"""

from __future__ import annotations

import errno
import os
import tempfile

from .iov import preadv_full, pwritev_full, split
from .raw import SECTOR, BlockBackend, RawImage, punch_hole, write_zeroes_fd


class SnapshotOverlay(BlockBackend):
    def __init__(self, base: RawImage):
        self.base = base
        self.size = base.size
        self.read_only = False
        self.filename = base.filename
        self.cache = base.cache
        self.discard_unmap = base.discard_unmap
        fd, path = tempfile.mkstemp(prefix="vm-snapshot-")
        os.unlink(path)
        os.ftruncate(fd, self.size)
        self.fd = fd
        self.map = bytearray(self.size // SECTOR)

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size or offset % SECTOR or length % SECTOR:
            raise OSError(errno.EINVAL, f"range {offset}+{length} outside the image or unaligned")

    def readv(self, offset: int, bufs: list[memoryview]) -> int:
        length = sum(len(b) for b in bufs)
        self._check(offset, length)
        first, end = offset // SECTOR, (offset + length) // SECTOR
        m = self.map
        total = 0
        s = first
        while s < end:
            in_overlay = m[s]
            nxt = m.find(b"\x00" if in_overlay else b"\x01", s, end)
            if nxt < 0:
                nxt = end
            part = split(bufs, (s - first) * SECTOR, (nxt - s) * SECTOR)
            fd = self.fd if in_overlay else self.base.fd
            total += preadv_full(fd, part, s * SECTOR)
            s = nxt
        return total

    def _mark(self, offset: int, length: int) -> None:
        a, b = offset // SECTOR, (offset + length) // SECTOR
        self.map[a:b] = b"\x01" * (b - a)

    def writev(self, offset: int, bufs: list[memoryview]) -> int:
        if self.read_only:
            raise OSError(errno.EROFS, "read-only image")
        length = sum(len(b) for b in bufs)
        self._check(offset, length)
        n = pwritev_full(self.fd, bufs, offset)
        self._mark(offset, n - n % SECTOR)
        return n

    def flush(self) -> None:
        pass    # nothing written here is meant to survive

    def discard(self, offset: int, length: int) -> None:
        self._check(offset, length)     # a hint; the base image must not change, so keep data

    def write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        if self.read_only:
            raise OSError(errno.EROFS, "read-only image")
        self._check(offset, length)
        if not length:
            return
        if not punch_hole(self.fd, offset, length):
            write_zeroes_fd(self.fd, offset, length)
        self._mark(offset, length)

    def resize(self, size: int) -> None:
        """The overlay takes the new size; the base image never changes. Sectors past the
        base's end read as zeroes from the overlay."""
        if self.read_only:
            raise OSError(errno.EACCES, "the image is read-only")
        os.ftruncate(self.fd, size)
        sectors = size // SECTOR
        if sectors < len(self.map):
            del self.map[sectors:]
        else:
            self.map.extend(b"\x01" * (sectors - len(self.map)))
        self.size = size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.base.close()
