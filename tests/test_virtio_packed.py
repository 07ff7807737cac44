"""Packed virtqueues (VIRTIO 1.2 §2.8, QEMU's packed=on): a driver-side packed ring in the style
of tests/virtio_driver.py's Vring, then requests through it (wrap counters, buffer IDs, chains
and indirect tables, both event-suppression structures) and every hostile ring the split-ring
tests try: each must put the device in DEVICE_NEEDS_RESET without touching the used side."""

from __future__ import annotations

import struct

import pytest

from virtio_driver import (ACK, DRIVER, DRIVER_OK, FEATURES_OK, F_EVENT_IDX, F_INDIRECT, INDIRECT, NEXT,
                           S_IOERR, S_OK, T_IN, T_OUT, WRITE, BlkRequests, benches, pattern)
from machine.config import ConfigError
from machine.memory import RamRange
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


@pytest.mark.parametrize("size, result", [(1, 1), (0, 256), (257, 256)])
def test_a_packed_queue_takes_any_size_from_1_to_its_maximum(make, size, result):
    b = packed_bench(make)
    start(b, size=size, driver_ok=False)
    assert b.drv.common_read(0x18, 2) == result


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
    ring.set_driver_event(0, DISABLE)
    q.reset()
    assert q.driver_polls() is False               # no ring: nothing to say


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


ROM = 0x0100_0000                                 # a read-only window some cases add
BIG = 0x1_0000_0000                               # a window onto all 8 MiB of RAM


def all_of_ram_at_big(b):
    b.mem.add_range(RamRange(BIG, 8 << 20, 0))


@pytest.mark.parametrize("case, message", [
    ("looped", "Looped descriptor"),
    ("not_ram", "bogus descriptor 0xfffff000+0x200 (guest range 0xfffff000+0x200 is not RAM)"),
    ("rom", f"bogus descriptor {ROM:#x}+0x200 (guest range {ROM:#x}+0x200 is read-only)"),
    ("zero_len", "zero sized buffers are not allowed"),
    ("order", "Incorrect order for descriptors"),
    ("nested_indirect", "nested indirect descriptor"),
    ("indirect_next", "indirect descriptor with NEXT set"),
    ("indirect_size", "Invalid size for indirect buffer table (40)"),
    ("indirect_empty", "Invalid size for indirect buffer table (0)"),
    ("indirect_not_ram", "Cannot map indirect buffer 0xfffff000+0x30"),
    ("too_many_read", "virtio: too many read descriptors in indirect table (more than 1024 buffers in one chain)"),
    ("too_many_write", "virtio: too many write descriptors in indirect table (more than 1024 buffers in one chain)"),
    ("over_4g", "descriptor chain longer than 4 GiB"),
])
def test_hostile_rings_need_reset(make, case, message):
    """Each broken packed ring sets DEVICE_NEEDS_RESET, and the device says why (the message
    `info virtio-status` and -d guest_errors show)."""
    b = make(props={"packed": "on"}, ram=8 << 20)
    ring = start(b, size=4)
    b.mem.add_range(RamRange(ROM, 0x1000, 0, read_only=True))
    all_of_ram_at_big(b)
    h, d, s = good_in(b)
    header(b, h[0])
    if case == "looped":                           # NEXT on every slot: a chain longer than the ring
        descs = [(h[0], 16, NEXT)] * 4
    elif case == "not_ram":
        descs = [(h[0], 16, NEXT), (0xFFFFF000, 512, WRITE | NEXT), s]
    elif case == "rom":                            # readable there, but the device may not write it
        descs = [(h[0], 16, NEXT), (ROM, 512, WRITE | NEXT), s]
    elif case == "zero_len":
        descs = [(h[0], 16, NEXT), (d[0], 0, WRITE | NEXT), s]
    elif case == "order":
        descs = [(h[0], 16, NEXT), (d[0], 512, WRITE | NEXT), (s[0], 1, 0)]
    elif case in ("too_many_read", "too_many_write", "over_4g"):
        # an indirect table of 1025 entries (each 16 bytes), all naming one buffer
        one = (d[0], 512, WRITE if case == "too_many_write" else 0)
        entries = [h] + [one] * 1024 + [s]
        if case == "over_4g":                      # 4 GiB of data in 512 views of all of RAM, and more
            entries = [h] + [(BIG, 8 << 20, WRITE)] * 512 + [s]
        table = buf(b, 16 * len(entries))
        for k, (a, n, f) in enumerate(entries):
            b.mem.write(table + 16 * k, struct.pack("<QIHH", a, n, 0, f & ~NEXT))
        descs = [(table, 16 * len(entries), INDIRECT)]
    else:
        table = buf(b, 64)
        entries = [h, d, s]
        if case == "nested_indirect":
            entries = [h, (table, 16, INDIRECT), s]
        for k, (a, n, f) in enumerate(entries):
            b.mem.write(table + 16 * k, struct.pack("<QIHH", a, n, 0, f & ~NEXT))
        length = {"indirect_size": 40, "indirect_empty": 0}.get(case, 48)
        addr = 0xFFFFF000 if case == "indirect_not_ram" else table
        descs = [(addr, length, INDIRECT | (NEXT if case == "indirect_next" else 0))]
        if case == "indirect_next":
            descs.append(s)
    submit_raw(b, ring, descs)
    assert_broken(b, ring)
    assert b.vdev.state().error == message
    start(b)                                       # a reset brings it back
    assert b.run(T_IN, 0, in_len=512)[1] == S_OK


def test_a_chain_of_exactly_4_gib_is_carried_out(make):
    """2.7.5.2: a chain may describe up to 2^32 bytes; this one asks for a read past the end
    of the disk, which fails with IOERR, and the device keeps working."""
    b = make(props={"packed": "on"}, ram=8 << 20)
    ring = start(b, size=4)
    all_of_ram_at_big(b)
    h, d, s = good_in(b)
    header(b, h[0])
    entries = [h] + [(BIG, 8 << 20, WRITE)] * 511 + [(BIG, (8 << 20) - 17, WRITE), s]
    assert sum(n for _, n, _ in entries) == 1 << 32
    table = buf(b, 16 * len(entries))
    for k, (a, n, f) in enumerate(entries):
        b.mem.write(table + 16 * k, struct.pack("<QIHH", a, n, 0, f))
    submit_raw(b, ring, [(table, 16 * len(entries), INDIRECT)])
    ring.ndescs[0] = 1
    assert not b.needs_reset
    assert ring.get_used() == [(0, 1)] and b.mem.read(s[0], 1) == bytes([S_IOERR])


def test_indirect_without_the_feature_is_followed_unless_strict(make):
    for strict, broken in (("off", False), ("on", True)):
        b = packed_bench(make, strict=strict)
        ring = start(b, features=b.drv.device_features() & ~(1 << F_INDIRECT))
        req = b.blk.submit(T_IN, 0, in_len=512, indirect=True)
        b.drv.kick(0)
        assert b.needs_reset == broken
        assert b.vdev.state().error == ("driver used an indirect descriptor without VIRTIO_F_INDIRECT_DESC "
                                        "(VIRTIO 1.2 §2.7.5.3.1)" if broken else None)
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


@pytest.mark.parametrize("reuse, message", [
    (False, "Virtqueue size exceeded"),                     # a third request on a ring of 2
    (True, "buffer id 0 made available while already in flight"),
])
def test_more_in_flight_than_the_ring_holds_or_a_buffer_id_twice_needs_reset(make, tmp_path, reuse, message):
    """Requests a stop error policy parks stay in flight: on a ring of 2 slots the driver can
    offer a request per lap, and the device takes no more than 2, nor a buffer id it has not
    given back."""
    conf = tmp_path / "fail.conf"
    conf.write_text('[inject-error]\nevent = "read_aio"\nerrno = "5"\nonce = "off"\n')
    b = make(props={"packed": "on"}, blkdebug=conf, rerror="stop")
    ring = start(b, size=2)
    laps = 1 if reuse else 2
    for lap in range(laps):
        h, d = buf(b, 16), buf(b, 513)
        header(b, h)
        submit_raw(b, ring, [(h, 16, NEXT), (d, 513, WRITE)], bid=lap)
    assert len(b.vdev.parked) == laps and not b.needs_reset
    h, d = buf(b, 16), buf(b, 513)
    header(b, h)
    submit_raw(b, ring, [(h, 16, NEXT), (d, 513, WRITE)], bid=0 if reuse else 7)
    assert b.needs_reset and b.vdev.state().error == message


@pytest.mark.parametrize("off_wrap, interrupt", [
    (1 | 0x8000, False),          # a slot the previous interrupt already covered
    (0 | 0x8000, False),
    (2 | 0x8000, True),           # the slots this request used
    (3 | 0x8000, True),
    (4 | 0x8000, False),          # not reached yet
    (3, False),                   # slot 3 of the next lap
])
def test_driver_event_desc_names_one_slot_of_one_lap(make, off_wrap, interrupt):
    """EVENT_IDX, flags DESC (2.8.10): interrupt when the device uses the slot off_wrap names
    (bit 15: its lap's wrap counter), as QEMU's vring_packed_need_event."""
    b = packed_bench(make)
    ring = start(b, size=8)
    b.run(T_IN, 0, in_len=512)                     # slots 0..1
    b.drv.isr()
    ring.set_driver_event(off_wrap, DESC)
    b.run(T_IN, 0, in_len=512)                     # slots 2..3
    assert bool(b.vdev.isr & 1) is interrupt


def test_the_first_completion_interrupts_whatever_slot_the_driver_names(make):
    b = packed_bench(make)
    ring = start(b, size=8)
    ring.set_driver_event(5 | 0x8000, DESC)
    b.run(T_IN, 0, in_len=512)
    assert b.vdev.isr & 1


def test_with_event_idx_flags_enable_still_interrupt_for_every_completion(make):
    b = packed_bench(make)
    ring = start(b, size=8)
    for _ in range(3):
        ring.set_driver_event(0, ENABLE)
        b.run(T_IN, 0, in_len=512)
        assert b.drv.isr() & 1


def test_device_event_names_the_next_slot_and_its_lap(make):
    """EVENT_IDX: the device asks for a kick at the slot after the last one it took, with that
    lap's wrap counter in bit 15 (0 on the second lap)."""
    b = packed_bench(make)
    ring = start(b, size=4)
    b.run(T_IN, 0, in_len=512)
    assert ring.device_event() == (2 | 0x8000, DESC)
    b.run(T_IN, 0, in_len=512)
    assert ring.device_event() == (0, DESC)        # the second lap
    b.run(T_IN, 0, in_len=512)
    assert ring.device_event() == (2, DESC)


def test_the_device_writes_and_reports_only_the_ring_bytes_it_changes(make):
    """A completion writes the used descriptor's id, len and flags (bytes 8..15 of its first
    slot) and nothing else of the table; the device event is rewritten only when it changes.
    Each write is reported to the CPU (notify_write) with its exact range."""
    b = packed_bench(make)
    ring = start(b, size=4)
    reported = []
    listen = b.mem.notify_write
    b.mem.notify_write = lambda gpa, n: (reported.append((gpa, n)), listen(gpa, n))
    rings = lambda: [(a, n) for a, n in reported if ring.desc <= a < ring.desc + 64 or a in (ring.device, ring.device + 2)]
    for lap, wrap_flags in ((0, 0x8080), (1, 0x0000)):       # AVAIL|USED on lap 1, neither on lap 2
        for slot in (0, 2):
            req = b.blk.submit(T_IN, 0, in_len=512)
            before = bytes(b.mem.read(ring.desc, 64))
            del reported[:]
            b.drv.kick(0)
            after = bytes(b.mem.read(ring.desc, 64))
            changed = [i for i in range(64) if before[i] != after[i]]
            assert changed and all(16 * slot + 8 <= i < 16 * slot + 16 for i in changed)
            assert struct.unpack_from("<IHH", after, 16 * slot + 8) == (513, req.head, wrap_flags)
            assert ring.get_used() == [(req.head, 513)]
            expect = [(ring.device, 2)] if (lap, slot) != (0, 0) else [(ring.device, 2), (ring.device + 2, 2)]
            assert sorted(rings()) == sorted(expect + [(ring.desc + 16 * slot + 8, 8)])


def test_peek_decodes_a_chain_at_any_slot_without_taking_it(make):
    b = packed_bench(make)
    ring = start(b, size=8)
    first = b.blk.submit(T_IN, 0, in_len=512)              # slots 0..1
    second = b.blk.submit(T_OUT, 0, out=b"x" * 512)         # slots 2..3
    assert b.vdev.peek_chain(0).head == first.head          # the next one the device takes
    assert b.vdev.peek_chain(0, 2).head == second.head
    assert b.vdev.peek_chain(0, 2 + 8).head == second.head  # positions count modulo the size
    chain = b.vdev.peek_chain(0, 2)
    assert (chain.readable_len, chain.writable_len) == (16 + 512, 1)
    empty = b.vdev.peek_chain(0, 4)
    assert type(empty) is Q.VirtqueueError and str(empty) == "slot 4 holds no available descriptor"
    assert ring.get_used() == [] and b.vdev.queues[0].last_avail_idx == 0
    b.drv.common_write(0x16, 2, 0)
    b.drv.common_write(0x3A, 2, 1)                          # queue_reset: not active
    off = b.vdev.peek_chain(0)
    assert type(off) is Q.QueueNotActive and str(off) == "queue 0 is not active"


@pytest.mark.parametrize("size, driver, device, message", [
    (1, 0, 0, None),                                        # one slot is a valid packed ring
    (0, 0, 0, "queue 0: bad size 0"),
    (4, 2, 0, "queue 0: misaligned rings desc={desc:#x} driver={driver:#x} device={device:#x}"),
    (4, 0, 2, "queue 0: misaligned rings desc={desc:#x} driver={driver:#x} device={device:#x}"),
])
def test_a_packed_ring_needs_a_size_and_4_byte_aligned_event_areas(make, size, driver, device, message):
    from machine.virtio.queue import VirtqueueError
    b = packed_bench(make)
    start(b)
    q = b.vdev.queues[0]
    q.size = size
    q.desc_addr, q.avail_addr, q.used_addr = 0x10_0000, 0x10_1000 + driver, 0x10_2000 + device
    if message is None:
        q.activate()
        assert q.active
    else:
        with pytest.raises(VirtqueueError) as e:
            q.activate()
        assert str(e.value) == message.format(desc=q.desc_addr, driver=q.avail_addr, device=q.used_addr)


def test_a_descriptor_table_may_end_at_the_last_byte_of_ram(make):
    b = packed_bench(make)
    start(b)
    q = b.vdev.queues[0]
    q.size = 256
    q.desc_addr, q.avail_addr, q.used_addr = (4 << 20) - 16 * 256, 0x10_1000, 0x10_2000
    q.activate()
    assert q.active



def test_a_write_whose_data_spans_several_readable_descriptors(make):
    b = packed_bench(make)
    ring = start(b)
    req = b.blk.submit(T_OUT, 4, out=pattern(1024, 3), rcuts=[16, 300, 724])
    b.drv.kick(0)
    assert ring.get_used() == [(req.head, 1)]
    assert b.image()[4 * 512:6 * 512] == pattern(1024, 3)
