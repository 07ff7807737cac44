"""Packed virtqueues (VIRTIO 1.2 section 2.8): one descriptor ring both sides write, wrap
counters instead of indices, buffer IDs, indirect tables, and the two event-suppression
structures (the driver's at queue_driver, the device's at queue_device).

`PackedQueue` offers the device the same calls as `SplitQueue` (available / take / push /
should_notify / rearm_kicks), so a device handler serves either. The rules are the split ring's:
every guest field is read once, a chain is bounded by the ring (an indirect table by its length),
every buffer must lie wholly in RAM, and any violation raises the same `VirtqueueError`
subclasses, which the core turns into DEVICE_NEEDS_RESET.

Device state: `last_avail_idx` / `avail_wrap` is the next ring slot the device reads and the
wrap counter it expects there; `used_idx` / `used_wrap` is the next slot it writes a used
descriptor to. A descriptor is available when its AVAIL flag equals the device's avail wrap
counter and its USED flag does not (2.8.1). A chain of n descriptors is completed by one used
descriptor (id = the buffer ID, from the chain's last descriptor), after which the used position
moves on by n (2.8.7).
"""

from __future__ import annotations

import struct

from ..memory import GuestMemoryError
from .queue import (EV_FILL, EV_POP, MAX_BUFFERS, MAX_CHAIN_BYTES, BadIndirectSize, BadQueueSize,
                    BufferNotInRam, Chain, ChainLongerThanQueue, ChainTooLong, DescriptorOrder, HeadInFlight,
                    IndirectNotNegotiated, QueueSizeExceeded,
                    IndirectWithNext, LoopedDescriptor, MisalignedRings,
                    NestedIndirect, QueueNotActive, QueueState, SplitQueue, trace_fill, trace_pop,
                    VirtqueueError, ZeroSizedBuffer, too_many_buffers)
from .rules import describe
from .spec import (RING_EVENT_FLAGS_DESC, RING_EVENT_FLAGS_DISABLE, RING_EVENT_FLAGS_ENABLE,
                   VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_USED,
                   VIRTQ_DESC_F_WRITE)

_PDESC = struct.Struct("<QIHH")        # addr, len, id, flags
_EVENT = struct.Struct("<HH")          # off_wrap, flags
_ID_LEN = struct.Struct("<IH")         # len, id: written before the flags
_U16 = struct.Struct("<H")
PACKED_MAX_SIZE = 32768
                # 2.8: sizes need not be powers of 2, up to 2^15


class PackedQueue(SplitQueue):
    """A packed virtqueue; the transport programs it exactly as a split one."""
    @property
    def packed(self) -> bool:
        return True

    @packed.setter
    def packed(self, value: bool) -> None:
        pass

    def reset(self) -> None:
        super().reset()
        self.avail_wrap = True            # 2.8.1: both wrap counters start at 1
        self.used_wrap = True
        self._ndescs: dict[int, int] = {}  # buffer ID -> ring slots its chain took

    def state(self) -> QueueState:
        s = super().state()
        return QueueState(**{**s.__dict__, "packed": True, "avail_wrap": self.avail_wrap,
                             "used_wrap": self.used_wrap})

    # -- set-up ----------------------------------------------------------------------------
    def ring_sizes(self) -> tuple[int, int, int]:
        return 16 * self.size, _EVENT.size, _EVENT.size

    def activate(self) -> None:
        n = self.size
        if not 1 <= n <= min(self.max_size, PACKED_MAX_SIZE):
            raise BadQueueSize(f"queue {self.index}: bad size {n}")
        if self.desc_addr % 16 or self.avail_addr % 4 or self.used_addr % 4:
            raise MisalignedRings(f"queue {self.index}: misaligned rings desc={self.desc_addr:#x} "
                                  f"driver={self.avail_addr:#x} device={self.used_addr:#x}")
        self._map_rings()

    # -- the driver's side of the ring ------------------------------------------------------
    def _is_avail(self, slot: int, wrap: bool) -> bool:
        flags = _U16.unpack_from(self.mem.buf, self._d + 16 * slot + 14)[0]
        return bool(flags & VIRTQ_DESC_F_AVAIL) == wrap and bool(flags & VIRTQ_DESC_F_USED) != wrap

    def available(self) -> int:
        """1 when the next slot holds an available chain, else 0 (a packed ring has no index
        to count by; the device's batch loop asks again after each chain)."""
        return int(self._is_avail(self.last_avail_idx, self.avail_wrap))

    def take(self) -> Chain:
        if len(self.inflight) >= self.size:
            raise QueueSizeExceeded("Virtqueue size exceeded")
        chain, ndescs, slot, wrap = self._walk(self.last_avail_idx, self.avail_wrap)
        if chain.head in self._ndescs:
            raise HeadInFlight(f"buffer id {chain.head} made available while already in flight")
        self.last_avail_idx, self.avail_wrap = slot, wrap
        self._ndescs[chain.head] = ndescs
        self.inflight.add(chain.head)
        if EV_POP.enabled:
            trace_pop(self.index, chain)
        return chain

    def peek(self, pos: int | None = None) -> Chain:
        """The chain at ring slot `pos` (default: the next one the device takes), not consumed."""
        if not self.active:
            raise QueueNotActive(f"queue {self.index} is not active")
        slot = self.last_avail_idx if pos is None else pos % self.size
        if not self._is_avail(slot, self.avail_wrap):
            raise VirtqueueError(f"slot {slot} holds no available descriptor")
        return self._walk(slot, self.avail_wrap)[0]

    def _walk(self, slot: int, wrap: bool) -> tuple[Chain, int, int, bool]:
        """Walk the chain starting at ring `slot`: (chain with head = its buffer ID, ring slots
        it takes, the slot and wrap counter after it)."""
        mem = self.mem
        buf, host_offset = mem.buf, mem.host_offset
        size = self.size
        chain = Chain(0)
        total = [0]

        def add(addr: int, length: int, writable: bool) -> None:
            if length == 0:
                raise ZeroSizedBuffer("zero sized buffers are not allowed")
            try:
                host = host_offset(addr, length, writable)
            except GuestMemoryError as e:
                raise BufferNotInRam(f"bogus descriptor {addr:#x}+{length:#x} ({e})") from None
            if len(chain.readable) + len(chain.writable) >= MAX_BUFFERS:
                raise too_many_buffers(writable)
            if writable:
                chain.writable.append((addr, length, host))
                chain.writable_len += length
            else:
                if chain.writable:
                    raise DescriptorOrder("Incorrect order for descriptors")
                chain.readable.append((addr, length, host))
                chain.readable_len += length
            total[0] += length
            if total[0] > MAX_CHAIN_BYTES:
                raise ChainTooLong("descriptor chain longer than 4 GiB")

        count = 0
        while True:
            count += 1
            if count > size:
                raise LoopedDescriptor("Looped descriptor")
            addr, length, bid, flags = _PDESC.unpack_from(buf, self._d + 16 * slot)
            slot += 1
            if slot == size:
                slot, wrap = 0, not wrap
            chain.head = bid                      # the buffer ID is the last descriptor's
            if flags & VIRTQ_DESC_F_INDIRECT:
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
                # 2.8.19: the table's entries are used in order; their NEXT flags mean nothing.
                for k in range(length // 16):
                    a, n, _id, f = _PDESC.unpack_from(buf, table + 16 * k)
                    if f & VIRTQ_DESC_F_INDIRECT:
                        raise NestedIndirect("nested indirect descriptor")
                    add(a, n, bool(f & VIRTQ_DESC_F_WRITE))
                break
            add(addr, length, bool(flags & VIRTQ_DESC_F_WRITE))
            if not flags & VIRTQ_DESC_F_NEXT:
                break
        n = len(chain.readable) + len(chain.writable)
        if n > size and self.violation("list-longer-than-queue", n=n, size=size):
            raise ChainLongerThanQueue(describe("list-longer-than-queue", n=n, size=size))
        return chain, count, slot, wrap

    # -- the device's side ------------------------------------------------------------------
    def push(self, head: int, length: int) -> None:
        """Complete buffer `head` with `length` bytes written: id and len first, then the flags
        that hand the slot back (2.8.7). Nothing on a queue that is not active."""
        if not self.active:
            return
        self.inflight.discard(head)
        ndescs = self._ndescs.pop(head, 1)
        if EV_FILL.enabled:
            trace_fill(self.index, head, length, self.used_idx)
        mem = self.mem
        off = 16 * self.used_idx
        dbuf, d = self._dw_buf, self._dw          # guest RAM, unless write-protected (_map_rings)
        _ID_LEN.pack_into(dbuf, d + off + 8, length & 0xFFFFFFFF, head)
        flags = VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED if self.used_wrap else 0
        _U16.pack_into(dbuf, d + off + 14, flags)
        mem.notify_write(self.desc_addr + off + 8, 8)
        used = self.used_idx + ndescs
        if used >= self.size:
            used -= self.size
            self.used_wrap = not self.used_wrap
        self.used_idx = used

    def should_notify(self) -> bool:
        """The driver's event suppression structure (2.8.10): ENABLE, DISABLE, or (with
        EVENT_IDX) DESC: interrupt once the device has used the slot off_wrap names."""
        off_wrap, flags = _EVENT.unpack_from(self.mem.buf, self._a)
        new, old, valid = self.used_idx, self._signalled_used, self._signalled_valid
        self._signalled_used, self._signalled_valid = new, True
        if flags == RING_EVENT_FLAGS_DISABLE:
            return False
        if flags == RING_EVENT_FLAGS_ENABLE or not self.event_idx:
            return True
        if not valid:
            return True
        off = off_wrap & 0x7FFF
        if bool(off_wrap >> 15) != self.used_wrap:
            off -= self.size                      # the slot is on the previous lap
        return ((new - off - 1) & 0xFFFF) < ((new - old) & 0xFFFF)

    def driver_polls(self) -> bool:
        """Has the driver disabled used-buffer notifications (flags DISABLE)? Then it polls
        the ring (see SplitQueue.driver_polls)."""
        if not self.active:
            return False
        return _EVENT.unpack_from(self.mem.buf, self._a)[1] == RING_EVENT_FLAGS_DISABLE

    def _ask_for_kicks(self) -> None:
        """The device's event suppression structure: ENABLE, or with EVENT_IDX a kick once the
        driver makes the slot after the last one seen available (DESC). The device never
        turns kicks off (DISABLE): requests complete inside the kick."""
        ubuf, u = self._uw_buf, self._uw
        off_wrap, flags = _EVENT.unpack_from(ubuf, u)
        want_flags = RING_EVENT_FLAGS_ENABLE
        if self.event_idx:
            want_flags = RING_EVENT_FLAGS_DESC
            want = self.last_avail_idx | (0x8000 if self.avail_wrap else 0)
            if off_wrap != want:
                _U16.pack_into(ubuf, u, want)
                self.mem.notify_write(self.used_addr, 2)
        if flags != want_flags:
            _U16.pack_into(ubuf, u + 2, want_flags)
            self.mem.notify_write(self.used_addr + 2, 2)

    def rearm_kicks(self) -> bool:
        self._ask_for_kicks()
        return self._is_avail(self.last_avail_idx, self.avail_wrap)
