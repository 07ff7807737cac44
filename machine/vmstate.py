"""Versioned device state as data: QEMU's vmstate idea, declared per device.

A device declares what it saves as a table of typed fields:

    VMSTATE = vmstate.Description("pic", 1, (
        Field("irr", U8), Field("imr", U8), Field("lines", U16),
        Field("irq", LINE),                       # an output IrqLine: its level
    ))

`capture(obj, desc)` reads the attributes into a dict of plain immutable values (ints, bools,
bytes, tuples, nested dicts) and `apply(obj, desc, values)` writes them back, then calls the
object's `post_load()` if it has one (to re-derive caches, mappings, host offsets). `check()`
validates a dict against a table (types, ranges, lengths, and the object's own
`vmstate_check(values)` for rules the table cannot say) without touching anything, so a
loader can refuse a snapshot before it changes the machine.

`encode()`/`decode()` turn values into bytes and back by the same table. The bytes are
untrusted input when read back: every length is bounded by the table, every integer by its
width, and any violation is a VMStateError with one clear message (never another exception).
Nothing here knows any device.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass


class VMStateError(Exception):
    """A snapshot that cannot be loaded: the message says why, in one line."""


class Reader:
    """Bounded reads from untrusted bytes."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str = "state"):
        self.data = memoryview(data)
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise VMStateError(f"{self.what}: truncated")
        b = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return b

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def done(self) -> bool:
        return self.pos == len(self.data)


# ------------------------------------------------------------------------------------------
# field kinds
# ------------------------------------------------------------------------------------------

class Kind:
    """How one value is captured, checked, encoded and restored."""

    def capture(self, v):
        return v

    def check(self, v, where: str) -> None:
        raise NotImplementedError

    def encode(self, out: bytearray, v) -> None:
        raise NotImplementedError

    def decode(self, r: Reader, where: str):
        raise NotImplementedError

    def restore(self, current, v):
        """The attribute's new value, given its current one (kept in kind: bytearray, set...)."""
        return v


class UInt(Kind):
    def __init__(self, bits: int):
        self.bits = bits
        self.nbytes = (bits + 7) // 8

    def capture(self, v):
        return int(v)

    def check(self, v, where: str) -> None:
        if type(v) is not int or not 0 <= v < (1 << self.bits):
            raise VMStateError(f"{where}: {v!r} is not a {self.bits}-bit unsigned value")

    def encode(self, out: bytearray, v) -> None:
        out += v.to_bytes(self.nbytes, "little")

    def decode(self, r: Reader, where: str):
        v = int.from_bytes(r.take(self.nbytes), "little")
        self.check(v, where)
        return v


class SInt(Kind):
    """A signed 64-bit value (time bases before power-on can be negative)."""

    def capture(self, v):
        return int(v)

    def check(self, v, where: str) -> None:
        if type(v) is not int or not -(1 << 63) <= v < (1 << 63):
            raise VMStateError(f"{where}: {v!r} is not a signed 64-bit value")

    def encode(self, out: bytearray, v) -> None:
        out += struct.pack("<q", v)

    def decode(self, r: Reader, where: str):
        return struct.unpack("<q", r.take(8))[0]


class Bool(Kind):
    def capture(self, v):
        return bool(v)

    def check(self, v, where: str) -> None:
        if type(v) is not bool:
            raise VMStateError(f"{where}: {v!r} is not a boolean")

    def encode(self, out: bytearray, v) -> None:
        out.append(1 if v else 0)

    def decode(self, r: Reader, where: str):
        b = r.u8()
        if b > 1:
            raise VMStateError(f"{where}: {b} is not a boolean")
        return bool(b)


class Optional(Kind):
    """None or a value of `kind`."""

    def __init__(self, kind: Kind):
        self.kind = kind

    def capture(self, v):
        return None if v is None else self.kind.capture(v)

    def check(self, v, where: str) -> None:
        if v is not None:
            self.kind.check(v, where)

    def encode(self, out: bytearray, v) -> None:
        if v is None:
            out.append(0)
        else:
            out.append(1)
            self.kind.encode(out, v)

    def decode(self, r: Reader, where: str):
        tag = r.u8()
        if tag > 1:
            raise VMStateError(f"{where}: bad optional tag {tag}")
        return None if tag == 0 else self.kind.decode(r, where)

    def restore(self, current, v):
        return None if v is None else self.kind.restore(current, v)


class Str(Kind):
    """A short UTF-8 string (a message, a rule name)."""

    def __init__(self, max_len: int = 4096):
        self.max_len = max_len

    def check(self, v, where: str) -> None:
        if type(v) is not str or len(v.encode("utf-8", "surrogatepass")) > self.max_len:
            raise VMStateError(f"{where}: not a string of at most {self.max_len} bytes")

    def encode(self, out: bytearray, v) -> None:
        b = v.encode("utf-8", "surrogatepass")
        out += struct.pack("<I", len(b))
        out += b

    def decode(self, r: Reader, where: str):
        n = r.u32()
        if n > self.max_len:
            raise VMStateError(f"{where}: string of {n} bytes, at most {self.max_len} allowed")
        try:
            return r.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise VMStateError(f"{where}: not UTF-8") from None


class Bytes(Kind):
    """A byte string of at most `max_len` bytes (exactly `exact` when given); restored into a
    bytearray in place when the attribute is one (views on it stay valid)."""

    def __init__(self, max_len: int, exact: int | None = None):
        self.max_len = max_len
        self.exact = exact

    def capture(self, v):
        return bytes(v)

    def check(self, v, where: str) -> None:
        if type(v) is not bytes:
            raise VMStateError(f"{where}: not bytes")
        if len(v) > self.max_len or (self.exact is not None and len(v) != self.exact):
            raise VMStateError(f"{where}: {len(v)} bytes, expected "
                               f"{self.exact if self.exact is not None else f'at most {self.max_len}'}")

    def encode(self, out: bytearray, v) -> None:
        out += struct.pack("<I", len(v))
        out += v

    def decode(self, r: Reader, where: str):
        n = r.u32()
        if n > self.max_len:
            raise VMStateError(f"{where}: {n} bytes, at most {self.max_len} allowed")
        v = r.take(n)
        self.check(v, where)
        return v

    def restore(self, current, v):
        if isinstance(current, bytearray):
            if len(current) == len(v):
                current[:] = v
                return current
            return bytearray(v)
        return v


class List(Kind):
    """Up to `max_len` items of `kind` (exactly `exact`); restored as the attribute's current
    container type (list, set, deque, tuple)."""

    def __init__(self, kind: Kind, max_len: int, exact: int | None = None):
        self.kind = kind
        self.max_len = max_len
        self.exact = exact

    def capture(self, v):
        items = sorted(v) if isinstance(v, (set, frozenset)) else v
        return tuple(self.kind.capture(x) for x in items)

    def check(self, v, where: str) -> None:
        if type(v) is not tuple:
            raise VMStateError(f"{where}: not a list")
        if len(v) > self.max_len or (self.exact is not None and len(v) != self.exact):
            raise VMStateError(f"{where}: {len(v)} items, expected "
                               f"{self.exact if self.exact is not None else f'at most {self.max_len}'}")
        for i, x in enumerate(v):
            self.kind.check(x, f"{where}[{i}]")

    def encode(self, out: bytearray, v) -> None:
        out += struct.pack("<I", len(v))
        for x in v:
            self.kind.encode(out, x)

    def decode(self, r: Reader, where: str):
        n = r.u32()
        if n > self.max_len:
            raise VMStateError(f"{where}: {n} items, at most {self.max_len} allowed")
        v = tuple(self.kind.decode(r, f"{where}[{i}]") for i in range(n))
        self.check(v, where)
        return v

    def restore(self, current, v):
        items = [self.kind.restore(None, x) for x in v]
        if isinstance(current, (set, frozenset)):
            return set(items)
        if isinstance(current, deque):
            return deque(items)
        if isinstance(current, tuple):
            return tuple(items)
        return items


class Tuple(Kind):
    """A fixed sequence of differently typed values (e.g. a queued byte and its source)."""

    def __init__(self, *kinds: Kind):
        self.kinds = kinds

    def capture(self, v):
        return tuple(k.capture(x) for k, x in zip(self.kinds, v))

    def check(self, v, where: str) -> None:
        if type(v) is not tuple or len(v) != len(self.kinds):
            raise VMStateError(f"{where}: not a {len(self.kinds)}-tuple")
        for i, (k, x) in enumerate(zip(self.kinds, v)):
            k.check(x, f"{where}.{i}")

    def encode(self, out: bytearray, v) -> None:
        for k, x in zip(self.kinds, v):
            k.encode(out, x)

    def decode(self, r: Reader, where: str):
        return tuple(k.decode(r, f"{where}.{i}") for i, k in enumerate(self.kinds))


class Choice(Kind):
    """One of a fixed set of short strings (a mode name)."""

    def __init__(self, *choices: str):
        self.choices = choices

    def check(self, v, where: str) -> None:
        if v not in self.choices:
            raise VMStateError(f"{where}: {v!r} is not one of {', '.join(self.choices)}")

    def encode(self, out: bytearray, v) -> None:
        out.append(self.choices.index(v))

    def decode(self, r: Reader, where: str):
        i = r.u8()
        if i >= len(self.choices):
            raise VMStateError(f"{where}: choice {i} out of range")
        return self.choices[i]


class Line(Kind):
    """An output interrupt line (`IrqLine`): its level. Restored without calling the sink: the
    controller at the other end restores its own view of the input."""

    def capture(self, v):
        return False if v is None else bool(v.level)

    def check(self, v, where: str) -> None:
        Bool().check(v, where)

    def encode(self, out: bytearray, v) -> None:
        out.append(1 if v else 0)

    def decode(self, r: Reader, where: str):
        return Bool().decode(r, where)

    def restore(self, current, v):
        if current is not None:
            current.level = v
        return current


class LineList(Kind):
    """A device's list of IrqLines (a controller's inputs): their levels, restored in place."""

    def __init__(self, count: int):
        self.count = count

    def capture(self, v):
        return tuple(bool(line.level) for line in v)

    def check(self, v, where: str) -> None:
        if type(v) is not tuple or len(v) != self.count or any(type(x) is not bool for x in v):
            raise VMStateError(f"{where}: expected {self.count} line levels")

    def encode(self, out: bytearray, v) -> None:
        out += bytes(1 if x else 0 for x in v)

    def decode(self, r: Reader, where: str):
        raw = r.take(self.count)
        if any(b > 1 for b in raw):
            raise VMStateError(f"{where}: a line level is not a boolean")
        return tuple(bool(b) for b in raw)

    def restore(self, current, v):
        for line, level in zip(current, v):
            line.level = level
        return current


U8, U16, U32, U64, U128 = UInt(8), UInt(16), UInt(32), UInt(64), UInt(128)
I64 = SInt()
BOOL = Bool()
LINE = Line()
OPT_U64 = Optional(U64)
OPT_I64 = Optional(I64)


@dataclass(frozen=True)
class Field:
    """`name` is the attribute (a dotted path reaches into a member object)."""
    name: str
    kind: Kind


class Struct(Kind):
    """A member object saved by its own Description (a PIC chip, a PIT channel, a queue)."""

    def __init__(self, desc: "Description"):
        self.desc = desc

    def capture(self, v):
        return capture(v, self.desc)

    def check(self, v, where: str) -> None:
        check_values(self.desc, v, where)

    def encode(self, out: bytearray, v) -> None:
        encode_values(self.desc, v, out)

    def decode(self, r: Reader, where: str):
        return decode_values(self.desc, r, where)

    def restore(self, current, v):
        apply(current, self.desc, v)
        return current


class StructList(Kind):
    """A list of member objects of one Description, as many as the machine has (the PIT's
    channels, a device's queues): the count must match."""

    def __init__(self, desc: "Description", max_len: int = 256):
        self.desc = desc
        self.max_len = max_len

    def capture(self, v):
        return tuple(capture(x, self.desc) for x in v)

    def check(self, v, where: str) -> None:
        if type(v) is not tuple or len(v) > self.max_len:
            raise VMStateError(f"{where}: not a list of at most {self.max_len}")
        for i, x in enumerate(v):
            check_values(self.desc, x, f"{where}[{i}]")

    def encode(self, out: bytearray, v) -> None:
        out += struct.pack("<I", len(v))
        for x in v:
            encode_values(self.desc, x, out)

    def decode(self, r: Reader, where: str):
        n = r.u32()
        if n > self.max_len:
            raise VMStateError(f"{where}: {n} items, at most {self.max_len} allowed")
        return tuple(decode_values(self.desc, r, f"{where}[{i}]") for i in range(n))

    def restore(self, current, v):
        for obj, values in zip(current, v):
            apply(obj, self.desc, values)
        return current


@dataclass(frozen=True)
class Description:
    """A section's layout: its name, its version (bump it when the table changes) and fields."""
    name: str
    version: int
    fields: tuple[Field, ...]


# ------------------------------------------------------------------------------------------
# objects <-> values
# ------------------------------------------------------------------------------------------

def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _set(obj, path: str, value) -> None:
    *parents, last = path.split(".")
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, last, value)


def capture(obj, desc: Description) -> dict:
    return {f.name: f.kind.capture(_get(obj, f.name)) for f in desc.fields}


def check_values(desc: Description, values, where: str = "") -> None:
    where = where or desc.name
    if not isinstance(values, dict) or set(values) != {f.name for f in desc.fields}:
        raise VMStateError(f"{where}: fields do not match section '{desc.name}' version {desc.version}")
    for f in desc.fields:
        f.kind.check(values[f.name], f"{where}.{f.name}")


def check(obj, desc: Description, values, where: str = "") -> None:
    """Validate `values` for `obj` without changing anything (types, ranges, and the object's
    own `vmstate_check(values)`, which raises VMStateError, for the members' counts and any
    rule between fields)."""
    check_values(desc, values, where)
    for f in desc.fields:
        if isinstance(f.kind, (StructList, Struct)):
            cur = _get(obj, f.name)
            sub = values[f.name]
            if isinstance(f.kind, StructList):
                if len(cur) != len(sub):
                    raise VMStateError(f"{where or desc.name}.{f.name}: {len(sub)} items, "
                                       f"this machine has {len(cur)}")
                for i, (o, v) in enumerate(zip(cur, sub)):
                    check(o, f.kind.desc, v, f"{where or desc.name}.{f.name}[{i}]")
            else:
                check(cur, f.kind.desc, sub, f"{where or desc.name}.{f.name}")
    own = getattr(obj, "vmstate_check", None)
    if own is not None:
        own(values)


_IN_PLACE = (Struct, StructList, LineList, Line, Bytes)


def apply(obj, desc: Description, values: dict) -> None:
    """Write checked values into obj, then obj.post_load() if it has one (obj.pre_load(values)
    runs first, to rebuild members whose kind the values choose)."""
    pre = getattr(obj, "pre_load", None)
    if pre is not None:
        pre(values)
    for f in desc.fields:
        cur = _get(obj, f.name)
        new = f.kind.restore(cur, values[f.name])
        if new is not cur or not isinstance(f.kind, _IN_PLACE):     # a property's setter always runs
            _set(obj, f.name, new)
    post = getattr(obj, "post_load", None)
    if post is not None:
        post()


def encode_values(desc: Description, values: dict, out: bytearray) -> None:
    for f in desc.fields:
        f.kind.encode(out, values[f.name])


def decode_values(desc: Description, r: Reader, where: str = "") -> dict:
    where = where or desc.name
    return {f.name: f.kind.decode(r, f"{where}.{f.name}") for f in desc.fields}


def encode(desc: Description, values: dict) -> bytes:
    out = bytearray()
    encode_values(desc, values, out)
    return bytes(out)


def decode(desc: Description, data: bytes) -> dict:
    r = Reader(data, desc.name)
    values = decode_values(desc, r)
    if not r.done():
        raise VMStateError(f"{desc.name}: {len(data) - r.pos} bytes left over")
    return values
