"""Image locking with QEMU's byte-range protocol, so this emulator and QEMU refuse each other
exactly as QEMU refuses itself.

An image user holds *permissions* (consistent read, write, ...) and may refuse to *share* some of
them with other users. Each is published as a shared Linux open-file-description (OFD) lock on
one byte of the image file:

    byte 100 + i   held while we use permission i
    byte 200 + i   held while we refuse to share permission i

A conflict is another open file holding byte 200 + i for a permission i we want, or byte 100 + i
for a permission i we refuse to share. Read off QEMU 7.2 through /proc/locks: a writable drive
holds 100, 101 and 201 (reads and writes, shares no writer); `readonly=on` holds 100 and 201
(a reader that wants no writer beside it); `snapshot=on` holds 100, 201 and 203. So two readers
coexist, and a writer and anything else refuse each other, in either order.

OFD locks belong to the open file description, not the process: closing the image drops them,
and our own locks never conflict with our own checks.
"""

from __future__ import annotations

import errno
import fcntl
import struct
from dataclasses import dataclass

F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)     # Linux values; Python exposes them since 3.9
F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)

# struct flock on Linux/x86-64: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid
_FLOCK = struct.Struct("hhqqi4x")

PERM_CONSISTENT_READ = 1 << 0
PERM_WRITE = 1 << 1
PERM_WRITE_UNCHANGED = 1 << 2
PERM_RESIZE = 1 << 3
PERM_NAMES = ("consistent read", "write", "write unchanged", "resize")
ALL_PERMS = (1 << len(PERM_NAMES)) - 1

PERM_LOCK_BASE = 100
SHARED_LOCK_BASE = 200


@dataclass(frozen=True)
class ImageUse:
    """What one opener does with an image: the permissions it takes and those it lets others take."""
    perms: int
    shared: int

    @property
    def unshared(self) -> int:
        return ALL_PERMS & ~self.shared


WRITER = ImageUse(PERM_CONSISTENT_READ | PERM_WRITE, ALL_PERMS & ~PERM_WRITE)
READER = ImageUse(PERM_CONSISTENT_READ, ALL_PERMS & ~PERM_WRITE)
SNAPSHOT_READER = ImageUse(PERM_CONSISTENT_READ, ALL_PERMS & ~(PERM_WRITE | PERM_RESIZE))


class LockConflict(Exception):
    """Another open file uses the image in a way ours cannot share. The message is QEMU's."""


class LocksUnsupported(Exception):
    """This kernel or filesystem has no OFD locks."""


def _fcntl(fd: int, cmd: int, kind: int, byte: int) -> int:
    try:
        reply = fcntl.fcntl(fd, cmd, _FLOCK.pack(kind, 0, byte, 1, 0))
    except OSError as e:
        if e.errno == errno.EINVAL:
            raise LocksUnsupported() from None
        raise
    return _FLOCK.unpack(reply)[0]


def _held_elsewhere(fd: int, byte: int) -> bool:
    """Does another open file description hold a lock on `byte`? (A write lock would conflict
    with any lock, so GETLK reports every other holder.)"""
    return _fcntl(fd, F_OFD_GETLK, fcntl.F_WRLCK, byte) != fcntl.F_UNLCK


def _bits(mask: int):
    return (i for i in range(len(PERM_NAMES)) if mask >> i & 1)


def lock_image(fd: int, use: ImageUse) -> None:
    """Publish `use` on the image and check it against every other user of it.

    Raises LockConflict naming the permission, as QEMU does; runs unlocked (returns) where the
    filesystem has no OFD locks. On a conflict our own bytes stay locked until `fd` is closed,
    which the caller does at once."""
    try:
        for i in _bits(use.perms):
            _fcntl(fd, F_OFD_SETLK, fcntl.F_RDLCK, PERM_LOCK_BASE + i)
        for i in _bits(use.unshared):
            _fcntl(fd, F_OFD_SETLK, fcntl.F_RDLCK, SHARED_LOCK_BASE + i)
        for i in _bits(use.perms):
            if _held_elsewhere(fd, SHARED_LOCK_BASE + i):
                raise LockConflict(f'Failed to get "{PERM_NAMES[i]}" lock')
        for i in _bits(use.unshared):
            if _held_elsewhere(fd, PERM_LOCK_BASE + i):
                raise LockConflict(f'Failed to get shared "{PERM_NAMES[i]}" lock')
    except LocksUnsupported:
        return
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):   # SETLK of a shared lock: someone holds it exclusively
            raise LockConflict("Failed to lock the image") from None
        raise
