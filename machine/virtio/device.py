"""The transport-independent virtio device (VIRTIO 1.2 chapters 2-3): feature negotiation, the
device status state machine, config space with its generation counter, reset, the queues and
the error state (DEVICE_NEEDS_RESET).

A transport (virtio/pci.py) owns the registers and calls in here; it plugs itself in as the
device's `Transport`, which learns about interrupts (`interrupt_changed`) and gates DMA
(`dma_allowed`: PCI bus mastering). Devices subclass `VirtioDevice` and implement `realize()`, `features_ok()`,
`device_reset()` and `write_config()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from .. import trace, vmstate
from ..config import ConfigError
from ..memory import GuestMemory, GuestMemoryError, ones
from .queue import QUEUE_MAX_SIZE, QueueState, SplitQueue, VirtqueueError, is_power_of_2
from .spec import (DEVICE_NEEDS_RESET, DRIVER_OK, FAILED, FEATURES_OK, ISR_CONFIG, ISR_QUEUE,
                   VIRTIO_F_BAD_FEATURE, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC,
                   VIRTIO_F_RING_PACKED, VIRTIO_F_RING_RESET, VIRTIO_F_VERSION_1)
from .packed import PackedQueue
from .rules import RULES, describe

VIRTIO_QUEUE_MAX = 1024            # queues per device, as QEMU

EV_SET_STATUS = trace.Event("virtio_set_status")
EV_QUEUE_NOTIFY = trace.Event("virtio_queue_notify")
EV_NOTIFY = trace.Event("virtio_notify")
EV_CONFIG_NOTIFY = trace.Event("virtio_notify_config")
EV_ERROR = trace.Event("virtio_error")
EV_FEATURES = trace.Event("virtio_set_features")


def bit(n: int) -> int:
    return 1 << n


@dataclass(frozen=True)
class VirtioDeviceState:
    """A virtio device's state at one instant, transport-independent: what debuggers print and
    a snapshot saves. `broken` is the device's own flag (a legacy driver has no NEEDS_RESET
    bit to show it); `error` says why, as the message of the violation."""
    name: str
    device_id: int
    status: int
    host_features: int
    guest_features: int
    isr: int
    broken: bool
    error: str | None
    config: bytes
    config_generation: int
    queues: tuple[QueueState, ...]

    @property
    def started(self) -> bool:
        return bool(self.status & DRIVER_OK)


class Transport(Protocol):
    """What a device asks of the transport it is plugged into."""
    def interrupt_changed(self) -> None: ...      # ISR changed: recompute the interrupt line
    # A used-buffer (queue index) or config (None) notification, after its ISR bit is set: the
    # transport picks the line or message (INTx, an MSI-X vector).
    def send_interrupt(self, queue: int | None) -> None: ...
    def dma_allowed(self) -> bool: ...            # may the device touch guest memory now?


class Unplugged:
    """The transport of a device not plugged anywhere (yet): no interrupt, DMA allowed."""
    def interrupt_changed(self) -> None:
        pass

    def send_interrupt(self, queue: int | None) -> None:
        pass

    def dma_allowed(self) -> bool:
        return True


class VirtioDevice:
    """Base of every virtio device model. Public, read-only for debuggers: `status`,
    `host_features`, `guest_features`, `queues`, `isr`, `broken` (and `error`, why), `config`."""

    def __init__(self, name: str, device_id: int, mem: GuestMemory):
        self.name = name                  # the model, e.g. "virtio-blk"
        self.id: str | None = None        # the user's -device id=, if any
        self.label = name                 # how logs, trace events and breakpoints name this device
        self.device_id = device_id
        self.mem = mem
        # As QEMU 7.2 offers on the `pc` machine (RING_RESET: its `queue_reset` property, on).
        self.host_features = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_INDIRECT_DESC) | bit(VIRTIO_F_EVENT_IDX) \
            | bit(VIRTIO_F_RING_RESET)
        self.guest_features = 0
        self.status = 0
        self.isr = 0
        self.broken = False
        self.error: VirtqueueError | GuestMemoryError | None = None   # what broke it, see virtio_error
        self.config = bytearray()
        self.config_generation = 0
        self.queues: list[SplitQueue] = []
        self.strict = False               # refuse rule violations instead of tolerating them (rules.py)
        self.reported: set[str] = set()   # rules already reported as tolerated, once per device
        self._unoffered = 0               # feature bits the driver wrote that were never offered
        self.transport: Transport = Unplugged()          # set by plug()
        mem.add_map_listener(self._memory_map_changed)
        # Where requests run: None executes them inside the notify (deterministic); else an
        # IoThread (machine/iothread.py) the board gives a device with iothread=.
        self.iothread = None
        # defer(fn, queue): run fn on the CPU thread soon, between two slices (a bottom half on
        # the virtual clock, set by the board; `queue`, the queue fn resumes, lets a snapshot
        # save it); None: work left over waits for the next kick.
        self.defer: Callable[..., None] | None = None

    # -- saved state (machine/vmstate.py) ------------------------------------------------------
    # Status, features, ISR, NEEDS_RESET and its reason, config space and generation, and every
    # queue (its layout too: a packed queue object is rebuilt as one, pre_load).
    VMSTATE_FIELDS = (
        vmstate.Field("guest_features", vmstate.U64), vmstate.Field("_unoffered", vmstate.U64),
        vmstate.Field("status", vmstate.U8), vmstate.Field("isr", vmstate.U8),
        vmstate.Field("broken", vmstate.BOOL),
        vmstate.Field("error_message", vmstate.Optional(vmstate.Str())),
        vmstate.Field("config", vmstate.Bytes(4096)),
        vmstate.Field("config_generation", vmstate.U8),
        vmstate.Field("reported", vmstate.List(vmstate.Str(256), 256)),
        vmstate.Field("queues", vmstate.StructList(SplitQueue.VMSTATE, VIRTIO_QUEUE_MAX)))
    VMSTATE = vmstate.Description("virtio-device", 1, VMSTATE_FIELDS)

    @property
    def error_message(self) -> str | None:
        return None if self.error is None else str(self.error)

    @error_message.setter
    def error_message(self, message: str | None) -> None:
        self.error = None if message is None else VirtqueueError(message)

    def vmstate_check(self, values: dict) -> None:
        if len(values["config"]) != len(self.config):
            raise vmstate.VMStateError(f"{self.label}: config space of {len(values['config'])} bytes, "
                                       f"this device has {len(self.config)}")
        if values["guest_features"] & ~self.host_features:
            raise vmstate.VMStateError(f"{self.label}: features {values['guest_features']:#x} were never offered")
        for q, qv in zip(self.queues, values["queues"]):
            # The queue's own set-up checks, on a scratch queue of the saved layout.
            cls = PackedQueue if qv["packed"] else SplitQueue
            scratch = cls(q.index, q.max_size, q.handler, self.mem)
            scratch.size = qv["size"]
            scratch.desc_addr, scratch.avail_addr, scratch.used_addr = qv["desc_addr"], qv["avail_addr"], qv["used_addr"]
            if qv["active"]:
                try:
                    scratch.activate()
                except VirtqueueError as e:
                    raise vmstate.VMStateError(f"{self.label}: {e}") from None
            if qv["size"] > q.max_size or any(h >= max(qv["size"], 1) for h in qv["inflight"]) \
                    or any(h >= max(qv["size"], 1) or n > qv["size"] for h, n in qv["ndescs"]):
                raise vmstate.VMStateError(f"{self.label}: queue {q.index} state does not fit its size")

    def pre_load(self, values: dict) -> None:
        for i, (q, qv) in enumerate(zip(self.queues, values["queues"])):
            if isinstance(q, PackedQueue) != qv["packed"]:
                self.queues[i] = PackedQueue.like(q) if qv["packed"] else SplitQueue.like(q)

    def state(self) -> VirtioDeviceState:
        return VirtioDeviceState(self.name, self.device_id, self.status, self.host_features,
                                 self.guest_features, self.isr, self.broken,
                                 None if self.error is None else str(self.error),
                                 bytes(self.config), self.config_generation,
                                 tuple(q.state() for q in self.queues))

    # -- building (realize time) ---------------------------------------------------------------
    def set_id(self, dev_id: str | None) -> None:
        """Name the device (-device ...,id=NAME): it is then `virtio-blk/NAME` in every log line
        and trace event, so several devices of one model can be told apart."""
        self.id = dev_id
        self.label = self.name if dev_id is None else f"{self.name}/{dev_id}"

    def plug(self, transport: Transport) -> None:
        """Called by the transport the device is put behind."""
        self.transport = transport

    def add_queue(self, size: int, handler: Callable[[SplitQueue], None]) -> SplitQueue:
        """Create queue number len(queues), of at most `size` entries; `handler(queue)` runs
        when the driver notifies it. Bad sizes are a configuration error, not a crash."""
        if len(self.queues) >= VIRTIO_QUEUE_MAX:
            raise ConfigError(f"{self.name}: too many virtqueues (at most {VIRTIO_QUEUE_MAX})")
        if not is_power_of_2(size) or size > QUEUE_MAX_SIZE:
            raise ConfigError(f"{self.name}: queue size {size} must be a power of 2 between 1 and {QUEUE_MAX_SIZE}")
        q = SplitQueue(len(self.queues), size, handler, self.mem)
        q.violation = self.violation
        self.queues.append(q)
        return q

    def realize(self) -> None:
        """Validate properties, build config space and queues. Subclasses override."""

    def has_feature(self, n: int) -> bool:
        return bool(self.guest_features >> n & 1)

    # -- feature negotiation ---------------------------------------------------------------------
    def set_guest_features(self, value: int) -> None:
        """A driver feature write (both halves assembled, as the driver wrote them). Ignored once
        FEATURES_OK (or DRIVER_OK) is set. Bits we never offered are masked off at once, as QEMU
        does, so they are never honoured on any path; FEATURES_OK reports (or, strict, refuses)
        them."""
        if self.status & (FEATURES_OK | DRIVER_OK):
            trace.guest_error(f"{self.label}: feature write {value:#x} after FEATURES_OK ignored")
            return
        value &= 0xFFFFFFFFFFFFFFFF
        self._unoffered = value & ~self.host_features
        self.guest_features = value & self.host_features
        self._apply_ring_features()
        if EV_FEATURES.enabled:
            EV_FEATURES.emit(vdev=self.label, features=self.guest_features)

    def set_legacy_features(self, value: int, legacy_only: int = 0) -> None:
        """Legacy interface: 32 feature bits; the write takes effect at once, masked to what we
        offer there (`legacy_only`: bits the transport offers only to legacy drivers). Ignored
        after FEATURES_OK (a modern driver's negotiation stands) or DRIVER_OK."""
        if self.status & (FEATURES_OK | DRIVER_OK):
            trace.guest_error(f"{self.label}: legacy feature write {value:#x} after negotiation ignored")
            return
        if value & bit(VIRTIO_F_BAD_FEATURE):
            trace.guest_error(f"{self.label}: driver set VIRTIO_F_BAD_FEATURE")
        value &= 0xFFFFFFFF
        self._unoffered = value & ~(self.host_features | legacy_only)
        self.guest_features = value & (self.host_features | legacy_only)
        self._apply_ring_features()

    def features_ok(self, features: int) -> bool:
        """Device-specific veto on a feature set (and the place to act on it)."""
        return True

    # -- status ---------------------------------------------------------------------------------
    def set_status(self, value: int, *, modern: bool = True) -> None:
        """A driver write of device_status. 0 resets. On the modern interface FEATURES_OK is
        refused (not set) for a set we cannot honour; DRIVER_OK needs FEATURES_OK."""
        value &= 0xFF
        if EV_SET_STATUS.enabled:
            EV_SET_STATUS.emit(vdev=self.label, val=value)
        if value == 0:
            self.reset()
            return
        old = self.status
        if old & ~value & ~DEVICE_NEEDS_RESET:
            # 2.1.2: the driver MUST NOT clear a status bit (other than by reset). QEMU stores
            # whatever is written; we keep the old status so no half-initialised state appears.
            trace.guest_error(f"{self.label}: status write {value:#x} clears bits of {old:#x}; ignored")
            return
        value = (value & ~DEVICE_NEEDS_RESET) | (old & DEVICE_NEEDS_RESET)   # that bit is ours
        if value & FEATURES_OK and not old & FEATURES_OK and modern:
            if not self._negotiate():
                value &= ~FEATURES_OK
        if value & DRIVER_OK and not old & DRIVER_OK:
            if modern and not value & FEATURES_OK:
                if self.violation("driver-ok-without-features-ok"):
                    value &= ~DRIVER_OK
                else:
                    self._negotiate_legacy()
            elif not modern:
                self._negotiate_legacy()
        self.status = value
        if value & DRIVER_OK and not old & DRIVER_OK:
            self._driver_ok()

    def _negotiate(self) -> bool:
        """FEATURES_OK on the modern interface: may the device accept the driver's features?"""
        if self._unoffered and self.violation("unoffered-features", bits=self._unoffered):
            return False
        if not self.has_feature(VIRTIO_F_VERSION_1) and self.violation("no-version-1"):
            return False
        if not self.features_ok(self.guest_features):
            return False
        self._apply_ring_features()
        return True

    def _negotiate_legacy(self) -> None:
        """DRIVER_OK without a modern FEATURES_OK: the features written so far stand."""
        if self._unoffered:
            self.violation("unoffered-features", bits=self._unoffered)   # already masked off
        self.features_ok(self.guest_features)
        self._apply_ring_features()

    def _apply_ring_features(self) -> None:
        # The ring layout follows VIRTIO_F_RING_PACKED: swap a queue for one of the other layout,
        # keeping what the driver already programmed (queues are live only after FEATURES_OK,
        # when the features no longer change).
        packed = self.has_feature(VIRTIO_F_RING_PACKED)
        for i, q in enumerate(self.queues):
            if isinstance(q, PackedQueue) != packed:
                self.queues[i] = PackedQueue.like(q) if packed else SplitQueue.like(q)
        for q in self.queues:
            q.event_idx = self.has_feature(VIRTIO_F_EVENT_IDX)
            q.indirect = self.has_feature(VIRTIO_F_INDIRECT_DESC)

    # -- driver rules (rules.py) ---------------------------------------------------------------------
    def violation(self, key: str, **fields) -> bool:
        """The driver broke rule `key`. Returns True when the device refuses (strict=on); else
        the caller carries on as QEMU does, and the first violation of each rule is logged."""
        rule = RULES[key]
        if self.strict:
            trace.guest_error(f"{self.label}: {describe(key, **fields)}; strict: {rule.strict}")
            return True
        if key not in self.reported:
            self.reported.add(key)
            trace.guest_error(f"{self.label}: {describe(key, **fields)}; tolerated: {rule.tolerated}")
        return False

    def _driver_ok(self) -> None:
        """Activate every enabled queue, then run kicks that arrived early (2.7.13.3: buffers
        are not consumed before DRIVER_OK)."""
        for q in self.queues:
            if q.enabled and not q.active:
                try:
                    q.activate()
                except VirtqueueError as e:
                    self.virtio_error(e)
                    return
        for q in self.queues:
            if q.pending_kick:
                q.pending_kick = False
                self.queue_notify(q.index)

    def enable_queue(self, q: SplitQueue) -> None:
        """The driver enabled a queue (queue_enable=1 or a legacy PFN): check its rings now."""
        q.enabled = True
        try:
            q.activate()
        except VirtqueueError as e:
            q.active = False
            self.virtio_error(e)

    def _memory_map_changed(self) -> None:
        """The chipset changed what guest-physical addresses reach RAM (shadow RAM): every
        active queue looks its rings up again, as QEMU's memory listener rebuilds its ring
        caches; a ring no longer in RAM at all breaks the device, as QEMU's "Cannot map"."""
        self.native_sync()
        if self.broken:
            return
        for q in self.queues:
            try:
                q.remap()
            except VirtqueueError as e:
                q.active = False
                self.virtio_error(e)
                return

    def reset_queue(self, q: SplitQueue) -> None:
        """Per-queue reset (2.6.1): the queue goes back to its default state (disabled, full
        size, no rings, indices 0) while the rest of the device keeps running. Its requests
        still in flight run to their end and are dropped: none reaches the ring."""
        q.reset()                                # first: a completion now finds a new generation
        self.drain()
        self.device_queue_reset(q)
        q.event_idx = self.has_feature(VIRTIO_F_EVENT_IDX)
        q.indirect = self.has_feature(VIRTIO_F_INDIRECT_DESC)

    def device_queue_reset(self, q: SplitQueue) -> None:
        """Device-specific part of a queue reset (e.g. drop requests waiting on it)."""

    # -- requests in flight ---------------------------------------------------------------------
    def drain(self) -> None:
        """Wait until no request of this device is in flight: afterwards every request taken
        from a ring has completed on it (or was dropped by a reset). Reset, queue reset, a
        machine stop, snapshots and close call it. Without an I/O thread requests complete
        inside their notify and nothing is ever in flight."""
        if self.iothread is not None:
            self.iothread.drain()

    def resume_queue(self, q: SplitQueue) -> None:
        """A bottom half: go on serving `q` where a bounded notify stopped, if the queue and
        device are still live (a reset in between makes it a no-op)."""
        if q.index >= len(self.queues) or self.queues[q.index] is not q or not q.active \
                or self.broken or not self.status & DRIVER_OK or not self.transport.dma_allowed():
            return
        try:
            q.handler(q)
        except (VirtqueueError, GuestMemoryError) as e:
            self.virtio_error(e)

    # -- reset ----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Device reset (2.4). Requests still in flight on an I/O thread run to their end first
        (their data may land in RAM, as on QEMU, whose reset drains too) but none completes on a
        ring: once this returns, no old request can touch memory or interrupt."""
        self.native_sync()
        if self.iothread is not None:
            for q in self.queues:
                q.reset()                        # new generations: late completions are dropped
            self.drain()
        self.device_reset()
        self.status = 0
        self.guest_features = 0
        self._unoffered = 0
        self.broken = False
        self.error = None
        for q in self.queues:
            q.reset()
        self._apply_ring_features()              # back to split rings
        if self.isr:
            self.isr = 0
            self.transport.interrupt_changed()

    def device_reset(self) -> None:
        """Device-specific part of reset (e.g. restore config fields the driver may write)."""

    # -- errors -----------------------------------------------------------------------------------
    def virtio_error(self, error: VirtqueueError | GuestMemoryError) -> None:
        """The guest broke the protocol: the device stops using its queues until reset, sets
        DEVICE_NEEDS_RESET (a VERSION_1 concept) and raises a config change notification if the
        driver is live (2.1.1). Like QEMU's virtio_error. `error` stays in `self.error` (its
        type says which rule was broken) until reset."""
        msg = str(error)
        self.error = error
        trace.guest_error(f"{self.label}: {msg}")
        if EV_ERROR.enabled:
            EV_ERROR.emit(vdev=self.label, msg=msg)
        # Legacy drivers have no NEEDS_RESET bit: for them the device just stops (as QEMU).
        self.broken = True
        if self.has_feature(VIRTIO_F_VERSION_1):
            self.status |= DEVICE_NEEDS_RESET
        if self.status & DRIVER_OK:
            self.notify_config()

    # -- notifications ----------------------------------------------------------------------------
    def queue_notify(self, n: int) -> None:
        """The driver kicked queue `n` (an untrusted number)."""
        if EV_QUEUE_NOTIFY.enabled:
            EV_QUEUE_NOTIFY.emit(vdev=self.label, n=n)
        if not 0 <= n < len(self.queues):
            trace.guest_error(f"{self.label}: notify for queue {n} which does not exist")
            return
        q = self.queues[n]
        if self.broken or self.status & FAILED:
            return
        if not self.status & DRIVER_OK:
            if not q.active or self.violation("kick-before-driver-ok", queue=n):
                q.pending_kick = True         # served when DRIVER_OK comes (2.1.2: not before)
                return
        if not q.active:
            trace.guest_error(f"{self.label}: notify for queue {n} which is not enabled")
            return
        if not self.transport.dma_allowed():
            trace.guest_error(f"{self.label}: notify while bus mastering is off; ignored")
            return
        try:
            q.handler(q)
        except (VirtqueueError, GuestMemoryError) as e:
            self.virtio_error(e)

    # -- a native notify path (virtio-blk's: blk_fast.py); none here ------------------------------
    def native_front(self, fallback: int, notify_off: int, notify_mult: int) -> tuple[int, int] | None:
        """A native write function for the transport's notify region (function, user data),
        calling `fallback` for what it leaves to Python; None: the device has none."""
        return None

    def native_arm(self, n: int) -> None:
        """A kick of queue `n` ended in Python: the native front may take the next ones."""

    def native_sync(self) -> None:
        """Python code is about to look at the device: the native front stops and gives its
        state back (also called after every CPU slice)."""

    def notify(self, q: SplitQueue) -> None:
        """Used buffer notification for `q`, unless the driver suppressed it."""
        if self.broken:
            return
        if not q.should_notify():
            return
        if EV_NOTIFY.enabled:
            EV_NOTIFY.emit(vdev=self.label, vq=q.index)
        self.isr |= ISR_QUEUE
        self.transport.send_interrupt(q.index)

    def notify_config(self) -> None:
        if EV_CONFIG_NOTIFY.enabled:
            EV_CONFIG_NOTIFY.emit(vdev=self.label)
        self.isr |= ISR_CONFIG
        self.transport.send_interrupt(None)

    def read_isr(self) -> int:
        """Read-to-clear (4.1.4.5)."""
        value = self.isr
        if value:
            self.isr = 0
            self.transport.interrupt_changed()
        return value

    # -- device configuration space ---------------------------------------------------------------
    def config_read(self, offset: int, size: int) -> int:
        """Little-endian read; outside the structure reads all-ones (as QEMU)."""
        if offset < 0 or offset + size > len(self.config):
            trace.guest_error(f"{self.label}: config read {offset:#x}+{size} outside {len(self.config)} bytes")
            return ones(size)
        return int.from_bytes(self.config[offset:offset + size], "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        if offset < 0 or offset + size > len(self.config):
            trace.guest_error(f"{self.label}: config write {offset:#x}+{size} outside {len(self.config)} bytes ignored")
            return
        self.write_config(offset, size, value)

    def write_config(self, offset: int, size: int, value: int) -> None:
        """Device-specific config write (fields are read-only unless the device says so)."""
        trace.guest_error(f"{self.label}: write to read-only config {offset:#x} ignored")

    def config_changed(self) -> None:
        """The device changed its config: new generation, and tell a live driver (2.4.1)."""
        self.config_generation = (self.config_generation + 1) & 0xFF
        if self.status & DRIVER_OK:
            self.notify_config()

    # -- inspection ---------------------------------------------------------------------------------
    def peek_chain(self, queue: int, pos: int | None = None):
        """Decode (without consuming) the chain at avail position `pos` of `queue` (default: the
        next one the device would take). Returns a Chain, or the VirtqueueError describing why
        it is malformed."""
        q = self.queues[queue]
        try:
            return q.peek(q.last_avail_idx if pos is None else pos)
        except VirtqueueError as e:
            return e
