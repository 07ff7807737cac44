"""Per-queue reset (VIRTIO_F_RING_RESET, bit 40, and the queue_reset register at common cfg 0x3A),
as QEMU 7.2 offers it: measured there, the bit is offered by default, a write of 1 resets the
selected queue (queue_enable 0, queue_size back to the maximum, vector NO_VECTOR) and
queue_reset reads 0; the rest of the device keeps running."""

import pytest

from virtio_driver import DRIVER_OK, S_OK, T_IN, BlkRequests, Vring, benches, pattern

RING_RESET = 40
NO_VECTOR = 0xFFFF


@pytest.fixture
def make(tmp_path):
    yield from benches(tmp_path)


def test_ring_reset_is_offered_by_default_and_queue_reset_off_hides_it(make):
    assert make().drv.device_features() >> RING_RESET & 1
    assert not make(props={"queue_reset": "off"}).drv.device_features() >> RING_RESET & 1
    assert make(props={"queue_reset": "off"}).drv.device_features() == make().drv.device_features() & ~(1 << RING_RESET)


def test_queue_reset_returns_the_queue_to_its_defaults(make):
    b = make(props={"num-queues": "2"}).start(nqueues=2, size=128)
    d = b.drv
    d.common_write(0x16, 2, 1)
    d.common_write(0x1A, 2, 0)
    d.common_write(0x3A, 2, 1)
    assert d.common_read(0x3A, 2) == 0 and d.common_read(0x1C, 2) == 0
    assert d.common_read(0x18, 2) == 256 and d.common_read(0x1A, 2) == NO_VECTOR
    assert d.common_read(0x20, 4) == 0
    assert d.status & DRIVER_OK
    assert b.run(T_IN, 0, q=0, in_len=512)[1] == S_OK          # queue 0 carries on


def test_a_reset_queue_ignores_kicks_and_can_be_set_up_again_while_running(make):
    b = make().start()
    d = b.drv
    d.common_write(0x16, 2, 0)
    d.common_write(0x3A, 2, 1)
    BlkRequests(b.vqs[0]).submit(T_IN, 0, in_len=512)
    d.kick(0)
    assert b.vqs[0].used_idx() == 0 and not b.needs_reset
    vq = Vring(b.mem, b.alloc, 64)
    d.common_write(0x18, 2, 64)
    d.write64(0x20, vq.desc)
    d.write64(0x28, vq.avail)
    d.write64(0x30, vq.used)
    d.common_write(0x1C, 2, 1)
    b.vqs[0] = vq
    data, status, _ = b.run(T_IN, 0, in_len=512)
    assert status == S_OK and data == pattern(512)
    assert vq.used_idx() == 1                                      # indices start again at 0


def test_without_ring_reset_a_running_queue_stays_frozen(make):
    b = make().start(features=make().drv.device_features() & ~(1 << RING_RESET))
    d = b.drv
    d.common_write(0x16, 2, 0)
    d.common_write(0x3A, 2, 1)                    # QEMU resets it anyway ...
    assert d.common_read(0x1C, 2) == 0
    d.common_write(0x18, 2, 64)                   # ... but it cannot be set up again while running
    assert d.common_read(0x18, 2) == 256


@pytest.mark.parametrize("value,sel", [(0, 0), (2, 0), (1, 5)])
def test_other_values_or_queues_are_ignored(make, value, sel):
    b = make().start()
    b.drv.common_write(0x16, 2, sel)
    b.drv.common_write(0x3A, 2, value)
    b.drv.common_write(0x16, 2, 0)
    assert b.drv.common_read(0x1C, 2) == 1
    assert b.run(T_IN, 0, in_len=512)[1] == S_OK


def test_a_reset_queue_keeps_the_negotiated_ring_features(make):
    b = make().start()
    q = b.vdev.queues[0].state()
    assert (q.event_idx, q.indirect) == (True, True)
    b.drv.common_write(0x16, 2, 0)
    b.drv.common_write(0x3A, 2, 1)
    q = b.vdev.queues[0].state()
    assert q.event_idx is True and q.indirect is True
    plain = make()
    plain.start(features=plain.drv.device_features() & ~(1 << 28 | 1 << 29))   # neither
    plain.drv.common_write(0x16, 2, 0)
    plain.drv.common_write(0x3A, 2, 1)
    q = plain.vdev.queues[0].state()
    assert q.event_idx is False and q.indirect is False
