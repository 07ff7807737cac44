"""Undo logs: a disk as it was when a snapshot was taken, kept as the blocks written since.

A `Journal` sits on a writable drive's backend. Each snapshot holds an `UndoLog` on it; before
the first write to a block after the log started, the block's old contents go into the log
(later writes to it cost one dict lookup per log). `rollback(log)` writes those blocks back,
which puts the disk exactly where it was when the log started, and restarts the log from there.
Writes made by a rollback go through the same path, so every other snapshot's log stays right.
With no log the journal only forwards calls: the block path stays as fast as without it.

The image itself always holds what the guest last wrote (QEMU's raw images too); the logs live
beside it (in memory, or in the snapshot store's files: machine/savevm_store.py).
"""

from __future__ import annotations

from .raw import BlockBackend

BLOCK = 4096


class UndoLog:
    """Blocks of one disk as they were at `start` (block index -> bytes; the last block of a
    disk whose size is not a multiple of BLOCK is shorter), and the size then."""

    def __init__(self, size: int):
        self.size = size
        self.blocks: dict[int, bytes] = {}
        self.on_record = None            # f(index, data): a file-backed log appends it

    def record(self, index: int, data: bytes) -> None:
        self.blocks[index] = data
        if self.on_record is not None:
            self.on_record(index, data)

    def clear(self, size: int) -> None:
        self.size = size
        self.blocks = {}


class Journal(BlockBackend):
    """A writable drive's backend with undo logs on it (a pass-through while there are none)."""

    def __init__(self, inner: BlockBackend):
        self.inner = inner
        self.logs: list[UndoLog] = []

    # The drive's properties are the inner backend's.
    size = property(lambda self: self.inner.size)
    read_only = property(lambda self: self.inner.read_only)
    discard_unmap = property(lambda self: self.inner.discard_unmap)
    cache = property(lambda self: self.inner.cache)
    filename = property(lambda self: self.inner.filename)
    on_read_error = property(lambda self: self.inner.on_read_error)
    on_write_error = property(lambda self: self.inner.on_write_error)

    def __getattr__(self, name):             # anything else a wrapped backend offers (fd, map...)
        return getattr(self.inner, name)

    # -- logs ----------------------------------------------------------------------------------
    def start_log(self) -> UndoLog:
        log = UndoLog(self.inner.size)
        self.logs.append(log)
        return log

    def stop_log(self, log: UndoLog) -> None:
        if log in self.logs:
            self.logs.remove(log)

    def _before(self, offset: int, length: int) -> None:
        """Keep the old contents of every block in [offset, offset+length) that some log has
        not kept yet."""
        if length <= 0:
            return
        size = self.inner.size
        for index in range(offset // BLOCK, (min(offset + length, size) + BLOCK - 1) // BLOCK):
            missing = [log for log in self.logs if index not in log.blocks and index * BLOCK < log.size]
            if not missing:
                continue
            start = index * BLOCK
            n = min(BLOCK, size - start)
            buf = bytearray(n)
            got = self.inner.readv(start, [memoryview(buf)])
            data = bytes(buf[:got])
            for log in missing:
                log.record(index, data[:max(0, min(n, log.size - start))])

    def rollback(self, log: UndoLog) -> None:
        """Put the disk back as it was when `log` started (OSError if the host refuses)."""
        if self.inner.size < log.size:
            self.resize(log.size)
        for index in sorted(log.blocks):
            data = log.blocks[index]
            if data:
                self.writev(index * BLOCK, [memoryview(data)])
        if self.inner.size > log.size:
            self.resize(log.size)
        log.clear(self.inner.size)

    # -- the backend ---------------------------------------------------------------------------
    def readv(self, offset: int, bufs: list[memoryview]) -> int:
        return self.inner.readv(offset, bufs)

    def writev(self, offset: int, bufs: list[memoryview]) -> int:
        if self.logs:
            self._before(offset, sum(len(b) for b in bufs))
        return self.inner.writev(offset, bufs)

    def flush(self) -> None:
        self.inner.flush()

    def discard(self, offset: int, length: int) -> None:
        if self.logs and self.inner.discard_unmap:      # only then may the data change
            self._before(offset, length)
        self.inner.discard(offset, length)

    def write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        if self.logs:
            self._before(offset, length)
        self.inner.write_zeroes(offset, length, may_unmap)

    def refresh_size(self) -> int:
        return self.inner.refresh_size()

    def resize(self, size: int) -> None:
        if self.logs and size < self.inner.size:
            self._before(size, self.inner.size - size)
        self.inner.resize(size)

    def close(self) -> None:
        self.inner.close()
