"""Image locking with Linux open-file-description (OFD) locks, so two emulators cannot both write
one image (QEMU does the same, with the same kind of lock).

A writer takes an exclusive lock, a reader a shared one: writer+anything fails, reader+reader
works. OFD locks belong to the open file, not the process, so they are released when the image
is closed and are not confused by other opens in this process.
"""

from __future__ import annotations

import errno
import fcntl
import struct

F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)     # Linux value; Python exposes it since 3.9

# struct flock on Linux/x86-64: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid
_FLOCK = struct.Struct("hhqqi4x")


def try_lock(fd: int, exclusive: bool) -> bool:
    """Lock the whole file; False if another open file description holds a conflicting lock."""
    kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    try:
        fcntl.fcntl(fd, F_OFD_SETLK, _FLOCK.pack(kind, 0, 0, 0, 0))
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        if e.errno == errno.EINVAL:      # no OFD locks on this kernel/filesystem: run unlocked
            return True
        raise
    return True
