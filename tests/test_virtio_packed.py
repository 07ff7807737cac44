"""Packed virtqueues (VIRTIO 1.2 §2.8, QEMU's packed=on): a driver-side packed ring in the style
of tests/virtio_driver.py's Vring, then requests through it (wrap counters, buffer IDs, chains
and indirect tables, both event-suppression structures) and every hostile ring the split-ring
tests try: each must put the device in DEVICE_NEEDS_RESET without touching the used side."""

from __future__ import annotations

import struct

import pytest

from virtio_driver import (ACK, DRIVER, DRIVER_OK, FEATURES_OK, F_EVENT_IDX, F_INDIRECT, INDIRECT, NEXT,
                           S_OK, T_IN, T_OUT, WRITE, BlkRequests, benches, pattern)
from machine.config import ConfigError
from machine.virtio import queue as Q
from machine.virtio.packed import PackedQueue

F_PACKED = 34
AVAIL, USED = 1 << 7, 1 << 15
ENABLE, DISABLE, DESC = 0, 1, 2


class PackedRing:
    """Driver side of one packed virtqueue (2.8.13, 2.8.21)."""

    def __init__(self, mem, alloc, size):
        self.mem, self.alloc, self.size = mem, alloc, size
        self.desc = alloc.alloc(16 * size, 16)
        self.driver = alloc.alloc(4, 4)           # driver event suppression
        self.device = alloc.alloc(4, 4)           # device event suppression
        for a, n in ((self.desc, 16 * size), (self.driver, 4), (self.device, 4)):
            mem.fill(a, n)
        self.next, self.wrap = 0, True
        self.used_next, self.used_wrap = 0, True
        self.next_id = 0
        self.ndescs: dict[int, int] = {}
        self.pending: dict[int, tuple[int, int]] = {}   # id -> (first slot, its flags)

    def avail_bits(self, wrap: bool) -> int:
        return AVAIL if wrap else USED

    def write_desc(self, slot, addr, length, bid, flags):
        self.mem.write(self.desc + 16 * slot, struct.pack("<QIHH", addr, length, bid, flags))

    def add_chain(self, parts, *, indirect=False) -> int:
        bid = self.next_id
        self.next_id = (self.next_id + 1) % self.size
        if indirect:
            table = self.alloc.alloc(16 * len(parts), 16)
            for k, (a, n, w) in enumerate(parts):
                self.mem.write(table + 16 * k, struct.pack("<QIHH", a, n, 0, WRITE if w else 0))
            parts = [(table, 16 * len(parts), None)]
        first = self.next
        for k, (a, n, w) in enumerate(parts):
            flags = (INDIRECT if w is None else (WRITE if w else 0)) | (NEXT if k < len(parts) - 1 else 0)
            flags |= self.avail_bits(self.wrap)
            if k == 0:
                self.pending[bid] = (first, flags)
                self.write_desc(self.next, a, n, bid, 0 if self.wrap else AVAIL | USED)   # not yet
            else:
                self.write_desc(self.next, a, n, bid, flags)
            self.next += 1
            if self.next == self.size:
                self.next, self.wrap = 0, not self.wrap
        self.ndescs[bid] = len(parts)
        return bid

    def publish(self, bid, bump=True):
        slot, flags = self.pending.pop(bid)
        self.mem.write_u16(self.desc + 16 * slot + 14, flags)    # the first flags last (2.8.21)

    def get_used(self):
        out = []
        while True:
            flags = self.mem.read_u16(self.desc + 16 * self.used_next + 14)
            if bool(flags & AVAIL) != self.used_wrap or bool(flags & USED) != self.used_wrap:
                return out
            length, bid = struct.unpack("<IH", self.mem.read(self.desc + 16 * self.used_next + 8, 6))
            out.append((bid, length))
            self.used_next += self.ndescs.pop(bid)
            if self.used_next >= self.size:
                self.used_next -= self.size
                self.used_wrap = not self.used_wrap

    def set_driver_event(self, off_wrap, flags):
        self.mem.write(self.driver, struct.pack("<HH", off_wrap, flags))

    def device_event(self):
        return struct.unpack("<HH", self.mem.read(self.device, 4))


@pytest.fixture
def make(tmp_path):
    yield from benches(tmp_path)


def start(b, size=None, features=None, *, driver_ok=True):
    d = b.drv
    d.set_status(0)
    d.set_status(ACK | DRIVER)
    d.write_features(d.device_features() if features is None else features)
    d.set_status(ACK | DRIVER | FEATURES_OK)
    assert d.status & FEATURES_OK
    d.common_write(0x16, 2, 0)
    if size is not None:
        d.common_write(0x18, 2, size)
    ring = PackedRing(b.mem, b.alloc, d.common_read(0x18, 2))
    d.write64(0x20, ring.desc)
    d.write64(0x28, ring.driver)
    d.write64(0x30, ring.device)
    d.common_write(0x1C, 2, 1)
    if driver_ok:
        d.set_status(ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    b.vqs = [ring]
    b.blk = BlkRequests(ring)
    return ring


def packed_bench(make, **props):
    return make(props={"packed": "on", **props})


def submit_raw(b, ring, descs, bid=0):
    """Raw packed descriptors (addr, len, flags) from the ring's next slot, made available."""
    for k, (a, n, f) in enumerate(descs):
        flags = f | ring.avail_bits(ring.wrap)
        ring.write_desc(ring.next, a, n, bid, flags)
        ring.next += 1
        if ring.next == ring.size:
            ring.next, ring.wrap = 0, not ring.wrap
    b.drv.kick(0)


def buf(b, n):
    return b.alloc.alloc(n, 16)


def assert_broken(b, ring):
    assert b.needs_reset and b.vdev.broken
    assert ring.get_used() == []
    b.drv.kick(0)                                  # ignored until reset
    assert ring.get_used() == []


# -- negotiation ------------------------------------------------------------------------------------

def test_ring_packed_is_offered_only_with_packed_on(make):
    assert not make().drv.device_features() >> F_PACKED & 1
    assert packed_bench(make).drv.device_features() >> F_PACKED & 1


def test_bad_packed_value_is_a_config_error(tmp_path):
    from virtio_driver import Bench
    with pytest.raises(ConfigError, match="Property 'packed' doesn't take value 'maybe'"):
        Bench(tmp_path, props={"packed": "maybe"})


def test_negotiating_packed_gives_packed_queues_and_reset_gives_split_again(make):
    b = packed_bench(make)
    start(b)
    assert isinstance(b.vdev.queues[0], PackedQueue) and b.vdev.state().queues[0].packed
    b.drv.set_status(0)
    assert type(b.vdev.queues[0]) is Q.SplitQueue
    b.start(features=b.drv.device_features() & ~(1 << F_PACKED))
    assert type(b.vdev.queues[0]) is Q.SplitQueue
    assert b.run(T_IN, 0, in_len=512)[1] == S_OK


def test_packed_queue_size_need_not_be_a_power_of_2(make):
    b = packed_bench(make)
    ring = start(b, size=5)
    assert ring.size == 5 and b.drv.common_read(0x18, 2) == 5
    split = make()
    split.start(driver_ok=False, size=5)
    assert split.drv.common_read(0x18, 2) == 256


# -- requests ---------------------------------------------------------------------------------------

def test_write_then_read_back_through_a_packed_ring(make):
    b = packed_bench(make)
    start(b)
    data = pattern(4096, seed=3)
    assert b.run(T_OUT, 8, out=data)[1:] == (S_OK, 1)
    got, status, used_len = b.run(T_IN, 8, in_len=4096, wcuts=[1000, 3000])
    assert (got, status, used_len) == (data, S_OK, 4097)


def test_wrap_counters_over_many_laps_of_an_odd_sized_ring(make):
    b = packed_bench(make)
    ring = start(b, size=5)
    for i in range(40):                            # 3 descriptors a request: laps of 5 slots
        got, status, _ = b.run(T_IN, i, in_len=512)
        assert status == S_OK and got == pattern(512 * 64)[512 * i:512 * (i + 1)]
    assert not b.needs_reset and ring.wrap == b.vdev.queues[0].avail_wrap


def test_indirect_tables(make):
    b = packed_bench(make)
    start(b)
    got, status, _ = b.run(T_IN, 2, in_len=1024, wcuts=[512, 512], indirect=True)
    assert status == S_OK and got == pattern(4096)[1024:2048]


def test_buffer_ids_come_back_as_given(make):
    b = packed_bench(make)
    ring = start(b)
    ring.next_id = 77
    req = b.blk.submit(T_IN, 0, in_len=512)
    b.drv.kick(0)
    assert req.head == 77 and ring.get_used() == [(77, 513)]


def test_several_chains_in_one_kick(make):
    b = packed_bench(make)
    ring = start(b, size=16)
    reqs = [b.blk.submit(T_IN, i, in_len=512) for i in range(5)]
    b.drv.kick(0)
    assert [bid for bid, _ in ring.get_used()] == [r.head for r in reqs]


# -- event suppression --------------------------------------------------------------------------------

def test_driver_event_flags_disable_and_enable_interrupts(make):
    b = packed_bench(make)
    ring = start(b, features=packed_bench(make).drv.device_features() & ~(1 << F_EVENT_IDX))
    ring.set_driver_event(0, DISABLE)
    b.run(T_IN, 0, in_len=512)
    assert b.vdev.isr == 0
    ring.set_driver_event(0, ENABLE)
    b.run(T_IN, 0, in_len=512)
    assert b.vdev.isr & 1


def test_a_driver_that_disabled_interrupts_polls(make):
    """What the I/O thread's kick reads to decide whether the guest will spin (blk.py)."""
    b = packed_bench(make)
    ring = start(b, size=8)
    q = b.vdev.queues[0]
    for flags, polls in ((DISABLE, True), (ENABLE, False), (DESC, False)):
        ring.set_driver_event(0, flags)
        assert q.driver_polls() is polls


def test_driver_event_desc_interrupts_only_when_its_slot_is_used(make):
    b = packed_bench(make)
    ring = start(b, size=8)
    b.run(T_IN, 0, in_len=512)                     # the first completion always interrupts
    b.drv.isr()
    ring.set_driver_event(1, DESC)                 # slot 1 of the next lap (wrap 0)
    b.run(T_IN, 0, in_len=512)                     # 2 slots a request: uses slots 2..3
    assert b.vdev.isr == 0
    ring.set_driver_event(5 | 0x8000, DESC)        # slot 5, this lap (wrap 1)
    b.run(T_IN, 0, in_len=512)                     # uses slots 4..5: reaches it
    assert b.vdev.isr & 1


def test_device_event_asks_for_kicks(make):
    b = packed_bench(make)
    ring = start(b, size=8)
    b.run(T_IN, 0, in_len=512)
    assert ring.device_event() == (2 | 0x8000, DESC)      # EVENT_IDX: kick at slot 2, wrap 1
    b2 = packed_bench(make)
    ring2 = start(b2, features=b2.drv.device_features() & ~(1 << F_EVENT_IDX))
    b2.run(T_IN, 0, in_len=512)
    assert ring2.device_event()[1] == ENABLE


# -- hostile rings ------------------------------------------------------------------------------------

def good_in(b):
    return [(buf(b, 16), 16, 0), (buf(b, 512), 512, WRITE), (buf(b, 1), 1, WRITE)]


def header(b, addr):
    b.mem.write(addr, struct.pack("<IIQ", T_IN, 0, 0))


@pytest.mark.parametrize("case", ["looped", "not_ram", "zero_len", "order", "nested_indirect",
                                  "indirect_next", "indirect_size", "indirect_not_ram"])
def test_hostile_rings_need_reset(make, case):
    b = packed_bench(make)
    ring = start(b, size=4)
    h, d, s = good_in(b)
    header(b, h[0])
    if case == "looped":                           # NEXT on every slot: a chain longer than the ring
        descs = [(h[0], 16, NEXT)] * 4
    elif case == "not_ram":
        descs = [(h[0], 16, NEXT), (0xFFFFF000, 512, WRITE | NEXT), s]
    elif case == "zero_len":
        descs = [(h[0], 16, NEXT), (d[0], 0, WRITE | NEXT), s]
    elif case == "order":
        descs = [(h[0], 16, NEXT), (d[0], 512, WRITE | NEXT), (s[0], 1, 0)]
    else:
        table = buf(b, 64)
        entries = [h, d, s]
        if case == "nested_indirect":
            entries = [h, (table, 16, INDIRECT), s]
        for k, (a, n, f) in enumerate(entries):
            b.mem.write(table + 16 * k, struct.pack("<QIHH", a, n, 0, f & ~NEXT))
        length = {"indirect_size": 40}.get(case, 48)
        addr = 0xFFFFF000 if case == "indirect_not_ram" else table
        descs = [(addr, length, INDIRECT | (NEXT if case == "indirect_next" else 0))]
        if case == "indirect_next":
            descs.append(s)
    submit_raw(b, ring, descs)
    assert_broken(b, ring)
    start(b)                                       # a reset brings it back
    assert b.run(T_IN, 0, in_len=512)[1] == S_OK


def test_indirect_without_the_feature_is_followed_unless_strict(make):
    for strict, broken in (("off", False), ("on", True)):
        b = packed_bench(make, strict=strict)
        ring = start(b, features=b.drv.device_features() & ~(1 << F_INDIRECT))
        req = b.blk.submit(T_IN, 0, in_len=512, indirect=True)
        b.drv.kick(0)
        assert b.needs_reset == broken
        assert ring.get_used() == ([] if broken else [(req.head, 513)])


def test_garbage_event_structures_only_affect_notifications(make):
    b = packed_bench(make)
    ring = start(b, size=4)
    b.mem.write(ring.driver, b"\xff\xff\xff\xff")
    b.mem.write(ring.device, b"\xff\xff\xff\xff")
    for i in range(6):
        assert b.run(T_IN, i, in_len=512)[1] == S_OK
    assert not b.needs_reset


def test_monitor_shows_packed_state(make):
    from types import SimpleNamespace
    from machine.debug.monitor import Monitor
    b = packed_bench(make)
    ring = start(b, size=8)
    b.run(T_IN, 0, in_len=512)
    ring.set_driver_event(5 | 0x8000, DESC)
    mon = Monitor(None, machine=SimpleNamespace(pci_bus=SimpleNamespace(devices={2 << 3: b.dev}), devices={},
                                                mem=b.mem))
    out = mon.execute("info virtio-queue-status virtio-blk 0")
    assert "packed:               true" in out
    assert "last_avail_idx:       2 (wrap counter 1)" in out and "used_idx:             2 (wrap counter 1)" in out
    assert "driver event:         DESC off=5 wrap=1" in out and "device event:         DESC off=2 wrap=1" in out
    b.blk.submit(T_IN, 0, in_len=512)
    assert "Chain(head=1 out=[" in mon.execute("info virtio-queue-element virtio-blk 0")
