"""virtio-blk requests (VIRTIO 1.2 section 5.2.6), parsed before they are executed.

`parse(chain, ...)` turns a walked descriptor chain into a frozen `BlkRequest`: the header read
once into one host copy, the status byte located (the last byte of the last device-writable
descriptor), the data buffers cut out for the request's type. A chain that cannot be a request
at all is a ring error (`MalformedRequest`, a VirtqueueError: DEVICE_NEEDS_RESET, as QEMU's
virtio_error). What is wrong with a well-formed request is a `RequestError` raised while
executing it; its type carries the status byte the device answers with, decided here in one
place.
"""

from __future__ import annotations

import struct
from typing import Callable, NamedTuple

from .queue import Chain, VirtqueueError
from .spec import (VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_IOERR,
                   VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
                   VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES)

SECTOR = 512
HEADER = struct.Struct("<IIQ")              # struct virtio_blk_req: type, reserved (ioprio), sector
DWZ_SEGMENT = struct.Struct("<QII")         # struct virtio_blk_discard_write_zeroes

Seg = tuple[int, int, int]        # guest address, length, host offset (as queue.Chain gives them)


# -- ring errors: the chain is not a request -----------------------------------------------------
class MalformedRequest(VirtqueueError):
    """A chain that cannot carry a virtio-blk request."""


class MissingHeaders(MalformedRequest):
    """No device-readable header or no device-writable status byte."""


class HeaderTooShort(MalformedRequest):
    """Fewer than 16 device-readable bytes: no whole request header."""


class SegmentTooShort(MalformedRequest):
    """A discard/write-zeroes request without a whole 16-byte segment."""


# -- request errors: the request fails with a status ----------------------------------------------
class RequestError(Exception):
    """A request the device answers with a status other than OK. `written`: data bytes the
    device did put in the guest's buffers before it failed (they count in used.len)."""
    status = VIRTIO_BLK_S_IOERR

    def __init__(self, why: str = "", written: int = 0):
        super().__init__(why)
        self.written = written


class Unsupported(RequestError):
    """UNSUPP: an unknown or unnegotiated request type, or a variant the device does not do
    (more than one discard segment, unknown flags)."""
    status = VIRTIO_BLK_S_UNSUPP


class IoError(RequestError):
    """IOERR: a bad sector range, a write to a read-only disk, a failed host I/O or flush."""
    status = VIRTIO_BLK_S_IOERR


# -- the parsed request ---------------------------------------------------------------------------
class BlkRequest(NamedTuple):
    """One request as the device will carry it out. Immutable: parsing reads every guest field
    once, so later guest writes to the header cannot change what is executed."""
    head: int                     # the chain's head descriptor: the request's id in traces
    type: int                     # VIRTIO_BLK_T_*
    sector: int                   # from the header (ignored by types without a sector)
    out_data: tuple[Seg, ...]     # OUT: the device-readable data after the header
    out_len: int                  # device-readable bytes after the header
    in_data: tuple[Seg, ...]      # IN / GET_ID: the device-writable buffers without the status
    in_len: int                   # device-writable bytes without the status byte
    status_addr: int              # guest address of the status byte
    status_host: int              # its offset in the guest RAM buffer
    segment: tuple[int, int, int] | None    # DISCARD / WRITE_ZEROES: (sector, num_sectors, flags)

    @property
    def data_len(self) -> int:
        """The payload length the request names: what it reads for IN and GET_ID, what follows
        the header otherwise."""
        return self.in_len if self.type in (VIRTIO_BLK_T_IN, VIRTIO_BLK_T_GET_ID) else self.out_len

    @property
    def nsectors(self) -> int:
        """Sectors a read or write covers; 1 for the other types (they name one place, if any)."""
        if self.type in (VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT):
            return self.data_len // SECTOR
        return 1


_new = tuple.__new__


def gather(buf, segs: list[Seg], skip: int, length: int) -> bytes:
    """`length` bytes starting `skip` bytes into the scattered buffer, copied once."""
    out = bytearray()
    for _addr, n, host in segs:
        if skip >= n:
            skip -= n
            continue
        take = min(n - skip, length - len(out))
        out += buf[host + skip:host + skip + take]
        skip = 0
        if len(out) == length:
            break
    return bytes(out)


def _tail(segs: list[Seg], skip: int) -> tuple[Seg, ...]:
    """The segments after the first `skip` bytes."""
    out = []
    for addr, n, host in segs:
        if skip >= n:
            skip -= n
            continue
        out.append((addr + skip, n - skip, host + skip))
        skip = 0
    return tuple(out)


def _without_status(writable: list[Seg]) -> tuple[Seg, ...]:
    """The device-writable data: everything but the last byte (the status)."""
    segs = writable[:-1]
    addr, n, host = writable[-1]
    if n > 1:
        segs.append((addr, n - 1, host))
    return tuple(segs)


def parse(chain: Chain, buf, has_feature: Callable[[int], bool]) -> BlkRequest:
    """The request `chain` carries. Raises a MalformedRequest when it carries none; a
    discard/write-zeroes segment is required only once its feature is negotiated (without it
    the type is unsupported, whatever follows the header)."""
    if not chain.readable or not chain.writable:
        raise MissingHeaders("virtio-blk missing headers")
    if chain.readable_len < HEADER.size:
        raise HeaderTooShort("virtio-blk request outhdr too short")
    first = chain.readable[0]
    if first[1] >= HEADER.size:           # the usual case: the header in one descriptor
        rtype, _ioprio, sector = HEADER.unpack_from(buf, first[2])
    else:
        rtype, _ioprio, sector = HEADER.unpack(gather(buf, chain.readable, 0, HEADER.size))
    out_len = chain.readable_len - HEADER.size
    in_len = chain.writable_len - 1
    out_data: tuple[Seg, ...] = ()
    in_data: tuple[Seg, ...] = ()
    segment = None
    if rtype in (VIRTIO_BLK_T_IN, VIRTIO_BLK_T_GET_ID):
        in_data = _without_status(chain.writable)
    elif rtype == VIRTIO_BLK_T_OUT:
        out_data = _tail(chain.readable, HEADER.size)
    elif rtype in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
        feature = VIRTIO_BLK_F_DISCARD if rtype == VIRTIO_BLK_T_DISCARD else VIRTIO_BLK_F_WRITE_ZEROES
        if out_len >= DWZ_SEGMENT.size:
            segment = DWZ_SEGMENT.unpack(gather(buf, chain.readable, HEADER.size, DWZ_SEGMENT.size))
        elif has_feature(feature):
            raise SegmentTooShort("virtio-blk discard/write_zeroes header too short")
    last_addr, last_len, last_host = chain.writable[-1]
    # tuple.__new__ skips NamedTuple's Python-level constructor: half the cost, on every request.
    return _new(BlkRequest, (chain.head, rtype, sector, out_data, out_len, in_data, in_len,
                             last_addr + last_len - 1, last_host + last_len - 1, segment))
