"""A Python virtio driver for tests, in the spirit of QEMU's qtest virtio helpers: it lays out
split rings and request chains in a GuestMemory and programs a virtio-pci function through its
registers (PCI config via config_read/config_write, the modern common cfg through BAR 4's ops,
the legacy header through BAR 0's ops). No CPU is involved.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, field

from machine.memory import GuestMemory

# status / features
ACK, DRIVER, DRIVER_OK, FEATURES_OK, NEEDS_RESET, FAILED = 1, 2, 4, 8, 64, 128
F_INDIRECT, F_EVENT_IDX, F_VERSION_1, F_ANY_LAYOUT = 28, 29, 32, 27
NEXT, WRITE, INDIRECT = 1, 2, 4
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2

RAM_BASE = 0x100000          # the driver allocates from 1 MiB up


class Allocator:
    """Bump allocator over guest RAM from 1 MiB; leaves a gap after each block so overruns show."""

    def __init__(self, mem: GuestMemory, start: int = RAM_BASE, gap: int = 64):
        self.mem, self.next, self.gap = mem, start, gap
        self.blocks: list[tuple[int, int]] = []

    def alloc(self, size: int, align: int = 16) -> int:
        addr = (self.next + align - 1) & ~(align - 1)
        self.next = addr + size + self.gap
        if not self.mem.contains(addr, size):
            raise MemoryError("test RAM exhausted")
        self.blocks.append((addr, size))
        return addr


@dataclass
class Request:
    head: int
    writable: list[tuple[int, int]] = field(default_factory=list)   # where the device may write
    readable: list[tuple[int, int]] = field(default_factory=list)


class Vring:
    """Driver side of one split virtqueue."""

    def __init__(self, mem: GuestMemory, alloc: Allocator, size: int, *, legacy_align: int = 0):
        self.mem, self.alloc, self.size = mem, alloc, size
        if legacy_align:
            total = ((16 * size + 6 + 2 * size + 4095) & ~4095) + 6 + 8 * size
            self.desc = alloc.alloc(total, 4096)
            self.avail = self.desc + 16 * size
            self.used = (self.avail + 6 + 2 * size + 4095) & ~4095
        else:
            self.desc = alloc.alloc(16 * size, 16)
            self.avail = alloc.alloc(6 + 2 * size, 2)
            self.used = alloc.alloc(6 + 8 * size, 4)
        mem.fill(self.desc, 16 * size)
        mem.fill(self.avail, 6 + 2 * size)
        mem.fill(self.used, 6 + 8 * size)
        self.free = list(range(size))
        self.avail_idx = 0
        self.last_used = 0

    # -- descriptors -----------------------------------------------------------------------------
    def write_desc(self, table: int, i: int, addr: int, length: int, flags: int, nxt: int) -> None:
        self.mem.write(table + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))

    def add_chain(self, parts: list[tuple[int, int, bool]], *, indirect: bool = False) -> int:
        """Descriptors for (addr, len, device_writable) parts; returns the head index."""
        if indirect:
            table = self.alloc.alloc(16 * len(parts), 16)
            for i, (a, n, w) in enumerate(parts):
                last = i == len(parts) - 1
                self.write_desc(table, i, a, n, (WRITE if w else 0) | (0 if last else NEXT), 0 if last else i + 1)
            head = self.free.pop(0)
            self.write_desc(self.desc, head, table, 16 * len(parts), INDIRECT, 0)
            return head
        idx = [self.free.pop(0) for _ in parts]
        for k, (a, n, w) in enumerate(parts):
            last = k == len(parts) - 1
            self.write_desc(self.desc, idx[k], a, n, (WRITE if w else 0) | (0 if last else NEXT),
                            0 if last else idx[k + 1])
        return idx[0]

    def publish(self, head: int, *, bump: bool = True) -> None:
        self.mem.write_u16(self.avail + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        if bump:
            self.mem.write_u16(self.avail + 2, self.avail_idx)

    def set_avail_idx(self, idx: int) -> None:
        self.avail_idx = idx & 0xFFFF
        self.mem.write_u16(self.avail + 2, self.avail_idx)

    # -- completions ---------------------------------------------------------------------------
    def used_idx(self) -> int:
        return self.mem.read_u16(self.used + 2)

    def used_flags(self) -> int:
        return self.mem.read_u16(self.used)

    def avail_event(self) -> int:
        return self.mem.read_u16(self.used + 4 + 8 * self.size)

    def set_used_event(self, v: int) -> None:
        self.mem.write_u16(self.avail + 4 + 2 * self.size, v)

    def set_avail_flags(self, v: int) -> None:
        self.mem.write_u16(self.avail, v)

    def get_used(self) -> list[tuple[int, int]]:
        out = []
        while self.last_used != self.used_idx():
            slot = self.used + 4 + 8 * (self.last_used % self.size)
            out.append(struct.unpack("<II", self.mem.read(slot, 8)))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out

    def recycle(self, head: int, count: int = 1) -> None:
        """Give descriptors back (the test knows how many a chain used)."""
        i = head
        for _ in range(count):
            self.free.append(i)
            flags, nxt = struct.unpack("<HH", self.mem.read(self.desc + 16 * i + 12, 4))
            if not flags & NEXT:
                break
            i = nxt


def cut(data_len: int, pieces: list[int] | None) -> list[int]:
    """Sizes of the descriptors a byte string of data_len is split into (None: one piece)."""
    if not pieces:
        return [data_len] if data_len else []
    out, left = [], data_len
    for p in pieces:
        if left <= 0:
            break
        out.append(min(p, left))
        left -= out[-1]
    if left > 0:
        out.append(left)
    return out


class BlkRequests:
    """virtio-blk requests laid out in any descriptor arrangement."""

    def __init__(self, vq: Vring):
        self.vq, self.mem, self.alloc = vq, vq.mem, vq.alloc

    def submit(self, rtype: int, sector: int = 0, *, out: bytes = b"", in_len: int = 0,
               rcuts: list[int] | None = None, wcuts: list[int] | None = None,
               indirect: bool = False, publish: bool = True) -> Request:
        """readable = 16-byte header + `out`; writable = `in_len` data bytes + 1 status byte.
        rcuts/wcuts give the descriptor sizes for the readable/writable bytes (any split)."""
        readable = struct.pack("<IIQ", rtype, 0, sector) + out
        req_parts: list[tuple[int, int, bool]] = []
        req = Request(head=-1)
        pos = 0
        for n in cut(len(readable), rcuts):
            a = self.alloc.alloc(n, 8)
            self.mem.write(a, readable[pos:pos + n])
            pos += n
            req_parts.append((a, n, False))
            req.readable.append((a, n))
        for n in cut(in_len + 1, wcuts):
            a = self.alloc.alloc(n, 8)
            self.mem.fill(a, n, 0xEE)          # poison: shows what the device wrote
            req_parts.append((a, n, True))
            req.writable.append((a, n))
        req.head = self.vq.add_chain(req_parts, indirect=indirect)
        if publish:
            self.vq.publish(req.head)
        return req

    def result(self, req: Request) -> tuple[bytes, int]:
        """(data the device put in the writable area, status byte)."""
        blob = b"".join(self.mem.read(a, n) for a, n in req.writable)
        return blob[:-1], blob[-1]


# ------------------------------------------------------------------------------------------------
# Transport drivers
# ------------------------------------------------------------------------------------------------

class ModernPci:
    """The modern interface: capabilities found by walking PCI config, registers through BAR 4."""

    def __init__(self, dev, mem: GuestMemory, *, bar_ops=None):
        self.dev, self.mem = dev, mem
        dev.config_write(0x04, 2, 0x0007)              # I/O, memory, bus master
        self.caps: dict[int, tuple[int, int, int, int]] = {}   # cfg_type -> (cap offset, bar, offset, length)
        self.notify_mult = 0
        ptr = dev.config_read(0x34, 1)
        seen = 0
        while ptr and seen < 48:
            seen += 1
            if dev.config_read(ptr, 1) == 0x09:
                cfg_type = dev.config_read(ptr + 3, 1)
                self.caps[cfg_type] = (ptr, dev.config_read(ptr + 4, 1), dev.config_read(ptr + 8, 4),
                                       dev.config_read(ptr + 12, 4))
                if cfg_type == 2:
                    self.notify_mult = dev.config_read(ptr + 16, 4)
            ptr = dev.config_read(ptr + 1, 1)
        bar = self.caps[1][1]
        self.bar = bar_ops if bar_ops is not None else dev.bars[bar].ops

    def _off(self, cfg_type: int) -> int:
        return self.caps[cfg_type][2]

    def common_read(self, off: int, size: int) -> int:
        return self.bar.read(self._off(1) + off, size)

    def common_write(self, off: int, size: int, value: int) -> None:
        self.bar.write(self._off(1) + off, size, value)

    def write64(self, off: int, value: int) -> None:
        self.common_write(off, 4, value & 0xFFFFFFFF)
        self.common_write(off + 4, 4, value >> 32)

    @property
    def status(self) -> int:
        return self.common_read(0x14, 1)

    def set_status(self, v: int) -> None:
        self.common_write(0x14, 1, v)

    def device_features(self) -> int:
        self.common_write(0x00, 4, 0)
        lo = self.common_read(0x04, 4)
        self.common_write(0x00, 4, 1)
        return lo | self.common_read(0x04, 4) << 32

    def write_features(self, f: int) -> None:
        self.common_write(0x08, 4, 0)
        self.common_write(0x0C, 4, f & 0xFFFFFFFF)
        self.common_write(0x08, 4, 1)
        self.common_write(0x0C, 4, f >> 32)

    def isr(self) -> int:
        return self.bar.read(self._off(3), 1)

    def cfg_read(self, off: int, size: int) -> int:
        return self.bar.read(self._off(4) + off, size)

    def cfg_write(self, off: int, size: int, v: int) -> None:
        self.bar.write(self._off(4) + off, size, v)

    def kick(self, q: int) -> None:
        self.common_write(0x16, 2, q)
        notify_off = self.common_read(0x1E, 2)
        self.bar.write(self._off(2) + notify_off * self.notify_mult, 2, q)

    def init(self, alloc: Allocator, *, features: int | None = None, nqueues: int = 1,
             size: int | None = None, driver_ok: bool = True) -> list[Vring]:
        """The 3.1.1 sequence. features=None accepts everything offered."""
        self.set_status(0)
        assert self.status == 0
        self.set_status(ACK)
        self.set_status(ACK | DRIVER)
        offered = self.device_features()
        self.write_features(offered if features is None else features)
        self.set_status(ACK | DRIVER | FEATURES_OK)
        if not self.status & FEATURES_OK:
            return []
        rings = []
        for i in range(nqueues):
            self.common_write(0x16, 2, i)
            qsize = self.common_read(0x18, 2)
            if size is not None:
                self.common_write(0x18, 2, size)
                qsize = self.common_read(0x18, 2)
            vq = Vring(self.mem, alloc, qsize)
            self.write64(0x20, vq.desc)
            self.write64(0x28, vq.avail)
            self.write64(0x30, vq.used)
            self.common_write(0x1C, 2, 1)
            rings.append(vq)
        if driver_ok:
            self.set_status(ACK | DRIVER | FEATURES_OK | DRIVER_OK)
        return rings


class LegacyPci:
    """The legacy (0.9.5) interface through I/O BAR 0."""

    def __init__(self, dev, mem: GuestMemory):
        self.dev, self.mem = dev, mem
        dev.config_write(0x04, 2, 0x0007)
        self.bar = dev.bars[0].ops

    @property
    def status(self) -> int:
        return self.bar.read(0x12, 1)

    def set_status(self, v: int) -> None:
        self.bar.write(0x12, 1, v)

    def device_features(self) -> int:
        return self.bar.read(0x00, 4)

    def isr(self) -> int:
        return self.bar.read(0x13, 1)

    def cfg_read(self, off: int, size: int) -> int:
        return self.bar.read(20 + off, size)

    def cfg_write(self, off: int, size: int, v: int) -> None:
        self.bar.write(20 + off, size, v)

    def kick(self, q: int) -> None:
        self.bar.write(0x10, 2, q)

    def init(self, alloc: Allocator, *, features: int | None = None, nqueues: int = 1,
             driver_ok: bool = True) -> list[Vring]:
        self.set_status(0)
        self.set_status(ACK | DRIVER)
        offered = self.device_features()
        self.bar.write(0x04, 4, offered if features is None else features)
        rings = []
        for i in range(nqueues):
            self.bar.write(0x0E, 2, i)
            n = self.bar.read(0x0C, 2)
            vq = Vring(self.mem, alloc, n, legacy_align=4096)
            self.bar.write(0x08, 4, vq.desc >> 12)
            rings.append(vq)
        if driver_ok:
            self.set_status(ACK | DRIVER | DRIVER_OK)
        return rings


class RamWatch:
    """Snapshot guest RAM; later list the ranges that changed (to prove the device wrote only
    where it was allowed to)."""

    def __init__(self, mem: GuestMemory):
        self.mem = mem
        self.before = bytes(mem.buf)

    def changed(self) -> list[tuple[int, int]]:
        """Changed host-buffer offsets as (start, end) runs (host offset == gpa above 1 MiB)."""
        now = bytes(self.mem.buf)
        runs, step = [], 4096
        for base in range(0, len(now), step):
            if now[base:base + step] == self.before[base:base + step]:
                continue
            i = base
            while i < min(base + step, len(now)):
                if now[i] != self.before[i]:
                    j = i
                    while j < len(now) and now[j] != self.before[j]:
                        j += 1
                    runs.append((i, j))
                    i = j
                else:
                    i += 1
        return runs


# ------------------------------------------------------------------------------------------------
# A whole test bench: image file + backend + device + driver
# ------------------------------------------------------------------------------------------------

_BASE = bytes((i * 7) % 251 for i in range(251)) * 2


def pattern(n: int, seed: int = 0) -> bytes:
    """Deterministic non-repeating-per-sector bytes (period 251), built in C speed."""
    start = (seed * 36) % 251           # 7 * 36 = 252 = 1 (mod 251): shifts the sequence by seed
    reps = n // 251 + 2
    return (_BASE[start:start + 251] * reps)[:n]


_bench_numbers = itertools.count()     # image names (an id() can come back once an object is gone)


class Bench:
    """One virtio-blk-pci on a fresh image, with a driver for the chosen interface."""

    def __init__(self, tmp_path, *, disk_size: int = 1 << 20, props: dict | None = None,
                 legacy: bool = False, ram: int = 4 << 20, native: bool = False, **drive_kw):
        from machine.block import open_drive
        from machine.config import DriveConfig
        from machine.virtio.blk_pci import create_virtio_blk_pci
        self.path = tmp_path / f"disk{next(_bench_numbers)}.img"
        self.path.write_bytes(pattern(disk_size))
        self.backend = open_drive(DriveConfig(file=self.path, **drive_kw))
        self.mem = GuestMemory(ram)
        try:
            self.dev = create_virtio_blk_pci(self.backend, dict(props or {}), self.mem)
        except BaseException:
            self.backend.close()           # a refused configuration leaves no image locked
            raise
        self.vdev = self.dev.vdev
        # The device model in Python unless asked: its native request path
        # (machine/virtio/blk_fast.py) is checked against it in tests/test_virtio_blk_fast.py.
        if not native:
            self.vdev._fast = None
        self.alloc = Allocator(self.mem)
        self.drv = LegacyPci(self.dev, self.mem) if legacy else ModernPci(self.dev, self.mem)
        self.irq_levels: list[bool] = []
        from machine.irq import IrqLine
        self.dev.intx = IrqLine("test", self.irq_levels.append)
        self.vqs: list[Vring] = []

    def start(self, **kw) -> "Bench":
        self.vqs = self.drv.init(self.alloc, **kw)
        self.blk = BlkRequests(self.vqs[0]) if self.vqs else None
        return self

    def run(self, rtype: int, sector: int = 0, q: int = 0, **kw) -> tuple[bytes, int, int]:
        """Submit one request on queue q, kick, return (data, status, used.len)."""
        blk = BlkRequests(self.vqs[q])
        req = blk.submit(rtype, sector, **kw)
        self.drv.kick(q)
        used = self.vqs[q].get_used()
        assert [h for h, _ in used] == [req.head], used
        data, status = blk.result(req)
        return data, status, used[0][1]

    def image(self) -> bytes:
        return self.path.read_bytes()

    @property
    def needs_reset(self) -> bool:
        return bool(self.vdev.status & NEEDS_RESET)

    def close(self) -> None:
        self.backend.close()


def benches(tmp_path, **defaults):
    """Body of a `make(**kw)` fixture: yields a Bench factory, then closes every Bench made."""
    made: list[Bench] = []

    def make(**kw) -> Bench:
        b = Bench(tmp_path, **{**defaults, **kw})
        made.append(b)
        return b
    yield make
    for b in made:
        b.close()
