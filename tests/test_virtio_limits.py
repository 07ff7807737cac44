"""Request limits: what virtio-blk advertises (seg_max, the queue size) and what QEMU 7.2 bounds
(1024 buffers in one chain, 2 GiB - 512 bytes in one read or write).

QEMU carries out a chain longer than the queue size or seg_max (up to 1024 buffers) and so does
a default device, saying once which rule the driver broke; a strict=on device refuses. Past 1024
buffers QEMU fails the device (virtio_error), and so do we; an indirect table larger than that
is fine as long as the chain in it is not."""

import json
import shutil
import socket
import struct
import subprocess
import time

import pytest

from test_virtio_packed import packed_bench, start as start_packed
from test_virtio_queue import assert_broken, submit_raw
from virtio_driver import INDIRECT, NEXT, S_IOERR, S_OK, T_IN, T_OUT, WRITE, benches, pattern
from machine.block import open_drive
from machine.config import DriveConfig
from machine.memory import GuestMemory
from machine.virtio.blk import REQUEST_MAX_SECTORS
from machine.virtio.blk_pci import create_virtio_blk_pci
from machine.virtio.blk_request import BlkRequest, IoError
from machine.virtio.queue import MAX_BUFFERS, ChainLongerThanQueue, TooManyBuffers
from machine.virtio.spec import VIRTIO_BLK_F_SEG_MAX

SECT = 512


@pytest.fixture
def make(tmp_path):
    yield from benches(tmp_path)


def read_in(n_segments):
    """A read of n 512-byte data segments: header, n data buffers, status: n + 2 buffers."""
    return dict(in_len=SECT * n_segments, wcuts=[SECT] * n_segments + [1], indirect=True)


def test_a_chain_of_1024_buffers_is_carried_out(make, guest_errors):
    b = make().start()
    got, status, used_len = b.run(T_IN, 0, **read_in(MAX_BUFFERS - 2))
    assert status == S_OK and got == pattern(SECT * 1022) and used_len == SECT * 1022 + 1
    # longer than the queue (256) and than seg_max (254): carried out as QEMU, and said once
    log = guest_errors.getvalue()
    assert "descriptor chain of 1024 buffers available on a queue of size 256 (VIRTIO 1.2 §2.7.5.3.1)" in log
    assert "request of 1022 data segments; seg_max is 254 (VIRTIO 1.2 §5.2.3)" in log
    assert not b.needs_reset


def test_a_chain_of_1025_buffers_needs_reset(make):
    b = make().start()
    before = b.image()
    b.blk.submit(T_IN, 0, **read_in(MAX_BUFFERS - 1))
    b.drv.kick(0)
    assert b.vqs[0].get_used() == [] and b.needs_reset
    assert type(b.vdev.error) is TooManyBuffers and "too many write descriptors" in str(b.vdev.error)
    assert b.image() == before


def test_too_many_readable_buffers_say_read(make):
    b = make().start()
    b.blk.submit(T_OUT, 0, out=bytes(SECT * MAX_BUFFERS), rcuts=[16] + [SECT] * MAX_BUFFERS, indirect=True)
    b.drv.kick(0)
    assert type(b.vdev.error) is TooManyBuffers and "too many read descriptors" in str(b.vdev.error)


def test_the_buffer_bound_covers_direct_descriptors_before_an_indirect_table(make):
    """Direct descriptors followed by an indirect table (2.7.5.3.2) count together."""
    b = make(props={"queue-size": "8"}).start()
    vq = b.vqs[0]
    table = b.alloc.alloc(16 * (MAX_BUFFERS - 1), 16)
    status = b.alloc.alloc(SECT * 4, 16)
    for i in range(MAX_BUFFERS - 1):               # header + 1023 writable = 1024 ... + 1 direct
        last = i == MAX_BUFFERS - 2
        vq.write_desc(table, i, status, SECT, WRITE | (0 if last else NEXT), i + 1)
    hdr = b.alloc.alloc(16, 16)
    b.mem.write(hdr, struct.pack("<IIQ", T_IN, 0, 0))
    before = b.image()
    vq.write_desc(vq.desc, 0, hdr, 8, NEXT, 1)
    vq.write_desc(vq.desc, 1, hdr + 8, 8, NEXT, 2)
    vq.write_desc(vq.desc, 2, table, 16 * (MAX_BUFFERS - 1), INDIRECT, 0)
    vq.publish(0)
    b.drv.kick(0)
    assert type(b.vdev.error) is TooManyBuffers and b.image() == before


def test_an_indirect_table_larger_than_1024_entries_holding_a_short_chain_is_accepted(make):
    """QEMU bounds the buffers of a chain, not the table that holds it."""
    b = make().start()
    vq = b.vqs[0]
    table = b.alloc.alloc(16 * 2048, 16)
    hdr, data, st = (b.alloc.alloc(n, 16) for n in (16, SECT, 1))
    b.mem.write(hdr, struct.pack("<IIQ", T_IN, 0, 1))
    vq.write_desc(table, 0, hdr, 16, NEXT, 1)
    vq.write_desc(table, 1, data, SECT, WRITE | NEXT, 2)
    vq.write_desc(table, 2, st, 1, WRITE, 0)
    submit_raw(b, [(table, 16 * 2048, INDIRECT, 0)])
    assert vq.get_used() == [(0, SECT + 1)] and not b.needs_reset
    assert b.mem.read(data, SECT) == pattern(2 * SECT)[SECT:] and b.mem.read(st, 1) == bytes([S_OK])


def test_strict_refuses_a_chain_longer_than_the_queue(make):
    b = make(props={"strict": "on"}).start()
    assert b.run(T_IN, 0, **read_in(254))[1] == S_OK          # 256 buffers: the queue size
    b.blk.submit(T_IN, 0, **read_in(255))
    b.drv.kick(0)
    assert b.needs_reset and type(b.vdev.error) is ChainLongerThanQueue
    assert str(b.vdev.error) == ("driver made a descriptor chain of 257 buffers available on a queue "
                                 "of size 256 (VIRTIO 1.2 §2.7.5.3.1)")


def test_strict_refuses_a_packed_list_longer_than_the_queue(make, guest_errors):
    b = packed_bench(make, **{"queue-size": "16"})
    start_packed(b)
    assert b.run(T_IN, 0, **read_in(14))[1] == S_OK
    assert b.run(T_IN, 0, **read_in(15))[1] == S_OK and not b.needs_reset   # tolerated by default
    assert "list of 17 buffers available on a packed queue of size 16 (VIRTIO 1.2 §2.8.17)" in guest_errors.getvalue()

    s = packed_bench(make, **{"queue-size": "16", "strict": "on"})
    start_packed(s)
    s.blk.submit(T_IN, 0, **read_in(15))
    s.drv.kick(0)
    assert s.needs_reset and type(s.vdev.error) is ChainLongerThanQueue
    assert str(s.vdev.error) == ("driver made a descriptor list of 17 buffers available on a packed queue "
                                 "of size 16 (VIRTIO 1.2 §2.8.17)")


def test_a_packed_list_of_1025_buffers_needs_reset(make):
    b = packed_bench(make)
    start_packed(b)
    before = b.image()
    b.blk.submit(T_IN, 0, **read_in(MAX_BUFFERS - 1))
    b.drv.kick(0)
    assert b.needs_reset and type(b.vdev.error) is TooManyBuffers and b.image() == before


def test_seg_max_is_advertised_and_enforced_only_by_a_strict_device(make, guest_errors):
    b = make(props={"seg-max-adjust": "off"}).start()
    assert b.drv.cfg_read(12, 4) == 126                    # QEMU's seg_max without the adjust
    assert b.run(T_IN, 0, **read_in(127))[1] == S_OK
    assert "request of 127 data segments; seg_max is 126 (VIRTIO 1.2 §5.2.3)" in guest_errors.getvalue()

    s = make(props={"seg-max-adjust": "off", "strict": "on"}).start()
    before = s.image()
    assert s.run(T_IN, 0, **read_in(126))[1] == S_OK
    got, status, used_len = s.run(T_IN, 0, **read_in(127))
    assert status == S_IOERR and used_len == 1 and got == b"\xEE" * (SECT * 127)
    out = dict(rcuts=[16] + [SECT] * 126, indirect=True)     # the header alone in its descriptor
    assert s.run(T_OUT, 0, out=b"W" * (SECT * 126), **out)[1] == S_OK
    before = s.image()
    out = dict(rcuts=[16] + [SECT] * 127, indirect=True)
    assert s.run(T_OUT, 0, out=b"W" * (SECT * 127), **out)[1] == S_IOERR
    assert s.image() == before and not s.needs_reset


def test_seg_max_binds_only_when_negotiated(make):
    s = make(props={"seg-max-adjust": "off", "strict": "on"})
    s.start(features=s.drv.device_features() & ~(1 << VIRTIO_BLK_F_SEG_MAX))
    assert s.run(T_IN, 0, **read_in(127))[1] == S_OK


def _request(nbytes: int) -> BlkRequest:
    return BlkRequest(head=0, type=T_IN, sector=0, out_data=(), out_len=0, in_data=(),
                      in_len=nbytes, status_addr=0, status_host=0, segment=None)


def test_a_read_longer_than_qemus_largest_request_gets_ioerr(tmp_path):
    """BDRV_REQUEST_MAX_SECTORS (2 GiB - 512): QEMU fails a longer read or write with IOERR
    before any I/O, on a disk large enough to hold it."""
    path = tmp_path / "big.img"
    with open(path, "wb") as f:
        f.truncate(4 << 30)                        # sparse
    backend = open_drive(DriveConfig(file=path))
    try:
        vdev = create_virtio_blk_pci(backend, {}, GuestMemory(2 << 20)).vdev
        calls = []
        backend.readv = lambda off, bufs: calls.append(off) or 0
        with pytest.raises(IoError, match="sector range"):
            vdev.execute(_request((REQUEST_MAX_SECTORS + 1) * SECT))
        assert calls == []
        with pytest.raises(IoError, match="short read"):          # the limit itself passes
            vdev.execute(_request(REQUEST_MAX_SECTORS * SECT))
        assert calls == [0]
    finally:
        backend.close()


# ---------------------------------------------------------------- the same chains on QEMU 7.2

QEMU = shutil.which("qemu-system-x86_64")
Q_RING, Q_TABLE, Q_HDR, Q_DATA, Q_STATUS = 0x100000, 0x400000, 0x200000, 0x300000, 0x210000


def qemu_read_chain(tmp_path, n_data: int, table_entries: int | None = None) -> tuple[int, int, str]:
    """One IN request of n_data 512-byte buffers in an indirect table (header + data + status),
    on QEMU's legacy virtio-blk-pci interface driven by port writes through QMP, the rings put
    in RAM by loader devices while the CPU never runs (-S). QEMU handles the notify on its main
    loop: the request is over when used.idx moves or QEMU reports a bad descriptor. Returns
    (used.idx, status byte, QEMU's stderr)."""
    parts = [(Q_HDR, 16, NEXT)] + [(Q_DATA + SECT * (i % 8), SECT, WRITE | NEXT) for i in range(n_data)]
    parts.append((Q_STATUS, 1, WRITE))
    table = b"".join(struct.pack("<QIHH", a, n, f, i + 1 if f & NEXT else 0) for i, (a, n, f) in enumerate(parts))
    entries = table_entries or len(parts)
    blobs = {Q_TABLE: table.ljust(16 * entries, b"\0"),
             Q_RING: struct.pack("<QIHH", Q_TABLE, 16 * entries, INDIRECT, 0),
             Q_RING + 0x1000: struct.pack("<HHH", 0, 1, 0),           # avail: idx 1, ring[0] = 0
             Q_HDR: struct.pack("<IIQ", T_IN, 0, 0), Q_STATUS: b"\xEE"}
    args = [QEMU, "-machine", "pc", "-accel", "tcg", "-S", "-display", "none", "-nodefaults", "-m", "64",
            "-qmp", f"unix:{tmp_path / 'qmp.sock'},server=on,wait=off",
            "-drive", f"file={tmp_path / 'd.img'},format=raw,if=none,id=d0",
            "-device", "virtio-blk-pci,drive=d0,addr=4"]
    (tmp_path / "d.img").write_bytes(pattern(1 << 20))
    for addr, data in blobs.items():
        (tmp_path / f"{addr:x}.bin").write_bytes(data)
        args += ["-device", f"loader,file={tmp_path / f'{addr:x}.bin'},addr={addr:#x},force-raw=on"]
    errors = tmp_path / "stderr.txt"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=errors.open("w"))
    # Generous guards, never the assertion: on a loaded host QEMU can take seconds to start
    # and to run the request.
    deadline = time.monotonic() + 60
    try:
        while not (tmp_path / "qmp.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        with socket.socket(socket.AF_UNIX) as s:
            while True:
                try:
                    s.connect(str(tmp_path / "qmp.sock"))
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            f = s.makefile("rw")

            def hmp(line: str) -> str:
                f.write(json.dumps({"execute": "human-monitor-command",
                                    "arguments": {"command-line": line}}) + "\n")
                f.flush()
                while True:
                    reply = json.loads(f.readline())
                    if "return" in reply:
                        return reply["return"]
                    assert "error" not in reply, reply

            json.loads(f.readline())
            f.write('{"execute": "qmp_capabilities"}\n')
            f.flush()
            json.loads(f.readline())
            # config mechanism #1: I/O + memory + bus master, BAR0 (legacy registers) at 0xC000
            for line in ("o /w 0xcf8 0x80002004", "o /h 0xcfc 0x7", "o /w 0xcf8 0x80002010",
                         "o /w 0xcfc 0xc000", "o /b 0xc012 3",                 # ACK | DRIVER
                         "o /w 0xc004 0x10000004",         # INDIRECT_DESC | SEG_MAX
                         "o /h 0xc00e 0", f"o /w 0xc008 {Q_RING >> 12:#x}", "o /b 0xc012 7",
                         "o /h 0xc010 0"):                 # DRIVER_OK, then notify queue 0
                hmp(line)
            while True:                                    # the request completes on QEMU's main loop
                used = int(hmp(f"xp /1hx {Q_RING + 0x2002:#x}").split()[-1], 16)
                if used or "descriptor" in errors.read_text() or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            status = int(hmp(f"xp /1bx {Q_STATUS:#x}").split()[-1], 16)
    finally:
        proc.kill()
        proc.wait()
    return used, status, errors.read_text()


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
def test_qemu_agrees_on_the_request_limits(tmp_path):
    """What the tests above expect, QEMU 7.2 does with the same chains (queue 256, seg_max 254)."""
    for n_data, table_entries, expected in [
            (MAX_BUFFERS - 2, None, (1, S_OK)),        # 1024 buffers: longer than queue and seg_max
            (1, 2048, (1, S_OK)),                      # a short chain in a 2048-entry table
            (MAX_BUFFERS - 1, None, (0, 0xEE))]:       # 1025 buffers: the device fails
        d = tmp_path / f"{n_data}-{table_entries}"
        d.mkdir()
        used, status, err = qemu_read_chain(d, n_data, table_entries)
        assert (used, status) == expected, err
    assert "too many write descriptors in indirect table" in err
