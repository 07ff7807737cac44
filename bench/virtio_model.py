"""Throughput of the virtio-blk device model alone: a Python driver (no CPU) submits requests
through the modern virtio-pci registers, next to a plain preadv/pwritev loop on the same file in
the same run (the ceiling the model could reach).

    python bench/virtio_model.py [--seconds 2] [--batch 32]
"""

from __future__ import annotations

import argparse
import mmap
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from machine.block import open_drive                     # noqa: E402
from machine.config import DriveConfig                   # noqa: E402
from machine.memory import GuestMemory                   # noqa: E402
from machine.virtio.blk_pci import create_virtio_blk_pci     # noqa: E402
from virtio_driver import Allocator, ModernPci           # noqa: E402

DISK = 256 << 20
T_IN, T_OUT = 0, 1


class Model:
    def __init__(self, path: Path, req_bytes: int, batch: int):
        self.backend = open_drive(DriveConfig(file=path))
        self.mem = GuestMemory(64 << 20 if req_bytes < (1 << 20) else 128 << 20)
        self.dev = create_virtio_blk_pci(self.backend, {}, self.mem)
        self.drv = ModernPci(self.dev, self.mem)
        alloc = Allocator(self.mem)
        [self.vq] = self.drv.init(alloc)
        self.batch, self.req_bytes = batch, req_bytes
        self.notify = self.drv._off(2)
        self.bar = self.drv.bar
        vq, mem = self.vq, self.mem
        # one 3-descriptor chain per batch slot: header, data, status
        self.hdrs = []
        for i in range(batch):
            h, d, s = alloc.alloc(16), alloc.alloc(req_bytes, 4096), alloc.alloc(1)
            vq.write_desc(vq.desc, 3 * i, h, 16, 1, 3 * i + 1)
            vq.write_desc(vq.desc, 3 * i + 1, d, req_bytes, 1, 3 * i + 2)
            vq.write_desc(vq.desc, 3 * i + 2, s, 1, 2, 0)
            self.hdrs.append(h)
        self.sectors = DISK // 512

    def run(self, rtype: int, seconds: float) -> tuple[int, float]:
        vq, mem, buf = self.vq, self.mem, self.mem.buf
        # data descriptor direction: device-writable for reads
        for i in range(self.batch):
            d = vq.desc + 16 * (3 * i + 1)
            mem.write_u16(d + 12, 1 | (2 if rtype == T_IN else 0))
        step = self.req_bytes // 512
        sector, done, avail = 0, 0, vq.avail_idx
        pack = struct.Struct("<IIQ").pack_into
        t0 = time.perf_counter()
        end = t0 + seconds
        while time.perf_counter() < end:
            for i in range(self.batch):
                pack(buf, self.hdrs[i], rtype, 0, sector)
                sector = (sector + step) % self.sectors
                struct.pack_into("<H", buf, vq.avail + 4 + 2 * (avail % vq.size), 3 * i)
                avail = (avail + 1) & 0xFFFF
            struct.pack_into("<H", buf, vq.avail + 2, avail)
            self.bar.write(self.notify, 2, 0)
            done += self.batch
        elapsed = time.perf_counter() - t0
        vq.avail_idx = avail
        assert vq.used_idx() == avail and not self.dev.vdev.broken
        return done, elapsed

    def close(self):
        self.backend.close()


def ceiling(path: Path, rtype: int, req_bytes: int, seconds: float, batch: int) -> tuple[int, float]:
    """The same transfers straight from Python: `batch` buffers in anonymous memory (like guest
    RAM and like the model's batch of requests), one preadv/pwritev each."""
    fd = os.open(path, os.O_RDWR)
    ram = mmap.mmap(-1, req_bytes * batch, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mv = memoryview(ram)
    bufs = [mv[i * req_bytes:(i + 1) * req_bytes] for i in range(batch)]
    off, done = 0, 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        for buf in bufs:
            if rtype == T_IN:
                os.preadv(fd, [buf], off)
            else:
                os.pwritev(fd, [buf], off)
            off = (off + req_bytes) % DISK
        done += batch
    elapsed = time.perf_counter() - t0
    for b in bufs:
        b.release()
    mv.release()
    ram.close()
    os.close(fd)
    return done, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--batch", type=int, default=32, help="requests made available per kick")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench.img"
        with open(path, "wb") as f:
            f.truncate(DISK)
        with open(path, "r+b") as f:                 # real data, so reads hit the page cache
            chunk = os.urandom(1 << 20)
            for _ in range(DISK >> 20):
                f.write(chunk)
        rows = []
        for label, rtype, size in (("4 KiB read", T_IN, 4096), ("1 MiB read", T_IN, 1 << 20),
                                   ("1 MiB write", T_OUT, 1 << 20)):
            m = Model(path, size, args.batch)
            n, t = m.run(rtype, args.seconds)
            m.close()
            cn, ct = ceiling(path, rtype, size, args.seconds, args.batch)
            rows.append((label, size, n / t, cn / ct))
        print(f"virtio-blk device model, Python driver, {args.batch} requests per kick, {args.seconds:.0f} s each")
        print(f"{'workload':<12} {'model':>16} {'preadv/pwritev':>16} {'ratio':>7}")
        for label, size, rate, crate in rows:
            if size == 4096:
                a, b = f"{rate:,.0f} req/s", f"{crate:,.0f} req/s"
            else:
                a, b = f"{rate * size / 1e6:,.0f} MB/s", f"{crate * size / 1e6:,.0f} MB/s"
            print(f"{label:<12} {a:>16} {b:>16} {rate / crate:>7.2f}")


if __name__ == "__main__":
    main()
