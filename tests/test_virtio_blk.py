"""virtio-blk requests end to end through the PCI transport: every request type and status, the
feature combinations that change behaviour, and the spec's rules for bad requests."""

import os
import struct

import pytest

from virtio_driver import (F_EVENT_IDX, F_INDIRECT, F_VERSION_1, S_IOERR, S_OK, S_UNSUPP, T_DISCARD,
                           T_FLUSH, T_GET_ID, T_IN, T_OUT, T_WRITE_ZEROES, BlkRequests, benches, pattern)
from machine.virtio import blk as B
from machine.virtio import spec as S
from machine.virtio.blk_request import IoError, RequestError, SegmentTooShort, Unsupported

SECT = 512


@pytest.fixture(params=[False, True], ids=["python", "native"])
def make(tmp_path, request):
    """Every test twice: the device model in Python, and with its native request path."""
    yield from benches(tmp_path, native=request.param)


def seg(sector, n, flags=0):
    return struct.pack("<QII", sector, n, flags)


LAYOUTS = {
    "three_descriptors": dict(rcuts=[16], wcuts=None),
    "header_split_4_12_data_by_sector": dict(rcuts=[4, 12, 512], wcuts=[512]),
    "header_and_data_in_one": dict(rcuts=None, wcuts=None),
    "every_piece_tiny": dict(rcuts=[1, 3, 12, 100, 300], wcuts=[1, 100, 411, 512]),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("indirect", [False, True])
def test_read_and_write_roundtrip_in_any_descriptor_layout(make, layout, indirect):
    b = make().start()
    cuts = LAYOUTS[layout]
    data = pattern(2048, seed=5)
    _, st, used_len = b.run(T_OUT, 8, out=data, rcuts=cuts["rcuts"], indirect=indirect)
    assert (st, used_len) == (S_OK, 1)
    assert b.image()[8 * SECT:8 * SECT + 2048] == data
    got, st, used_len = b.run(T_IN, 8, in_len=2048, wcuts=cuts["wcuts"], indirect=indirect)
    assert (got, st, used_len) == (data, S_OK, 2049)


def test_read_used_len_is_data_plus_status_exactly(make):
    b = make().start()
    got, st, used_len = b.run(T_IN, 0, in_len=4096)
    assert st == S_OK and used_len == 4097 and got == pattern(1 << 20)[:4096]


def test_legacy_interface_reads_and_writes(make):
    b = make(legacy=True).start()
    assert b.vdev.guest_features >> F_VERSION_1 & 1 == 0
    _, st, _ = b.run(T_OUT, 1, out=b"L" * 512)
    assert st == S_OK and b.image()[512:1024] == b"L" * 512
    got, st, n = b.run(T_IN, 1, in_len=512)
    assert (got, st, n) == (b"L" * 512, S_OK, 513)


def test_modern_only_device_works(make):
    b = make(props={"disable-legacy": "on"}).start()
    got, st, _ = b.run(T_IN, 2, in_len=512)
    assert st == S_OK and got == pattern(1 << 20)[1024:1536]


def test_get_id_writes_the_20_byte_serial(make):
    b = make(props={"serial": "SN-1234"}).start()
    got, st, n = b.run(T_GET_ID, in_len=20)
    assert (got, st, n) == (b"SN-1234".ljust(20, b"\0"), S_OK, 21)


def test_get_id_with_short_buffer_writes_only_what_fits(make):
    b = make(props={"serial": "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}).start()
    got, st, n = b.run(T_GET_ID, in_len=8)
    assert (got, st, n) == (b"ABCDEFGH", S_OK, 9)


def test_get_id_with_long_buffer_writes_at_most_20_bytes(make):
    b = make(props={"serial": "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}).start()
    got, st, n = b.run(T_GET_ID, in_len=64)
    assert got[:20] == b"ABCDEFGHIJKLMNOPQRST" and got[20:] == b"\xee" * 44 and (st, n) == (S_OK, 21)


def test_unknown_request_types_are_unsupp(make):
    b = make().start()
    for t in (2, 3, 5, 7, 0xDEADBEEF, 0x80000000, 0x80000001):
        _, st, n = b.run(t, 0, in_len=0)
        assert (st, n) == (S_UNSUPP, 1), t


def test_ioprio_is_ignored(make):
    b = make().start()
    req = b.blk.submit(T_IN, 0, in_len=512)
    b.mem.write_u32(req.readable[0][0] + 4, 0xFFFFFFFF)
    b.drv.kick(0)
    assert b.vqs[0].get_used() == [(req.head, 513)] and b.blk.result(req)[1] == S_OK


@pytest.mark.parametrize("sector,nbytes,status", [
    (2048, 0, S_OK),                 # exactly at the end, nothing to do
    (2047, 512, S_OK),               # the last sector
    (2047, 1024, S_IOERR),           # one sector past the end
    (2049, 512, S_IOERR),            # starts past the end
    (2**64 - 1, 512, S_IOERR),       # sector + n wraps in 64 bits
    (2**55, 512, S_IOERR),           # sector * 512 overflows 64 bits
    (0, 100, S_IOERR),               # not a multiple of 512
])
def test_sector_ranges_are_checked_without_overflow(make, sector, nbytes, status):
    b = make().start()          # 1 MiB: 2048 sectors
    before = b.image()
    got, st, n = b.run(T_IN, sector, in_len=nbytes)
    assert st == status and n == (nbytes + 1 if status == S_OK else 1)
    _, st, _ = b.run(T_OUT, sector, out=b"w" * nbytes)
    assert st == status
    if status != S_OK:
        assert b.image() == before


def test_logical_block_size_4k_rejects_unaligned_requests(make):
    b = make(props={"logical_block_size": "4K"}).start()
    assert b.drv.cfg_read(20, 4) == 4096
    assert b.run(T_IN, 1, in_len=4096)[1] == S_IOERR       # sector not 4 KiB aligned
    assert b.run(T_IN, 8, in_len=512)[1] == S_IOERR        # length not a block multiple
    assert b.run(T_IN, 8, in_len=4096)[1] == S_OK


def test_read_only_drive_offers_ro_and_fails_every_write_with_image_unchanged(make):
    b = make(readonly=True).start()
    assert b.vdev.guest_features >> S.VIRTIO_BLK_F_RO & 1
    before = b.image()
    assert b.run(T_OUT, 0, out=b"x" * 512)[1:] == (S_IOERR, 1)
    assert b.run(T_WRITE_ZEROES, 0, out=seg(0, 8))[1] == S_IOERR
    assert b.run(T_DISCARD, 0, out=seg(0, 8))[1] == S_IOERR
    assert b.run(T_IN, 0, in_len=512)[1] == S_OK
    assert b.image() == before


def test_read_only_enforced_even_if_driver_does_not_ack_ro(make):
    b = make(readonly=True)
    offered = b.drv.device_features()
    b.start(features=offered & ~(1 << S.VIRTIO_BLK_F_RO))
    before = b.image()
    assert b.run(T_OUT, 0, out=b"x" * 512)[1] == S_IOERR
    assert b.image() == before


def test_flush_reaches_fdatasync_before_completing(make, monkeypatch):
    b = make().start()
    calls = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd))[1])
    assert b.run(T_FLUSH, 0)[1:] == (S_OK, 1)
    assert calls == [b.backend.fd]


def test_flush_with_nonzero_sector_and_data_still_flushes_ok(make, monkeypatch):
    b = make().start()
    calls = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append(fd))
    assert b.run(T_FLUSH, 77, out=b"z" * 512, in_len=512)[1] == S_OK and calls


def test_flush_not_negotiated_still_flushes(make, monkeypatch):
    b = make()
    b.start(features=b.drv.device_features() & ~(1 << S.VIRTIO_BLK_F_FLUSH))
    calls = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append(fd))
    assert b.run(T_FLUSH, 0)[1] == S_OK and calls


def test_failed_fdatasync_makes_every_later_flush_fail(make, monkeypatch):
    b = make().start()
    def boom(fd):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(os, "fdatasync", boom)
    assert b.run(T_FLUSH, 0)[1] == S_IOERR
    monkeypatch.setattr(os, "fdatasync", lambda fd: None)
    assert b.run(T_FLUSH, 0)[1] == S_IOERR
    assert b.run(T_FLUSH, 0)[1] == S_IOERR


def test_writeback_mode_does_not_sync_each_write(make, monkeypatch):
    b = make().start()
    assert b.drv.cfg_read(B.OFF_WRITEBACK, 1) == 1
    calls = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append(fd))
    assert b.run(T_OUT, 0, out=b"a" * 512)[1] == S_OK and calls == []


def test_driver_switching_wce_off_makes_each_write_durable(make, monkeypatch):
    b = make().start()
    b.drv.cfg_write(B.OFF_WRITEBACK, 1, 0)
    assert b.drv.cfg_read(B.OFF_WRITEBACK, 1) == 0
    calls = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append(fd))
    assert b.run(T_OUT, 0, out=b"a" * 512)[1] == S_OK and len(calls) == 1
    b.drv.cfg_write(B.OFF_WRITEBACK, 1, 1)
    assert b.run(T_OUT, 0, out=b"a" * 512)[1] == S_OK and len(calls) == 1


@pytest.mark.parametrize("cache", ["writethrough", "directsync"])
def test_cache_writethrough_starts_with_writeback_0_and_syncs_writes(make, monkeypatch, cache):
    b = make(cache=cache).start()
    assert b.drv.cfg_read(B.OFF_WRITEBACK, 1) == 0
    calls = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append(fd))
    b.run(T_OUT, 0, out=b"a" * 512)
    assert len(calls) == 1


def test_writeback_field_is_read_only_without_config_wce(make):
    b = make()
    b.start(features=b.drv.device_features() & ~(1 << S.VIRTIO_BLK_F_CONFIG_WCE))
    b.drv.cfg_write(B.OFF_WRITEBACK, 1, 0)
    assert b.drv.cfg_read(B.OFF_WRITEBACK, 1) == 1


def test_config_wce_off_property_withholds_the_feature_and_keeps_writeback_fixed(make, monkeypatch):
    """config-wce=off: CONFIG_WCE is not offered, the writeback field cannot be switched and
    FLUSH alone decides the cache mode (writeback: no sync per write)."""
    b = make(props={"config-wce": "off", "strict": "on"})     # strict: unoffered features refused
    offered = b.drv.device_features()
    assert not offered >> B.VIRTIO_BLK_F_CONFIG_WCE & 1 and offered >> B.VIRTIO_BLK_F_FLUSH & 1
    b.start(features=offered | 1 << B.VIRTIO_BLK_F_CONFIG_WCE)   # asking anyway is refused
    assert b.vqs == []
    b.start()
    b.drv.cfg_write(B.OFF_WRITEBACK, 1, 0)
    assert b.drv.cfg_read(B.OFF_WRITEBACK, 1) == 1
    calls = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append(fd))
    assert b.run(T_OUT, 0, out=b"a" * 512)[1] == S_OK and calls == []


def test_config_wce_on_is_the_default_and_offered(make):
    assert make().drv.device_features() >> B.VIRTIO_BLK_F_CONFIG_WCE & 1
    assert make(props={"config-wce": "on"}).drv.device_features() >> B.VIRTIO_BLK_F_CONFIG_WCE & 1


def test_config_wce_without_flush_starts_in_writethrough(make):
    b = make()
    b.start(features=b.drv.device_features() & ~(1 << S.VIRTIO_BLK_F_FLUSH))
    assert b.drv.cfg_read(B.OFF_WRITEBACK, 1) == 0


def test_neither_flush_nor_wce_negotiated_means_writethrough(make, monkeypatch):
    b = make()
    f = b.drv.device_features() & ~(1 << S.VIRTIO_BLK_F_FLUSH) & ~(1 << S.VIRTIO_BLK_F_CONFIG_WCE)
    b.start(features=f)
    calls = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append(fd))
    b.run(T_OUT, 0, out=b"a" * 512)
    assert len(calls) == 1


def test_short_host_write_is_ioerr(make, monkeypatch):
    b = make().start()
    monkeypatch.setattr(b.backend, "writev", lambda off, bufs: 100)
    assert b.run(T_OUT, 0, out=b"a" * 512)[1] == S_IOERR


def test_short_host_read_is_ioerr_not_ok(make, monkeypatch):
    """A backend that fills only part of the buffers: the guest must not be told OK for a
    buffer whose tail is stale memory."""
    b = make().start()
    real = b.backend.readv

    def short(off, bufs):
        return real(off, bufs) - 100
    monkeypatch.setattr(b.backend, "readv", short)
    assert b.run(T_IN, 0, in_len=1024)[1] == S_IOERR


def test_image_truncated_behind_the_device_reads_past_the_new_end_as_ioerr(make):
    b = make().start()
    os.truncate(b.path, 1024 * SECT)           # the host halves the image; capacity is stale
    assert b.vdev.capacity == 2048
    assert b.run(T_IN, 2047, in_len=512)[1] == S_IOERR
    assert b.run(T_IN, 1023, in_len=1024)[1] == S_IOERR       # half inside, half past the new end
    got, st, used_len = b.run(T_IN, 1023, in_len=512)        # still inside: fine
    assert (st, used_len) == (S_OK, 513) and got == pattern(1 << 20)[1023 * SECT:1024 * SECT]


def test_host_read_error_is_ioerr(make, monkeypatch):
    b = make().start()
    def fail(off, bufs):
        raise OSError(5, "EIO")
    monkeypatch.setattr(b.backend, "readv", fail)
    assert b.run(T_IN, 0, in_len=512)[1:] == (S_IOERR, 1)


def test_write_zeroes_zeroes_the_range(make):
    b = make().start()
    assert b.run(T_WRITE_ZEROES, 0, out=seg(4, 2))[1:] == (S_OK, 1)
    img = b.image()
    assert img[4 * SECT:6 * SECT] == bytes(1024) and img[6 * SECT:7 * SECT] == pattern(1 << 20)[6 * SECT:7 * SECT]


def test_write_zeroes_with_unmap_flag_reads_back_zeroes(make):
    b = make(discard="unmap").start()
    assert b.run(T_WRITE_ZEROES, 0, out=seg(8, 8, 1))[1] == S_OK
    assert b.run(T_IN, 8, in_len=4096)[0] == bytes(4096)


def test_discard_with_discard_unmap_punches_a_hole(make):
    b = make(discard="unmap").start()
    assert b.run(T_DISCARD, 0, out=seg(0, 8))[1] == S_OK
    assert b.image()[:4096] == bytes(4096)


def test_discard_with_discard_ignore_completes_ok_and_keeps_data(make):
    b = make().start()
    before = b.image()
    assert b.run(T_DISCARD, 0, out=seg(0, 8))[1] == S_OK
    assert b.image() == before


@pytest.mark.parametrize("rtype,payload,status", [
    (T_DISCARD, seg(0, 8, 1), S_UNSUPP),             # unmap flag on discard
    (T_DISCARD, seg(0, 8, 2), S_UNSUPP),             # unknown flag
    (T_WRITE_ZEROES, seg(0, 8, ~1 & 0xFFFFFFFF), S_UNSUPP),
    (T_WRITE_ZEROES, seg(0, 1) + seg(4, 1), S_UNSUPP),   # two segments, max_seg is 1
    (T_DISCARD, seg(0, 0xFFFFFFFF), S_IOERR),         # more than max_discard_sectors
    (T_WRITE_ZEROES, seg(2049, 1), S_IOERR),          # sector = capacity + 1
    (T_WRITE_ZEROES, seg(2047, 2), S_IOERR),          # runs past the end
    (T_WRITE_ZEROES, seg(2**64 - 1, 2), S_IOERR),     # sector + n wraps
])
def test_bad_discard_and_write_zeroes_segments(make, rtype, payload, status):
    b = make().start()
    before = b.image()
    assert b.run(rtype, 0, out=payload)[1] == status
    assert b.image() == before


def test_discard_and_write_zeroes_not_negotiated_are_carried_out_as_qemu_does(make, guest_errors):
    b = make()
    f = b.drv.device_features() & ~(1 << S.VIRTIO_BLK_F_DISCARD) & ~(1 << S.VIRTIO_BLK_F_WRITE_ZEROES)
    b.start(features=f)
    assert b.run(T_DISCARD, 0, out=seg(0, 1))[1] == S_OK
    assert b.run(T_WRITE_ZEROES, 0, out=seg(0, 1))[1] == S_OK
    assert b.image()[:512] == bytes(512)
    log = guest_errors.getvalue()
    assert "DISCARD request without negotiating VIRTIO_BLK_F_DISCARD (VIRTIO 1.2 §5.2.6.1)" in log
    assert "WRITE_ZEROES request without negotiating VIRTIO_BLK_F_WRITE_ZEROES" in log


def test_strict_discard_and_write_zeroes_unsupp_when_not_negotiated(make):
    b = make(props={"strict": "on"})
    f = b.drv.device_features() & ~(1 << S.VIRTIO_BLK_F_DISCARD) & ~(1 << S.VIRTIO_BLK_F_WRITE_ZEROES)
    b.start(features=f)
    before = b.image()
    assert b.run(T_DISCARD, 0, out=seg(0, 1))[1] == S_UNSUPP
    assert b.run(T_WRITE_ZEROES, 0, out=seg(0, 1))[1] == S_UNSUPP
    assert b.image() == before


def test_discard_and_write_zeroes_not_offered_when_disabled(make):
    b = make(props={"discard": "off", "write-zeroes": "false"})
    f = b.drv.device_features()
    assert not f >> S.VIRTIO_BLK_F_DISCARD & 1 and not f >> S.VIRTIO_BLK_F_WRITE_ZEROES & 1


def test_short_discard_payload_sets_needs_reset(make):
    b = make().start()
    b.blk.submit(T_DISCARD, 0, out=b"\0" * 8)
    b.drv.kick(0)
    assert b.needs_reset and b.vqs[0].get_used() == []
    assert type(b.vdev.error) is SegmentTooShort
    assert str(b.vdev.error) == "virtio-blk discard/write_zeroes header too short"


def test_strict_short_write_zeroes_payload_with_only_that_feature_sets_needs_reset(make):
    # The segment is required by the request's own feature (WRITE_ZEROES), not DISCARD's.
    b = make(props={"strict": "on"})
    b.start(features=b.drv.device_features() & ~(1 << S.VIRTIO_BLK_F_DISCARD))
    b.blk.submit(T_WRITE_ZEROES, 0, out=b"\0" * 8)
    b.drv.kick(0)
    assert b.needs_reset and type(b.vdev.error) is SegmentTooShort


def test_strict_short_discard_payload_without_the_feature_is_unsupp_not_a_ring_error(make):
    # Strict: without the feature the type does not exist, what follows its header does not matter.
    b = make(props={"strict": "on"})
    b.start(features=b.drv.device_features() & ~(1 << S.VIRTIO_BLK_F_DISCARD))
    assert b.run(T_DISCARD, 0, out=b"\0" * 8)[1] == S_UNSUPP and not b.needs_reset


def test_short_discard_payload_without_the_feature_is_a_ring_error_as_on_qemu(make):
    # Tolerant: the unnegotiated request is carried out as QEMU does, so its segment must be whole.
    b = make()
    b.start(features=b.drv.device_features() & ~(1 << S.VIRTIO_BLK_F_DISCARD))
    b.blk.submit(T_DISCARD, 0, out=b"\0" * 8)
    b.drv.kick(0)
    assert b.needs_reset and type(b.vdev.error) is SegmentTooShort


def test_a_request_is_parsed_once_before_it_runs(make):
    # The parsed request is a value: a guest rewriting the header in memory afterwards does not
    # change it, and each request type keeps only the buffers it uses.
    b = make().start()
    req = b.blk.submit(T_OUT, 8, out=pattern(1024))
    chain = b.vdev.peek_chain(0)
    parsed = b.vdev.parse_request(chain)
    assert (parsed.type, parsed.sector, parsed.out_len, parsed.nsectors, parsed.in_data) == (T_OUT, 8, 1024, 2, ())
    b.mem.write(chain.readable[0][0], struct.pack("<IIQ", T_IN, 0, 99))
    assert (parsed.type, parsed.sector) == (T_OUT, 8)
    with pytest.raises(AttributeError):
        parsed.sector = 0
    b.mem.write(chain.readable[0][0], struct.pack("<IIQ", T_OUT, 0, 8))
    b.drv.kick(0)
    assert b.blk.result(req)[1] == S_OK and b.image()[8 * SECT:10 * SECT] == pattern(1024)


def test_each_request_error_carries_its_status():
    assert (Unsupported().status, IoError().status) == (S_UNSUPP, S_IOERR)
    assert issubclass(Unsupported, RequestError) and issubclass(IoError, RequestError)
    assert IoError("short read", written=512).written == 512


def test_multiqueue_requests_complete_on_their_own_queue(make):
    b = make(props={"num-queues": "4"})
    assert b.drv.device_features() >> S.VIRTIO_BLK_F_MQ & 1
    b.start(nqueues=4)
    assert b.drv.cfg_read(34, 2) == 4
    for q in (3, 0, 2, 1):
        got, st, _ = b.run(T_IN, q, q=q, in_len=512)
        assert st == S_OK and got == pattern(1 << 20)[q * SECT:(q + 1) * SECT]
    assert all(vq.used_idx() == 1 for vq in b.vqs)


@pytest.mark.parametrize("features", ["none", "indirect", "event_idx", "both"])
def test_feature_combinations_all_serve_requests(make, features):
    b = make()
    f = b.drv.device_features() & ~((1 << F_INDIRECT) | (1 << F_EVENT_IDX))
    if features in ("indirect", "both"):
        f |= 1 << F_INDIRECT
    if features in ("event_idx", "both"):
        f |= 1 << F_EVENT_IDX
    b.start(features=f)
    assert b.run(T_OUT, 3, out=b"q" * 1024, indirect=features in ("indirect", "both"))[1] == S_OK
    assert b.run(T_IN, 3, in_len=1024)[0] == b"q" * 1024


def test_snapshot_drive_accepts_writes_but_never_changes_the_image(make):
    b = make(snapshot=True).start()
    before = b.image()
    assert not b.vdev.guest_features >> S.VIRTIO_BLK_F_RO & 1
    assert b.run(T_OUT, 4, out=b"S" * 1024)[1] == S_OK
    assert b.run(T_IN, 4, in_len=1024)[0] == b"S" * 1024
    assert b.run(T_WRITE_ZEROES, 0, out=seg(0, 1))[1] == S_OK
    assert b.run(T_IN, 0, in_len=512)[0] == bytes(512)
    assert b.image() == before


def test_read_into_buffer_overlapping_the_descriptor_table_is_memory_safe(make):
    """The guest aims IN data at its own descriptor table: its problem, but the chain was
    already copied, so the request completes and nothing outside the buffer changes."""
    b = make().start()
    vq = b.vqs[0]
    hdr = b.alloc.alloc(16)
    b.mem.write(hdr, struct.pack("<IIQ", T_IN, 0, 0))
    st = b.alloc.alloc(1)
    vq.write_desc(vq.desc, 0, hdr, 16, 1, 1)
    vq.write_desc(vq.desc, 1, vq.desc, 512, 3, 2)      # 512 bytes over descriptors 0..31
    vq.write_desc(vq.desc, 2, st, 1, 2, 0)
    vq.publish(0)
    b.drv.kick(0)
    assert vq.get_used() == [(0, 513)] and b.mem.read(st, 1) == b"\0"
    assert b.mem.read(vq.desc, 512) == pattern(1 << 20)[:512]


def test_seabios_style_legacy_init_without_feature_write_then_polling(make):
    """SeaBIOS (legacy): status 3, no guest-features write, PFN, status 7, NO_INTERRUPT, poll."""
    b = make(legacy=True)
    bar = b.drv.bar
    bar.write(0x12, 1, 0)
    bar.read(0x13, 1)
    bar.write(0x12, 1, 3)
    bar.read(0x00, 4)
    bar.write(0x0E, 2, 0)
    assert bar.read(0x0C, 2) == 256 and bar.read(0x08, 4) == 0
    from virtio_driver import Vring
    vq = Vring(b.mem, b.alloc, 256, legacy_align=4096)
    bar.write(0x08, 4, vq.desc >> 12)
    bar.write(0x12, 1, 7)
    vq.set_avail_flags(1)
    b.vqs = [vq]
    got, st, _ = b.run(T_IN, 0, in_len=512)
    assert st == S_OK and got == pattern(1 << 20)[:512] and b.vdev.isr == 0


def test_host_resize_updates_capacity_generation_and_sends_config_interrupt(make):
    b = make().start()
    gen = b.drv.common_read(0x15, 1)
    with open(b.path, "r+b") as f:
        f.truncate(512 * 1024)
    assert b.vdev.update_capacity()
    assert b.drv.cfg_read(0, 4) == 1024 and b.drv.common_read(0x15, 1) == (gen + 1) & 0xFF
    assert b.drv.isr() & 2
    assert b.run(T_IN, 1024, in_len=512)[1] == S_IOERR      # past the new end
    assert b.run(T_IN, 1023, in_len=512)[1] == S_OK
    assert not b.vdev.update_capacity()


# -- paths found by mutation testing (bench/mutation.sh) ------------------------------------------

def test_get_id_across_several_descriptors_stops_after_20_bytes(make):
    b = make(props={"serial": "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}).start()
    got, st, n = b.run(T_GET_ID, in_len=40, wcuts=[7, 13, 20])
    assert (got[:20], st, n) == (b"ABCDEFGHIJKLMNOPQRST", S_OK, 21)
    assert got[20:] == b"\xee" * 20                       # the rest untouched (poison)


@pytest.mark.parametrize("rcuts", [[16, 16], [4, 12, 16], [10, 6, 3, 13], [20, 12], [4, 28]])
def test_discard_segment_is_found_in_any_descriptor_layout(make, rcuts):
    b = make(discard="unmap", props={"max-discard-sectors": "8"}).start()
    assert b.run(T_DISCARD, 0, out=seg(16, 8), rcuts=rcuts)[1] == S_OK
    assert b.run(T_DISCARD, 0, out=seg(16, 9), rcuts=rcuts)[1] == S_IOERR


@pytest.mark.parametrize("rcuts", [[16, 16], [4, 12, 16], [10, 6, 3, 13], [20, 12], [4, 28]])
def test_write_zeroes_segment_is_found_in_any_descriptor_layout(make, rcuts):
    b = make().start()
    assert b.run(T_WRITE_ZEROES, 0, out=seg(6, 2), rcuts=rcuts)[1] == S_OK
    img = b.image()
    assert img[6 * SECT:8 * SECT] == bytes(1024)
    assert img[5 * SECT:6 * SECT] + img[8 * SECT:9 * SECT] == pattern(1 << 20)[5 * SECT:6 * SECT] + pattern(1 << 20)[8 * SECT:9 * SECT]


def test_discard_and_write_zeroes_maxima_are_separate_and_inclusive(make):
    b = make(props={"max-discard-sectors": "8", "max-write-zeroes-sectors": "16"}).start()
    assert b.run(T_DISCARD, 0, out=seg(0, 8))[1] == S_OK
    assert b.run(T_DISCARD, 0, out=seg(0, 9))[1] == S_IOERR
    assert b.run(T_WRITE_ZEROES, 0, out=seg(0, 16))[1] == S_OK
    assert b.run(T_WRITE_ZEROES, 0, out=seg(0, 17))[1] == S_IOERR


@pytest.mark.parametrize("negotiated", [B.VIRTIO_BLK_F_DISCARD, B.VIRTIO_BLK_F_WRITE_ZEROES])
def test_discard_and_write_zeroes_each_need_their_own_feature(make, negotiated):
    b = make(props={"strict": "on"})                  # the tolerant default serves both anyway
    other = B.VIRTIO_BLK_F_WRITE_ZEROES if negotiated == B.VIRTIO_BLK_F_DISCARD else B.VIRTIO_BLK_F_DISCARD
    b.start(features=b.drv.device_features() & ~(1 << other))
    ok_type, unsupp_type = ((T_DISCARD, T_WRITE_ZEROES) if negotiated == B.VIRTIO_BLK_F_DISCARD
                            else (T_WRITE_ZEROES, T_DISCARD))
    assert b.run(ok_type, 0, out=seg(0, 1))[1] == S_OK
    assert b.run(unsupp_type, 0, out=seg(0, 1))[1] == S_UNSUPP


@pytest.mark.parametrize("flags,unmap", [(0, False), (1, True)])
def test_write_zeroes_passes_the_unmap_flag_to_the_backend(make, monkeypatch, flags, unmap):
    b = make(discard="unmap").start()
    calls = []
    monkeypatch.setattr(b.backend, "write_zeroes", lambda off, n, may_unmap: calls.append((off, n, may_unmap)))
    assert b.run(T_WRITE_ZEROES, 0, out=seg(2, 3, flags))[1] == S_OK
    assert calls == [(2 * SECT, 3 * SECT, unmap)]


def test_writeback_field_stores_0_or_1_whatever_the_driver_writes(make):
    b = make().start()
    b.drv.cfg_write(B.OFF_WRITEBACK, 1, 0x80)
    assert b.drv.cfg_read(B.OFF_WRITEBACK, 1) == 1
    b.drv.cfg_write(B.OFF_WRITEBACK, 1, 0)
    assert b.drv.cfg_read(B.OFF_WRITEBACK, 1) == 0


def test_cache_unsafe_never_syncs_even_in_writethrough_mode(make, monkeypatch):
    b = make(cache="unsafe").start()
    b.drv.cfg_write(B.OFF_WRITEBACK, 1, 0)               # the driver asks for writethrough

    def boom(fd):
        raise AssertionError("fdatasync with cache=unsafe")
    monkeypatch.setattr(os, "fdatasync", boom)
    assert b.run(T_OUT, 0, out=b"a" * 512)[1] == S_OK
    assert b.run(T_WRITE_ZEROES, 0, out=seg(0, 1))[1] == S_OK
    assert b.run(T_FLUSH)[1] == S_OK


@pytest.mark.parametrize("rtype,out", [(T_OUT, b"a" * 512), (T_WRITE_ZEROES, seg(0, 1)),
                                       (T_DISCARD, seg(0, 1))])
def test_failed_writethrough_sync_is_ioerr_and_poisons_later_flushes(make, monkeypatch, rtype, out):
    b = make(discard="unmap").start()
    b.drv.cfg_write(B.OFF_WRITEBACK, 1, 0)

    def fail(fd):
        raise OSError(5, "EIO")
    monkeypatch.setattr(os, "fdatasync", fail)
    assert b.run(rtype, 0, out=out)[1] == S_IOERR
    monkeypatch.setattr(os, "fdatasync", lambda fd: None)
    assert b.run(T_FLUSH)[1] == S_IOERR                  # the lost write is never reported stable


def test_host_write_error_is_ioerr(make, monkeypatch):
    b = make().start()

    def fail(off, bufs):
        raise OSError(5, "EIO")                       # (ENOSPC would stop the machine: werror)
    monkeypatch.setattr(b.backend, "writev", fail)
    assert b.run(T_OUT, 0, out=b"a" * 512)[1:] == (S_IOERR, 1)


@pytest.mark.parametrize("rtype,method", [(T_DISCARD, "discard"), (T_WRITE_ZEROES, "write_zeroes")])
def test_host_discard_or_write_zeroes_error_is_ioerr(make, monkeypatch, rtype, method):
    b = make(discard="unmap").start()

    def fail(*args):
        raise OSError(5, "EIO")
    monkeypatch.setattr(b.backend, method, fail)
    assert b.run(rtype, 0, out=seg(0, 1))[1:] == (S_IOERR, 1)


@pytest.mark.parametrize("short", [0, 100, 511, 512, 700])
def test_read_tells_the_cpu_exactly_which_guest_bytes_changed(make, monkeypatch, short):
    """Guest RAM the device writes must be reported (translated code there is dropped): the
    data bytes really read, across descriptors, and the status byte; nothing more."""
    b = make().start()
    if short:
        real = b.backend.readv
        monkeypatch.setattr(b.backend, "readv", lambda off, bufs: real(off, bufs) - short)
    req = b.blk.submit(T_IN, 0, in_len=1024, wcuts=[512, 512])
    seen = []
    b.mem.add_write_listener(lambda gpa, n: seen.append((gpa, n)))    # the device's writes only
    b.drv.kick(0)
    (d1, _), (d2, _), (status, _) = req.writable
    got = 1024 - short
    data = [(d1, min(512, got))] + ([(d2, got - 512)] if got > 512 else [])
    assert [w for w in seen if w[0] in (d1, d2, status)] == data + [(status, 1)]


@pytest.mark.parametrize("wcuts", [[511, 2], [512, 1], [1, 1, 511]])
def test_status_byte_shares_the_last_descriptor_with_data_in_any_split(make, wcuts):
    b = make().start()
    got, st, n = b.run(T_IN, 2, in_len=512, wcuts=wcuts)
    assert (got, st, n) == (pattern(1 << 20)[1024:1536], S_OK, 513)


def test_out_of_range_requests_never_reach_the_host_file(make, monkeypatch):
    """5.2.6.2: the device checks every range against its capacity itself; the backend's own
    check is a second line, not the one the guest relies on."""
    b = make(discard="unmap").start()
    calls = []
    for name in ("readv", "writev", "discard", "write_zeroes"):
        monkeypatch.setattr(b.backend, name, lambda *a, name=name: calls.append(name))
    cap = b.vdev.capacity
    for rtype, sector, kw in [(T_IN, cap, dict(in_len=512)), (T_IN, cap - 1, dict(in_len=1024)),
                              (T_OUT, cap, dict(out=b"x" * 512)), (T_OUT, 2**63, dict(out=b"x" * 512)),
                              (T_DISCARD, 0, dict(out=seg(cap - 1, 2))),
                              (T_WRITE_ZEROES, 0, dict(out=seg(2**64 - 1, 1)))]:
        assert b.run(rtype, sector, **kw)[1] == S_IOERR, (rtype, sector)
    assert calls == []


def test_parse_request_reads_against_the_negotiated_features(make):
    """What a debugger sees: a DISCARD too short for its segment is malformed only when DISCARD
    was negotiated (otherwise it is an UNSUPP request like any unknown type)."""
    from machine.virtio.blk_request import SegmentTooShort
    b = make(props={"strict": "on"})
    b.start(features=b.drv.device_features() & ~(1 << B.VIRTIO_BLK_F_DISCARD))
    b.blk.submit(T_DISCARD, 0, out=b"\0" * 8)
    assert b.vdev.parse_request(b.vdev.queues[0].peek(0)).type == T_DISCARD
    c = make().start()
    c.blk.submit(T_DISCARD, 0, out=b"\0" * 8)
    with pytest.raises(SegmentTooShort):
        c.vdev.parse_request(c.vdev.queues[0].peek(0))


# Every numeric property of virtio-blk-pci: the lowest and highest value it takes (QEMU's ranges
# where QEMU has them); the bench's 1 MiB image fits every block size.
PROPERTY_RANGES = [
    ("num-queues", 1, 1024), ("queue-size", 2, 1024),
    ("logical_block_size", 512, 32768), ("physical_block_size", 512, 32768),
    ("min_io_size", 0, 0xFFFF * SECT), ("opt_io_size", 0, 0xFFFFFFFF * SECT),
    ("max-discard-sectors", 1, B.REQUEST_MAX_SECTORS),
    ("max-write-zeroes-sectors", 1, B.REQUEST_MAX_SECTORS),
    ("cyls", 0, 65535), ("heads", 0, 255), ("secs", 0, 255)]
POWERS_OF_2 = {"queue-size", "logical_block_size", "physical_block_size"}


@pytest.mark.parametrize("name, lo, hi", PROPERTY_RANGES, ids=[r[0] for r in PROPERTY_RANGES])
def test_each_numeric_property_takes_exactly_its_range(make, name, lo, hi):
    from machine.config import ConfigError
    make(props={name: str(lo)})
    make(props={name: str(hi)})
    above = hi * 2 if name in POWERS_OF_2 else hi + 1
    with pytest.raises(ConfigError, match=rf"^Property '{name}' value {above} is out of range \[{lo}, {hi}\]$"):
        make(props={name: str(above)})
    if lo > 0:
        below = lo // 2 if name in POWERS_OF_2 else lo - 1
        with pytest.raises(ConfigError, match=rf"^Property '{name}' value {below} is out of range"):
            make(props={name: str(below)})


@pytest.mark.parametrize("name", ["queue-size", "logical_block_size", "physical_block_size"])
def test_sizes_that_must_be_powers_of_2_say_so(make, name):
    from machine.config import ConfigError
    with pytest.raises(ConfigError, match=rf"{name} (property )?must be a power of 2"):
        make(props={name: "1536" if "block" in name else "48"})


@pytest.mark.parametrize("name", ["config-wce", "discard", "write-zeroes", "seg-max-adjust"])
def test_each_switch_names_itself_when_refused(make, name):
    from machine.config import ConfigError
    with pytest.raises(ConfigError, match=rf"^Property '{name}' doesn't take value 'maybe'"):
        make(props={name: "maybe"})


BLK_FEATURES = {S.VIRTIO_BLK_F_SEG_MAX, S.VIRTIO_BLK_F_GEOMETRY, S.VIRTIO_BLK_F_BLK_SIZE,
                S.VIRTIO_BLK_F_FLUSH, S.VIRTIO_BLK_F_TOPOLOGY, S.VIRTIO_BLK_F_CONFIG_WCE,
                S.VIRTIO_BLK_F_DISCARD, S.VIRTIO_BLK_F_WRITE_ZEROES}


def blk_features(b) -> set[int]:
    return {n for n in range(24) if b.vdev.host_features >> n & 1}


@pytest.mark.parametrize("extra, want", [
    ({}, set()),
    ({"num-queues": "2"}, {S.VIRTIO_BLK_F_MQ}),
    ({"readonly": True}, {S.VIRTIO_BLK_F_RO})], ids=["default", "two_queues", "read_only"])
def test_the_device_specific_features_offered(make, extra, want):
    props = {k: v for k, v in extra.items() if k != "readonly"}
    b = make(props=props, readonly=extra.get("readonly", False))
    assert blk_features(b) == BLK_FEATURES | want


def test_the_default_configuration_space_field_by_field(make):
    """A 64 MiB disk with no properties: QEMU's defaults (its geometry guess, seg_max of a
    256-entry queue, no size_max, 512-byte blocks, topology zeros, writeback, one queue, the
    discard and write-zeroes limits)."""
    b = make(disk_size=64 << 20)
    (capacity, size_max, seg_max, cyls, heads, secs, blk_size, phys_exp, align, min_io, opt_io,
     wce, unused, nq, max_discard, discard_seg, discard_align, max_wz, wz_seg, wz_unmap) = \
        B.CONFIG.unpack(bytes(b.vdev.config))
    assert (capacity, size_max, seg_max) == (131072, 0, 254)
    assert (cyls, heads, secs) == (131072 // (16 * 63), 16, 63)
    assert (blk_size, phys_exp, align, min_io, opt_io) == (512, 0, 0, 0, 0)
    assert (wce, unused, nq) == (1, 0, 1)
    assert (max_discard, discard_seg, discard_align) == (B.REQUEST_MAX_SECTORS, 1, 1)
    assert (max_wz, wz_seg, wz_unmap) == (B.REQUEST_MAX_SECTORS, 1, 1)


def test_block_size_rules_name_both_sizes(make):
    from machine.config import ConfigError
    with pytest.raises(ConfigError, match="^physical_block_size must not be smaller than logical_block_size$"):
        make(props={"logical_block_size": "4096", "physical_block_size": "512"})
    with pytest.raises(ConfigError, match="^image size 1049088 is not a multiple of logical_block_size 4096$"):
        make(disk_size=(1 << 20) + 512, props={"logical_block_size": "4096"})


def test_without_a_serial_get_id_is_all_zeros(make):
    b = make().start()
    got, st, n = b.run(T_GET_ID, in_len=20)
    assert (got, st) == (bytes(20), S_OK)


def test_a_serial_with_an_undecodable_byte_is_sent_with_a_replacement(make):
    """A serial from the command line may hold a byte that is not UTF-8 (Python passes it as a
    lone surrogate): it becomes '?', not an error."""
    b = make(props={"serial": "A\udcffB"}).start()
    got, st, n = b.run(T_GET_ID, in_len=20)
    assert (got[:3], st) == (b"A?B", S_OK)


def test_sectors_per_track_round_down_only_when_a_track_splits_a_block(make):
    """The rounding looks at size // heads // secs: here 4096 exactly (size // heads is
    4096 x 63 + 32), a whole 4 KiB block, so the 63 stands; dividing in floating point would
    leave a fraction and round it down to 56."""
    b = make(disk_size=128 * (4096 * 63 + 32),
             props={"heads": "128", "secs": "63", "logical_block_size": "4096"})
    heads, secs = B.CONFIG.unpack(bytes(b.vdev.config))[4:6]
    assert (heads, secs) == (128, 63)


# ------------------------------------------------------------------ host failures, one by one

def _raise(err):
    def fail(*args, **kwargs):
        raise OSError(err, os.strerror(err))
    return fail


def _short_read(b):
    real = b.backend.readv
    return lambda off, bufs: real(off, bufs) - 100


NO_FLUSH = ~(1 << S.VIRTIO_BLK_F_FLUSH) & ~(1 << S.VIRTIO_BLK_F_CONFIG_WCE)     # writethrough

HOST_FAILURES = {
    # name: (backend method, its replacement, features mask, request, the -d guest_errors line, used.len)
    "read error": ("readv", lambda b: _raise(5), -1, dict(rtype=T_IN, in_len=1024),
                   "virtio-blk: read error: [Errno 5] Input/output error", 1),
    "short read": ("readv", _short_read, -1, dict(rtype=T_IN, in_len=1024), "", 1024 - 100 + 1),
    "write error": ("writev", lambda b: _raise(28), -1, dict(rtype=T_OUT, out=b"w" * 512),
                    "virtio-blk: write error: [Errno 28] No space left on device", 1),
    "short write": ("writev", lambda b: lambda off, bufs: 100, -1, dict(rtype=T_OUT, out=b"w" * 512), "", 1),
    "flush error": ("flush", lambda b: _raise(5), -1, dict(rtype=T_FLUSH),
                    "virtio-blk: flush failed: [Errno 5] Input/output error", 1),
    "writethrough sync error": ("flush", lambda b: _raise(5), NO_FLUSH, dict(rtype=T_OUT, out=b"w" * 512),
                                "virtio-blk: sync failed: [Errno 5] Input/output error", 1),
    "discard error": ("discard", lambda b: _raise(95), -1, dict(rtype=T_DISCARD, out=seg(0, 8)),
                      "virtio-blk: discard failed: [Errno 95] Operation not supported", 1),
    "write zeroes error": ("write_zeroes", lambda b: _raise(5), -1, dict(rtype=T_WRITE_ZEROES, out=seg(0, 8)),
                           "virtio-blk: write zeroes failed: [Errno 5] Input/output error", 1),
}


@pytest.mark.parametrize("case", HOST_FAILURES)
@pytest.mark.parametrize("policy", ["report", "stop"])
def test_a_host_failure_is_logged_and_follows_the_error_policy(make, monkeypatch, guest_errors, case, policy):
    """Each way the host can fail a request: the -d guest_errors line, IOERR with the bytes
    already written counted in used.len (report), or the request parked for `cont` (stop)."""
    method, replacement, mask, req, log, used_len = HOST_FAILURES[case]
    b = make(discard="unmap", werror=policy, rerror=policy)
    b.start(features=b.drv.device_features() & mask)
    monkeypatch.setattr(b.backend, method, replacement(b))
    kw = dict(req)
    rtype = kw.pop("rtype")
    r = BlkRequests(b.vqs[0]).submit(rtype, 0, **kw)
    b.drv.kick(0)
    assert guest_errors.getvalue() == (log + "\n" if log else "")
    if policy == "stop":
        assert [req.head for _, req in b.vdev.parked] == [r.head] and b.vqs[0].get_used() == []
    else:
        assert b.vdev.parked == [] and b.vqs[0].get_used() == [(r.head, used_len)]
        assert BlkRequests(b.vqs[0]).result(r)[1] == S_IOERR


@pytest.mark.parametrize("policy, status", [("report", S_IOERR), ("ignore", S_OK)])
def test_after_a_failed_flush_every_flush_fails_and_follows_the_policy(make, monkeypatch, policy, status):
    """After a failed fdatasync the kernel may have dropped the dirty pages: later flushes
    fail too (even once the host would succeed), as host errors the policy decides about."""
    b = make(werror=policy).start()
    monkeypatch.setattr(b.backend, "flush", _raise(5))
    assert b.run(T_FLUSH)[1] == status
    monkeypatch.setattr(b.backend, "flush", lambda: None)
    assert b.run(T_FLUSH)[1] == status
    b.backend.on_write_error = "stop"
    r = BlkRequests(b.vqs[0]).submit(T_FLUSH)
    b.drv.kick(0)
    assert [req.head for _, req in b.vdev.parked] == [r.head]


def test_only_reads_and_writes_emit_the_read_and_write_events(make):
    """virtio_blk_handle_read / _write are for IN and OUT only (FLUSH, GET_ID, DISCARD and
    WRITE_ZEROES have none, as on QEMU)."""
    import io
    import sys
    from machine import trace
    b = make(discard="unmap").start()
    out = io.StringIO()
    trace.set_output(out)
    trace.enable("virtio_blk_handle_*")
    try:
        b.run(T_FLUSH)
        b.run(T_GET_ID, in_len=20)
        b.run(T_DISCARD, 0, out=seg(0, 8))
        b.run(T_WRITE_ZEROES, 0, out=seg(0, 8))
        assert out.getvalue() == ""
        b.run(T_OUT, 2, out=b"w" * 512)
        b.run(T_IN, 2, in_len=512)
    finally:
        trace.disable_all()
        trace.set_output(sys.stderr)
    assert out.getvalue() == ("virtio_blk_handle_write vdev=virtio-blk req=8 sector=2 nsectors=1\n"
                              "virtio_blk_handle_read vdev=virtio-blk req=10 sector=2 nsectors=1\n")


class _AddsARequestWhileServing:
    """A backend whose first read makes one more request available on the ring, as a driver on
    another vCPU may while the device is serving a kick."""

    def __init__(self, inner, add):
        self.inner, self.add = inner, add

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def readv(self, offset, bufs):
        if self.add is not None:
            add, self.add = self.add, None
            add()
        return self.inner.readv(offset, bufs)


@pytest.mark.parametrize("packed", [False, True])
def test_a_request_made_available_during_a_kick_is_served_by_that_kick(make, packed):
    from test_virtio_packed import start
    b = make(props={"packed": "on"} if packed else None)
    ring = start(b) if packed else b.start().vqs[0]
    blk = BlkRequests(ring)
    later = []
    b.vdev.backend = _AddsARequestWhileServing(b.vdev.backend, lambda: later.append(blk.submit(T_IN, 1, in_len=512)))
    first = blk.submit(T_IN, 0, in_len=512)
    b.drv.kick(0)                                   # the only kick
    assert [h for h, _ in ring.get_used()] == [first.head, later[0].head]


@pytest.mark.parametrize("features, writeback", [
    (~(1 << S.VIRTIO_BLK_F_FLUSH), 0),                                    # CONFIG_WCE alone: writethrough
    (~(1 << S.VIRTIO_BLK_F_FLUSH) & ~(1 << S.VIRTIO_BLK_F_CONFIG_WCE), 1),  # neither: the field is left as it is
    (-1, 1),
])
def test_the_writeback_field_starts_writethrough_only_for_config_wce_without_flush(make, features, writeback):
    b = make()
    b.start(features=b.drv.device_features() & features)
    assert b.drv.cfg_read(B.OFF_WRITEBACK, 1) == writeback


def test_the_geometry_caps_cylinders_at_16383(tmp_path):
    """As QEMU: cylinders = capacity / (16 heads x 63 sectors), at most 16383 (a sparse image
    of 16384 such cylinders)."""
    from machine.block import open_drive
    from machine.config import DriveConfig
    from machine.memory import GuestMemory
    from machine.virtio.blk_pci import create_virtio_blk_pci
    p = tmp_path / "big.img"
    with open(p, "wb") as f:
        f.truncate(16384 * 16 * 63 * SECT)
    backend = open_drive(DriveConfig(file=p))
    try:
        dev = create_virtio_blk_pci(backend, {}, GuestMemory(4 << 20))
        assert dev.vdev.config_read(16, 2) == 16383
    finally:
        backend.close()
