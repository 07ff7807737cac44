"""Crash consistency (VIRTIO 1.2 5.2.6.2): a model-based test over a simulated disk with a
volatile cache. Writes land in the cache, fdatasync makes them stable, a crash drops the cache.
After any crash, every sector must hold a value that was stable: its content at the last
completed FLUSH (or a writethrough completion), or something written after that."""

import errno
import struct
import tempfile

from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from machine.block.raw import BlockBackend
from virtio_driver import (Allocator, BlkRequests, ModernPci, S_IOERR, S_OK, T_FLUSH, T_IN, T_OUT)
from machine.memory import GuestMemory
from machine.virtio import blk as B
from machine.virtio.blk_pci import create_virtio_blk_pci

NSECT = 8


class CachedDisk(BlockBackend):
    """A disk with a volatile write cache; `crash()` loses whatever was not synced."""

    def __init__(self):
        self.size = NSECT * 512
        self.read_only = False
        self.discard_unmap = False
        self.cache = "writeback"
        self.stable = bytearray(self.size)
        self.dirty: dict[int, bytes] = {}
        self.fail_sync = False

    def _view(self) -> bytearray:
        img = bytearray(self.stable)
        for off, data in self.dirty.items():
            img[off:off + len(data)] = data
        return img

    def readv(self, offset, bufs):
        img, pos = self._view(), offset
        for b in bufs:
            b[:] = img[pos:pos + len(b)]
            pos += len(b)
        return pos - offset

    def writev(self, offset, bufs):
        data = b"".join(bytes(b) for b in bufs)
        for i in range(0, len(data), 512):
            self.dirty[offset + i] = data[i:i + 512]
        return len(data)

    def flush(self):
        if self.fail_sync:
            raise OSError(errno.EIO, "sync failed")
        for off, data in self.dirty.items():
            self.stable[off:off + 512] = data
        self.dirty.clear()

    def crash(self):
        self.dirty.clear()


class Durability(RuleBasedStateMachine):
    @initialize(wce=st.booleans())
    def start(self, wce):
        self.disk = CachedDisk()
        self.mem = GuestMemory(2 << 20)
        self.dev = create_virtio_blk_pci(self.disk, {}, self.mem)
        self.drv = ModernPci(self.dev, self.mem)
        [self.vq] = self.drv.init(Allocator(self.mem))
        self.blk = BlkRequests(self.vq)
        self.drv.cfg_write(B.OFF_WRITEBACK, 1, int(wce))
        # per sector: the values a crash may legitimately leave (stable one + later writes)
        self.allowed = [{bytes(512)} for _ in range(NSECT)]
        self.flush_broken = False

    def _do(self, rtype, sector=0, out=b"", in_len=0):
        req = self.blk.submit(rtype, sector, out=out, in_len=in_len)
        self.drv.kick(0)
        self.vq.get_used()
        self.vq.recycle(req.head, 3)
        return self.blk.result(req)

    @rule(sector=st.integers(0, NSECT - 1), byte=st.integers(0, 255))
    def write(self, sector, byte):
        data = bytes([byte]) * 512
        _, status = self._do(T_OUT, sector, out=data)
        if status == S_OK and not self.dev.vdev.writeback():
            self.allowed[sector] = {data}            # writethrough: stable at completion
        else:
            self.allowed[sector].add(data)

    @rule()
    def flush(self):
        _, status = self._do(T_FLUSH)
        if self.flush_broken:
            assert status == S_IOERR                  # a failed sync poisons later flushes
        if status == S_OK:
            img = self.disk._view()
            self.allowed = [{bytes(img[s * 512:(s + 1) * 512])} for s in range(NSECT)]

    @rule(on=st.booleans())
    def toggle_writeback(self, on):
        self.drv.cfg_write(B.OFF_WRITEBACK, 1, int(on))

    @rule()
    def sync_fails_once(self):
        self.disk.fail_sync = True
        _, status = self._do(T_FLUSH)
        assert status == S_IOERR
        self.disk.fail_sync = False
        self.flush_broken = True

    @rule()
    def crash_and_check(self):
        self.disk.crash()
        for s in range(NSECT):
            got = bytes(self.disk.stable[s * 512:(s + 1) * 512])
            assert got in self.allowed[s], s
            self.allowed[s] = {got}

    @invariant()
    def reads_see_latest_data(self):
        if hasattr(self, "disk"):
            data, status = self._do(T_IN, 0, in_len=512)
            assert status == S_OK and data == bytes(self.disk._view()[:512])


Durability.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None,
                                        derandomize=True, suppress_health_check=[HealthCheck.too_slow])
test_flush_and_writethrough_keep_acknowledged_writes_across_crashes = Durability.TestCase
