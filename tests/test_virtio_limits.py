"""Request limits: what virtio-blk advertises (seg_max, the queue size) and what QEMU 7.2 bounds
(1024 buffers in one chain, 2 GiB - 512 bytes in one read or write).

QEMU carries out a chain longer than the queue size or seg_max (up to 1024 buffers) and so does
a default device, saying once which rule the driver broke; a strict=on device refuses. Past 1024
buffers QEMU fails the device (virtio_error), and so do we; an indirect table larger than that
is fine as long as the chain in it is not."""

import struct

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
    assert "§2.7.5.3.1" in str(b.vdev.error)


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
