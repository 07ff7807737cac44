"""Block backends: opening images (errors as one-line ConfigErrors), raw I/O on RAM views,
hole punching, OFD image locking between two openers, and the snapshot overlay."""

import errno
import os
import subprocess
import sys

import pytest

from machine.block import SnapshotOverlay, open_drive
from machine.block.iov import preadv_full, split
from machine.config import ConfigError, DriveConfig


def image(tmp_path, data=None, name="d.img"):
    p = tmp_path / name
    p.write_bytes(data if data is not None else bytes(range(256)) * 64)   # 16 KiB
    return p


def test_missing_image_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="Could not open .*No such file"):
        open_drive(DriveConfig(file=tmp_path / "nope.img"))


def test_size_not_a_multiple_of_512_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not a multiple of 512"):
        open_drive(DriveConfig(file=image(tmp_path, b"x" * 1000)))


def test_only_raw_format_is_accepted(tmp_path):
    with pytest.raises(ConfigError, match="qcow2"):
        open_drive(DriveConfig(file=image(tmp_path), format="qcow2"))


def test_no_file_is_a_config_error():
    with pytest.raises(ConfigError) as e:
        open_drive(DriveConfig(file=None))
    assert str(e.value) == "drive has no file= (an empty drive is not supported)"


def test_raw_read_and_write_through_views(tmp_path):
    p = image(tmp_path)
    be = open_drive(DriveConfig(file=p))
    buf = bytearray(1024)
    mv = memoryview(buf)
    assert be.readv(512, [mv[:100], mv[100:1024]]) == 1024 and bytes(buf) == p.read_bytes()[512:1536]
    assert be.writev(0, [memoryview(b"A" * 512), memoryview(b"B" * 512)]) == 1024
    assert p.read_bytes()[:1024] == b"A" * 512 + b"B" * 512
    with pytest.raises(OSError):
        be.writev(16384, [memoryview(b"x" * 512)])          # past the end
    be.close()


def test_read_only_drive_refuses_writes(tmp_path):
    p = image(tmp_path)
    before = p.read_bytes()
    be = open_drive(DriveConfig(file=p, readonly=True, discard="unmap"))
    for call, args, err, text in ((be.writev, (0, [memoryview(b"x" * 512)]), errno.EROFS, "read-only image"),
                                  (be.write_zeroes, (0, 512, False), errno.EROFS, "read-only image"),
                                  (be.discard, (0, 512), errno.EROFS, "read-only image"),
                                  (be.resize, (32768,), errno.EACCES, "the image is read-only")):
        with pytest.raises(OSError) as e:
            call(*args)
        assert (e.value.errno, e.value.strerror) == (err, text)
    be.close()
    assert p.read_bytes() == before


def _allocated(p) -> int:
    return os.stat(p).st_blocks * 512


def test_write_zeroes_with_unmap_leaves_a_hole_and_without_it_real_zeroes(tmp_path):
    import machine.block.raw as raw
    raw._libc = None                               # load libc's fallocate in this test too
    p = image(tmp_path, bytes(range(256)) * 4096)  # 1 MiB, all allocated
    be = open_drive(DriveConfig(file=p, discard="unmap"))
    try:
        full = _allocated(p)
        be.write_zeroes(0, 512 * 1024, True)       # unmap allowed: a hole
        assert _allocated(p) <= full - 512 * 1024
        be.write_zeroes(512 * 1024, 4096, False)   # no unmap: written zeroes, still allocated
        data = p.read_bytes()
        assert data[:512 * 1024 + 4096] == bytes(512 * 1024 + 4096)
        assert data[512 * 1024 + 4096:] == (bytes(range(256)) * 4096)[512 * 1024 + 4096:]
    finally:
        be.close()


def test_hole_punching_errors(tmp_path, monkeypatch):
    """A file system without holes: False (the caller writes zeroes); any other failure raises."""
    import ctypes
    import machine.block.raw as raw

    class Libc:
        def __init__(self, err):
            self.err = err

        def fallocate(self, fd, mode, offset, length):
            assert mode == 3 and (offset, length) == (4096, 512)     # PUNCH_HOLE | KEEP_SIZE
            ctypes.set_errno(self.err)
            return -1

    for err, result in ((errno.EOPNOTSUPP, False), (errno.ENOSYS, False), (errno.EBADF, OSError)):
        monkeypatch.setattr(raw, "_libc", Libc(err))
        if result is OSError:
            with pytest.raises(OSError) as e:
                raw.punch_hole(3, 4096, 512)
            assert (e.value.errno, e.value.strerror) == (errno.EBADF, os.strerror(errno.EBADF))
        else:
            assert raw.punch_hole(3, 4096, 512) is False


def test_zeroes_written_out_over_more_than_one_chunk(tmp_path, monkeypatch):
    import machine.block.raw as raw
    p = image(tmp_path, b"\xAA" * (3 << 20))
    fd = os.open(p, os.O_RDWR)
    try:
        raw.write_zeroes_fd(fd, 4096, (5 << 19) - 4096)        # 2.5 MiB from 4 KiB: three chunks
        data = p.read_bytes()
        assert data[:4096] == b"\xAA" * 4096 and data[4096:5 << 19] == bytes((5 << 19) - 4096)
        assert data[5 << 19:] == b"\xAA" * ((3 << 20) - (5 << 19))
        monkeypatch.setattr(raw, "pwritev_full", lambda fd, bufs, off: 0)
        with pytest.raises(OSError) as e:
            raw.write_zeroes_fd(fd, 0, 512)
        assert (e.value.errno, e.value.strerror) == (errno.EIO, "short write")
    finally:
        os.close(fd)


def test_discard_unmap_punches_a_hole_and_keeps_the_size(tmp_path):
    p = image(tmp_path)
    be = open_drive(DriveConfig(file=p, discard="unmap"))
    be.discard(4096, 4096)
    data = p.read_bytes()
    assert len(data) == 16384 and data[4096:8192] == bytes(4096) and data[:4096] == (bytes(range(256)) * 16)
    be.close()


def test_second_writer_fails_with_a_lock_error_and_close_releases(tmp_path):
    p = image(tmp_path)
    first = open_drive(DriveConfig(file=p))
    with pytest.raises(ConfigError, match='Failed to get .*lock'):
        open_drive(DriveConfig(file=p))
    with pytest.raises(ConfigError, match='lock'):
        open_drive(DriveConfig(file=p, readonly=True))
    first.close()
    open_drive(DriveConfig(file=p)).close()


def test_two_read_only_openers_share_the_image(tmp_path):
    p = image(tmp_path)
    a = open_drive(DriveConfig(file=p, readonly=True))
    b = open_drive(DriveConfig(file=p, readonly=True))
    with pytest.raises(ConfigError):
        open_drive(DriveConfig(file=p))
    a.close()
    b.close()


def test_lock_conflict_across_processes(tmp_path):
    p = image(tmp_path)
    holder = open_drive(DriveConfig(file=p))
    code = ("import sys\nfrom machine.block import open_drive\nfrom machine.config import DriveConfig, ConfigError\n"
            f"try:\n    open_drive(DriveConfig(file={str(p)!r}))\nexcept ConfigError as e:\n    print(e); sys.exit(3)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 3 and "lock" in r.stdout
    holder.close()


def test_snapshot_writes_go_to_the_overlay_and_the_image_never_changes(tmp_path):
    p = image(tmp_path)
    before = p.read_bytes()
    be = open_drive(DriveConfig(file=p, snapshot=True))
    assert isinstance(be, SnapshotOverlay) and not be.read_only
    assert be.writev(1024, [memoryview(b"S" * 1024)]) == 1024
    be.write_zeroes(4096, 512, True)
    be.flush()
    out = bytearray(8192)
    mv = memoryview(out)
    assert be.readv(0, [mv[:700], mv[700:]]) == 8192
    expect = bytearray(before[:8192])
    expect[1024:2048] = b"S" * 1024
    expect[4096:4608] = bytes(512)
    assert bytes(out) == bytes(expect)
    assert p.read_bytes() == before
    be.close()
    assert p.read_bytes() == before


def test_a_read_only_snapshot_refuses_every_change(tmp_path):
    """-snapshot with readonly=on: the overlay takes no writes either (EROFS, as the image)."""
    p = image(tmp_path)
    be = open_drive(DriveConfig(file=p, snapshot=True, readonly=True))
    try:
        assert isinstance(be, SnapshotOverlay) and be.read_only
        for call, args, err, text in (
                (be.writev, (0, [memoryview(b"x" * 512)]), errno.EROFS, "read-only image"),
                (be.write_zeroes, (0, 512, False), errno.EROFS, "read-only image"),
                (be.resize, (32768,), errno.EACCES, "the image is read-only")):
            with pytest.raises(OSError) as e:
                call(*args)
            assert (e.value.errno, e.value.strerror) == (err, text)
        out = bytearray(512)
        be.readv(0, [memoryview(out)])
        assert bytes(out) == p.read_bytes()[:512] and be.size == 16384
    finally:
        be.close()


def test_snapshot_write_zeroes_without_hole_punching_writes_zeroes(tmp_path, monkeypatch):
    """A host file system that cannot punch holes: the overlay's zeroes are written out."""
    import machine.block.snapshot as snap
    p = image(tmp_path)
    be = open_drive(DriveConfig(file=p, snapshot=True))
    try:
        be.writev(0, [memoryview(b"S" * 2048)])
        monkeypatch.setattr(snap, "punch_hole", lambda fd, off, n: False)
        be.write_zeroes(512, 1024, True)
        out = bytearray(2048)
        be.readv(0, [memoryview(out)])
        assert bytes(out) == b"S" * 512 + bytes(1024) + b"S" * 512
    finally:
        be.close()


@pytest.mark.parametrize("offset, length", [(-512, 512), (0, -512), (16384 - 512, 1024),
                                            (100, 512), (0, 100), (16384, 512)])
def test_snapshot_refuses_ranges_outside_the_disk_or_unaligned(tmp_path, offset, length):
    be = open_drive(DriveConfig(file=image(tmp_path), snapshot=True))
    try:
        calls = [(be.write_zeroes, (offset, length, False)), (be.discard, (offset, length))]
        if length >= 0:                            # readv/writev take their length from the buffers
            buf = [memoryview(bytearray(length))]
            calls += [(be.readv, (offset, buf)), (be.writev, (offset, buf))]
        for call, args in calls:
            with pytest.raises(OSError) as e:
                call(*args)
            assert e.value.errno == errno.EINVAL, call
        assert be.readv(16384 - 512, [memoryview(bytearray(512))]) == 512     # the last sector is fine
        be.discard(16384 - 512, 512)
    finally:
        be.close()


def test_snapshot_does_not_take_the_write_lock(tmp_path):
    p = image(tmp_path)
    a = open_drive(DriveConfig(file=p, snapshot=True))
    b = open_drive(DriveConfig(file=p, readonly=True))
    a.close()
    b.close()


def test_bad_cache_and_discard_options(tmp_path):
    p = image(tmp_path)
    with pytest.raises(ConfigError, match="cache"):
        open_drive(DriveConfig(file=p, cache="sometimes"))
    with pytest.raises(ConfigError, match="discard"):
        open_drive(DriveConfig(file=p, discard="maybe"))


def test_iov_helpers_split_and_read_more_than_iov_max_buffers(tmp_path):
    p = image(tmp_path)
    fd = os.open(p, os.O_RDONLY)
    buf = bytearray(2000)
    views = [memoryview(buf)[i:i + 1] for i in range(2000)]
    assert preadv_full(fd, views, 0) == 2000 and bytes(buf) == p.read_bytes()[:2000]
    os.close(fd)
    parts = split([memoryview(b"abc"), memoryview(b"defg")], 2, 3)
    assert b"".join(bytes(x) for x in parts) == b"cde"


def test_iov_advance_and_split_cut_exactly():
    from machine.block.iov import _advance
    a, b, c = memoryview(b"abcde"), memoryview(b"fg"), memoryview(b"hij")
    assert [bytes(x) for x in _advance([a, b, c], 3)] == [b"de", b"fg", b"hij"]   # mid-buffer
    assert [bytes(x) for x in _advance([a, b, c], 5)] == [b"fg", b"hij"]          # on a boundary
    assert [bytes(x) for x in _advance([a, b, c], 8)] == [b"ij"]
    assert _advance([a, b, c], 10) == []
    assert [bytes(x) for x in split([a, b, c], 5, 3)] == [b"fg", b"h"]           # starts on a boundary
    assert [bytes(x) for x in split([a, b, c], 7, 3)] == [b"hij"]


def test_short_transfers_resume_in_the_middle_of_a_buffer(tmp_path):
    """os.preadv moving fewer bytes than asked: the rest of that buffer comes next."""
    from machine.block.iov import _vectored_full
    p = image(tmp_path)
    fd = os.open(p, os.O_RDONLY)
    try:
        calls = []

        def stingy(fd, bufs, offset):               # at most 3 bytes per call
            calls.append(len(bufs))
            n = min(3, len(bufs[0]))
            bufs[0][:n] = os.pread(fd, n, offset)
            return n
        out = [bytearray(5), bytearray(4)]
        assert _vectored_full(stingy, fd, [memoryview(x) for x in out], 100) == 9
        assert b"".join(out) == p.read_bytes()[100:109] and calls == [2, 2, 1, 1]
    finally:
        os.close(fd)


def test_only_a_regular_file_can_be_resized(tmp_path):
    be = open_drive(DriveConfig(file=image(tmp_path)))
    try:
        be.regular = False                          # as for a block device
        with pytest.raises(OSError) as e:
            be.resize(32768)
        assert (e.value.errno, e.value.strerror) == (errno.ENOTSUP, "only a regular file can be resized")
    finally:
        be.close()


@pytest.mark.parametrize("offset, length", [(-512, 512), (0, -512), (16384 - 512, 1024), (16384, 512)])
def test_raw_ranges_outside_the_image_are_refused(tmp_path, offset, length):
    be = open_drive(DriveConfig(file=image(tmp_path), discard="unmap"))
    try:
        calls = [(be.write_zeroes, (offset, length, True)), (be.discard, (offset, length))]
        if length >= 0:
            calls += [(be.readv, (offset, [memoryview(bytearray(length))])),
                      (be.writev, (offset, [memoryview(bytearray(length))]))]
        for call, args in calls:
            with pytest.raises(OSError) as e:
                call(*args)
            assert (e.value.errno, e.value.strerror) == (errno.EINVAL, f"range {offset}+{length} outside the image")
        be.write_zeroes(16384, 0, True)            # empty, at the very end: fine
        be.discard(0, 0)
        assert be.readv(16384 - 512, [memoryview(bytearray(512))]) == 512
    finally:
        be.close()


def test_raw_transfers_of_more_buffers_than_one_system_call_takes(tmp_path):
    p = image(tmp_path)
    be = open_drive(DriveConfig(file=p))
    try:
        out = bytearray(2000)
        assert be.readv(100, [memoryview(out)[i:i + 1] for i in range(2000)]) == 2000
        assert bytes(out) == p.read_bytes()[100:2100]
        data = bytes(range(250)) * 8
        assert be.writev(4096, [memoryview(data)[i:i + 1] for i in range(2000)]) == 2000
        assert p.read_bytes()[4096:6096] == data
    finally:
        be.close()


def test_a_write_past_an_end_the_host_shrank_fails_and_does_not_regrow(tmp_path):
    p = image(tmp_path)
    be = open_drive(DriveConfig(file=p))
    try:
        os.truncate(p, 8192)
        with pytest.raises(OSError) as e:
            be.writev(8192, [memoryview(bytes(4096))])
        assert (e.value.errno, e.value.strerror) == (errno.EIO, "the image shrank on the host")
        assert p.stat().st_size == 8192 and be.size == 8192
    finally:
        be.close()


def test_the_size_of_a_non_regular_file_comes_from_seeking_to_its_end(tmp_path):
    p = image(tmp_path)
    be = open_drive(DriveConfig(file=p))
    try:
        be.regular = False                          # as for a block device
        os.truncate(p, 8192 + 100)
        assert be.refresh_size() == 8192 == be.size
    finally:
        be.close()


def test_hole_punching_through_libc_reports_real_errors_and_takes_64_bit_offsets(tmp_path):
    import machine.block.raw as raw
    raw._libc = None
    with pytest.raises(OSError) as e:
        raw.punch_hole(987654, 0, 4096)             # no such descriptor: libc's errno comes back
    assert e.value.errno == errno.EBADF
    p = tmp_path / "big.img"
    with open(p, "wb") as f:
        f.truncate(5 << 30)                         # sparse
        f.seek((4 << 30) + 8192)
        f.write(b"x" * 4096)
        f.flush()
        punched = raw.punch_hole(f.fileno(), (4 << 30) + 8192, 4096)   # a 64-bit offset
    with open(p, "rb") as f:
        f.seek((4 << 30) + 8192)
        data = f.read(4096)
    assert data == (bytes(4096) if punched else b"x" * 4096)


def test_closing_twice_is_harmless(tmp_path):
    be = open_drive(DriveConfig(file=image(tmp_path)))
    be.close()
    assert be.fd == -1
    be.close()


def test_closing_a_snapshot_overlay_twice_closes_each_descriptor_once(tmp_path, monkeypatch):
    overlay = open_drive(DriveConfig(file=image(tmp_path), snapshot=True))
    fds = (overlay.fd, overlay.base.fd)
    closed = []
    real_close = os.close
    monkeypatch.setattr(os, "close", lambda fd: (closed.append(fd), real_close(fd)))
    overlay.close()
    overlay.close()
    assert sorted(closed) == sorted(fds)


def test_a_snapshot_keeps_the_drive_options(tmp_path):
    p = image(tmp_path)
    be = open_drive(DriveConfig(file=p, snapshot=True, cache="writethrough", discard="unmap"))
    try:
        assert (be.cache, be.discard_unmap, be.filename) == ("writethrough", True, str(p))
    finally:
        be.close()


@pytest.mark.parametrize("readonly, snapshot, mode", [(False, False, os.O_RDWR), (True, False, os.O_RDONLY),
                                                      (False, True, os.O_RDONLY)])
def test_the_image_is_opened_for_writing_only_when_the_guest_may_write(tmp_path, readonly, snapshot, mode):
    import fcntl
    be = open_drive(DriveConfig(file=image(tmp_path), readonly=readonly, snapshot=snapshot))
    try:
        raw = be.base if snapshot else be
        flags = fcntl.fcntl(raw.fd, fcntl.F_GETFL)
        assert flags & os.O_ACCMODE == mode
        assert not flags & os.O_NONBLOCK
    finally:
        be.close()


@pytest.mark.parametrize("readonly", [False, True])
def test_a_directory_is_a_config_error(tmp_path, readonly):
    with pytest.raises(ConfigError) as e:
        open_drive(DriveConfig(file=tmp_path, readonly=readonly))
    assert str(e.value) == f"Could not open '{tmp_path}': Is a directory"


@pytest.mark.parametrize("readonly", [False, True])
def test_a_fifo_or_character_device_is_refused_without_waiting(tmp_path, readonly):
    # (the command line refuses them first; this is the Python API's path.) Opening a FIFO for
    # reading used to wait for a writer forever: the open runs on a thread, and a writer
    # releases it if it hangs.
    import threading
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/null"):
        errors = []

        def open_it():
            try:
                open_drive(DriveConfig(file=path, readonly=readonly))
            except ConfigError as e:
                errors.append(str(e))
        t = threading.Thread(target=open_it)
        t.start()
        t.join(10)
        hung = t.is_alive()
        if hung:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            t.join()
        assert not hung, f"opening {path} blocked"
        assert errors == [f"Could not open '{path}': not a regular file or a block device"]


# -- undo logs (block/undo.py): a Journal keeps, per log, each block as it was before its first
# write since the log started; rollback writes them back. Driven on real raw images.

from machine.block.undo import BLOCK, Journal, UndoLog

_BLOCKS = b"".join(bytes([0x10 + i]) * 4096 for i in range(4))       # 16 KiB, block i all 0x1i


def _journal(tmp_path, data=_BLOCKS, **options):
    p = image(tmp_path, data)
    be = open_drive(DriveConfig(file=p, **options))
    return p, be, Journal(be)


class _Spy:
    """A backend that notes every call made to it (lists of buffers as their total length)."""

    def __init__(self, inner):
        self._inner = inner
        self.calls = []

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args):
            self.calls.append((name,) + tuple(sum(map(len, a)) if isinstance(a, list) else a for a in args))
            return attr(*args)
        return call


def test_undo_block_is_4_kib_and_a_log_records_and_clears():
    assert BLOCK == 4096
    log = UndoLog(100)
    assert (log.size, log.blocks, log.on_record) == (100, {}, None)
    log.record(3, b"abc")                          # no listener: only kept
    assert log.blocks == {3: b"abc"}
    heard = []
    log.on_record = lambda index, data: heard.append((index, data))
    log.record(5, b"de")
    assert log.blocks == {3: b"abc", 5: b"de"} and heard == [(5, b"de")]
    log.clear(50)
    assert (log.size, log.blocks) == (50, {})


def test_a_journal_has_the_drive_properties_of_what_it_wraps(tmp_path):
    p, be, j = _journal(tmp_path, cache="writethrough", discard="unmap", rerror="stop", werror="report")
    try:
        assert (j.size, j.read_only, j.discard_unmap, j.cache, j.filename, j.on_read_error, j.on_write_error) == \
            (16384, False, True, "writethrough", str(p), "stop", "report")
        assert j.fd == be.fd and j.regular is True          # anything else: the wrapped backend's
        assert j.logs == []
    finally:
        j.close()
    assert be.fd == -1
    ro = open_drive(DriveConfig(file=p, readonly=True))
    try:
        assert Journal(ro).read_only is True and Journal(ro).discard_unmap is False
    finally:
        ro.close()


def test_a_journal_without_logs_only_forwards_calls(tmp_path):
    p, be, _ = _journal(tmp_path, discard="unmap")
    spy = _Spy(be)
    j = Journal(spy)
    try:
        assert j.writev(100, [memoryview(b"a" * 10), memoryview(b"b" * 20)]) == 30
        j.write_zeroes(4096, 512, True)
        j.write_zeroes(8192, 512, False)
        j.discard(12288, 4096)
        j.flush()
        out = bytearray(8)
        assert j.readv(96, [memoryview(out)]) == 8 and bytes(out) == b"\x10" * 4 + b"a" * 4
        assert j.refresh_size() == 16384
        j.resize(20480)
        assert spy.calls == [("writev", 100, 30), ("write_zeroes", 4096, 512, True),
                             ("write_zeroes", 8192, 512, False), ("discard", 12288, 4096), ("flush",),
                             ("readv", 96, 8), ("refresh_size",), ("resize", 20480)]
        log = j.start_log()
        j.stop_log(log)
        j.stop_log(log)                             # a log no longer there: nothing to do
        spy.calls.clear()
        j.writev(0, [memoryview(b"c")])             # stopped: no before-image read any more
        assert spy.calls == [("writev", 0, 1)] and log.blocks == {}
        j.close()
        assert spy.calls[-1] == ("close",)
    finally:
        be.close()
    assert p.read_bytes()[100:130] == b"a" * 10 + b"b" * 20 and len(p.read_bytes()) == 20480


def test_only_the_first_write_to_a_block_records_its_before_image(tmp_path):
    p, be, j = _journal(tmp_path)
    try:
        log = j.start_log()
        assert j.logs == [log] and (log.size, log.blocks) == (16384, {})
        assert j.writev(4096 + 100, [memoryview(b"A" * 10)]) == 10
        assert log.blocks == {1: b"\x11" * 4096}
        j.writev(4096, [memoryview(b"B" * 4096)])   # again: the before-image stays the first one
        assert log.blocks == {1: b"\x11" * 4096}
        # [4000, 8200) in two buffers: blocks 0 and 2 are new, block 1 (between them) is kept
        assert j.writev(4000, [memoryview(b"C" * 100), memoryview(b"D" * 4100)]) == 4200
        assert log.blocks == {0: b"\x10" * 4096, 1: b"\x11" * 4096, 2: b"\x12" * 4096}
        assert p.read_bytes()[4000:8200] == b"C" * 100 + b"D" * 4100
    finally:
        j.close()


def test_the_blocks_recorded_are_exactly_those_a_range_touches(tmp_path):
    p, be, j = _journal(tmp_path)
    try:
        log = j.start_log()
        j.writev(100, [])                           # empty, mid-block: nothing
        j.write_zeroes(4096 + 100, 0, False)
        assert log.blocks == {}
        j.writev(4096, [memoryview(b"E" * 4096)])   # exactly one block: not the next one
        assert log.blocks == {1: b"\x11" * 4096}
        j.writev(12288 - 1, [memoryview(b"F")])      # one byte, the last of block 2
        assert log.blocks == {1: b"\x11" * 4096, 2: b"\x12" * 4096}
        j.write_zeroes(12288, 1, False)             # one byte, the first of block 3
        assert sorted(log.blocks) == [1, 2, 3] and log.blocks[3] == b"\x13" * 4096
    finally:
        j.close()


def test_writes_past_the_end_record_nothing(tmp_path):
    p, be, j = _journal(tmp_path)
    try:
        log = j.start_log()
        with pytest.raises(OSError):
            j.writev(16384, [memoryview(b"x" * 512)])
        os.truncate(p, 8192)                        # the host shrank the image under the log
        assert j.refresh_size() == 8192 == j.size and log.size == 16384
        with pytest.raises(OSError):
            j.writev(8192, [memoryview(b"x" * 4096)])
        assert log.blocks == {}
    finally:
        j.close()


def test_a_block_the_host_cut_short_is_recorded_as_far_as_it_reads(tmp_path):
    p, be, j = _journal(tmp_path)
    try:
        log = j.start_log()
        os.truncate(p, 8192 + 512)                  # the drive still believes 16 KiB
        with pytest.raises(OSError) as e:
            j.writev(8192, [memoryview(b"x" * 4096)])
        assert e.value.strerror == "the image shrank on the host"
        assert log.blocks == {2: b"\x12" * 512}
    finally:
        j.close()


def test_write_zeroes_and_an_unmapping_discard_record_what_they_change(tmp_path):
    p, be, j = _journal(tmp_path, discard="unmap")
    try:
        log = j.start_log()
        j.discard(4096 + 512, 4096)                 # blocks 1 and 2, partly
        assert log.blocks == {1: b"\x11" * 4096, 2: b"\x12" * 4096}
        j.write_zeroes(12288, 4096, True)
        assert sorted(log.blocks) == [1, 2, 3] and log.blocks[3] == b"\x13" * 4096
        assert p.read_bytes() == b"\x10" * 4096 + b"\x11" * 512 + bytes(4096) + b"\x12" * 3584 + bytes(4096)
        j.rollback(log)
        assert p.read_bytes() == _BLOCKS and (log.size, log.blocks) == (16384, {})
    finally:
        j.close()


def test_a_discard_that_keeps_the_data_records_nothing(tmp_path):
    p, be, j = _journal(tmp_path)                   # discard=ignore: the data stays
    try:
        log = j.start_log()
        j.discard(0, 8192)
        assert log.blocks == {} and p.read_bytes() == _BLOCKS
    finally:
        j.close()


def test_rollback_restores_only_the_logged_blocks_and_restarts_the_log(tmp_path):
    p, be, j = _journal(tmp_path)
    try:
        log = j.start_log()
        j.writev(4096, [memoryview(b"J" * 4096)])
        be.writev(12288, [memoryview(b"R" * 4096)])     # behind the journal's back: not logged
        j.rollback(log)
        assert p.read_bytes() == _BLOCKS[:12288] + b"R" * 4096
        assert j.logs == [log] and (log.size, log.blocks) == (16384, {})
        j.writev(0, [memoryview(b"K")])             # the log goes on from the rollback
        assert log.blocks == {0: b"\x10" * 4096}
    finally:
        j.close()


def test_several_logs_each_bring_back_the_disk_of_their_start(tmp_path):
    p, be, j = _journal(tmp_path)
    x0 = b"X" * 4096
    try:
        a = j.start_log()
        j.writev(0, [memoryview(x0)])
        b = j.start_log()
        assert j.logs == [a, b]
        j.writev(0, [memoryview(b"Y" * 8192)])       # blocks 0 and 1
        assert a.blocks == {0: b"\x10" * 4096, 1: b"\x11" * 4096}
        assert b.blocks == {0: x0, 1: b"\x11" * 4096}
        j.rollback(b)                               # back to b's start; a's log is not touched
        assert p.read_bytes() == x0 + _BLOCKS[4096:]
        assert b.blocks == {} and a.blocks == {0: b"\x10" * 4096, 1: b"\x11" * 4096}
        j.writev(8192, [memoryview(b"W" * 4096)])
        assert a.blocks[2] == b.blocks[2] == b"\x12" * 4096
        j.rollback(a)                               # its writes go into b's log like any other
        assert p.read_bytes() == _BLOCKS
        assert b.blocks == {0: x0, 1: b"\x11" * 4096, 2: b"\x12" * 4096}
        j.rollback(b)                               # a (restarted by its rollback) records those
        assert p.read_bytes() == x0 + _BLOCKS[4096:]
        assert a.blocks == {0: b"\x10" * 4096, 1: b"\x11" * 4096, 2: b"\x12" * 4096} and b.blocks == {}
        j.stop_log(a)
        assert j.logs == [b]
        j.writev(12288, [memoryview(b"Z")])
        assert sorted(a.blocks) == [0, 1, 2] and b.blocks == {3: b"\x13" * 4096}
    finally:
        j.close()


def test_rollback_across_a_grow_keeps_each_log_to_its_own_size(tmp_path):
    """A disk of 16.5 KiB (its last block 512 bytes) grown twice, a log started before each grow."""
    data = _BLOCKS + b"\x14" * 512
    p, be, j = _journal(tmp_path, data)
    try:
        a = j.start_log()
        j.resize(20480)                             # growing changes no data: nothing recorded
        assert a.blocks == {} and j.size == 20480
        b = j.start_log()
        assert b.size == 20480
        j.resize(24576)
        j.writev(16384, [memoryview(b"G" * 8192)])  # blocks 4 and 5
        assert a.blocks == {4: b"\x14" * 512}       # a's disk ended 512 bytes into block 4
        assert b.blocks == {4: b"\x14" * 512 + bytes(3584)}    # b's ended with block 4; no block 5
        j.rollback(b)
        assert p.read_bytes() == data + bytes(3584) and (b.size, b.blocks) == (20480, {})
        assert a.blocks == {4: b"\x14" * 512}
        j.rollback(a)
        assert p.read_bytes() == data and j.size == 16896 and (a.size, a.blocks) == (16896, {})
        assert b.blocks == {4: b"\x14" * 512 + bytes(3584)}
    finally:
        j.close()


def test_rollback_across_a_shrink_grows_the_disk_back_first(tmp_path):
    data = _BLOCKS + b"\x14" * 512
    p, be, j = _journal(tmp_path, data)
    try:
        log = j.start_log()
        j.resize(8192 + 512)                        # cuts into block 2: blocks 2, 3, 4 recorded
        assert log.blocks == {2: b"\x12" * 4096, 3: b"\x13" * 4096, 4: b"\x14" * 512}
        j.rollback(log)
        assert p.read_bytes() == data and j.size == 16896 and (log.size, log.blocks) == (16896, {})
        j.resize(16896)                             # the same size: nothing is cut
        assert log.blocks == {}
    finally:
        j.close()


def test_rollback_of_a_disk_that_cannot_be_resized_does_not_try(tmp_path):
    p, be, j = _journal(tmp_path)
    try:
        be.regular = False                          # as a block device: resize() refuses
        log = j.start_log()
        j.write_zeroes(0, 16384, False)
        j.rollback(log)
        assert p.read_bytes() == _BLOCKS and log.blocks == {}
    finally:
        j.close()


def test_the_tail_a_rollback_cuts_off_goes_into_the_other_logs(tmp_path):
    p, be, j = _journal(tmp_path)
    try:
        older = j.start_log()                       # the disk was 16 KiB
        j.resize(20480)
        j.writev(16384, [memoryview(b"T" * 4096)])
        newer = j.start_log()                       # 20 KiB, block 4 all T
        j.rollback(older)                           # cuts block 4: the newer log keeps it
        assert p.read_bytes() == _BLOCKS and newer.blocks == {4: b"T" * 4096}
        j.rollback(newer)
        assert p.read_bytes() == _BLOCKS + b"T" * 4096 and (newer.size, newer.blocks) == (20480, {})
    finally:
        j.close()
