"""Split-ring protocol violations. Each one must put the device in DEVICE_NEEDS_RESET with a
config interrupt, leave the used ring and the image alone, ignore kicks until reset, and work
again after a reset (QEMU's virtio_error semantics)."""

import struct

import pytest

from virtio_driver import (INDIRECT, NEXT, S_OK, T_IN, T_OUT, WRITE, Bench, BlkRequests, F_INDIRECT, Vring)
from machine.memory import GuestMemory
from machine.virtio.blk_request import HeaderTooShort, MissingHeaders
from machine.virtio.queue import (AvailIndexTooFar, BadHeadIndex, BadIndirectSize, BadNextIndex,
                                  BufferNotInRam, ChainTooLong, DescriptorOrder, HeadInFlight,
                                  IndirectNotNegotiated, IndirectWithNext,
                                  LoopedDescriptor, NestedIndirect, QueueNotActive, QueueSizeExceeded,
                                  SplitQueue, TooManyBuffers, ZeroSizedBuffer)

HDR_IN = struct.pack("<IIQ", T_IN, 0, 0)
HDR_OUT = struct.pack("<IIQ", T_OUT, 0, 0)


@pytest.fixture
def bench(tmp_path):
    b = Bench(tmp_path).start()
    yield b
    b.close()


def buf(b, data=b"", size=None):
    n = size if size is not None else len(data)
    a = b.alloc.alloc(n, 16)
    if data:
        b.mem.write(a, data)
    return a


def submit_raw(b, descs, head=0, table=None):
    """Write raw descriptors (addr, len, flags, next) at indices 0.. of `table` (default: the
    ring's table), make `head` available and kick."""
    vq = b.vqs[0]
    t = vq.desc if table is None else table
    for i, d in enumerate(descs):
        vq.write_desc(t, i, *d)
    vq.publish(head)
    b.drv.kick(0)


def assert_broken(b, image_before, kind, message):
    assert b.needs_reset and b.vdev.broken
    assert type(b.vdev.error) is kind, b.vdev.error         # which rule the guest broke
    assert str(b.vdev.error) == message                     # what info virtio-status shows
    assert b.vdev.isr & 2 and b.dev.intx.level              # config change interrupt
    assert b.vqs[0].used_idx() == 0
    assert b.image() == image_before
    # ignored until reset ...
    BlkRequests(b.vqs[0]).submit(T_IN, 0, in_len=512)
    b.drv.kick(0)
    assert b.vqs[0].used_idx() == 0
    # ... and fully working after one
    b.start()
    assert b.run(T_IN, 0, in_len=512)[1] == S_OK and not b.needs_reset


def good_in(b):
    return [(buf(b, HDR_IN), 16, NEXT, 1), (buf(b, size=512), 512, WRITE | NEXT, 2), (buf(b, size=1), 1, WRITE, 0)]


def test_well_formed_raw_chain_completes(bench):
    submit_raw(bench, good_in(bench))
    assert bench.vqs[0].get_used() == [(0, 513)]


def test_head_beyond_queue_size_needs_reset(bench):
    before = bench.image()
    d = good_in(bench)
    submit_raw(bench, d, head=256)
    assert_broken(bench, before, BadHeadIndex, "Guest says index 256 is available")


def test_next_beyond_queue_size_needs_reset(bench):
    before = bench.image()
    d = good_in(bench)
    d[1] = d[1][:3] + (300,)
    submit_raw(bench, d)
    assert_broken(bench, before, BadNextIndex, "Desc next is 300")


@pytest.mark.parametrize("loop", ["self", "two_cycle", "back_to_head"])
def test_descriptor_loops_terminate_with_needs_reset(bench, loop):
    before = bench.image()
    d = good_in(bench)
    if loop == "self":
        d[0] = (d[0][0], 16, NEXT, 0)
    elif loop == "two_cycle":
        d[2] = (d[2][0], 1, WRITE | NEXT, 1)
    else:
        d[1] = (d[1][0], 512, NEXT, 0)
        d[0] = (d[0][0], 16, NEXT, 1)
    submit_raw(bench, d)
    assert_broken(bench, before, LoopedDescriptor, "Looped descriptor")


def test_zero_length_descriptor_needs_reset(bench):
    before = bench.image()
    d = good_in(bench)
    d[1] = (d[1][0], 0, WRITE | NEXT, 2)
    submit_raw(bench, d)
    assert_broken(bench, before, ZeroSizedBuffer, "zero sized buffers are not allowed")


@pytest.mark.parametrize("addr,length", [
    (0x100000, 0xFFFFFFFF),             # huge length
    ((4 << 20) - 256, 512),             # straddles the end of RAM
    (0xA0000 - 16, 512),                # runs into the VGA hole
    (0xFEBF8000, 512),                  # the device's own BAR: MMIO
    (2**64 - 256, 512),                 # wraps the address space
])
def test_buffers_outside_ram_need_reset_and_no_mmio_is_touched(bench, addr, length):
    before = bench.image()
    d = good_in(bench)
    d[1] = (addr, length, WRITE | NEXT, 2)
    submit_raw(bench, d)
    assert_broken(bench, before, BufferNotInRam, f"bogus descriptor {addr:#x}+{length:#x} (guest range {addr:#x}+{length:#x} is not RAM)")


def test_readable_after_writable_needs_reset(bench):
    before = bench.image()
    d = [(buf(bench, HDR_OUT), 16, NEXT, 1), (buf(bench, size=1), 1, WRITE | NEXT, 2),
         (buf(bench, b"x" * 512), 512, NEXT, 3), (buf(bench, size=1), 1, WRITE, 0)]
    submit_raw(bench, d)
    assert_broken(bench, before, DescriptorOrder, "Incorrect order for descriptors")


def test_chain_with_only_a_header_needs_reset(bench):
    before = bench.image()
    submit_raw(bench, [(buf(bench, HDR_IN), 16, 0, 0)])
    assert_broken(bench, before, MissingHeaders, "virtio-blk missing headers")


def test_header_in_a_writable_descriptor_needs_reset(bench):
    before = bench.image()
    submit_raw(bench, [(buf(bench, HDR_IN), 16, WRITE | NEXT, 1), (buf(bench, size=1), 1, WRITE, 0)])
    assert_broken(bench, before, MissingHeaders, "virtio-blk missing headers")


def test_readable_header_shorter_than_16_bytes_needs_reset(bench):
    before = bench.image()
    submit_raw(bench, [(buf(bench, HDR_IN[:8]), 8, NEXT, 1), (buf(bench, size=1), 1, WRITE, 0)])
    assert_broken(bench, before, HeaderTooShort, "virtio-blk request outhdr too short")


def test_status_in_same_descriptor_as_data_is_the_last_byte(bench):
    a = buf(bench, size=513)
    submit_raw(bench, [(buf(bench, HDR_IN), 16, NEXT, 1), (a, 513, WRITE, 0)])
    assert bench.vqs[0].get_used() == [(0, 513)] and bench.mem.read(a + 512, 1) == b"\0"


def test_in_request_never_writes_a_readable_data_buffer(bench):
    data = buf(bench, b"\x11" * 512)
    st = buf(bench, size=1)
    submit_raw(bench, [(buf(bench, HDR_IN), 16, NEXT, 1), (data, 512, NEXT, 2), (st, 1, WRITE, 0)])
    assert bench.vqs[0].get_used() == [(0, 1)] and bench.mem.read(data, 512) == b"\x11" * 512


def test_out_request_never_takes_data_from_writable_buffers(bench):
    before = bench.image()
    wdata = buf(bench, b"\x22" * 512)
    submit_raw(bench, [(buf(bench, HDR_OUT), 16, NEXT, 1), (wdata, 512, WRITE | NEXT, 2), (buf(bench, size=1), 1, WRITE, 0)])
    assert bench.vqs[0].get_used() == [(0, 1)] and bench.image() == before


def test_avail_index_jumping_more_than_queue_size_needs_reset(bench):
    before = bench.image()
    vq = bench.vqs[0]
    for i, d in enumerate(good_in(bench)):
        vq.write_desc(vq.desc, i, *d)
    vq.set_avail_idx(257)
    bench.drv.kick(0)
    assert_broken(bench, before, AvailIndexTooFar, "Guest moved avail index from 0 to 257")


@pytest.mark.parametrize("length", [0, 24, 8])
def test_indirect_table_length_not_a_multiple_of_16_needs_reset(bench, length):
    before = bench.image()
    table = buf(bench, size=64)
    submit_raw(bench, [(table, length, INDIRECT, 0)])
    assert_broken(bench, before, BadIndirectSize, f"Invalid size for indirect buffer table ({length})")


def test_indirect_table_in_mmio_needs_reset(bench):
    before = bench.image()
    submit_raw(bench, [(0xFEBF8000, 48, INDIRECT, 0)])
    assert_broken(bench, before, BufferNotInRam, "Cannot map indirect buffer 0xfebf8000+0x30")


def test_indirect_without_the_feature_is_followed_as_qemu_does(tmp_path, guest_errors):
    b = Bench(tmp_path)
    b.start(features=b.drv.device_features() & ~(1 << F_INDIRECT))
    table = buf(b, size=48)
    vq = b.vqs[0]
    for i, d in enumerate(good_in(b)):
        vq.write_desc(table, i, *d)
    submit_raw(b, [(table, 48, INDIRECT, 0)])
    assert not b.needs_reset and [h for h, _ in vq.get_used()] == [0]
    assert "without VIRTIO_F_INDIRECT_DESC (VIRTIO 1.2 §2.7.5.3.1)" in guest_errors.getvalue()
    b.close()


def test_strict_indirect_without_the_feature_needs_reset(tmp_path):
    b = Bench(tmp_path, props={"strict": "on"})
    b.start(features=b.drv.device_features() & ~(1 << F_INDIRECT))
    before = b.image()
    table = buf(b, size=48)
    vq = b.vqs[0]
    for i, d in enumerate(good_in(b)):
        vq.write_desc(table, i, *d)
    submit_raw(b, [(table, 48, INDIRECT, 0)])
    assert_broken(b, before, IndirectNotNegotiated, "driver used an indirect descriptor without VIRTIO_F_INDIRECT_DESC (VIRTIO 1.2 §2.7.5.3.1)")
    b.close()


def test_nested_indirect_needs_reset(bench):
    before = bench.image()
    inner = buf(bench, size=48)
    outer = buf(bench, size=16)
    bench.vqs[0].write_desc(outer, 0, inner, 48, INDIRECT, 0)
    submit_raw(bench, [(outer, 16, INDIRECT, 0)])
    assert_broken(bench, before, NestedIndirect, "nested indirect descriptor")


def test_indirect_with_next_set_needs_reset(bench):
    before = bench.image()
    table = buf(bench, size=48)
    for i, d in enumerate(good_in(bench)):
        bench.vqs[0].write_desc(table, i, *d)
    submit_raw(bench, [(table, 48, INDIRECT | NEXT, 1), (buf(bench, size=1), 1, WRITE, 0)])
    assert_broken(bench, before, IndirectWithNext, "indirect descriptor with NEXT set")


def test_loop_inside_an_indirect_table_needs_reset(bench):
    before = bench.image()
    table = buf(bench, size=32)
    vq = bench.vqs[0]
    vq.write_desc(table, 0, buf(bench, HDR_IN), 16, NEXT, 1)
    vq.write_desc(table, 1, buf(bench, size=8), 8, WRITE | NEXT, 0)
    submit_raw(bench, [(table, 32, INDIRECT, 0)])
    assert_broken(bench, before, LoopedDescriptor, "Looped descriptor")


def test_next_beyond_indirect_table_needs_reset(bench):
    before = bench.image()
    table = buf(bench, size=32)
    vq = bench.vqs[0]
    vq.write_desc(table, 0, buf(bench, HDR_IN), 16, NEXT, 2)
    vq.write_desc(table, 1, buf(bench, size=8), 8, WRITE, 0)
    submit_raw(bench, [(table, 32, INDIRECT, 0)])
    assert_broken(bench, before, BadNextIndex, "Desc next is 2")


def test_direct_descriptors_followed_by_an_indirect_one_are_accepted(bench):
    """2.7.5.3.2: the device handles normal chained descriptors followed by one indirect one."""
    table = buf(bench, size=32)
    vq = bench.vqs[0]
    vq.write_desc(table, 0, buf(bench, size=512), 512, WRITE | NEXT, 1)
    vq.write_desc(table, 1, buf(bench, size=1), 1, WRITE, 0)
    submit_raw(bench, [(buf(bench, HDR_IN), 16, NEXT, 1), (table, 32, INDIRECT, 0)])
    assert bench.vqs[0].get_used() == [(0, 513)] and not bench.needs_reset


def test_peek_chain_decodes_without_consuming(bench):
    vq = bench.vqs[0]
    for i, d in enumerate(good_in(bench)):
        vq.write_desc(vq.desc, i, *d)
    vq.publish(0)
    chain = bench.vdev.peek_chain(0)
    assert chain.head == 0 and chain.readable_len == 16 and chain.writable_len == 513
    assert bench.vdev.queues[0].last_avail_idx == 0
    q = bench.vdev.queues[0]
    assert (q.size, q.enabled, q.desc_addr, q.inflight_count) == (256, True, vq.desc, 0)


# -- queue-level rules that synchronous completion cannot reach through the device --------------------

def make_queue(size=4):
    mem = GuestMemory(2 << 20)
    q = SplitQueue(0, size, lambda q: None, mem)
    q.desc_addr, q.avail_addr, q.used_addr = 0x100000, 0x101000, 0x102000
    q.activate()
    for i in range(size):
        mem.write(0x100000 + 16 * i, struct.pack("<QIHH", 0x110000 + 0x100 * i, 16, 0, 0))
    return q, mem


def test_same_head_in_flight_twice_is_an_error():
    q, mem = make_queue()
    mem.write_u16(0x101004, 1)
    mem.write_u16(0x101006, 1)
    mem.write_u16(0x101002, 2)
    assert q.pop().head == 1
    with pytest.raises(HeadInFlight) as e:
        q.pop()
    assert str(e.value) == "head 1 made available while already in flight"


def test_more_chains_in_flight_than_queue_size_is_an_error():
    q, mem = make_queue(size=2)
    mem.write_u16(0x101004, 0)
    mem.write_u16(0x101006, 1)
    mem.write_u16(0x101002, 2)
    q.pop(), q.pop()
    q.push(0, 0)
    mem.write_u16(0x101004, 0)       # slot 2 % 2
    mem.write_u16(0x101002, 3)
    q.pop()
    mem.write_u16(0x101006, 1)       # head 1 is still in flight; 2 chains out = size
    mem.write_u16(0x101002, 4)
    with pytest.raises(QueueSizeExceeded) as e:
        q.pop()
    assert str(e.value) == "Virtqueue size exceeded"


def test_used_ring_write_order_and_wraparound():
    q, mem = make_queue(size=2)
    for n in range(5):
        mem.write_u16(0x101004 + 2 * (n % 2), n % 2)
        mem.write_u16(0x101002, n + 1)
        c = q.pop()
        q.push(c.head, 7 + n)
    assert mem.read_u16(0x102002) == 5 and struct.unpack("<II", mem.read(0x102004, 8)) == (0, 11)


def test_add_queue_rejects_bad_sizes_and_too_many_queues_with_config_error():
    from machine.config import ConfigError
    from machine.virtio.device import VIRTIO_QUEUE_MAX, VirtioDevice
    dev = VirtioDevice("test", 99, GuestMemory(2 << 20))
    for size in (0, 3, 2048):
        with pytest.raises(ConfigError):
            dev.add_queue(size, lambda q: None)
    for _ in range(VIRTIO_QUEUE_MAX):
        dev.add_queue(2, lambda q: None)
    with pytest.raises(ConfigError, match="too many"):
        dev.add_queue(2, lambda q: None)


def test_trace_events_use_qemu_names(bench):
    import io
    import sys
    from machine import trace
    seen = []

    def listen(name, fields):
        seen.append(name)
    trace.add_listener(listen)
    trace.set_output(io.StringIO())
    try:
        trace.enable("virtio_*")
        bench.run(T_IN, 0, in_len=512)
        bench.run(T_OUT, 0, out=b"x" * 512)
        bench.drv.set_status(0)
    finally:
        trace.remove_listener(listen)
        trace.set_output(sys.stderr)
    for name in ("virtio_pci_notify_write", "virtio_queue_notify", "virtio_blk_handle_read",
                 "virtio_blk_handle_write", "virtio_blk_req_complete", "virtio_notify", "virtio_set_status"):
        assert name in seen, name


def test_used_ring_on_top_of_the_avail_ring_is_memory_safe(tmp_path):
    """Rings overlapping each other are the guest's bug: the device must not crash, must stay
    inside the rings, and either completes or reports NEEDS_RESET."""
    b = Bench(tmp_path)
    d = b.drv
    d.set_status(1 | 2)
    d.write_features(d.device_features())
    d.set_status(1 | 2 | 8)
    vq = Vring(b.mem, b.alloc, 256)
    vq.used = vq.avail                       # the driver's view matches what it programmed
    d.common_write(0x16, 2, 0)
    d.write64(0x20, vq.desc)
    d.write64(0x28, vq.avail)
    d.write64(0x30, vq.avail)
    d.common_write(0x1C, 2, 1)
    d.set_status(1 | 2 | 8 | 4)
    req = BlkRequests(vq).submit(T_IN, 0, in_len=512)
    d.kick(0)
    d.kick(0)
    assert b.needs_reset or b.vdev.queues[0].used_idx >= 1
    b.close()


# -- bounds: the entry just past a table is a valid-looking descriptor, so only the bounds check
# -- can refuse it (zeroed memory there would fail as "zero sized" for the wrong reason)

def _valid_desc(mem, table, i, addr=0x1F0000):
    mem.write(table + 16 * i, struct.pack("<QIHH", addr, 16, 0, 0))


def test_head_equal_to_queue_size_is_refused_even_if_that_slot_holds_a_valid_descriptor():
    q, mem = make_queue(size=4)
    _valid_desc(mem, 0x100000, 4)              # just past the 4-entry table
    mem.write_u16(0x101004, 4)
    mem.write_u16(0x101002, 1)
    with pytest.raises(BadHeadIndex, match="index 4 is available"):
        q.pop()
    with pytest.raises(BadHeadIndex, match="index 4 is available"):
        q.peek(0)
    mem.write_u16(0x101004, 3)                 # the last entry is fine
    assert q.pop().head == 3


def test_next_equal_to_queue_size_is_refused_even_if_that_slot_holds_a_valid_descriptor():
    q, mem = make_queue(size=4)
    _valid_desc(mem, 0x100000, 4)
    mem.write(0x100000, struct.pack("<QIHH", 0x110000, 16, 1, 4))     # NEXT -> 4
    mem.write_u16(0x101002, 1)
    with pytest.raises(BadNextIndex, match="Desc next is 4"):
        q.pop()


def test_next_equal_to_indirect_table_length_is_refused_even_if_that_entry_is_valid():
    q, mem = make_queue(size=4)
    q.indirect = True
    table = 0x120000
    mem.write(table, struct.pack("<QIHH", 0x110000, 16, 1, 2))        # NEXT -> 2, table has 2
    _valid_desc(mem, table, 1)
    _valid_desc(mem, table, 2)
    mem.write(0x100000, struct.pack("<QIHH", table, 32, 4, 0))        # INDIRECT, 2 entries
    mem.write_u16(0x101002, 1)
    with pytest.raises(BadNextIndex, match="Desc next is 2"):
        q.pop()


def _indirect_chain(q, mem, entries):
    """A chain whose only descriptor points to an indirect table of `entries` linked entries."""
    q.indirect = True
    table = 0x120000
    for i in range(entries):
        flags = (1 if i + 1 < entries else 0) | (2 if i else 0)          # NEXT; WRITE after the first
        mem.write(table + 16 * i, struct.pack("<QIHH", 0x140000 + 16 * i, 16, flags, i + 1))
    mem.write(0x100000, struct.pack("<QIHH", table, 16 * entries, 4, 0))
    mem.write_u16(0x101002, 1)


def test_indirect_chain_of_qemus_maximum_1024_buffers_is_accepted():
    q, mem = make_queue(size=4)
    q.violation = lambda key, **fields: False      # a default device: longer than the queue is tolerated
    _indirect_chain(q, mem, 1024)
    chain = q.pop()
    assert (len(chain.readable), len(chain.writable)) == (1, 1023)
    assert chain.writable[-1][0] == 0x140000 + 16 * 1023 and chain.writable_len == 16 * 1023


def test_indirect_chain_of_1025_buffers_is_refused():
    q, mem = make_queue(size=4)
    q.violation = lambda key, **fields: False
    _indirect_chain(q, mem, 1025)
    with pytest.raises(TooManyBuffers, match="too many write descriptors"):
        q.pop()


def test_chain_of_exactly_queue_size_descriptors_is_not_a_loop():
    q, mem = make_queue(size=4)
    for i in range(4):
        mem.write(0x100000 + 16 * i, struct.pack("<QIHH", 0x110000 + 0x100 * i, 16, 1 if i < 3 else 0, i + 1))
    mem.write_u16(0x101002, 1)
    assert len(q.pop().readable) == 4


@pytest.mark.parametrize("start,used_event,fires_at", [
    (0xFFFC, 0xFFFE, 0xFFFF), (0xFFFD, 0xFFFF, 0), (0xFFFE, 0, 1),
])
def test_event_idx_interrupt_across_the_16_bit_wrap(start, used_event, fires_at):
    """vring_need_event in modulo-2^16 arithmetic: the entry at used_event being used (idx
    moving from used_event to used_event + 1) interrupts, wherever the wrap falls."""
    q, mem = make_queue(size=4)
    q.event_idx = True
    q.used_idx = start
    mem.write_u16(0x101004 + 2 * 4, used_event)     # used_event after the 4-entry ring
    assert q.should_notify()                        # the first decision always interrupts
    fired = []
    for _ in range(4):
        q.push(0, 0)
        if q.should_notify():
            fired.append(q.used_idx)
    assert fired == [fires_at]



def test_peek_decodes_any_ring_position_and_refuses_an_inactive_queue(bench):
    vq = bench.vqs[0]
    d = good_in(bench)
    for i, desc in enumerate(d):
        vq.write_desc(vq.desc, i, *desc)
    vq.write_desc(vq.desc, 3, buf(bench, HDR_IN), 16, NEXT, 4)
    vq.write_desc(vq.desc, 4, buf(bench, size=1), 1, WRITE, 0)
    vq.publish(0)
    vq.publish(3)
    assert bench.vdev.peek_chain(0, 1).head == 3 and bench.vdev.peek_chain(0, 0).head == 0
    assert bench.vdev.peek_chain(0).head == 0           # default: the next one the device takes
    q = SplitQueue(1, 4, lambda q: None, bench.mem)
    with pytest.raises(QueueNotActive, match="queue 1 is not active"):
        q.peek(0)


@pytest.mark.parametrize("legacy", [True, False])
def test_trace_events_carry_the_request_fields(tmp_path, legacy):
    """Each event's fields, for a read of 2 sectors at 3 (head 0: header + one 1025-byte
    writable descriptor) and a write of 1 sector at 5 (head 2), as QEMU's events show them."""
    import io
    import re
    import sys
    from machine import trace
    b = Bench(tmp_path, legacy=legacy).start()
    out = io.StringIO()
    trace.set_output(out)
    try:
        trace.enable("virt*")
        b.run(T_IN, 3, in_len=1024)
        b.run(T_OUT, 5, out=b"x" * 512)
    finally:
        trace.disable_all()
        trace.set_output(sys.stderr)
        b.close()
    kick = ("virtio_pci_notify_write_pio addr=0x10 val=0x0 size=2" if legacy
            else "virtio_pci_notify_write addr=0x3000 val=0x0 size=2")
    lines = [re.sub(r"latency_us=\d+\.\d$", "latency_us=T", line) for line in out.getvalue().splitlines()]
    assert lines == [
        kick,
        "virtio_queue_notify vdev=virtio-blk n=0",
        "virtqueue_pop vq=0 head=0 in_num=1 out_num=1",
        "virtio_blk_handle_read vdev=virtio-blk req=0 sector=3 nsectors=2",
        "virtio_blk_req_complete vdev=virtio-blk req=0 type=0 sector=3 len=1024 status=0 latency_us=T",
        "virtqueue_fill vq=0 head=0 len=1025 idx=0",
        "virtio_notify vdev=virtio-blk vq=0",
        kick,                                           # EVENT_IDX: no interrupt asked for this one
        "virtio_queue_notify vdev=virtio-blk n=0",
        "virtqueue_pop vq=0 head=2 in_num=1 out_num=1",
        "virtio_blk_handle_write vdev=virtio-blk req=2 sector=5 nsectors=1",
        "virtio_blk_req_complete vdev=virtio-blk req=2 type=1 sector=5 len=512 status=0 latency_us=T",
        "virtqueue_fill vq=0 head=2 len=1 idx=1",
    ]


def test_guest_errors_say_what_was_ignored(bench):
    """-d guest_errors: the driver's mistakes are logged with what and where."""
    import io
    import sys
    from machine import trace
    from machine.virtio import blk as B
    out = io.StringIO()
    trace.set_output(out)
    trace.enable_category("guest_errors")
    trace.enable("virtio_error")
    try:
        bench.drv.cfg_write(0, 4, 1)                        # capacity: read-only
        bench.drv.common_write(0x16, 2, 0)
        bench.drv.common_write(0x1A, 2, 3)                  # queue_msix_vector: no such vector
        bench.drv.cfg_read(B.CONFIG_SIZE, 4)
        bench.vdev.virtio_error("test breakage")
    finally:
        trace.disable_all()
        trace.set_output(sys.stderr)
    text = out.getvalue()
    assert "virtio-blk: config write 0x0+4 = 0x1 ignored" in text, text
    assert "MSI-X vector 0x3 does not exist; mapped to NO_VECTOR" in text, text
    assert f"virtio-blk: config read {B.CONFIG_SIZE:#x}+4 outside {B.CONFIG_SIZE} bytes" in text, text
    assert "virtio-blk: test breakage" in text, text
    assert "virtio_error vdev=virtio-blk test breakage" in text, text
    assert "BAD_FEATURE" not in text and "ignored" not in text.split("config write")[0], text


def test_legacy_negotiation_logs_nothing_but_bad_feature_is_logged(tmp_path):
    import io
    import sys
    from machine import trace
    out = io.StringIO()
    trace.set_output(out)
    trace.enable_category("guest_errors")
    b = Bench(tmp_path, legacy=True)
    try:
        b.start()
        assert out.getvalue() == ""
        b.drv.set_status(0)
        b.drv.set_status(1 | 2)
        b.drv.bar.write(0x04, 4, 1 << 30)                   # VIRTIO_F_BAD_FEATURE
    finally:
        trace.disable_all()
        trace.set_output(sys.stderr)
        b.close()
    assert "driver set VIRTIO_F_BAD_FEATURE" in out.getvalue()


def test_a_legacy_driver_taking_unoffered_bits_is_told_once_at_driver_ok(tmp_path, guest_errors):
    b = Bench(tmp_path, legacy=True)
    try:
        offered = b.drv.device_features()
        bit = next(n for n in range(24) if not offered >> n & 1)
        b.drv.set_status(1 | 2)
        b.drv.bar.write(0x04, 4, offered | 1 << bit)
        assert b.drv.bar.read(0x04, 4) == offered                     # masked at once
        assert guest_errors.getvalue() == ""
        b.drv.set_status(1 | 2 | 4)                                   # DRIVER_OK
        assert guest_errors.getvalue() == (
            f"virtio-blk: driver accepted feature bits {1 << bit:#x} the device did not offer "
            "(VIRTIO 1.2 §2.2.1); tolerated: the bits are masked off and FEATURES_OK is accepted\n")
    finally:
        b.close()


def test_chain_longer_than_4_gib_is_refused():
    """2.7.5: a chain describes at most 2^32 bytes; 820 indirect entries of 5 MiB each (the
    same RAM, described again and again) go past that."""
    mem = GuestMemory(8 << 20)
    q = SplitQueue(0, 4, lambda q: None, mem)
    q.desc_addr, q.avail_addr, q.used_addr = 0x100000, 0x101000, 0x102000
    q.activate()
    q.indirect = True
    table, n = 0x110000, 820
    for i in range(n):
        mem.write(table + 16 * i, struct.pack("<QIHH", 0x200000, 5 << 20, 1 if i + 1 < n else 0, i + 1))
    mem.write(0x100000, struct.pack("<QIHH", table, 16 * n, 4, 0))
    mem.write_u16(0x101002, 1)
    with pytest.raises(ChainTooLong, match="^descriptor chain longer than 4 GiB$"):
        q.pop()


@pytest.mark.parametrize("event_idx", [True, False])
def test_device_reports_every_guest_byte_it_writes_and_only_those(tmp_path, event_idx):
    """Translated guest code over a buffer the device writes must be dropped: the device tells
    the CPU each range it wrote (data, status, used element, used idx, avail_event or
    used->flags), exactly."""
    b = Bench(tmp_path)
    b.start(features=b.drv.device_features() & ~(0 if event_idx else 1 << 29))
    vq = b.vqs[0]
    if not event_idx:
        b.mem.write_u16(vq.used, 1)                     # NO_NOTIFY left set: the device clears it
    req = BlkRequests(vq).submit(T_IN, 0, in_len=512, wcuts=[512, 1])
    seen = []
    b.mem.add_write_listener(lambda gpa, n: seen.append((gpa, n)))
    b.drv.kick(0)
    (data, _), (status, _) = req.writable
    ring_field = (vq.used + 4 + 8 * 256, 2) if event_idx else (vq.used, 2)   # avail_event / flags
    assert sorted(seen) == sorted([(data, 512), (status, 1), (vq.used + 4, 8), (vq.used + 2, 2), ring_field])
    b.close()


def _long_chain(entry_len, n, writable_from):
    mem = GuestMemory(8 << 20)
    q = SplitQueue(0, 4, lambda q: None, mem)
    q.violation = lambda key, **fields: False      # a default device: longer than the queue is tolerated
    q.desc_addr, q.avail_addr, q.used_addr = 0x100000, 0x101000, 0x102000
    q.activate()
    q.indirect = True
    table = 0x110000
    for i in range(n):
        flags = (1 if i + 1 < n else 0) | (2 if i >= writable_from else 0)
        mem.write(table + 16 * i, struct.pack("<QIHH", 0x200000, entry_len, flags, i + 1))
    mem.write(0x100000, struct.pack("<QIHH", table, 16 * n, 4, 0))
    mem.write_u16(0x101002, 1)
    return q


def test_chain_of_exactly_4_gib_is_accepted_and_one_byte_more_is_not():
    q = _long_chain(4 << 20, 1024, writable_from=512)      # 1024 x 4 MiB = 2^32 bytes
    chain = q.pop()
    assert chain.readable_len + chain.writable_len == 1 << 32
    q = _long_chain((4 << 20) + 1, 1024, writable_from=512)
    with pytest.raises(ChainTooLong):
        q.pop()


def _read_only_window(b, data: bytes) -> int:
    """RAM the guest's chipset made read-only (a write-protected shadow window at 0xC0000)."""
    from machine.memory import RamRange
    b.mem.buf[0xC0000:0xC0000 + len(data)] = data
    b.mem.add_range(RamRange(0xC0000, 0x1000, 0xC0000, read_only=True))
    return 0xC0000


def test_device_writable_buffer_in_read_only_ram_needs_reset(bench):
    before = bench.image()
    d = good_in(bench)
    d[1] = (_read_only_window(bench, bytes(512)), 512, WRITE | NEXT, 2)
    submit_raw(bench, d)
    assert_broken(bench, before, BufferNotInRam, "bogus descriptor 0xc0000+0x200 (guest range 0xc0000+0x200 is read-only)")


def test_device_readable_buffer_in_read_only_ram_is_written_out(bench):
    data = bytes(range(256)) * 2
    status = buf(bench, size=1)
    submit_raw(bench, [(buf(bench, HDR_OUT), 16, NEXT, 1),
                       (_read_only_window(bench, data), 512, NEXT, 2), (status, 1, WRITE, 0)])
    assert not bench.needs_reset and bench.vqs[0].used_idx() == 1
    assert bench.mem.read(status, 1)[0] == S_OK and bench.image()[:512] == data


@pytest.mark.parametrize("layout", ["split", "packed"])
def test_virtqueue_pop_and_fill_trace_events_carry_the_chain_and_the_used_slot(tmp_path, layout):
    """-trace virtqueue_pop / virtqueue_fill (QEMU's fields) for both ring layouts: the chain's
    head and its writable (in) and readable (out) descriptor counts, then the used length and
    the used index the completion lands at."""
    from machine import trace
    from test_virtio_packed import start
    b = Bench(tmp_path, props={"packed": "on"} if layout == "packed" else None)
    events = []

    def listener(name, fields):
        if name.startswith("virtqueue_"):
            events.append((name, dict(fields)))
    ring = start(b) if layout == "packed" else b.start().vqs[0]
    trace.listen("virtqueue_*")
    trace.add_listener(listener)
    try:
        blk = BlkRequests(ring)
        first = blk.submit(T_OUT, 0, out=b"o" * 1024, rcuts=[16, 512, 512])
        b.drv.kick(0)
        second = blk.submit(T_IN, 0, in_len=512, wcuts=[256, 256, 1])
        b.drv.kick(0)
    finally:
        trace.remove_listener(listener)
        trace.unlisten("virtqueue_*")
        b.close()
    # a packed ring's used index counts descriptors: the first chain used three slots
    assert events == [
        ("virtqueue_pop", dict(vq=0, head=first.head, in_num=1, out_num=3)),
        ("virtqueue_fill", dict(vq=0, head=first.head, len=1, idx=0)),
        ("virtqueue_pop", dict(vq=0, head=second.head, in_num=3, out_num=1)),
        ("virtqueue_fill", dict(vq=0, head=second.head, len=513, idx=1 if layout == "split" else 4)),
    ]


@pytest.mark.parametrize("iothread", [False, True])
def test_the_completion_trace_reports_the_host_latency_in_microseconds(tmp_path, monkeypatch, iothread):
    """virtio_blk_req_complete's latency_us: host time from the request's start to its end."""
    import io
    import sys
    from machine import trace
    clock = iter([1_000_000, 3_500_000])
    monkeypatch.setattr(trace, "timestamp_ns", lambda: next(clock))
    b = Bench(tmp_path).start()
    if iothread:
        from machine.iothread import IoThread
        b.vdev.iothread = IoThread("io0")
        b.vdev.inline_max_bytes = 0                  # through the I/O thread, not inline in the kick
    out = io.StringIO()
    trace.set_output(out)
    try:
        trace.enable("virtio_blk_req_complete")
        blk = BlkRequests(b.vqs[0])
        blk.submit(T_IN, 3, in_len=512)
        b.drv.kick(0)
        b.vdev.drain()                          # with an I/O thread: it completes here
    finally:
        trace.disable_all()
        trace.set_output(sys.stderr)
        if iothread:
            b.vdev.iothread.close()
        b.close()
    assert out.getvalue() == ("virtio_blk_req_complete vdev=virtio-blk req=0 type=0 sector=3 len=512 "
                              "status=0 latency_us=2500.0\n")


@pytest.mark.parametrize("iothread", [False, True])
def test_a_completion_event_no_one_enabled_reaches_no_listener(tmp_path, iothread):
    """Listeners (the debugger's breakpoints, the Python API) hear only the events enabled for
    them: listening to virtqueue_* does not bring virtio_blk_req_complete."""
    from machine import trace
    heard = []

    def listener(name, fields):
        heard.append(name)
    b = Bench(tmp_path).start()
    if iothread:
        from machine.iothread import IoThread
        b.vdev.iothread = IoThread("io0")
        b.vdev.inline_max_bytes = 0                  # through the I/O thread, not inline in the kick
    trace.listen("virtqueue_*")
    trace.add_listener(listener)
    try:
        BlkRequests(b.vqs[0]).submit(T_IN, 3, in_len=512)
        b.drv.kick(0)
        b.vdev.drain()
    finally:
        trace.remove_listener(listener)
        trace.unlisten("virtqueue_*")
        if iothread:
            b.vdev.iothread.close()
        b.close()
    assert heard == ["virtqueue_pop", "virtqueue_fill"]


RAM_END = 4 << 20                      # the bench's RAM: [0, 4 MiB)


@pytest.mark.parametrize("area", ["desc", "avail", "used"])
def test_each_ring_area_may_end_at_the_end_of_ram_and_not_past_it(tmp_path, area):
    """A split ring of n entries: 16n bytes of descriptors, 6 + 2n of avail ring (with
    used_event), 6 + 8n of used ring (with avail_event), each wholly in RAM (2.7). Each area
    at the last aligned address where it fits is accepted; one alignment step higher is not."""
    from machine.virtio.queue import RingsNotInRam
    n = 16
    size = {"desc": 16 * n, "avail": 6 + 2 * n, "used": 6 + 8 * n}[area]
    align = {"desc": 16, "avail": 2, "used": 4}[area]
    last = (RAM_END - size) // align * align
    for addr in (last, last + align):
        b = Bench(tmp_path)
        try:
            q = b.vdev.queues[0]
            q.size = n
            addrs = {"desc": 0x10_0000, "avail": 0x10_1000, "used": 0x10_2000, area: addr}
            q.desc_addr, q.avail_addr, q.used_addr = addrs["desc"], addrs["avail"], addrs["used"]
            if addr == last:
                q.activate()
                assert q.active
            else:
                with pytest.raises(RingsNotInRam) as e:
                    q.activate()
                assert str(e.value) == f"queue 0: cannot map rings (guest range {addr:#x}+{size:#x} is not RAM)"
        finally:
            b.close()


@pytest.mark.parametrize("size, addrs, message", [
    (100, (0x10_0000, 0x10_1000, 0x10_2000), "queue 0: bad size 100"),
    (512, (0x10_0000, 0x10_1000, 0x10_2000), "queue 0: bad size 512"),       # more than its maximum
    (16, (0x10_0008, 0x10_1000, 0x10_2000), "queue 0: misaligned rings desc=0x100008 avail=0x101000 used=0x102000"),
    (16, (0x10_0000, 0x10_1001, 0x10_2000), "queue 0: misaligned rings desc=0x100000 avail=0x101001 used=0x102000"),
    (16, (0x10_0000, 0x10_1000, 0x10_2002), "queue 0: misaligned rings desc=0x100000 avail=0x101000 used=0x102002"),
])
def test_a_split_ring_needs_a_power_of_2_size_and_aligned_areas(tmp_path, size, addrs, message):
    from machine.virtio.queue import VirtqueueError
    b = Bench(tmp_path)
    try:
        q = b.vdev.queues[0]
        q.size = size
        q.desc_addr, q.avail_addr, q.used_addr = addrs
        with pytest.raises(VirtqueueError) as e:
            q.activate()
        assert str(e.value) == message
    finally:
        b.close()


@pytest.mark.parametrize("event_idx", [True, False])
def test_a_split_ring_kick_writes_and_reports_only_the_used_ring_bytes_it_changes(tmp_path, event_idx):
    """After each kick: the used element, used->idx and (EVENT_IDX) avail_event = the avail
    index seen; without EVENT_IDX used->flags is 0 again even if the driver scribbled on it.
    Nothing else of the three ring areas changes, and each write is reported with its range."""
    b = Bench(tmp_path)
    b.start(features=b.drv.device_features() & ~(0 if event_idx else 1 << 29))
    vq = b.vqs[0]
    n = vq.size
    areas = [(vq.desc, 16 * n), (vq.avail, 6 + 2 * n), (vq.used, 6 + 8 * n)]
    reported = []
    listen = b.mem.notify_write
    b.mem.notify_write = lambda gpa, k: (reported.append((gpa, k)), listen(gpa, k))
    try:
        for i in range(3):
            if not event_idx:
                b.mem.write_u16(vq.used, 1)              # NO_NOTIFY, written by a hostile driver
            req = BlkRequests(vq).submit(T_IN, 0, in_len=512)
            before = {a: bytes(b.mem.read(a, k)) for a, k in areas}
            del reported[:]
            b.drv.kick(0)
            changed = {a + j for a, k in areas for j in range(k) if b.mem.read(a + j, 1) != before[a][j:j + 1]}
            slot = vq.used + 4 + 8 * i
            expect = set(range(slot, slot + 8)) | {vq.used + 2}
            if event_idx:
                expect |= {vq.used + 4 + 8 * n}
                assert vq.avail_event() == i + 1
            else:
                expect |= {vq.used}
                assert vq.used_flags() == 0
            assert changed <= expect
            assert struct.unpack("<II", b.mem.read(slot, 8)) == (req.head, 513)
            ring_reports = [(a, k) for a, k in reported if vq.used <= a < vq.used + 6 + 8 * n]
            wanted = [(slot, 8), (vq.used + 2, 2)] + ([(vq.used + 4 + 8 * n, 2)] if event_idx else [(vq.used, 2)])
            assert sorted(ring_reports) == sorted(wanted)
            assert vq.get_used()[-1][0] == req.head
        del reported[:]
        b.drv.kick(0)                                    # nothing new: nothing to write
        assert [(a, k) for a, k in reported if vq.used <= a < vq.used + 6 + 8 * n] == []
    finally:
        b.close()
