"""Device breakpoints: stop the guest when a device sees something, not when the CPU reaches an
address. Built on trace events (the devices' own record of what they do), so a device needs no
debugger code: a breakpoint enables the events it needs, for listeners only, while it exists.

    break virtio-blk request type=flush          a FLUSH request reaches the device
    break virtio-blk request sector=0-63         a request touching sectors 0..63
    break virtio-blk request type=write sector=2048
    break virtio-blk notify [queue=0]            the driver kicks a queue
    break virtio-blk status                      the driver writes the device status
    break virtio-blk features                    feature negotiation (FEATURES_OK written)
    break virtio-blk needs-reset                 the device gives up (DEVICE_NEEDS_RESET)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .. import trace
from ..virtio.spec import BLK_REQUEST_NAMES, FEATURES_OK

# virtio-blk request types (VIRTIO 1.2 §5.2.6) under the names users know them by.
REQUEST_TYPES = {
    "in": 0, "read": 0,
    "out": 1, "write": 1,
    "flush": 4,
    "get-id": 8, "get_id": 8, "getid": 8,
    "get-lifetime": 10,
    "discard": 11,
    "write-zeroes": 13, "write_zeroes": 13,
    "secure-erase": 14,
}
REQUEST_TYPE_NAMES = BLK_REQUEST_NAMES
# QEMU's per-type request events (declared in machine/virtio/trace-events), for a listener
# that has no completion events to go by.
_EVENT_TYPES = {"virtio_blk_handle_read": 0, "virtio_blk_handle_write": 1}

# Which trace events each kind of breakpoint listens to, and (as trace-events declares them)
# the fields it reads. Requests are seen at `virtio_blk_req_complete` (one event for every
# request type, with the parsed request's type, sector and length): requests complete
# synchronously inside the driver's notify, so this stops the guest at the same instruction as
# an event at the start of the request would. Breakpoints made with `completions=False` use the
# per-type `virtio_blk_handle_read/write` events instead (read and write only).
_KIND_EVENTS = {
    "request": ("virtio_blk_req_complete",),
    "notify": ("virtio_queue_notify",),
    "status": ("virtio_set_status",),
    "features": ("virtio_set_status",),
    "needs-reset": ("virtio_error",),
}
_REQUEST_EVENTS_PER_TYPE = tuple(_EVENT_TYPES)
KINDS = tuple(_KIND_EVENTS)


class BreakpointError(ValueError):
    """A malformed `break` command; the message is for the user."""


def _int(value) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    try:
        return int(str(value), 0)
    except ValueError:
        return None


def _device_name(value) -> str:
    if isinstance(value, str):
        return value
    for attr in ("name", "id", "device_name"):
        v = getattr(value, attr, None)
        if isinstance(v, str):
            return v
    return str(value)


@dataclass
class DeviceBreakpoint:
    number: int
    device: str
    kind: str
    type: int | None = None
    sectors: tuple[int, int] | None = None      # inclusive
    queue: int | None = None
    hits: int = 0
    events: tuple[str, ...] = field(default=())
    last_status: dict = field(default_factory=dict)      # per device, for FEATURES_OK edges

    def describe(self) -> str:
        parts = [self.device, self.kind]
        if self.type is not None:
            parts.append("type=" + REQUEST_TYPE_NAMES.get(self.type, str(self.type)))
        if self.sectors is not None:
            lo, hi = self.sectors
            parts.append(f"sector={lo}" if lo == hi else f"sector={lo}-{hi}")
        if self.queue is not None:
            parts.append(f"queue={self.queue}")
        return " ".join(parts)

    # -- matching -------------------------------------------------------------------------------
    def matches(self, name: str, fields: dict) -> str | None:
        """None, or a short description of what the device just did. `fields` are the event's
        declared fields (machine/virtio/trace-events)."""
        dev = fields["vdev"]
        if not _device_name(dev).startswith(self.device) and not self.device.startswith(_device_name(dev)):
            return None
        if self.kind == "request":
            return self._match_request(name, fields)
        if self.kind == "notify":
            if name != "virtio_queue_notify":
                return None
            q = fields["n"]
            if self.queue is not None and q != self.queue:
                return None
            return f"queue notify, queue {q}"
        if self.kind in ("status", "features") and name != "virtio_set_status":
            return None
        if self.kind == "status":
            return f"status write {fields['val']:#04x}"
        if self.kind == "features":
            status = fields["val"]
            key = _device_name(dev)
            before = self.last_status.get(key, 0)
            self.last_status[key] = status
            if status & FEATURES_OK and not before & FEATURES_OK:
                return f"feature negotiation (FEATURES_OK written, status {status:#04x})"
            return None
        if self.kind == "needs-reset" and name == "virtio_error":
            return f"device needs reset: {fields['msg']}".rstrip(": ")
        return None

    def _match_request(self, name: str, fields: dict) -> str | None:
        sector = fields["sector"]
        if name == "virtio_blk_req_complete":
            rtype = fields["type"]
            # the parsed request's length: data read (IN) or written (OUT)
            count = fields["len"] // 512 if rtype in (0, 1) else 1
            if rtype not in (0, 1):
                sector = None                   # the other types name no sector range
        else:
            rtype, count = _EVENT_TYPES[name], fields["nsectors"]
        if self.type is not None and rtype != self.type:
            return None
        if self.sectors is not None:
            if sector is None:
                return None
            count = max(1, count)
            lo, hi = self.sectors
            if sector > hi or sector + count - 1 < lo:
                return None
        what = REQUEST_TYPE_NAMES.get(rtype, f"type {rtype}")
        return f"request {what}" + (f" sector {sector}" if sector is not None else "")


class DeviceBreakpoints:
    """The list of device breakpoints and the trace listener that checks them.

    `on_hit(bp, message)` runs inside the device's callback (the guest is in the middle of an
    instruction): it must only ask for a stop, never run the guest or block.
    """

    def __init__(self, on_hit: Callable[[DeviceBreakpoint, str], None],
                 on_change: Callable[[int], None] | None = None, *, completions: bool = False):
        self.on_hit = on_hit
        self.completions = completions    # request breakpoints see virtio_blk_req_complete
        self.on_change = on_change        # on_change(count) after every add/delete
        self.items: dict[int, DeviceBreakpoint] = {}
        self._next = 1
        self._listening = False

    def add(self, spec: str) -> DeviceBreakpoint:
        words = spec.split()
        if len(words) < 2:
            raise BreakpointError("usage: break DEVICE request|notify|status|features|needs-reset [key=value...]")
        device, kind, args = words[0], words[1], words[2:]
        if kind not in _KIND_EVENTS:
            raise BreakpointError(f"unknown device event '{kind}' (one of: {', '.join(KINDS)})")
        events = _KIND_EVENTS[kind]
        if kind == "request" and not self.completions:
            events = _REQUEST_EVENTS_PER_TYPE
        bp = DeviceBreakpoint(self._next, device, kind, events=events)
        for arg in args:
            key, sep, value = arg.partition("=")
            if not sep:
                raise BreakpointError(f"expected key=value, got '{arg}'")
            if kind == "request" and key == "type":
                t = REQUEST_TYPES.get(value.lower())
                if t is None:
                    t = _int(value)
                if t is None:
                    raise BreakpointError(f"unknown request type '{value}' "
                                          f"(in, out, flush, get-id, discard, write-zeroes or a number)")
                bp.type = t
            elif kind == "request" and key in ("sector", "sectors"):
                lo, _, hi = value.partition("-")
                a, b = _int(lo), _int(hi) if hi else _int(lo)
                if a is None or b is None or a < 0 or b < a:
                    raise BreakpointError(f"bad sector range '{value}' (N or FIRST-LAST)")
                bp.sectors = (a, b)
            elif kind == "notify" and key in ("queue", "q", "vq"):
                q = _int(value)
                if q is None or q < 0:
                    raise BreakpointError(f"bad queue number '{value}'")
                bp.queue = q
            else:
                raise BreakpointError(f"'{key}' does not apply to a {kind} breakpoint")
        self._next += 1
        self.items[bp.number] = bp
        for pattern in bp.events:
            trace.listen(pattern)
        self._update_listener()
        return bp

    def delete(self, number: int) -> bool:
        bp = self.items.pop(number, None)
        if bp is None:
            return False
        for pattern in bp.events:
            trace.unlisten(pattern)
        self._update_listener()
        return True

    def clear(self) -> None:
        for n in list(self.items):
            self.delete(n)

    def _update_listener(self) -> None:
        want = bool(self.items)
        if want and not self._listening:
            trace.add_listener(self.listener)
        elif not want and self._listening:
            trace.remove_listener(self.listener)
        self._listening = want
        if self.on_change is not None:
            self.on_change(len(self.items))

    def listener(self, name: str, fields: dict) -> None:
        for bp in list(self.items.values()):
            if name not in bp.events and not any(p.endswith("*") and name.startswith(p[:-1]) for p in bp.events):
                continue
            try:
                what = bp.matches(name, fields)
            except Exception:   # a debugger bug must not take the device (and guest) down
                what = None
            if what is not None:
                bp.hits += 1
                self.on_hit(bp, f"device breakpoint {bp.number} ({bp.describe()}): {what}")
                return          # one stop per event, even if several breakpoints match

    def listing(self) -> str:
        if not self.items:
            return "No device breakpoints.\n"
        lines = ["Num  Hits  What"]
        for bp in self.items.values():
            lines.append(f"{bp.number:<4} {bp.hits:<5} {bp.describe()}")
        return "\n".join(lines) + "\n"
