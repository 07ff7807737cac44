"""Property test: random packed descriptor rings (VIRTIO 1.2 §2.8) thrown at a virtio-blk-pci with
packed=on, the packed counterpart of tests/test_virtio_fuzz.py (and a bench/fuzz.py target).

Invariants: no Python exception escapes; guest RAM changes only in the descriptor ring (used
elements are written over it), the device's event-suppression structure, and device-writable
buffers (never in readable buffers, indirect tables or the driver's structures); the image changes
only where the backend was asked to write, never past its end, never when read-only; the device
is either still working or in NEEDS_RESET, and a reset always brings it back."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from test_virtio_fuzz import (FLAG_SETS, OUTSIDE, R_ZONE, W_ZONE, WriteLog, _pick,
                              assert_image_written_only_as_asked, changed_runs, header_bytes, lengths,
                              random_address, random_header, random_length)
from test_virtio_packed import AVAIL, USED, PackedRing
from virtio_driver import (ACK, DRIVER, DRIVER_OK, FEATURES_OK, INDIRECT, NEXT, S_OK, T_IN, WRITE,
                           Bench, pattern)

RING = 8
F_PACKED, F_INDIRECT, F_EVENT_IDX = 34, 28, 29
# a descriptor's avail/used bits: mostly "available in the current lap", sometimes anything
WRAP_BITS = ["avail", "avail", "avail", "used", "none", "both"]

SETTINGS = settings(max_examples=80, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def descriptor(draw):
    kind = draw(st.sampled_from([0, NEXT, WRITE, WRITE | NEXT, INDIRECT, INDIRECT | NEXT]) | st.integers(0, 7))
    zone = W_ZONE if kind & WRITE else R_ZONE
    if draw(st.integers(0, 9)) == 0:
        addr = draw(st.sampled_from(OUTSIDE))
    else:
        addr = zone[0] + draw(st.integers(0, (zone[1] - zone[0]) // 16 - 1)) * 16
    bid = draw(st.integers(0, RING + 2))
    wrap_bits = draw(st.sampled_from(WRAP_BITS))
    return addr, draw(lengths), kind, bid, wrap_bits


@st.composite
def plausible_chain(draw, n_headers):
    """A chain as a driver builds it (header, data, status; one buffer id), then perhaps broken
    in one field, so most scenarios reach the request path and some break a rule."""
    header = (R_ZONE[0] + 16 * draw(st.integers(0, n_headers - 1)), 16, NEXT)
    middle = draw(st.sampled_from(["none", "read", "write"]))
    data = []
    if middle != "none":
        zone = W_ZONE if middle == "write" else R_ZONE
        addr = zone[0] + 0x1000 + draw(st.integers(0, 0x100)) * 16
        data = [(addr, draw(st.sampled_from([512, 1024, 4096, 511, 8])), (WRITE if middle == "write" else 0) | NEXT)]
    status = (W_ZONE[0] + draw(st.integers(0, 0xFF)) * 16, 1, WRITE)
    descs = [header, *data, status]
    bid = draw(st.integers(0, RING - 1))
    out = [(a, n, f, bid, "avail") for a, n, f in descs]
    if draw(st.integers(0, 3)) == 0:                   # break one field of one descriptor
        k = draw(st.integers(0, len(out) - 1))
        out[k] = draw(descriptor())
    return out


@st.composite
def scenario(draw):
    headers = draw(st.lists(header_bytes(), min_size=1, max_size=8))
    chains = draw(st.lists(plausible_chain(len(headers)), min_size=1, max_size=3))
    descs = [d for c in chains for d in c]
    if draw(st.integers(0, 4)) == 0:
        descs = draw(st.lists(descriptor(), min_size=1, max_size=RING))
    indirect = draw(st.lists(descriptor(), min_size=0, max_size=6))
    features = draw(st.integers(0, 3))
    driver_event = draw(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 3)))
    read_only = draw(st.booleans())
    return descs, indirect, headers, features, driver_event, read_only


# The strategies above drawn with `random` (bench/fuzz.py's fast campaigns; see test_virtio_fuzz).
def random_descriptor(rng):
    kind = _pick(rng, FLAG_SETS, 0, 7)
    addr = random_address(rng, kind)
    bid = rng.randint(0, RING + 2)
    bits = rng.choice(WRAP_BITS)
    return addr, random_length(rng), kind, bid, bits


def random_plausible_chain(rng, n_headers):
    header = (R_ZONE[0] + 16 * rng.randint(0, n_headers - 1), 16, NEXT)
    middle = rng.choice(["none", "read", "write"])
    data = []
    if middle != "none":
        zone = W_ZONE if middle == "write" else R_ZONE
        addr = zone[0] + 0x1000 + rng.randint(0, 0x100) * 16
        data = [(addr, rng.choice([512, 1024, 4096, 511, 8]), (WRITE if middle == "write" else 0) | NEXT)]
    status = (W_ZONE[0] + rng.randint(0, 0xFF) * 16, 1, WRITE)
    bid = rng.randint(0, RING - 1)
    out = [(a, n, f, bid, "avail") for a, n, f in (header, *data, status)]
    if rng.randint(0, 3) == 0:
        out[rng.randint(0, len(out) - 1)] = random_descriptor(rng)
    return out


def random_scenario(rng):
    headers = [random_header(rng) for _ in range(rng.randint(1, 8))]
    chains = [random_plausible_chain(rng, len(headers)) for _ in range(rng.randint(1, 3))]
    descs = [d for c in chains for d in c]
    if rng.randint(0, 4) == 0:
        descs = [random_descriptor(rng) for _ in range(rng.randint(1, RING))]
    indirect = [random_descriptor(rng) for _ in range(rng.randint(0, 6))]
    return (descs, indirect, headers, rng.randint(0, 3),
            (rng.randint(0, 0xFFFF), rng.randint(0, 3)), rng.random() < 0.5)


BITS = {"avail": AVAIL, "used": USED, "none": 0, "both": AVAIL | USED}


@SETTINGS
@given(scenario())
def test_random_packed_rings_never_escape_or_write_where_they_should_not(sc):
    descs, indirect, headers, features, driver_event, read_only = sc
    with tempfile.TemporaryDirectory() as d:
        b = Bench(Path(d), disk_size=64 * 1024, ram=2 << 20, readonly=read_only,
                  props={"packed": "on", "queue-size": str(RING)})
        try:
            drv = b.drv
            offered = drv.device_features()
            f = offered & ~((1 << F_INDIRECT) | (1 << F_EVENT_IDX))
            f |= (features & 1) << F_INDIRECT | (features >> 1 & 1) << F_EVENT_IDX
            drv.set_status(0)
            drv.set_status(ACK | DRIVER)
            drv.write_features(f & offered)
            drv.set_status(ACK | DRIVER | FEATURES_OK)
            assert drv.status & FEATURES_OK and (f & offered) >> F_PACKED & 1
            drv.common_write(0x16, 2, 0)
            ring = PackedRing(b.mem, b.alloc, drv.common_read(0x18, 2))
            drv.write64(0x20, ring.desc)
            drv.write64(0x28, ring.driver)
            drv.write64(0x30, ring.device)
            drv.common_write(0x1C, 2, 1)
            drv.set_status(ACK | DRIVER | FEATURES_OK | DRIVER_OK)
            assert not b.needs_reset

            blob = b"".join(headers) + pattern(R_ZONE[1] - R_ZONE[0])
            b.mem.write(R_ZONE[0], blob[:R_ZONE[1] - R_ZONE[0]])
            b.mem.fill(W_ZONE[0], W_ZONE[1] - W_ZONE[0], 0xEE)
            for slot, (addr, length, kind, bid, bits) in enumerate(descs[:ring.size]):
                ring.write_desc(slot, addr, length, bid, kind | BITS[bits])
            table = R_ZONE[0] + 0x8000
            for k, (addr, length, kind, bid, _bits) in enumerate(indirect):
                b.mem.write(table + 16 * k, struct.pack("<QIHH", addr, length, bid, kind))
            ring.set_driver_event(*driver_event)
            log = WriteLog(b.backend)
            image_before = b.image()
            ram_before = bytes(b.mem.buf)

            drv.kick(0)
            drv.kick(0)

            allowed = [(ring.desc, ring.desc + 16 * ring.size), (ring.device, ring.device + 4), W_ZONE]
            allowed += [(a, a + n) for a, n, kind, _b, _w in descs[:ring.size] + indirect
                        if kind & WRITE and not kind & INDIRECT]
            for off in changed_runs(ram_before, bytes(b.mem.buf)):
                assert any(lo <= off < hi for lo, hi in allowed), hex(off)
            assert_image_written_only_as_asked(image_before, b.image(), log, read_only)

            # whatever happened, a reset brings the device back (as a split queue: this driver's)
            b.start(features=offered & ~(1 << F_PACKED))
            assert b.run(T_IN, 0, in_len=512)[1] == S_OK
        finally:
            b.close()
