"""Split virtqueues (VIRTIO 1.2 section 2.7): plain queue state, a bounded chain walker, and the
used-ring / notification-suppression bookkeeping.

Every field the guest controls is read exactly once into a Python int; the walker is a loop (no
recursion) bounded by the table it walks. Any spec violation raises `VirtqueueError`; the device
core turns that into DEVICE_NEEDS_RESET (QEMU's `virtio_error`). The rings themselves are checked
once, when the queue is activated, to lie wholly in guest RAM; after that their host offsets are
cached, which is safe because the size and addresses of an active queue are frozen.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable

from .. import trace, vmstate
from ..memory import GuestMemory, GuestMemoryError
from .spec import (VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT,
                   VIRTQ_DESC_F_WRITE)
from .rules import describe

QUEUE_MAX_SIZE = 1024          # as QEMU's VIRTQUEUE_MAX_SIZE; the spec allows up to 32768
# Buffers in one chain, however long its indirect table: QEMU maps a chain into at most
# VIRTQUEUE_MAX_SIZE (1024) iovecs and fails the device past that. It also bounds the walk.
MAX_BUFFERS = 1024
MAX_CHAIN_BYTES = 1 << 32      # spec: a chain describes at most 2^32 bytes

_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
_ELEM = struct.Struct("<II")

EV_POP = trace.Event("virtqueue_pop")
EV_FILL = trace.Event("virtqueue_fill")


def trace_pop(vq: int, chain: "Chain") -> None:
    """virtqueue_pop for either ring layout (callers check EV_POP.enabled first)."""
    EV_POP.emit(vq=vq, head=chain.head, in_num=len(chain.writable), out_num=len(chain.readable))


def trace_fill(vq: int, head: int, length: int, idx: int) -> None:
    EV_FILL.emit(vq=vq, head=head, len=length, idx=idx)


class VirtqueueError(Exception):
    """The guest broke the ring protocol; the message says how (QEMU's wording where it has one).
    Each kind of violation is its own subclass, so callers and tests tell them apart by type."""


# Ring layout, checked when the driver enables a queue (2.7).
class BadQueueSize(VirtqueueError):
    """The queue size is not a power of 2 or exceeds the device's maximum (2.7)."""


class MisalignedRings(VirtqueueError):
    """Descriptor table, avail or used ring not aligned as 2.7 requires."""


class RingsNotInRam(VirtqueueError):
    """A ring does not lie wholly in guest RAM."""


class QueueNotActive(VirtqueueError):
    """A chain was asked of a queue that is not set up (debuggers' peek)."""


# The avail ring (2.7.6).
class AvailIndexTooFar(VirtqueueError):
    """The driver moved avail->idx further ahead than the ring holds."""


class QueueSizeExceeded(VirtqueueError):
    """More chains in flight than the queue has entries."""


class BadHeadIndex(VirtqueueError):
    """An avail ring entry names a descriptor beyond the table."""


class HeadInFlight(VirtqueueError):
    """An avail ring entry names a chain the device has not completed yet."""


# Descriptor chains (2.7.5, 2.7.5.3).
class LoopedDescriptor(VirtqueueError):
    """A chain longer than its table: it loops."""


class NestedIndirect(VirtqueueError):
    """An indirect table points at another indirect table (2.7.5.3.1)."""


class IndirectNotNegotiated(VirtqueueError):
    """An indirect descriptor without VIRTIO_F_INDIRECT_DESC."""


class IndirectWithNext(VirtqueueError):
    """An indirect descriptor with NEXT set (2.7.5.3.1)."""


class BadIndirectSize(VirtqueueError):
    """An indirect table whose length is zero or not a multiple of 16 bytes."""


class TooManyBuffers(VirtqueueError):
    """A chain of more than MAX_BUFFERS buffers (QEMU: "too many descriptors")."""


class ChainLongerThanQueue(VirtqueueError):
    """A chain of more descriptors than the queue size (2.7.5.3.1, 2.8.17): refused only by a
    strict device; QEMU carries it out up to MAX_BUFFERS."""


def too_many_buffers(writable: bool) -> TooManyBuffers:
    kind = "write" if writable else "read"
    return TooManyBuffers(f"virtio: too many {kind} descriptors in indirect table "
                          f"(more than {MAX_BUFFERS} buffers in one chain)")


class BufferNotInRam(VirtqueueError):
    """A buffer or indirect table that does not lie wholly in guest RAM."""


class ZeroSizedBuffer(VirtqueueError):
    """A descriptor of length 0."""


class DescriptorOrder(VirtqueueError):
    """A device-readable descriptor after a device-writable one (2.7.4.2)."""


class ChainTooLong(VirtqueueError):
    """A chain describing more than 2^32 bytes (2.7.5.2)."""


class BadNextIndex(VirtqueueError):
    """A `next` field beyond the table."""


class Chain:
    """One descriptor chain, already walked and checked: device-readable buffers first, then
    device-writable ones, as (guest address, length, host offset in mem.buf) triples, each
    wholly inside RAM (the host offset saves the device a second lookup)."""
    __slots__ = ("head", "readable", "writable", "readable_len", "writable_len")

    def __init__(self, head: int):
        self.head = head
        self.readable: list[tuple[int, int, int]] = []
        self.writable: list[tuple[int, int, int]] = []
        self.readable_len = 0
        self.writable_len = 0

    def __repr__(self) -> str:
        r = " ".join(f"{a:#x}+{n}" for a, n, _ in self.readable)
        w = " ".join(f"{a:#x}+{n}" for a, n, _ in self.writable)
        return f"Chain(head={self.head} out=[{r}] in=[{w}])"


@dataclass(frozen=True)
class QueueState:
    """A split queue's state at one instant: what the driver set up and how far the device
    got. The debuggers print it; a snapshot of the device saves it."""
    index: int
    size: int                     # entries the driver chose (at most max_size)
    max_size: int                 # entries the device offers
    enabled: bool                 # queue_enable / a legacy PFN written
    active: bool                  # rings checked and in use
    desc_addr: int
    avail_addr: int
    used_addr: int
    last_avail_idx: int           # the next avail position the device takes
    used_idx: int                 # the device's used->idx
    inflight: tuple[int, ...]     # heads taken and not yet completed, sorted
    event_idx: bool               # VIRTIO_F_EVENT_IDX negotiated
    indirect: bool                # VIRTIO_F_INDIRECT_DESC negotiated
    pending_kick: bool            # kicked before DRIVER_OK
    signalled_used: int           # used->idx at the last interrupt (EVENT_IDX bookkeeping)
    signalled_valid: bool
    packed: bool = False          # a packed ring (packed.py): the indices are ring slots, and
    avail_wrap: bool = True       # these are the device's wrap counters
    used_wrap: bool = True

    @property
    def inflight_count(self) -> int:
        return len(self.inflight)


def is_power_of_2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class SplitQueue:
    """A split virtqueue. The transport writes `size`, `desc_addr`, `avail_addr`, `used_addr`
    and `enabled`; the device pops chains and pushes completions."""

    # Saved for both layouts (the wrap counters and buffer slot counts only mean something for
    # a packed ring); host offsets are re-derived from the addresses (post_load).
    VMSTATE = vmstate.Description("virtqueue", 1, tuple(vmstate.Field(n, k) for n, k in (
        ("packed", vmstate.BOOL), ("size", vmstate.U16), ("enabled", vmstate.BOOL),
        ("desc_addr", vmstate.U64), ("avail_addr", vmstate.U64), ("used_addr", vmstate.U64),
        ("last_avail_idx", vmstate.U16), ("used_idx", vmstate.U16),
        ("inflight", vmstate.List(vmstate.U16, QUEUE_MAX_SIZE)), ("event_idx", vmstate.BOOL),
        ("indirect", vmstate.BOOL), ("active", vmstate.BOOL), ("pending_kick", vmstate.BOOL),
        ("_signalled_used", vmstate.U16), ("_signalled_valid", vmstate.BOOL),
        ("avail_wrap", vmstate.BOOL), ("used_wrap", vmstate.BOOL),
        ("ndescs", vmstate.List(vmstate.Tuple(vmstate.U16, vmstate.U16), QUEUE_MAX_SIZE)))))
    avail_wrap = used_wrap = True

    @property
    def packed(self) -> bool:
        return False

    @packed.setter
    def packed(self, value: bool) -> None:
        pass                        # the layout is the class's (VirtioDevice.pre_load picks it)

    @property
    def ndescs(self) -> tuple:
        return tuple(sorted(getattr(self, "_ndescs", {}).items()))

    @ndescs.setter
    def ndescs(self, items) -> None:
        if hasattr(self, "_ndescs"):
            self._ndescs = dict(items)

    def post_load(self) -> None:
        if self.active:
            self._map_rings()

    def __init__(self, index: int, max_size: int, handler: Callable[["SplitQueue"], None], mem: GuestMemory):
        self.index = index
        self.max_size = max_size
        self.handler = handler
        self.mem = mem
        # violation(rule, **fields) -> True to refuse: the device's driver-rule policy (rules.py).
        # A queue on its own refuses, as the spec lets a device do.
        self.violation: Callable[..., bool] = lambda key, **fields: True
        self.reset()

    @classmethod
    def like(cls, q: "SplitQueue") -> "SplitQueue":
        """A queue of this layout carrying q's configuration: the layout is only known once the
        driver's features are, so the device swaps its queues as VIRTIO_F_RING_PACKED comes and
        goes (packed.py)."""
        new = cls(q.index, q.max_size, q.handler, q.mem)
        new.violation = q.violation
        new.size, new.enabled = q.size, q.enabled
        new.desc_addr, new.avail_addr, new.used_addr = q.desc_addr, q.avail_addr, q.used_addr
        return new

    def reset(self) -> None:
        # Each reset starts a new generation: a request taken before it and finishing after it
        # (on an I/O thread) sees the change and never completes on the new rings.
        self.generation = getattr(self, "generation", -1) + 1
        self.size = self.max_size
        self.enabled = False
        self.desc_addr = self.avail_addr = self.used_addr = 0
        self.last_avail_idx = 0
        self.used_idx = 0
        self.inflight: set[int] = set()
        self.event_idx = False            # VIRTIO_F_RING_EVENT_IDX negotiated
        self.indirect = False             # VIRTIO_F_INDIRECT_DESC negotiated
        self.active = False               # rings checked and host offsets cached
        self.pending_kick = False         # kicked before DRIVER_OK: handled when it comes
        self._signalled_used = 0
        self._signalled_valid = False
        self._d = self._a = self._u = 0
        self._dw_buf = self._uw_buf = self.mem.buf    # where ring writes go (see _map_rings)
        self._dw = self._uw = 0

    @property
    def inflight_count(self) -> int:
        return len(self.inflight)

    def state(self) -> QueueState:
        return QueueState(self.index, self.size, self.max_size, self.enabled, self.active,
                          self.desc_addr, self.avail_addr, self.used_addr, self.last_avail_idx,
                          self.used_idx, tuple(sorted(self.inflight)), self.event_idx,
                          self.indirect, self.pending_kick, self._signalled_used,
                          self._signalled_valid)

    # -- set-up ----------------------------------------------------------------------------
    def ring_sizes(self) -> tuple[int, int, int]:
        n = self.size
        return 16 * n, 6 + 2 * n, 6 + 8 * n

    def activate(self) -> None:
        """Check the ring layout (spec 2.7 alignment, wholly in RAM) and cache host offsets."""
        n = self.size
        if not is_power_of_2(n) or n > self.max_size:
            raise BadQueueSize(f"queue {self.index}: bad size {n}")
        if self.desc_addr % 16 or self.avail_addr % 2 or self.used_addr % 4:
            raise MisalignedRings(f"queue {self.index}: misaligned rings desc={self.desc_addr:#x} "
                                 f"avail={self.avail_addr:#x} used={self.used_addr:#x}")
        self._map_rings()

    def _map_rings(self) -> None:
        """Cache the host offsets of the three ring areas (each wholly in RAM) and where the
        device's writes to them go, and go active. Called again whenever the memory map changes
        (`remap`), as QEMU rebuilds its ring caches: a ring in shadow RAM the chipset has since
        write-protected is still read from RAM, but the device's writes to it are lost, as
        QEMU's and a real PC's are."""
        dsz, asz, usz = self.ring_sizes()
        mem = self.mem
        try:
            self._d = mem.host_offset(self.desc_addr, dsz)
            self._a = mem.host_offset(self.avail_addr, asz)
            self._u = mem.host_offset(self.used_addr, usz)
        except GuestMemoryError as e:
            raise RingsNotInRam(f"queue {self.index}: cannot map rings ({e})") from None
        self._dw_buf, self._dw = self._write_target(self.desc_addr, dsz, self._d)
        self._uw_buf, self._uw = self._write_target(self.used_addr, usz, self._u)
        self.active = True

    def _write_target(self, gpa: int, size: int, off: int):
        """(buffer, offset) the device writes a ring area through: guest RAM, or for an area
        in a read-only window a private copy (the device reads back what it wrote, RAM keeps
        what the driver put there)."""
        if self.mem.writable(gpa, size):
            return self.mem.buf, off
        return bytearray(self.mem.buf[off:off + size]), 0

    def remap(self) -> None:
        """The memory map changed (the chipset remapped shadow RAM): look the rings up again.
        Raises RingsNotInRam if a ring is no longer in RAM at all."""
        if self.active:
            self._map_rings()

    # -- reading the avail ring ------------------------------------------------------------
    def available(self) -> int:
        """How many chains the driver has made available that the device has not taken yet.
        Raises VirtqueueError if the driver moved its index further than the ring holds."""
        last = self.last_avail_idx
        idx = _U16.unpack_from(self.mem.buf, self._a + 2)[0]
        pending = (idx - last) & 0xFFFF
        if pending > self.size:
            raise AvailIndexTooFar(f"Guest moved avail index from {last} to {idx}")
        return pending

    def pop(self) -> Chain | None:
        """The next available chain, or None. Raises VirtqueueError on a protocol violation."""
        if not self.available():
            return None
        return self.take()

    def take(self) -> Chain:
        """The next chain, when `available()` said there is one (the device's batch loop reads
        the avail index once per batch instead of once per chain). Raises VirtqueueError on a
        protocol violation."""
        size = self.size
        last = self.last_avail_idx
        if len(self.inflight) >= size:
            raise QueueSizeExceeded("Virtqueue size exceeded")
        head = _U16.unpack_from(self.mem.buf, self._a + 4 + 2 * (last % size))[0]
        if head >= size:
            raise BadHeadIndex(f"Guest says index {head} is available")
        if head in self.inflight:
            raise HeadInFlight(f"head {head} made available while already in flight")
        chain = self.walk(head)
        self.last_avail_idx = (last + 1) & 0xFFFF
        self.inflight.add(head)
        if EV_POP.enabled:
            EV_POP.emit(vq=self.index, head=head, in_num=len(chain.writable), out_num=len(chain.readable))
        return chain

    def walk(self, head: int) -> Chain:
        """Follow a chain from `head` through the table (and at most one indirect table)."""
        mem = self.mem
        buf = mem.buf
        host_offset = mem.host_offset
        chain = Chain(head)
        readable, writable = chain.readable, chain.writable
        rlen = wlen = 0
        table = self._d
        limit = self.size
        in_indirect = False
        i = head
        count = 0
        while True:
            count += 1
            if count > limit:
                raise LoopedDescriptor("Looped descriptor")
            addr, length, flags, nxt = _DESC.unpack_from(buf, table + 16 * i)
            if flags & VIRTQ_DESC_F_INDIRECT:
                if in_indirect:
                    raise NestedIndirect("nested indirect descriptor")
                if not self.indirect and self.violation("indirect-not-negotiated"):
                    raise IndirectNotNegotiated(describe("indirect-not-negotiated"))
                if flags & VIRTQ_DESC_F_NEXT:
                    raise IndirectWithNext("indirect descriptor with NEXT set")
                if length == 0 or length % 16:
                    raise BadIndirectSize(f"Invalid size for indirect buffer table ({length})")
                try:
                    table = host_offset(addr, length)
                except GuestMemoryError:
                    raise BufferNotInRam(f"Cannot map indirect buffer {addr:#x}+{length:#x}") from None
                limit = length // 16
                in_indirect = True
                i = 0
                count = 0
                continue
            if length == 0:
                raise ZeroSizedBuffer("zero sized buffers are not allowed")
            try:
                host = host_offset(addr, length, flags & VIRTQ_DESC_F_WRITE != 0)
            except GuestMemoryError as e:
                raise BufferNotInRam(f"bogus descriptor {addr:#x}+{length:#x} ({e})") from None
            if len(readable) + len(writable) >= MAX_BUFFERS:
                raise too_many_buffers(bool(flags & VIRTQ_DESC_F_WRITE))
            if flags & VIRTQ_DESC_F_WRITE:
                writable.append((addr, length, host))
                wlen += length
            else:
                if writable:
                    raise DescriptorOrder("Incorrect order for descriptors")
                readable.append((addr, length, host))
                rlen += length
            if rlen + wlen > MAX_CHAIN_BYTES:
                raise ChainTooLong("descriptor chain longer than 4 GiB")
            if not flags & VIRTQ_DESC_F_NEXT:
                break
            i = nxt
            if i >= limit:
                raise BadNextIndex(f"Desc next is {i}")
        chain.readable_len = rlen
        chain.writable_len = wlen
        n = len(readable) + len(writable)
        if n > self.size and self.violation("chain-longer-than-queue", n=n, size=self.size):
            raise ChainLongerThanQueue(describe("chain-longer-than-queue", n=n, size=self.size))
        return chain

    def peek(self, pos: int) -> Chain:
        """Decode the chain at avail ring position `pos` (a free-running u16 index) without
        consuming it: for debuggers and monitors. Raises VirtqueueError if it is malformed."""
        if not self.active:
            raise QueueNotActive(f"queue {self.index} is not active")
        head = _U16.unpack_from(self.mem.buf, self._a + 4 + 2 * (pos % self.size))[0]
        if head >= self.size:
            raise BadHeadIndex(f"Guest says index {head} is available")
        return self.walk(head)

    # -- the used ring -----------------------------------------------------------------------
    def push(self, head: int, length: int) -> None:
        """Complete `head` with `length` = bytes the device wrote. len is stored before idx.
        A queue that is not active (reset, never set up) has no rings: nothing is written."""
        if not self.active:
            return
        self.inflight.discard(head)
        if EV_FILL.enabled:
            EV_FILL.emit(vq=self.index, head=head, len=length, idx=self.used_idx)
        mem = self.mem
        ubuf, u = self._uw_buf, self._uw
        slot = 4 + 8 * (self.used_idx % self.size)
        _ELEM.pack_into(ubuf, u + slot, head, length)
        mem.notify_write(self.used_addr + slot, 8)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        _U16.pack_into(ubuf, u + 2, self.used_idx)
        mem.notify_write(self.used_addr + 2, 2)

    def should_notify(self) -> bool:
        """May the device interrupt for the buffers used since the last interrupt? (2.7.7/2.7.10)
        With EVENT_IDX: only if used_event lies in the range just published; without: unless
        the driver set NO_INTERRUPT. used_event/flags only gate interrupts, never index memory."""
        buf = self.mem.buf
        if self.event_idx:
            new = self.used_idx
            old = self._signalled_used
            valid = self._signalled_valid
            self._signalled_used = new
            self._signalled_valid = True
            used_event = _U16.unpack_from(buf, self._a + 4 + 2 * self.size)[0]
            return not valid or ((new - used_event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
        return not (_U16.unpack_from(buf, self._a)[0] & VIRTQ_AVAIL_F_NO_INTERRUPT)

    def driver_polls(self) -> bool:
        """Has the driver switched used-buffer notifications off for every chain now in flight
        (NO_INTERRUPT, or with EVENT_IDX a used_event no completion of them reaches)? Then it
        looks at the used ring itself rather than wait for an interrupt. A hint for when to
        complete, never used to index anything."""
        if not self.active:
            return False
        buf = self.mem.buf
        if self.event_idx:
            used_event = _U16.unpack_from(buf, self._a + 4 + 2 * self.size)[0]
            return ((used_event - self.used_idx) & 0xFFFF) >= len(self.inflight)
        return bool(_U16.unpack_from(buf, self._a)[0] & VIRTQ_AVAIL_F_NO_INTERRUPT)

    def suppresses_interrupts(self) -> bool:
        """Will the next `size` completions raise no used-buffer notification, as things stand
        (NO_INTERRUPT; with EVENT_IDX a used_event outside the next `size` used indices, as a
        polling driver leaves it)? A hint for where to run requests, never used to index."""
        if not self.active:
            return False
        buf = self.mem.buf
        if self.event_idx:
            used_event = _U16.unpack_from(buf, self._a + 4 + 2 * self.size)[0]
            return ((used_event - self.used_idx) & 0xFFFF) >= self.size
        return bool(_U16.unpack_from(buf, self._a)[0] & VIRTQ_AVAIL_F_NO_INTERRUPT)

    def _ask_for_kicks(self) -> None:
        """Ask the driver to kick for what it adds next: with EVENT_IDX avail_event = the avail
        index seen so far, else used->flags without NO_NOTIFY. The device never turns kicks off
        (requests complete inside the kick, on the one vCPU). A field that already holds the
        value is not rewritten (each host write costs a code-cache check)."""
        ubuf, u = self._uw_buf, self._uw
        if self.event_idx:
            off = 4 + 8 * self.size
            idx = _U16.unpack_from(self.mem.buf, self._a + 2)[0]
            if _U16.unpack_from(ubuf, u + off)[0] != idx:
                _U16.pack_into(ubuf, u + off, idx)
                self.mem.notify_write(self.used_addr + off, 2)
            return
        if _U16.unpack_from(ubuf, u)[0] != 0:         # no NO_NOTIFY (nor any other bit)
            _U16.pack_into(ubuf, u, 0)
            self.mem.notify_write(self.used_addr, 2)

    def rearm_kicks(self) -> bool:
        """Ask for the next kick (_ask_for_kicks) and say whether chains are already waiting:
        the caller handles those now instead of waiting for a kick that may not come."""
        self._ask_for_kicks()
        return _U16.unpack_from(self.mem.buf, self._a + 2)[0] != self.last_avail_idx
