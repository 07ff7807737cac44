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
    break virtio-blk request type=flush dev=d1   ... only on the device with id=d1 (any kind takes dev=)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .. import trace

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
REQUEST_TYPE_NAMES = {0: "in", 1: "out", 4: "flush", 8: "get-id", 10: "get-lifetime",
                      11: "discard", 13: "write-zeroes", 14: "secure-erase"}
# A device model that emits one event per request kind (QEMU style) instead of a `type` field.
_EVENT_TYPES = {
    "virtio_blk_handle_read": 0, "virtio_blk_handle_write": 1, "virtio_blk_handle_flush": 4,
    "virtio_blk_handle_get_id": 8, "virtio_blk_handle_discard": 11,
    "virtio_blk_handle_write_zeroes": 13,
}

STATUS_FEATURES_OK = 8
STATUS_NEEDS_RESET = 0x40

# Which trace events each kind of breakpoint listens to. Requests are seen at
# `virtio_blk_req_complete` (one event for every request type, carrying type, sector and length;
# for a device model whose event lacks them they are read back from the chain the device just
# took, see RequestResolver): requests complete synchronously
# inside the driver's notify, so this stops the guest at the same instruction as an event at the
# start of the request would. Without a machine to read chains from, the per-type
# `virtio_blk_handle_*` events are used (read and write only).
_KIND_EVENTS = {
    "request": ("virtio_blk_req_complete", "virtio_blk_request*"),
    "notify": ("virtio_queue_notify",),
    "status": ("virtio_set_status",),
    "features": ("virtio_set_status",),
    "needs-reset": ("virtio_error",),
}
_REQUEST_EVENTS_NO_RESOLVER = ("virtio_blk_handle_*", "virtio_blk_request*")
KINDS = tuple(_KIND_EVENTS)


class BreakpointError(ValueError):
    """A malformed `break` command; the message is for the user."""


def _field(fields: dict, *names, default=None):
    for n in names:
        if n in fields:
            return fields[n]
    return default


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


def _device_matches(device: str, dev: str | None, label: str) -> bool:
    """Does an event from the device called `label` (`virtio-blk`, or `virtio-blk/ID` for a
    device with an id) concern a breakpoint on DEVICE [dev=ID]? DEVICE is the model (or the
    id itself); dev= narrows it to one device."""
    model, _, dev_id = label.partition("/")
    if device not in (label, dev_id) and not model.startswith(device) and not device.startswith(model):
        return False
    return dev is None or dev in (dev_id, label)


@dataclass
class DeviceBreakpoint:
    number: int
    device: str
    kind: str
    type: int | None = None
    sectors: tuple[int, int] | None = None      # inclusive
    queue: int | None = None
    dev: str | None = None                      # dev=NAME: only the device with this id (or label)
    hits: int = 0
    events: tuple[str, ...] = field(default=())
    resolver: "Callable[[str, dict], tuple[int, int | None, int] | None] | None" = None
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
        if self.dev is not None:
            parts.append(f"dev={self.dev}")
        return " ".join(parts)

    # -- matching -------------------------------------------------------------------------------
    def matches(self, name: str, fields: dict) -> str | None:
        """None, or a short description of what the device just did."""
        dev = _field(fields, "vdev", "dev", "device")
        if dev is not None and not _device_matches(self.device, self.dev, _device_name(dev)):
            return None
        if self.kind == "request":
            return self._match_request(name, fields)
        if self.kind == "notify":
            if name != "virtio_queue_notify":
                return None
            q = _int(_field(fields, "n", "queue", "vq", "index"))
            if self.queue is not None and q != self.queue:
                return None
            return f"queue notify, queue {q}"
        status = _int(_field(fields, "val", "status", "value"))
        if self.kind == "status":
            return f"status write {status:#04x}" if name == "virtio_set_status" and status is not None else None
        if self.kind == "features":
            if name != "virtio_set_status" or status is None:
                return None
            key = _device_name(dev) if dev is not None else ""
            before = self.last_status.get(key, 0)
            self.last_status[key] = status
            if status & STATUS_FEATURES_OK and not before & STATUS_FEATURES_OK:
                return f"feature negotiation (FEATURES_OK written, status {status:#04x})"
            return None
        if self.kind == "needs-reset":
            if name == "virtio_error":
                reason = _field(fields, "msg", "reason", "message", default="")
                return f"device needs reset: {reason}".rstrip(": ")
        return None

    def _match_request(self, name: str, fields: dict) -> str | None:
        count = None
        if name == "virtio_blk_req_complete":
            if "type" in fields and "sector" in fields:         # the event says it all
                rtype, sector = _int(fields["type"]), _int(fields["sector"])
                count = (_int(fields.get("len")) or 0) // 512 if rtype in (0, 1) else 1
                found = None if rtype is None or sector is None else (rtype, sector, count)
            else:
                found = self.resolver(name, fields) if self.resolver is not None else None
            if found is None:
                return None
            rtype, sector, count = found
        else:
            rtype = _EVENT_TYPES.get(name)
            if rtype is None:
                rtype = _int(_field(fields, "type", "req_type"))
            if rtype is None:
                return None
            sector = _int(_field(fields, "sector", "offset"))
        if self.type is not None and rtype != self.type:
            return None
        if rtype not in (0, 1):
            sector = None if name == "virtio_blk_req_complete" else sector
        if self.sectors is not None:
            if sector is None:
                return None
            if count is None:
                count = _int(_field(fields, "nsectors", "nsector", "count", "sectors"))
            count = max(1, count or 1)
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
                 resolver: "RequestResolver | None" = None,
                 on_change: Callable[[int], None] | None = None):
        self.on_hit = on_hit
        self.resolver = resolver
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
        if kind == "request" and self.resolver is None:
            events = _REQUEST_EVENTS_NO_RESOLVER
        bp = DeviceBreakpoint(self._next, device, kind, events=events, resolver=self.resolver)
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
            elif key == "dev":
                if not value:
                    raise BreakpointError("dev= needs a device id")
                bp.dev = value
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


class RequestResolver:
    """Reads back, at `virtio_blk_req_complete`, which request the device just carried out:
    (type, sector, sector count) of the chain at the avail position the device last took, as
    the device's own parser (`parse_request`) reads it, found with its read-only `peek_chain`.
    `devices(name)` lists the virtio devices called `name` (the `vdev` of the event)."""

    def __init__(self, devices: Callable[[str], list]):
        self.devices = devices

    def __call__(self, name: str, fields: dict):
        try:
            return self._resolve(fields)
        except Exception:       # runs inside the device's callback: never break the device
            return None

    def _resolve(self, fields: dict):
        head = _int(fields.get("req"))
        vname = _device_name(fields.get("vdev", ""))
        for vdev in self.devices(vname):
            parse_request = getattr(vdev, "parse_request", None)
            if parse_request is None:                   # not a block device
                continue
            for i, q in enumerate(vdev.queues):
                if not q.active or not q.size:
                    continue
                chain = vdev.peek_chain(i, (q.last_avail_idx - 1) & 0xFFFF)
                if isinstance(chain, Exception) or chain.head != head:
                    continue                            # malformed, or another queue's request
                try:
                    req = parse_request(chain)
                except Exception:                       # not a request at all
                    return None
                return req.type, req.sector, req.nsectors
        return None
