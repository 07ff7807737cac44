"""Hypothesis strategies for random-but-plausible guest programs: each op is a short 32-bit code
snippet (tests/fuzz/x86.py) that touches ports, MMIO, RAM or a virtio device, plus the ring
contents a virtio notify will find in RAM.

    payload = b"".join(data.draw(programs()))
    write_rings(machine, data.draw(ring_layouts()))
"""

from __future__ import annotations

import struct

from hypothesis import strategies as st

from . import x86
from .rig import (LEGACY_IO_BASE, MODERN_BAR_BASE, RAM_SIZE, RING_AREA, RING_AREA_SIZE,
                  VIRTIO_DEVFN, cfg_addr)

LAPIC = 0xFEE00000
DESC_TABLE, AVAIL, USED = RING_AREA, RING_AREA + 0x1000, RING_AREA + 0x2000
BUFFERS = RING_AREA + 0x10000          # 32 buffers of 0x1000: request headers and data
N_DESC = 16

# Ports the brief names, with every register of each device.
INTERESTING_PORTS = ([0x20, 0x21, 0xA0, 0xA1, 0x40, 0x41, 0x42, 0x43, 0x61, 0x70, 0x71, 0x92,
                      0x60, 0x64, 0x402, 0x4D0, 0x4D1, 0xF4, 0x80]
                     + list(range(0x3F8, 0x400)) + list(range(0x510, 0x51C))
                     + list(range(0xCF8, 0xD00)))
PORTS = st.one_of(st.sampled_from(INTERESTING_PORTS),
                  st.integers(LEGACY_IO_BASE, LEGACY_IO_BASE + 0xFF),
                  st.integers(0, 0xFFFF))
# Exit port 0xF4 writes end the run at once: keep them rare by drawing it only from the list.
SIZES = st.sampled_from([1, 2, 4])
VALUES = st.one_of(st.integers(0, 0xFFFFFFFF), st.sampled_from([0, 1, 2, 3, 7, 0xB, 0xF, 0x10, 0x80,
                   0xFF, 0x100, 0xFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE, 0x7FFFFFFF]),
                   st.integers(0, 16))

ADDRESSES = st.one_of(
    st.integers(0xC0000000, 0xFEBFFFFF),                          # PCI hole
    st.integers(MODERN_BAR_BASE, MODERN_BAR_BASE + 0x4010),       # virtio modern BAR (and past it)
    st.integers(LAPIC, LAPIC + 0x1000),                           # local APIC page
    st.integers(RING_AREA, RING_AREA + RING_AREA_SIZE - 1),       # RAM the rings live in
    st.integers(0x100000, RAM_SIZE + 8),                          # RAM, and just past its end
    st.integers(0xA0000, 0xFFFFF),                                # legacy VGA hole and BIOS area
    st.integers(0xFFFF0000, 0xFFFFFFFF),                          # firmware ROM, 4 GiB wrap
    st.integers(0, 0xFFFFFFFF),
)


def _pci_cfg_op(draw) -> bytes:
    devfn = draw(st.sampled_from([0, 8, VIRTIO_DEVFN, VIRTIO_DEVFN + 1, 3 << 3, 31 << 3]))
    reg = draw(st.sampled_from([0x00, 0x04, 0x10, 0x14, 0x18, 0x1C, 0x20, 0x24, 0x30, 0x3C,
                                0x40, 0x50, 0x60, 0x70, 0x80, 0xFC]) | st.integers(0, 0xFF))
    size = draw(SIZES)
    value = draw(VALUES | st.sampled_from([LEGACY_IO_BASE | 1, MODERN_BAR_BASE, LAPIC, 0x100000,
                                           0xFFFF0000, 0xFFFFFFF0, 0x0]))
    code = x86.port_out(0xCF8, 4, cfg_addr(devfn, reg))
    port = 0xCFC + (reg & 3 if size < 4 else 0)
    if draw(st.booleans()):
        return code + x86.port_out(port, size, value)
    return code + x86.port_in(port, size)


def _modern_bringup(draw) -> bytes:
    """The modern driver sequence (VIRTIO 3.1.1) ending with a notify: half the time exactly as
    a driver does it (so requests get processed), else with random queue, size, features,
    ring addresses and status values."""
    c = MODERN_BAR_BASE
    sane = draw(st.booleans())
    pick = (lambda good, bad: good) if sane else (lambda good, bad: draw(bad))
    q = pick(0, st.sampled_from([0, 0, 1, 15, 0xFFFF]))
    odd = st.one_of(st.integers(0, 0xFFFFFFFF), st.integers(0, (1 << 64) - 1),
                    st.integers(RING_AREA, RING_AREA + 0x3000),
                    st.sampled_from([MODERN_BAR_BASE, LAPIC, RAM_SIZE - 2, 0xFFFFF000]))
    desc = pick(DESC_TABLE, st.just(DESC_TABLE) | odd)
    avail = pick(AVAIL, st.just(AVAIL) | odd)
    used = pick(USED, st.just(USED) | odd)
    out = [x86.store(c + 0x14, 1, 0), x86.store(c + 0x14, 1, 1), x86.store(c + 0x14, 1, 3),
           x86.store(c + 0x08, 4, 1), x86.store(c + 0x0C, 4, pick(1, st.sampled_from([1, 0, 3]))),
           x86.store(c + 0x08, 4, 0),
           x86.store(c + 0x0C, 4, draw(st.sampled_from([0, 1 << 9, 1 << 28, 1 << 29, 0x6E00]))
                     if sane else draw(VALUES)),
           x86.store(c + 0x14, 1, 0xB), x86.store(c + 0x16, 2, q)]
    qsize = pick(None, st.none() | st.sampled_from([0, 1, 3, 8, 16, 256, 1024, 0x8000, 0xFFFF]))
    if qsize is not None:
        out.append(x86.store(c + 0x18, 2, qsize))
    for off, value in ((0x20, desc), (0x28, avail), (0x30, used)):
        out += [x86.store(c + off, 4, value & 0xFFFFFFFF), x86.store(c + off + 4, 4, value >> 32)]
    out += [x86.store(c + 0x1C, 2, pick(1, st.sampled_from([1, 0, 0xFFFF]))),
            x86.store(c + 0x14, 1, pick(0xF, st.sampled_from([0xF, 0x7, 0xFF, 0x4F]))),
            x86.store(c + 0x3000 + 4 * (q & 0xF), pick(2, SIZES), q)]
    return b"".join(out)


def _legacy_bringup(draw) -> bytes:
    """The legacy (0.9.5) sequence through I/O BAR 0, ending with a notify."""
    io = LEGACY_IO_BASE
    pfn = draw(st.sampled_from([DESC_TABLE >> 12] * 3 + [0, 1, 0xFFFFF, 0xFFFFFFFF]) | st.integers(0, 0xFFFFFFFF))
    q = draw(st.sampled_from([0, 0, 1, 0xFFFF]))
    return b"".join([x86.port_out(io + 0x12, 1, 0), x86.port_out(io + 0x12, 1, 1),
                     x86.port_out(io + 0x12, 1, 3),
                     x86.port_out(io + 0x04, 4, draw(VALUES)),
                     x86.port_out(io + 0x0E, 2, q), x86.port_out(io + 0x08, 4, pfn),
                     x86.port_out(io + 0x12, 1, draw(st.sampled_from([7, 7, 0xF, 0x87]))),
                     x86.port_out(io + 0x10, 2, q)])


@st.composite
def ops(draw) -> bytes:
    kind = draw(st.sampled_from(["out", "out", "in", "in", "store", "store", "load", "load",
                                 "cmpxchg8b", "stos", "movs", "ins", "outs", "pci", "pci",
                                 "modern", "modern", "modern", "legacy", "legacy", "notify", "sti", "cli",
                                 "sti_hlt"]))
    if kind == "out":
        return x86.port_out(draw(PORTS), draw(SIZES), draw(VALUES))
    if kind == "in":
        return x86.port_in(draw(PORTS), draw(SIZES))
    if kind == "store":
        return x86.store(draw(ADDRESSES), draw(st.sampled_from([1, 2, 4, 8])), draw(st.integers(0, (1 << 64) - 1)))
    if kind == "load":
        return x86.load(draw(ADDRESSES), draw(st.sampled_from([1, 2, 4, 8])))
    if kind == "cmpxchg8b":
        return x86.cmpxchg8b(draw(ADDRESSES))
    count = draw(st.integers(0, 64))
    if kind == "stos":
        return x86.rep_stos(draw(ADDRESSES), count, draw(SIZES), draw(VALUES))
    if kind == "movs":
        return x86.rep_movs(draw(ADDRESSES), draw(ADDRESSES), count, draw(SIZES))
    if kind == "ins":
        return x86.rep_ins(draw(PORTS), draw(ADDRESSES), count, draw(SIZES))
    if kind == "outs":
        return x86.rep_outs(draw(PORTS), draw(ADDRESSES), count, draw(SIZES))
    if kind == "pci":
        return _pci_cfg_op(draw)
    if kind == "modern":
        return _modern_bringup(draw)
    if kind == "legacy":
        return _legacy_bringup(draw)
    if kind == "notify":
        if draw(st.booleans()):
            return x86.store(MODERN_BAR_BASE + 0x3000 + 4 * draw(st.integers(0, 3)), draw(SIZES), draw(VALUES))
        return x86.port_out(LEGACY_IO_BASE + 0x10, 2, draw(VALUES))
    if kind == "sti":
        return x86.STI + x86.NOP
    if kind == "cli":
        return x86.CLI
    return x86.STI + x86.HLT


def programs(max_ops: int = 40):
    return st.lists(ops(), min_size=1, max_size=max_ops)


# --------------------------------------------------------------------------- ring contents

_DESC = struct.Struct("<QIHH")
_HDR = struct.Struct("<IIQ")

DESC_ADDRS = st.one_of(
    st.integers(0, 31).map(lambda k: BUFFERS + k * 0x1000),
    st.integers(0, 31).map(lambda k: BUFFERS + k * 0x1000 + 0xFF0),          # straddles a buffer
    st.integers(0, 31).map(lambda k: BUFFERS + k * 0x1000 + 16),
    st.sampled_from([DESC_TABLE, AVAIL, USED, 0, 0x8000, 0x10000, 0xA0000, 0xF0000, RAM_SIZE - 1,
                     RAM_SIZE, MODERN_BAR_BASE, LAPIC, 0xFFFF0000, 0xFFFFFFFF, 1 << 32,
                     (1 << 64) - 512, (1 << 64) - 1]),
    st.integers(0, (1 << 64) - 1),
)
DESC_LENS = st.one_of(st.sampled_from([0, 1, 15, 16, 17, 20, 512, 513, 4096, 0x10000, 0xFFFFFFFF]),
                      st.integers(0, 0xFFFFFFFF))
REQ_TYPES = st.one_of(st.sampled_from([0, 1, 4, 8, 11, 13]), st.integers(0, 0xFFFFFFFF))
SECTORS = st.one_of(st.sampled_from([0, 1, 2046, 2047, 2048, 2049, (1 << 55), (1 << 63), (1 << 64) - 1]),
                    st.integers(0, (1 << 64) - 1))


@st.composite
def _request(draw, k: int, first: int) -> tuple[list[tuple[int, int, int]], bytes]:
    """A well-formed request chain (header, 0-3 data descriptors, status) using buffer k and
    descriptors from `first`; the fields a device checks are random."""
    base = BUFFERS + k * 0x1000
    ndata = draw(st.integers(0, 3))
    rtype = draw(REQ_TYPES)
    device_writes = rtype in (0, 8) if draw(st.integers(0, 4)) else draw(st.booleans())
    chain = [(base, 16, 0)]
    for i in range(ndata):
        length = draw(st.sampled_from([512, 512, 1024, 16, 20, 1, 0, 4096]) | st.integers(0, 0x2000))
        chain.append((base + 0x20 + 0x300 * i, length, 2 if device_writes else 0))
    chain.append((base + 0xFF0, draw(st.sampled_from([1, 1, 1, 0, 2])), 2))
    hdr = _HDR.pack(rtype, 0, draw(SECTORS))
    seg = struct.pack("<QII", draw(SECTORS), draw(st.integers(0, 8) | st.integers(0, 0xFFFFFFFF)),
                      draw(st.integers(0, 3)))
    return chain, hdr + bytes(16) + seg


@st.composite
def ring_layouts(draw) -> dict[int, bytes]:
    """gpa -> bytes to write: a descriptor table, avail ring, used ring and request headers.
    Half the time well-formed request chains, else random descriptors."""
    out: dict[int, bytes] = {}
    if draw(st.booleans()):
        descs: list[tuple[int, int, int, int]] = []
        heads = []
        for k in range(draw(st.integers(1, 3))):
            chain, data = draw(_request(k, len(descs)))
            out[BUFFERS + k * 0x1000] = data
            heads.append(len(descs))
            for j, (addr, length, flags) in enumerate(chain):
                last = j == len(chain) - 1
                descs.append((addr, length, flags | (0 if last else 1), 0 if last else len(descs) + 1))
        out[DESC_TABLE] = b"".join(_DESC.pack(*d) for d in descs)
        out[AVAIL] = struct.pack(f"<HH{len(heads)}H", 0, len(heads), *heads)
        out[USED] = struct.pack("<HH", 0, 0)
        return out
    table = b"".join(_DESC.pack(draw(DESC_ADDRS), draw(DESC_LENS),
                                draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7]) | st.integers(0, 0xFFFF)),
                                draw(st.integers(0, N_DESC + 1) | st.integers(0, 0xFFFF)))
                     for _ in range(N_DESC))
    out[DESC_TABLE] = table
    n_avail = draw(st.integers(0, 8))
    idx = n_avail if draw(st.integers(0, 3)) else draw(st.sampled_from([0xFFFF, 0x8000, 17]) | st.integers(0, 0xFFFF))
    ring = [draw(st.integers(0, N_DESC + 1) | st.integers(0, 0xFFFF)) for _ in range(16)]
    out[AVAIL] = struct.pack("<HH16H", draw(st.sampled_from([0, 1])), idx, *ring)
    out[USED] = struct.pack("<HH", 0, draw(st.sampled_from([0, 0, 0xFFFF])))
    for k in range(draw(st.integers(0, 8))):
        hdr = _HDR.pack(draw(REQ_TYPES), draw(st.integers(0, 3)), draw(SECTORS))
        segs = struct.pack("<QII", draw(SECTORS), draw(st.integers(0, 0xFFFFFFFF) | st.integers(0, 8)),
                           draw(st.integers(0, 3)))
        out[BUFFERS + k * 0x1000] = hdr + segs
    return out


def write_rings(m, layout: dict[int, bytes]) -> None:
    for gpa, data in layout.items():
        m.mem.write(gpa, data)
