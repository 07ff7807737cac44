"""Block backends: where a disk's bytes live (a raw image file, or a throw-away overlay on one).

`open_drive()` turns a -drive into a backend, or a ConfigError with the one line the user sees.
"""

from __future__ import annotations

import os
import stat

from ..config import ConfigError, DriveConfig
from .blkdebug import BlkDebug, RulesError, load_rules
from .lock import READER, SNAPSHOT_READER, WRITER, LockConflict, lock_image
from .raw import SECTOR, BlockBackend, RawImage
from .snapshot import SnapshotOverlay

__all__ = ["BlockBackend", "RawImage", "SnapshotOverlay", "open_drive", "SECTOR"]

CACHE_MODES = ("writeback", "writethrough", "none", "directsync", "unsafe")
DISCARD_MODES = {"ignore": False, "off": False, "unmap": True, "on": True}


def open_drive(drive: DriveConfig, *, snapshot: bool = False) -> BlockBackend:
    """Open the image of one -drive. `snapshot` (or drive.snapshot) puts a throw-away overlay on
    top; the image itself is then opened read-only and never modified."""
    if drive.file is None:
        raise ConfigError("drive has no file= (an empty drive is not supported)")
    path = str(drive.file)
    if drive.format != "raw":
        raise ConfigError(f"drive format '{drive.format}' is not supported (only 'raw')")
    if drive.cache not in CACHE_MODES:
        raise ConfigError(f"invalid cache option '{drive.cache}'")
    if drive.discard not in DISCARD_MODES:
        raise ConfigError(f"invalid discard option '{drive.discard}'")
    use_overlay = snapshot or drive.snapshot
    read_only = drive.readonly or use_overlay
    try:
        # O_NONBLOCK: opening a FIFO for reading would wait for a writer (refused below)
        fd = os.open(path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise ConfigError(f"Could not open '{path}': {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"Could not open '{path}': Is a directory")
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise ConfigError(f"Could not open '{path}': not a regular file or a block device")
        os.set_blocking(fd, True)
        size = st.st_size if stat.S_ISREG(st.st_mode) else os.lseek(fd, 0, os.SEEK_END)
        if size % SECTOR:
            raise ConfigError(f"'{path}': image size {size} is not a multiple of {SECTOR} bytes")
        try:
            lock_image(fd, SNAPSHOT_READER if use_overlay else READER if read_only else WRITER)
        except LockConflict as e:
            raise ConfigError(f"{e} on '{path}': is another process using the image?") from None
    except BaseException:
        os.close(fd)
        raise
    backend: BlockBackend = RawImage(fd, size, read_only=read_only, filename=path,
                                     cache=drive.cache, discard_unmap=DISCARD_MODES[drive.discard])
    if use_overlay:
        backend = SnapshotOverlay(backend)
        backend.read_only = drive.readonly
    if drive.blkdebug is not None:         # on top: the rules see every request of the guest
        try:
            backend = BlkDebug(backend, load_rules(drive.blkdebug))
        except RulesError as e:
            backend.close()
            raise ConfigError(str(e)) from None
    backend.on_read_error, backend.on_write_error = drive.rerror, drive.werror
    return backend
