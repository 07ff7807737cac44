"""Image locking speaks QEMU's byte-range protocol: which bytes each kind of opener locks, which
pairs refuse each other in either order, and the same answers against a running QEMU 7.2."""

import fcntl
import shutil
import subprocess

import pytest

from machine.block import open_drive
from machine.block.lock import _FLOCK, F_OFD_GETLK
from machine.config import ConfigError, DriveConfig

QEMU = shutil.which("qemu-system-x86_64")


def image(tmp_path):
    p = tmp_path / "d.img"
    p.write_bytes(bytes(64 * 1024))
    return p


def locked_bytes(path) -> set[int]:
    """Bytes 0..299 that some other open file holds a lock on, seen from a fresh open file."""
    with open(path, "rb") as f:
        held = set()
        for byte in range(300):
            reply = fcntl.fcntl(f.fileno(), F_OFD_GETLK, _FLOCK.pack(fcntl.F_WRLCK, 0, byte, 1, 0))
            if _FLOCK.unpack(reply)[0] != fcntl.F_UNLCK:
                held.add(byte)
        return held


KINDS = {
    "writer": dict(),
    "reader": dict(readonly=True),
    "snapshot": dict(snapshot=True),
}


@pytest.mark.parametrize("kind, expected", [
    ("writer", {100, 101, 201}),       # QEMU 7.2, writable drive: read + write, shares no writer
    ("reader", {100, 201}),            # readonly=on: read, shares no writer
    ("snapshot", {100, 201, 203}),     # snapshot=on: read, shares neither writer nor resize
])
def test_each_opener_locks_the_bytes_qemu_locks(tmp_path, kind, expected):
    p = image(tmp_path)
    be = open_drive(DriveConfig(file=p, **KINDS[kind]))
    try:
        assert locked_bytes(p) == expected
    finally:
        be.close()
    assert locked_bytes(p) == set()


@pytest.mark.parametrize("first", KINDS)
@pytest.mark.parametrize("second", KINDS)
def test_only_readers_share_an_image(tmp_path, first, second):
    p = image(tmp_path)
    a = open_drive(DriveConfig(file=p, **KINDS[first]))
    try:
        if first == "writer" or second == "writer":
            with pytest.raises(ConfigError, match='Failed to get (shared )?"write" lock'):
                open_drive(DriveConfig(file=p, **KINDS[second]))
        else:
            open_drive(DriveConfig(file=p, **KINDS[second])).close()
    finally:
        a.close()


def test_the_message_names_the_permission_as_qemu_does(tmp_path):
    p = image(tmp_path)
    reader = open_drive(DriveConfig(file=p, readonly=True))
    with pytest.raises(ConfigError, match='^Failed to get "write" lock on .*another process'):
        open_drive(DriveConfig(file=p))
    reader.close()
    writer = open_drive(DriveConfig(file=p))
    with pytest.raises(ConfigError, match='^Failed to get shared "write" lock on .*another process'):
        open_drive(DriveConfig(file=p, readonly=True))
    writer.close()


class RunningQemu:
    """QEMU 7.2 paused (-S) with the image open and locked."""

    def __init__(self, path, options=""):
        self.proc = subprocess.Popen(
            [QEMU, "-machine", "pc", "-S", "-display", "none", "-nodefaults", "-monitor", "stdio",
             "-drive", f"file={path},format=raw,if=virtio{options}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # The prompt is printed before the machine is built; the answer to a command comes from the
        # main loop, after every drive has taken its final locks.
        self.proc.stdin.write(b"info block\n")
        self.proc.stdin.flush()
        seen = b""
        while seen.count(b"(qemu)") < 2:
            chunk = self.proc.stdout.read1(4096)
            if not chunk:
                raise AssertionError(f"QEMU did not start: {self.proc.stderr.read().decode()}")
            seen += chunk

    def close(self):
        self.proc.communicate(b"quit\n", timeout=30)


def qemu_refuses(path, options=""):
    r = subprocess.run([QEMU, "-machine", "pc", "-S", "-display", "none", "-nodefaults",
                        "-drive", f"file={path},format=raw,if=virtio{options}"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    return r.returncode == 1 and "lock" in r.stderr


needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")


@needs_qemu
def test_a_reader_of_ours_is_refused_while_qemu_writes(tmp_path):
    p = image(tmp_path)
    q = RunningQemu(p)
    try:
        with pytest.raises(ConfigError, match='shared "write" lock'):
            open_drive(DriveConfig(file=p, readonly=True))
        with pytest.raises(ConfigError, match='shared "write" lock'):
            open_drive(DriveConfig(file=p, snapshot=True))
    finally:
        q.close()


@needs_qemu
def test_qemu_is_refused_while_we_read_and_reads_beside_us(tmp_path):
    p = image(tmp_path)
    ours = open_drive(DriveConfig(file=p, readonly=True))
    try:
        assert qemu_refuses(p)
        q = RunningQemu(p, ",readonly=on")      # two readers coexist
        q.close()
    finally:
        ours.close()


@needs_qemu
def test_qemu_reader_is_refused_while_we_write(tmp_path):
    p = image(tmp_path)
    ours = open_drive(DriveConfig(file=p))
    try:
        assert qemu_refuses(p, ",readonly=on")
        assert qemu_refuses(p, ",snapshot=on")
    finally:
        ours.close()


def test_an_exclusive_lock_on_our_bytes_refuses_the_image(tmp_path):
    """Another tool holding a write lock on a permission byte: our shared lock cannot be set."""
    import os
    from machine.block.lock import F_OFD_SETLK
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4096))
    fd = os.open(img, os.O_RDWR)
    try:
        fcntl.fcntl(fd, F_OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, 0, 100, 1, 0))
        with pytest.raises(ConfigError) as e:
            open_drive(DriveConfig(file=img))
        assert str(e.value) == f"Failed to lock the image on '{img}': is another process using the image?"
    finally:
        os.close(fd)


def test_a_file_system_without_ofd_locks_runs_unlocked(tmp_path, monkeypatch):
    import errno
    import machine.block.lock as lock

    def no_locks(fd, cmd, arg):
        raise OSError(errno.EINVAL, "Invalid argument")
    monkeypatch.setattr(lock.fcntl, "fcntl", no_locks)
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4096))
    open_drive(DriveConfig(file=img)).close()
    open_drive(DriveConfig(file=img)).close()      # a second writer too: nothing to check with

    def broken(fd, cmd, arg):
        raise OSError(errno.EBADF, "Bad file descriptor")
    monkeypatch.setattr(lock.fcntl, "fcntl", broken)
    with pytest.raises(OSError) as e:
        lock.lock_image(3, lock.WRITER)
    assert e.value.errno == errno.EBADF
