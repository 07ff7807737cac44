"""A raw image file as a block device: byte offset N of the disk is byte N of the file.

Data moves between the file and the caller's buffers (guest RAM views) with preadv/pwritev, no
intermediate copies. Every method takes byte offsets already checked by the device against
`size`; the backend re-checks bounds anyway because it is the last line before the host file.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat

from .iov import IOV_MAX, preadv_full, pwritev_full

SECTOR = 512

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = None


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate [offset, offset+length) keeping the file size (reads then return zeroes).
    False if the filesystem cannot punch holes."""
    global _libc
    if _libc is None:
        # Here, not at import: it pulls in subprocess (start-up time). Not `import ctypes.util`,
        # which would make `ctypes` a local name, unbound on every later call's error path.
        from ctypes import util
        _libc = ctypes.CDLL(util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    rc = _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS):
        return False
    raise OSError(err, os.strerror(err))


_ZEROS = bytes(1 << 20)


def write_zeroes_fd(fd: int, offset: int, length: int) -> None:
    """Write real zero bytes (the fallback when holes are not available)."""
    while length:
        n = min(length, len(_ZEROS))
        if pwritev_full(fd, [memoryview(_ZEROS)[:n]], offset) != n:
            raise OSError(errno.EIO, "short write")
        offset += n
        length -= n


class BlockBackend:
    """What a block device needs from its storage. Offsets and lengths are bytes.

    readv/writev return the bytes transferred; the others raise OSError on host failure.
    """

    size: int = 0
    read_only: bool = False
    discard_unmap: bool = False      # -drive discard=unmap: DISCARD really deallocates
    cache: str = "writeback"         # writeback | writethrough | none | directsync | unsafe
    on_read_error: str = "report"    # -drive rerror=: report | ignore | stop
    on_write_error: str = "enospc"   # -drive werror=: report | ignore | stop | enospc
    filename: str = ""

    def readv(self, offset: int, bufs: list[memoryview]) -> int: raise NotImplementedError
    def writev(self, offset: int, bufs: list[memoryview]) -> int: raise NotImplementedError
    def flush(self) -> None: raise NotImplementedError
    def discard(self, offset: int, length: int) -> None: raise NotImplementedError
    def write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None: raise NotImplementedError
    def close(self) -> None: pass

    def refresh_size(self) -> int:
        """Re-read the size of the storage (after the host resized the image); returns it."""
        return self.size

    def resize(self, size: int) -> None:
        """Make the disk `size` bytes (QEMU's block_resize); OSError if it cannot be."""
        raise OSError(errno.ENOTSUP, "this image cannot be resized")


class RawImage(BlockBackend):
    def __init__(self, fd: int, size: int, *, read_only: bool, filename: str = "",
                 cache: str = "writeback", discard_unmap: bool = False):
        self.fd = fd
        self.size = size
        self.read_only = read_only
        self.filename = filename
        self.cache = cache
        self.discard_unmap = discard_unmap
        self.regular = stat.S_ISREG(os.fstat(fd).st_mode)    # a block device cannot shrink under us

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise OSError(errno.EINVAL, f"range {offset}+{length} outside the image")

    def readv(self, offset: int, bufs: list[memoryview]) -> int:
        length = sum(len(b) for b in bufs)
        self._check(offset, length)
        if len(bufs) <= IOV_MAX:            # one system call in the usual case
            n = os.preadv(self.fd, bufs, offset)
            if n == length:
                return n
        return preadv_full(self.fd, bufs, offset)

    def writev(self, offset: int, bufs: list[memoryview]) -> int:
        if self.read_only:
            raise OSError(errno.EROFS, "read-only image")
        length = sum(len(b) for b in bufs)
        self._check(offset, length)
        self._check_not_shrunk(offset + length)
        if len(bufs) <= IOV_MAX:
            n = os.pwritev(self.fd, bufs, offset)
            if n == length:
                return n
        return pwritev_full(self.fd, bufs, offset)

    def flush(self) -> None:
        os.fdatasync(self.fd)

    def discard(self, offset: int, length: int) -> None:
        """A hint: with discard=ignore (QEMU's default) nothing happens and the data stays."""
        if self.read_only:
            raise OSError(errno.EROFS, "read-only image")
        self._check(offset, length)
        if self.discard_unmap and length:
            punch_hole(self.fd, offset, length)

    def write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        if self.read_only:
            raise OSError(errno.EROFS, "read-only image")
        self._check(offset, length)
        if not length:
            return
        if may_unmap and self.discard_unmap and punch_hole(self.fd, offset, length):
            return
        write_zeroes_fd(self.fd, offset, length)

    def _check_not_shrunk(self, end: int) -> None:
        """A write must never regrow an image the host truncated behind our back (a pwrite past
        the end would silently extend the file): one fstat per write, cheap against the write."""
        if self.regular and end > os.fstat(self.fd).st_size:
            self.refresh_size()
            raise OSError(errno.EIO, "the image shrank on the host")

    def refresh_size(self) -> int:
        st = os.fstat(self.fd)
        size = st.st_size if self.regular else os.lseek(self.fd, 0, os.SEEK_END)
        self.size = size - size % SECTOR
        return self.size

    def resize(self, size: int) -> None:
        if self.read_only:
            raise OSError(errno.EACCES, "the image is read-only")
        if not self.regular:
            raise OSError(errno.ENOTSUP, "only a regular file can be resized")
        os.ftruncate(self.fd, size)
        self.size = size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)      # also drops the OFD lock
            self.fd = -1
