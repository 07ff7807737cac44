"""Resizing a disk at run time: QEMU's `block_resize` monitor command (new capacity, config
generation, config-change interrupt), and an image the host truncates or grows behind the
device (noticed at the next FLUSH or failed request; a write past a shrunken end fails, it never
silently regrows the file)."""

from __future__ import annotations

import errno
import os

import pytest

from machine.api import Session
from machine.block import open_drive
from machine.config import DriveConfig
from virtio_driver import S_IOERR, S_OK, T_FLUSH, T_IN, T_OUT, Bench

MiB = 1 << 20
CONFIG_CHANGE = 2          # ISR bit 1: configuration change


def capacity(b: Bench) -> int:
    return b.drv.cfg_read(0, 4) | b.drv.cfg_read(4, 4) << 32


def generation(b: Bench) -> int:
    return b.drv.common_read(0x15, 1)


# ------------------------------------------------------------------ the backend


def test_a_write_past_a_host_truncated_end_fails_and_does_not_regrow(tmp_path):
    p = tmp_path / "d.img"
    p.write_bytes(bytes(MiB))
    be = open_drive(DriveConfig(file=p))
    os.truncate(p, 256 * 1024)
    with pytest.raises(OSError) as e:
        be.writev(512 * 1024, [memoryview(b"x" * 512)])
    assert e.value.errno == errno.EIO
    assert p.stat().st_size == 256 * 1024 and be.size == 256 * 1024
    assert be.writev(0, [memoryview(b"y" * 512)]) == 512       # inside the new end: fine
    be.close()


@pytest.mark.parametrize("snapshot", [False, True])
def test_resize_grows_and_shrinks_the_disk(tmp_path, snapshot):
    p = tmp_path / "d.img"
    p.write_bytes(b"\x11" * MiB)
    be = open_drive(DriveConfig(file=p, snapshot=snapshot))
    be.resize(2 * MiB)
    assert be.size == 2 * MiB
    buf = bytearray(1024)
    assert be.readv(MiB - 512, [memoryview(buf)]) == 1024
    assert buf == b"\x11" * 512 + bytes(512)                   # the new space reads as zeroes
    be.resize(MiB // 2)
    assert be.size == MiB // 2
    be.close()
    # with snapshot=on the image itself never changes
    assert p.stat().st_size == (MiB if snapshot else MiB // 2)


def test_a_read_only_drive_cannot_be_resized(tmp_path):
    p = tmp_path / "d.img"
    p.write_bytes(bytes(MiB))
    be = open_drive(DriveConfig(file=p, readonly=True))
    with pytest.raises(OSError):
        be.resize(2 * MiB)
    be.close()
    assert p.stat().st_size == MiB


# ------------------------------------------------------------------ the device


def test_host_truncation_fails_the_write_and_the_device_reports_the_new_capacity(tmp_path):
    b = Bench(tmp_path, disk_size=MiB).start()
    try:
        gen = generation(b)
        assert capacity(b) == MiB // 512
        os.truncate(b.path, MiB // 2)
        _, status, _ = b.run(T_OUT, sector=MiB // 512 - 8, out=b"z" * 4096)
        assert status == S_IOERR
        assert b.path.stat().st_size == MiB // 2                  # not regrown
        assert capacity(b) == MiB // 1024 and generation(b) != gen
        assert b.drv.isr() & CONFIG_CHANGE
        # a read past the new end is now refused by the range check, before the backend
        assert b.run(T_IN, sector=MiB // 512 - 8, in_len=512)[1] == S_IOERR
    finally:
        b.close()


def test_host_growth_is_noticed_at_the_next_flush(tmp_path):
    b = Bench(tmp_path, disk_size=MiB).start()
    try:
        os.truncate(b.path, 2 * MiB)
        assert capacity(b) == MiB // 512                         # not yet
        assert b.run(T_FLUSH)[1] == S_OK
        assert capacity(b) == 2 * MiB // 512
        assert b.drv.isr() & CONFIG_CHANGE
        assert b.run(T_OUT, sector=2 * MiB // 512 - 1, out=b"q" * 512)[1] == S_OK
    finally:
        b.close()


# ------------------------------------------------------------------ the monitor command


def test_block_resize_from_the_monitor(tmp_path, guest):
    p = tmp_path / "d.img"
    p.write_bytes(bytes(4 * MiB))
    with Session.from_args(["-drive", f"file={p},format=raw,if=virtio", "-append", "tests=init"]) as s:
        vdev = s.machine.drives["virtio0"][1]
        gen = vdev.config_generation
        assert s.monitor("block_resize virtio0 8M") == ""
        assert p.stat().st_size == 8 * MiB
        assert vdev.capacity == 8 * MiB // 512 and vdev.config_generation != gen
        assert "not found" in s.monitor("block_resize nope 8M")
        assert "multiple of 512" in s.monitor("block_resize virtio0 1000")
        assert "expects a size" in s.monitor("block_resize virtio0 lots")
        assert "usage" in s.monitor("block_resize virtio0")
        assert p.stat().st_size == 8 * MiB


def test_block_resize_of_a_read_only_drive_says_why(tmp_path, guest):
    p = tmp_path / "d.img"
    p.write_bytes(bytes(4 * MiB))
    with Session.from_args(["-drive", f"file={p},format=raw,if=virtio,readonly=on",
                            "-append", "tests=init"]) as s:
        assert "read-only" in s.monitor("block_resize virtio0 8M")
    assert p.stat().st_size == 4 * MiB
