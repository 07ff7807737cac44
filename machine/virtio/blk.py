"""virtio-blk (VIRTIO 1.2 section 5.2): config space, feature set and request handling.

A request goes in two steps: the chain is parsed into a frozen `BlkRequest` (blk_request.py:
header gathered from any number of readable descriptors into one host copy, status = the last
byte of the last writable descriptor), then executed: data moves straight between the image and
guest RAM views. The status byte is written in one place (`_run`: OK, or the status a
`RequestError` carries), the completion traced once, and the chain put on the used ring with
len = the exact number of bytes written. Structural violations (no header, no status) are ring
errors (DEVICE_NEEDS_RESET, as QEMU's virtio_error).

Where it runs. By default (deterministic) every request completes inside the notify that made
it available, a bounded amount per notify, the rest from a bottom half between CPU slices. With
`iothread=` (machine/iothread.py) the notify only parses and hands requests to the I/O thread;
their completions reach the used ring on the CPU thread when the run loop polls. Either way the
plain reads and writes go through native code first (blk_fast.py), which does exactly what this
module would and leaves everything else to it.
"""

from __future__ import annotations

import errno
import struct
from typing import Callable

from .. import trace, vmstate
from ..block import BlockBackend
from ..clock import VirtualClock
from ..config import ConfigError
from ..memory import GuestMemory, GuestMemoryError
from . import blk_fast, props as P
from .device import DRIVER_OK, EV_QUEUE_NOTIFY, FAILED, VIRTIO_QUEUE_MAX, VirtioDevice, bit
from .blk_request import (DWZ_SEGMENT, SECTOR, BlkRequest, IoError, RequestError, Seg, Unsupported,
                          parse)
from .queue import QUEUE_MAX_SIZE, Chain, SplitQueue, VirtqueueError, is_power_of_2
from .spec import (VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD,
                   VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_GEOMETRY, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO,
                   VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES,
                   VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
                   VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
                   VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, VIRTIO_ID_BLOCK)

# 0x7fffffff bytes rounded down to sectors: QEMU's default for the discard/write-zeroes maxima.
REQUEST_MAX_SECTORS = 0x7FFFFE00 >> 9

CONFIG = struct.Struct("<QIIHBBIBBHIBBHIIIIIB3x")     # struct virtio_blk_config up to write_zeroes_may_unmap
CONFIG_SIZE = CONFIG.size                             # 60, as QEMU with discard + write-zeroes
OFF_WRITEBACK = 32

EV_READ = trace.Event("virtio_blk_handle_read")
EV_WRITE = trace.Event("virtio_blk_handle_write")
EV_COMPLETE = trace.Event("virtio_blk_req_complete")

# Work done inside one notify in the deterministic mode (see handle_queue): a queue of ordinary
# requests (the bench's 16 x 1 MiB) fits; a queue of 1 GiB reads goes on between CPU slices.
NOTIFY_MAX_REQUESTS = 1024
NOTIFY_MAX_BYTES = 16 << 20
# With iothread=: how long a kick waits for the I/O thread to finish the oldest request when
# nothing has completed yet (IoThread.settle), in seconds. Long enough for a 1 MiB request from
# the page cache; a slower request completes from the run loop instead.
KICK_WAIT = 0.001
# With iothread=: a read or write of at most this many bytes arriving while nothing is in flight
# runs inside the kick (see _submit_available).
INLINE_MAX_BYTES = 64 << 10
# With iothread=: worker threads of the native I/O lane (blk_fast.FastPath.arm_lane), which
# completes a polling driver's requests while the guest runs on. One: the data of most requests
# is one copy through the page cache, where a second worker mostly contends with the first (and
# with the vCPU thread) on a small host. VirtioBlk.lane_threads = None: no lane (all in the
# kick); 0: a lane whose requests wait for the drain (tests).
LANE_THREADS = 1
# The largest request the native path carries out in the deterministic mode: any (the notify's
# byte budget bounds a batch, as in Python).
REQUEST_MAX_BYTES = 1 << 63


class _Direct:
    """Effects of a request executed on the CPU thread: acted on at once."""
    __slots__ = ("wrote", "size_changed")

    def __init__(self, dev: "VirtioBlk"):
        self.wrote = dev.mem.notify_write        # the CPU drops translated code there
        self.size_changed = dev.update_capacity


class _Deferred:
    """Effects of a request executed on an I/O thread, noted for the CPU thread (Unicorn and
    the config interrupt belong to it): the guest bytes written, whether the image size must
    be checked again, and the result, (used.len, status) or None for parked."""
    __slots__ = ("ranges", "recheck_size", "result")

    def __init__(self):
        self.ranges: list[tuple[int, int]] = []
        self.recheck_size = False
        self.result: tuple[int, int] | None = None

    def wrote(self, gpa: int, length: int) -> None:
        self.ranges.append((gpa, length))

    def size_changed(self) -> None:
        self.recheck_size = True


class VirtioBlk(VirtioDevice):
    """A virtio-blk device on a BlockBackend. `props` are QEMU's -device property strings."""

    PROPERTIES = ("num-queues", "queue-size", "serial", "logical_block_size", "physical_block_size",
                  "min_io_size", "opt_io_size", "config-wce", "discard", "write-zeroes",
                  "max-discard-sectors", "max-write-zeroes-sectors", "cyls", "heads", "secs",
                  "seg-max-adjust")

    def __init__(self, backend: BlockBackend, mem: GuestMemory, props: dict[str, str] | None = None):
        super().__init__("virtio-blk", VIRTIO_ID_BLOCK, mem)
        self.backend = backend
        self.props = dict(props or {})
        self.flush_failed = False      # a failed fdatasync poisons every later FLUSH (QEMU does too)
        self.parked: list[tuple[SplitQueue, BlkRequest]] = []   # waiting for the machine to continue
        self.on_io_error: Callable[[], None] | None = None      # the board pauses the machine
        # blkdebug [delay] rules: the backend says how long to hold a completion, measured on
        # the board's virtual clock (without one, as in unit tests, nothing is held).
        self.clock: VirtualClock | None = None
        self._take_delay: Callable[[], int] | None = getattr(backend, "take_delay_ns", None)
        # Completions a [delay] rule holds: (queue, head, used.len), each with a one-shot timer
        # keyed "<timer_key>/delay/<queue>/<head>/<len>", so a snapshot saves and restores it.
        self.delayed: list[tuple[int, int, int]] = []
        self.timer_key: str | None = None     # the board's name for this device's timers
        self._held_timers: dict[tuple[int, int, int], object] = {}
        self._mv = memoryview(mem.buf)
        self._direct = _Direct(self)
        self._to_notify: list[SplitQueue] = []     # queues with completions since the last batch
        self.notify_max_requests = NOTIFY_MAX_REQUESTS
        self.notify_max_bytes = NOTIFY_MAX_BYTES
        self.inline_max_bytes = INLINE_MAX_BYTES
        self.kick_wait = KICK_WAIT
        self.lane_threads: int | None = LANE_THREADS
        self._kick_requests = 0                  # requests the last kick in Python took (iothread=)
        self._fast: blk_fast.FastPath | None = None

    # -- realize -----------------------------------------------------------------------------------
    def realize(self) -> None:
        p = self.props
        unknown = sorted(set(p) - set(self.PROPERTIES))
        if unknown:
            raise ConfigError(f"virtio-blk: unknown property '{unknown[0]}'")
        nq = P.parse_int("num-queues", p.get("num-queues", "1"), 1, VIRTIO_QUEUE_MAX)
        qsize = P.parse_int("queue-size", p.get("queue-size", "256"), 2, QUEUE_MAX_SIZE)
        if not is_power_of_2(qsize):
            raise ConfigError("queue-size property must be a power of 2")
        lbs = P.parse_size("logical_block_size", p.get("logical_block_size", "512"), 512, 32768)
        pbs = P.parse_size("physical_block_size", p.get("physical_block_size", str(lbs)), 512, 32768)
        for name, v in (("logical_block_size", lbs), ("physical_block_size", pbs)):
            if not is_power_of_2(v):
                raise ConfigError(f"Property {name} must be a power of 2")
        if pbs < lbs:
            raise ConfigError("physical_block_size must not be smaller than logical_block_size")
        min_io = P.parse_size("min_io_size", p.get("min_io_size", "0"), 0, 0xFFFF * lbs)
        opt_io = P.parse_size("opt_io_size", p.get("opt_io_size", "0"), 0, 0xFFFFFFFF * lbs)
        wce = P.parse_bool("config-wce", p.get("config-wce", "on"))
        discard = P.parse_bool("discard", p.get("discard", "on"))
        wzeroes = P.parse_bool("write-zeroes", p.get("write-zeroes", "on"))
        seg_adjust = P.parse_bool("seg-max-adjust", p.get("seg-max-adjust", "on"))
        max_discard = P.parse_int("max-discard-sectors", p.get("max-discard-sectors", str(REQUEST_MAX_SECTORS)),
                                  1, REQUEST_MAX_SECTORS)
        max_wz = P.parse_int("max-write-zeroes-sectors", p.get("max-write-zeroes-sectors", str(REQUEST_MAX_SECTORS)),
                             1, REQUEST_MAX_SECTORS)
        serial = p.get("serial", "")
        self.serial = serial.encode("utf-8", "replace")[:VIRTIO_BLK_ID_BYTES]   # QEMU truncates too
        self.lbs = lbs
        self.seg_max = qsize - 2 if seg_adjust else 126
        self.capacity = self.backend.size // SECTOR
        if self.backend.size % lbs:
            raise ConfigError(f"image size {self.backend.size} is not a multiple of logical_block_size {lbs}")
        self.max_discard, self.max_wz = max_discard, max_wz

        cyls = min(self.capacity // (16 * 63), 16383)
        cyls = P.parse_int("cyls", p.get("cyls", str(cyls)), 0, 65535)
        heads = P.parse_int("heads", p.get("heads", "16"), 0, 255)
        secs = P.parse_int("secs", p.get("secs", "63"), 0, 255)
        # As QEMU: when a track (heads * secs sectors of the image) does not hold whole logical
        # blocks, the reported sectors per track round down to a multiple of the block size
        # (63 -> 56 with 4 KiB blocks on most disk sizes).
        if heads and secs and (self.backend.size // heads // secs) % lbs:
            secs &= ~(lbs // SECTOR - 1)

        f = self.host_features
        f |= bit(VIRTIO_BLK_F_SEG_MAX) | bit(VIRTIO_BLK_F_GEOMETRY) | bit(VIRTIO_BLK_F_BLK_SIZE)
        f |= bit(VIRTIO_BLK_F_FLUSH) | bit(VIRTIO_BLK_F_TOPOLOGY)
        # SIZE_MAX is not offered, as QEMU's default (size_max = 0): SeaBIOS multiplies
        # size_max by seg_max in 32 bits when both are offered.
        if wce:
            f |= bit(VIRTIO_BLK_F_CONFIG_WCE)
        if nq > 1:
            f |= bit(VIRTIO_BLK_F_MQ)
        if discard:
            f |= bit(VIRTIO_BLK_F_DISCARD)
        if wzeroes:
            f |= bit(VIRTIO_BLK_F_WRITE_ZEROES)
        if self.backend.read_only:
            f |= bit(VIRTIO_BLK_F_RO)
        self.host_features = f

        # QEMU's cache modes without O_DIRECT: none acts as writeback, directsync as writethrough.
        self.default_writeback = 0 if self.backend.cache in ("writethrough", "directsync") else 1
        phys_exp = (pbs // lbs).bit_length() - 1
        self.config = bytearray(CONFIG.pack(
            self.capacity, 0, self.seg_max,
            cyls, heads, secs, lbs,
            phys_exp, 0, min_io // lbs, opt_io // lbs,
            self.default_writeback, 0, nq,
            max_discard, 1, lbs // SECTOR,
            max_wz, 1, 1))
        for _ in range(nq):
            self.add_queue(qsize, self.handle_queue)
        self._fast = blk_fast.attach(self, (EV_READ, EV_WRITE, EV_COMPLETE))   # None: all in Python

    def update_capacity(self) -> bool:
        """The image may have been resized (QEMU's block_resize, or on the host behind our back:
        checked at every FLUSH and after every failed read or write): take the new size, bump
        the config generation and tell a live driver. Requests are checked against the new
        capacity from now on. Returns True if it changed."""
        capacity = self.backend.refresh_size() // SECTOR
        if capacity == self.capacity:
            return False
        self.capacity = capacity
        struct.pack_into("<Q", self.config, 0, capacity)
        self.config_changed()
        return True

    # -- negotiation and config --------------------------------------------------------------------
    def features_ok(self, features: int) -> bool:
        # 5.2.5.1: CONFIG_WCE without FLUSH means the device starts in writethrough mode.
        if features >> VIRTIO_BLK_F_CONFIG_WCE & 1 and not features >> VIRTIO_BLK_F_FLUSH & 1:
            self.config[OFF_WRITEBACK] = 0
        return True

    def device_reset(self) -> None:
        self.config[OFF_WRITEBACK] = self.default_writeback
        self.parked.clear()            # a reset drops them, as it drops every request in flight
        for held in self.delayed:
            timer = self._held_timers.pop(held, None)
            if timer is not None:
                timer.cancel()
            else:                          # restored from a snapshot: known by its key
                self.clock.cancel_keyed(self._held_key(*held))
        self.delayed.clear()

    def write_config(self, offset: int, size: int, value: int) -> None:
        """Only `writeback` is writable, and only once CONFIG_WCE is negotiated (5.2.4)."""
        if offset == OFF_WRITEBACK and size == 1 and self.has_feature(VIRTIO_BLK_F_CONFIG_WCE):
            self.config[OFF_WRITEBACK] = 1 if value & 0xFF else 0
            return
        trace.guest_error(f"{self.label}: config write {offset:#x}+{size} = {value:#x} ignored")

    def writeback(self) -> bool:
        """Is the volatile write cache on? (5.2.6.2: which writes must be stable at completion)"""
        if self.has_feature(VIRTIO_BLK_F_CONFIG_WCE):
            return bool(self.config[OFF_WRITEBACK])
        return self.has_feature(VIRTIO_BLK_F_FLUSH)

    @property
    def read_only(self) -> bool:
        return self.backend.read_only

    # -- the queue handler ---------------------------------------------------------------------------
    def handle_queue(self, q: SplitQueue) -> None:
        if self.iothread is not None:
            self._submit_available(q)
            return
        # Bounded work per notify: at most `notify_max_requests` requests and about
        # `notify_max_bytes` bytes (the request that crosses the line completes); what is left
        # goes on from a bottom half (`defer`, between two CPU slices), so one kick of a queue
        # full of huge requests cannot hold the CPU, the monitor and the gdb stub for minutes.
        # Without a bottom half the rest waits for the next kick (kicks are re-enabled).
        # Kicks are not switched off around the batch: requests complete inside the kick, on
        # the one vCPU, so the driver could never see them off (and each flip is a RAM write).
        max_requests, max_bytes = self.notify_max_requests, self.notify_max_bytes
        done = nbytes = held = 0
        more = False
        take, push, handle, take_delay = q.take, q.push, self.handle_request, self._take_delay
        status = blk_fast.BAIL
        # The plain requests in native code first (blk_fast.py), up to the first it leaves to us.
        fast = self._fast
        served = fast and (fast.take_carry(q) or fast.serve(q, max_requests, max_bytes, REQUEST_MAX_BYTES))
        if served:
            status, done, nbytes = served
            more = status == blk_fast.MORE
        # In Python: everything, or from the request the native code left to us (BAIL) on.
        while status == blk_fast.BAIL:
            for _ in range(q.available()):
                if done >= max_requests or nbytes >= max_bytes:
                    more = True
                    break
                chain = take()
                nbytes += chain.readable_len + chain.writable_len
                written = handle(chain, q)
                done += 1
                if take_delay is not None:
                    delay = take_delay()
                    if delay and written is not None and self.clock is not None:
                        self._hold(q, chain.head, written, delay)      # a blkdebug [delay] rule
                        held += 1
                        continue
                if written is not None:          # None: parked by a stop error policy
                    push(chain.head, written)
            if not q.rearm_kicks() or more:      # nothing added meanwhile, or out of budget
                break
        if more and self.defer is not None:
            self.defer(lambda: self.resume_queue(q), q.index)      # the index: a snapshot saves it
        if done > held:
            self.notify(q)

    # -- the native notify front (blk_fast.py) ------------------------------------
    def native_front(self, fallback: int, notify_off: int, notify_mult: int) -> tuple[int, int] | None:
        return None if self._fast is None else self._fast.front(fallback, notify_off, notify_mult)

    def native_arm(self, n: int) -> None:
        """After a kick of queue `n` handled in Python: the front may serve the next ones until
        the CPU next runs Python, where queue_notify would call the handler straight away and the handler finds
        nothing that needs Python (its own checks, in blk_fast)."""
        fast = self._fast
        if fast is None or not fast.token_live() or not 0 <= n < len(self.queues):
            return
        if self.broken or self.status & FAILED or not self.status & DRIVER_OK \
                or EV_QUEUE_NOTIFY.enabled or not self.transport.dma_allowed():
            return
        q = self.queues[n]
        io = self.iothread
        if io is None:
            fast.arm(q, self.notify_max_requests, self.notify_max_bytes, REQUEST_MAX_BYTES)
        elif io.in_flight or self.inline_max_bytes <= 0:
            return
        elif self.lane_threads is not None and q.suppresses_interrupts():
            fast.arm_lane(q, io, self.lane_threads, self._kick_requests > 1)
        else:
            fast.arm(q, 0xFFFFFFFF, 1 << 63, self._inline_limit(q))

    def bind_cpu(self, token_address: int, window) -> bool:
        """The CPU's token and clock window (Cpu.slice_token_address, Cpu.native_window), under
        which the notify front serves kicks alone. False: this device has no native path."""
        if self._fast is None:
            return False
        self._fast.bind_cpu(token_address, window)
        return True

    def _inline_limit(self, q: SplitQueue) -> int:
        """With iothread=, the largest request the native path runs inside the kick: a small
        one (`inline_max_bytes`) always; any, while the driver has interrupts off for what it
        is about to submit (it polls: it would spin until the thread finished, and nothing it
        could do meanwhile is worth a hand-over)."""
        return REQUEST_MAX_BYTES if q.suppresses_interrupts() else self.inline_max_bytes

    def native_sync(self) -> None:
        fast = self._fast
        if fast is not None:
            fast.sync()
            if fast.lane_results:
                self._lane_drained(fast)

    def _lane_drained(self, fast) -> None:
        """The I/O lane's requests are all finished (FastPath.sync): run here those it left to
        Python (a host error, translated code on a page), take a head the driver made available
        again while the lane had it as still in flight (the kick handled next reports it, as
        the Python path would), and send the one notification the completions may owe."""
        results, fast.lane_results = fast.lane_results, []
        for q, completed, left, reused in results:
            try:
                for head in left:
                    chain = q.walk(head)
                    q.inflight.add(head)
                    written = self.handle_request(chain, q)
                    if written is not None:
                        q.push(head, written)
            except (VirtqueueError, GuestMemoryError) as e:
                self.virtio_error(e)
            if reused is not None:
                q.inflight.add(reused)
            if completed or left:
                self.notify(q)

    def _hold(self, q: SplitQueue, head: int, written: int, delay_ns: int) -> None:
        """Complete `head` `delay_ns` of virtual time from now (a blkdebug [delay] rule)."""
        held = (q.index, head, written)
        self.delayed.append(held)
        self._held_timers[held] = self.clock.oneshot(
            self.held_release(*held), self.clock.now + delay_ns,
            self._held_key(*held) if self.timer_key is not None else None)

    def _held_key(self, qi: int, head: int, written: int) -> str:
        return f"{self.timer_key}/delay/{qi}/{head}/{written}"

    def held_release(self, qi: int, head: int, written: int) -> Callable[[], None] | None:
        """The callback of a held completion's timer (also for the board, restoring a saved
        timer): push it and interrupt, unless a device or queue reset (or a broken device)
        dropped it meanwhile. None for a queue this device does not have."""
        if not (0 <= qi < len(self.queues) and 0 <= head < 1 << 16 and 0 <= written < 1 << 32):
            return None
        held = (qi, head, written)

        def release() -> None:
            if held not in self.delayed:
                return
            self.delayed.remove(held)
            self._held_timers.pop(held, None)
            q = self.queues[qi]
            if self.broken or not q.active or head not in q.inflight:
                return
            q.push(head, written)
            self.notify(q)
        return release

    def parse_request(self, chain: Chain) -> BlkRequest:
        """The request a chain carries (MalformedRequest if none), read against the negotiated
        features. Reads guest memory only: debuggers use it on chains the device has not taken.
        A tolerant device carries out DISCARD / WRITE_ZEROES even when they were not negotiated
        (as QEMU does), so it reads their segment as if they were."""
        return parse(chain, self.mem.buf, self._parsed_as_negotiated)

    def _parsed_as_negotiated(self, feature: int) -> bool:
        """Which request types parse() treats as existing: the negotiated ones, and a tolerant
        device's DISCARD / WRITE_ZEROES."""
        if self.has_feature(feature):
            return True
        return not self.strict and feature in (VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES)

    def handle_request(self, chain: Chain, q: SplitQueue | None = None) -> int | None:
        """Carry out one request; returns used.len (bytes written to the guest, status
        included), or None when a host error parked it (rerror/werror=stop: it completes when
        the machine continues)."""
        return self._complete(q, parse(chain, self.mem.buf, self._parsed_as_negotiated))

    def _complete(self, q: SplitQueue | None, req: BlkRequest) -> int | None:
        """Execute `req` now, on this thread (the deterministic mode)."""
        t0 = trace.timestamp_ns() if EV_COMPLETE.enabled else 0       # host time, for the trace
        self._trace_handle(req)
        result = self._run(req, self._direct, q is not None)
        if result is None:
            self._park(q, req)
            return None
        if t0:
            self._trace_complete(req, result[1], t0)
        return result[0]

    def _trace_handle(self, req: BlkRequest) -> None:
        """The read/write trace events (and the debugger's request breakpoints on them), always
        emitted on the CPU thread, before the request runs."""
        rtype = req.type
        if rtype == VIRTIO_BLK_T_IN and EV_READ.enabled:
            EV_READ.emit(vdev=self.label, req=req.head, sector=req.sector, nsectors=req.in_len // SECTOR)
        elif rtype == VIRTIO_BLK_T_OUT and EV_WRITE.enabled:
            EV_WRITE.emit(vdev=self.label, req=req.head, sector=req.sector, nsectors=req.out_len // SECTOR)

    def _trace_complete(self, req: BlkRequest, status: int, t0: int) -> None:
        EV_COMPLETE.emit(vdev=self.label, req=req.head, type=req.type, sector=req.sector,
                         len=req.data_len, status=status,
                         latency_us=(trace.timestamp_ns() - t0) / 1000 if t0 else 0.0)

    def _run(self, req: BlkRequest, eff: "_Direct | _Deferred", can_park: bool) -> tuple[int, int] | None:
        """Execute `req` and write its status byte: (used.len, status), or None when a stop
        error policy parks it (the status byte is then left alone). Touches only the backend
        and guest RAM bytes, telling `eff` what it wrote: safe on an I/O thread."""
        try:
            written = self.execute(req, eff)
            status = VIRTIO_BLK_S_OK
        except RequestError as e:
            written, status = e.written, e.status
            if getattr(e, "host_errno", None) is not None:
                action = self.error_action(e.host_errno, req.type == VIRTIO_BLK_T_IN)
                if action == "stop" and can_park:
                    return None
                if action == "ignore":
                    status = VIRTIO_BLK_S_OK
        self._mv[req.status_host] = status
        eff.wrote(req.status_addr, 1)
        return written + 1, status

    def _park(self, q: SplitQueue, req: BlkRequest) -> None:
        self.parked.append((q, req))
        if self.on_io_error is not None:
            self.on_io_error()

    # -- requests on an I/O thread (iothread=) -------------------------------------------------------
    def _submit_available(self, q: SplitQueue) -> None:
        """Hand every available request to the I/O thread (but a lone small one: run here), then
        complete what the thread finished (IoThread.settle). Parsing stays here (it reads the
        guest's header and may find a ring error, which breaks the device on this thread). The
        loop is bounded: a pass takes at most what was made available (at most the queue size),
        and the driver, which runs on this thread, adds nothing while it runs."""
        take, submit, io, inline_max = q.take, self._submit, self.iothread, self.inline_max_bytes
        pushed = False
        first = q.last_avail_idx
        # Nothing in flight: the small plain requests run here, in native code (blk_fast.py),
        # where each costs less than a hand-over, up to the first it leaves to us.
        status = blk_fast.BAIL
        fast = self._fast
        served = fast and (fast.take_carry(q) or not io.in_flight and inline_max > 0
                           and fast.serve(q, 0xFFFFFFFF, 1 << 63, self._inline_limit(q)))
        if served:
            status, done, _ = served
            pushed = done > 0
        while status == blk_fast.BAIL:
            for _ in range(q.available()):
                req = parse(take(), self.mem.buf, self._parsed_as_negotiated)
                if io.in_flight or pushed or req.type not in (VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT) \
                        or req.data_len > inline_max:
                    submit(q, req, False)
                    continue
                # Nothing in flight, a small read or write: the guest most likely waits for
                # this one next, and handing it over costs more than doing it. Run it here,
                # as the deterministic mode does (nothing older can complete after it).
                written = self._complete(q, req)
                if written is not None:
                    q.push(req.head, written)
                    pushed = True
            if not q.rearm_kicks():
                break
        self._kick_requests = (q.last_avail_idx - first) & 0xFFFF
        if pushed:
            self.notify(q)
        # A driver that polls (it switched used-buffer interrupts off for what is in flight)
        # is about to spin on the oldest request: settle() has it done first. One that wants
        # an interrupt goes on at once and gets it from the run loop.
        io.settle(None if pushed or not q.driver_polls() else self.kick_wait)

    def _submit(self, q: SplitQueue, req: BlkRequest, wake: bool = True) -> None:
        gen = q.generation
        t0 = trace.timestamp_ns() if EV_COMPLETE.enabled else 0
        self._trace_handle(req)

        def work() -> _Deferred | None:                  # on the I/O thread
            if q.generation != gen:
                return None                              # the queue was reset before it ran
            eff = _Deferred()
            eff.result = self._run(req, eff, True)
            return eff

        def done(eff: _Deferred | None) -> None:         # back on the CPU thread
            self._finish(q, gen, req, eff, t0)

        self.iothread.submit(self, work, done, wake)

    def _finish(self, q: SplitQueue, gen: int, req: BlkRequest, eff: "_Deferred | None", t0: int) -> None:
        """A request the I/O thread executed: tell the CPU which bytes changed, then complete
        it on its ring, unless the queue (or device) was reset meanwhile: then nothing reaches
        a ring (2.4: after reset the device must not use the driver's old rings)."""
        if eff is None:
            return
        notify = self.mem.notify_write
        for a, n in eff.ranges:
            notify(a, n)
        if eff.recheck_size:
            self.update_capacity()
        if q.generation != gen or self.broken or not q.active or \
                q.index >= len(self.queues) or self.queues[q.index] is not q:
            return
        if eff.result is None:
            self._park(q, req)
            return
        used_len, status = eff.result
        if t0:
            self._trace_complete(req, status, t0)
        q.push(req.head, used_len)
        if q not in self._to_notify:
            self._to_notify.append(q)

    def io_batch_done(self) -> None:
        """After a batch of completions: one used-buffer notification per queue touched."""
        queues, self._to_notify = self._to_notify, []
        for q in queues:
            self.notify(q)

    # -- host errors: QEMU's rerror / werror ---------------------------------------------------------
    def error_action(self, host_errno: int, is_read: bool) -> str:
        """What a host I/O error does (-drive rerror= for reads, werror= for everything else):
        'report' (IOERR to the guest), 'ignore' (OK to the guest), or 'stop' (the machine
        pauses; the request is retried when it continues). enospc: stop on ENOSPC, else report."""
        policy = self.backend.on_read_error if is_read else self.backend.on_write_error
        if policy == "enospc":
            return "stop" if host_errno == errno.ENOSPC else "report"
        return policy

    # -- saved state -----------------------------------------------------------------------------------
    # The core's, plus the capacity (block_resize), a failed flush, the completions a [delay]
    # rule holds, and the requests a stop policy parked, as parsed: (queue, head, type, sector,
    # device-readable and device-writable data as (guest address, length), the status byte's
    # address, the discard/write-zeroes segment). Saved parsed, not as a ring position: a packed
    # ring's chain cannot be found again from its buffer id.
    _SEGS = vmstate.List(vmstate.Tuple(vmstate.U64, vmstate.U32), 1024)
    _PARKED = vmstate.Tuple(vmstate.U16, vmstate.U16, vmstate.U32, vmstate.U64, _SEGS, _SEGS,
                            vmstate.U64, vmstate.Optional(vmstate.Tuple(vmstate.U64, vmstate.U32, vmstate.U32)))
    VMSTATE = vmstate.Description("virtio-blk", 2, VirtioDevice.VMSTATE_FIELDS + (
        vmstate.Field("capacity", vmstate.U64), vmstate.Field("flush_failed", vmstate.BOOL),
        vmstate.Field("parked_requests", vmstate.List(_PARKED, 1 << 16)),
        vmstate.Field("delayed", vmstate.List(vmstate.Tuple(vmstate.U16, vmstate.U16, vmstate.U32), 1 << 16))))

    @property
    def parked_requests(self) -> tuple:
        return tuple((q.index, r.head, r.type, r.sector, tuple((a, n) for a, n, _ in r.out_data),
                      tuple((a, n) for a, n, _ in r.in_data), r.status_addr, r.segment)
                     for q, r in self.parked)

    @parked_requests.setter
    def parked_requests(self, saved) -> None:
        self._parked_saved = saved          # rebuilt in post_load, once the queues are in place

    def _unsave_request(self, saved) -> tuple[SplitQueue, BlkRequest]:
        """A saved parked request again, its buffers looked up in RAM as a chain's are."""
        qi, head, rtype, sector, out_segs, in_segs, status_addr, segment = saved
        mem = self.mem
        out_data = tuple((a, n, mem.host_offset(a, n)) for a, n in out_segs)
        in_data = tuple((a, n, mem.host_offset(a, n, write=True)) for a, n in in_segs)
        status_host = mem.host_offset(status_addr, 1, write=True)
        # A discard/write-zeroes request keeps its one segment parsed, not as data: the bytes
        # after its header were exactly that segment (a longer one never parks).
        out_len = sum(n for _, n in out_segs) + (0 if segment is None else DWZ_SEGMENT.size)
        return self.queues[qi], BlkRequest(head, rtype, sector, out_data, out_len,
                                           in_data, sum(n for _, n in in_segs), status_addr,
                                           status_host, None if segment is None else tuple(segment))

    def vmstate_check(self, values: dict) -> None:
        super().vmstate_check(values)
        for qi, _head, _len in values["delayed"]:
            if qi >= len(self.queues):
                raise vmstate.VMStateError(f"{self.label}: a held completion on queue {qi}, which does not exist")
        for saved in values["parked_requests"]:
            if saved[0] >= len(self.queues):
                raise vmstate.VMStateError(f"{self.label}: a parked request on queue {saved[0]}, which does not exist")

    def post_load(self) -> None:
        self.delayed = [tuple(held) for held in self.delayed]
        self._held_timers = {}             # the clock, restored last, re-arms them by key
        parked = []
        for saved in self._parked_saved:
            try:
                parked.append(self._unsave_request(saved))
            except GuestMemoryError as e:
                raise vmstate.VMStateError(f"{self.label}: parked request {saved[1]} on queue {saved[0]}: {e}") from None
        self.parked = parked
        del self._parked_saved

    def restart_parked(self) -> None:
        """The machine continues: retry the requests a stop policy parked, in order (QEMU's
        restart of failed requests when the VM runs again). One that fails again parks again.
        With an I/O thread they go back to it."""
        parked, self.parked = self.parked, []
        if self.iothread is not None:
            for q, req in parked:
                self._submit(q, req)
            return
        touched = []
        for q, req in parked:
            written = self._complete(q, req)
            if self._take_delay is not None:
                self._take_delay()             # a retried request is not held again
            if written is not None:
                q.push(req.head, written)
                if q not in touched:
                    touched.append(q)
        for q in touched:
            self.notify(q)

    def device_queue_reset(self, q: SplitQueue) -> None:
        # A parked request of a reset queue is dropped, as every request in flight on it.
        self.parked = [(pq, req) for pq, req in self.parked if pq is not q]

    def execute(self, req: BlkRequest, eff: "_Direct | _Deferred | None" = None) -> int:
        """Carry out a parsed request: the data bytes written to the guest. A request that
        fails raises the RequestError whose type carries its status. `eff` hears of the guest
        bytes written and of a possible change of the image size (default: acted on at once)."""
        if eff is None:
            eff = self._direct
        rtype = req.type
        if rtype in (VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT):
            nseg = len(req.in_data) + len(req.out_data)
            if nseg > self.seg_max and self.has_feature(VIRTIO_BLK_F_SEG_MAX) and \
                    self.violation("seg-max", n=nseg, seg_max=self.seg_max):
                raise IoError("more segments than seg_max")
            if rtype == VIRTIO_BLK_T_IN:
                return self._read(req, eff)
            self._write(req, eff)
        elif rtype == VIRTIO_BLK_T_FLUSH:
            self._flush(eff)
        elif rtype == VIRTIO_BLK_T_GET_ID:
            return self._get_id(req.in_data, req.in_len, eff)
        elif rtype in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
            self._discard_or_zero(req)
        else:
            # Unknown types, legacy SCSI commands and the legacy BARRIER bit (QEMU masks it out
            # and carries on; the spec defines no such type for 1.x devices).
            raise Unsupported(f"request type {rtype}")
        return 0

    def _range_ok(self, sector: int, nbytes: int) -> bool:
        """Sector ranges in exact integer arithmetic (no wrap-around): aligned to the logical
        block size, wholly inside the disk, and no longer than QEMU's largest request
        (BDRV_REQUEST_MAX_SECTORS: 2 GiB - 512; a longer read or write gets IOERR there too)."""
        if nbytes % SECTOR or nbytes % self.lbs or sector % (self.lbs // SECTOR):
            return False
        n = nbytes // SECTOR
        return n <= REQUEST_MAX_SECTORS and sector <= self.capacity and n <= self.capacity - sector

    def _sync_if_writethrough(self) -> None:
        """A write in writethrough mode is stable before it completes (5.2.6.2)."""
        if self.writeback() or self.backend.cache == "unsafe":
            return
        try:
            self.backend.flush()
        except OSError as e:
            self.flush_failed = True
            trace.guest_error(f"{self.label}: sync failed: {e}")
            raise IoError("sync failed", host_errno=e.errno) from None

    def _read(self, req: BlkRequest, eff: "_Direct | _Deferred") -> int:
        sector, segs, nbytes = req.sector, req.in_data, req.in_len
        if not self._range_ok(sector, nbytes):
            raise IoError("sector range")
        if not nbytes:
            return 0
        mv = self._mv
        try:
            got = self.backend.readv(sector * SECTOR, [mv[h:h + n] for _a, n, h in segs])
        except OSError as e:
            trace.guest_error(f"{self.label}: read error: {e}")
            eff.size_changed()                 # a host truncation shows up as a failed request
            raise IoError("read error", host_errno=e.errno) from None
        notify = eff.wrote                     # tell the CPU which guest bytes changed
        if got == nbytes:
            for a, n, _h in segs:
                notify(a, n)
            return got
        left = got
        for a, n, _h in segs:
            if left <= 0:
                break
            notify(a, min(n, left))
            left -= n
        eff.size_changed()
        raise IoError("short read", written=got, host_errno=errno.EIO)

    def _write(self, req: BlkRequest, eff: "_Direct | _Deferred") -> None:
        sector, segs, nbytes = req.sector, req.out_data, req.out_len
        if self.backend.read_only:
            raise IoError("read-only")         # 5.2.6.2: and MUST NOT write any data
        if not self._range_ok(sector, nbytes):
            raise IoError("sector range")
        if not nbytes:
            return
        mv = self._mv
        try:
            done = self.backend.writev(sector * SECTOR, [mv[h:h + n] for _a, n, h in segs])
        except OSError as e:
            trace.guest_error(f"{self.label}: write error: {e}")
            eff.size_changed()
            raise IoError("write error", host_errno=e.errno) from None
        if done != nbytes:
            raise IoError("short write", host_errno=errno.EIO)
        self._sync_if_writethrough()

    def _flush(self, eff: "_Direct | _Deferred") -> None:
        """FLUSH reaches stable storage before completing OK. The sector field is ignored (as
        QEMU). Served even if FLUSH was not negotiated: it is always safe to flush."""
        eff.size_changed()                     # the host may have grown or shrunk the image
        if self.flush_failed:
            raise IoError("an earlier flush failed", host_errno=errno.EIO)
        if self.backend.cache == "unsafe":
            return                             # cache=unsafe: flushes are ignored, as QEMU
        try:
            self.backend.flush()
        except OSError as e:
            # After a failed fdatasync the kernel may have dropped the dirty pages and a retry
            # would "succeed"; so every later flush must fail too.
            self.flush_failed = True
            trace.guest_error(f"{self.label}: flush failed: {e}")
            raise IoError("flush failed", host_errno=e.errno) from None

    def _get_id(self, segs: tuple[Seg, ...], room: int, eff: "_Direct | _Deferred") -> int:
        """The serial as a 20-byte, NUL-padded field, cut to the buffer: at most 20 bytes."""
        ident = self.serial.ljust(VIRTIO_BLK_ID_BYTES, b"\0")[:min(room, VIRTIO_BLK_ID_BYTES)]
        pos = 0
        for a, n, h in segs:
            if pos >= len(ident):
                break
            chunk = ident[pos:pos + n]
            self._mv[h:h + len(chunk)] = chunk
            eff.wrote(a, len(chunk))
            pos += len(chunk)
        return pos

    def _discard_or_zero(self, req: BlkRequest) -> None:
        discard = req.type == VIRTIO_BLK_T_DISCARD
        if not self.has_feature(VIRTIO_BLK_F_DISCARD if discard else VIRTIO_BLK_F_WRITE_ZEROES) and \
                self.violation("discard-not-negotiated" if discard else "write-zeroes-not-negotiated"):
            raise Unsupported("feature not negotiated")
        if req.out_len > DWZ_SEGMENT.size:     # more segments than max_*_seg (1), as QEMU
            raise Unsupported("more than one segment")
        sector, nsect, flags = req.segment     # parse() insists on one once negotiated
        if flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP or (discard and flags):
            raise Unsupported("flags")         # 5.2.6.2: unknown flags; unmap on discard
        if self.backend.read_only:
            raise IoError("read-only")
        if nsect > (self.max_discard if discard else self.max_wz):
            raise IoError("too many sectors")
        if not self._range_ok(sector, nsect * SECTOR):
            raise IoError("sector range")
        try:
            if discard:
                self.backend.discard(sector * SECTOR, nsect * SECTOR)
            else:
                self.backend.write_zeroes(sector * SECTOR, nsect * SECTOR,
                                          bool(flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP))
        except OSError as e:
            trace.guest_error(f"{self.label}: {'discard' if discard else 'write zeroes'} failed: {e}")
            raise IoError("discard failed" if discard else "write zeroes failed",
                          host_errno=e.errno) from None
        self._sync_if_writethrough()
