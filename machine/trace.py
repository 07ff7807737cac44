"""Trace events under QEMU's names, and QEMU's `-d` log categories.

Each package declares its events, with their fields and format, in one `trace-events` file
beside its modules (as QEMU does), one line each:

    virtio_queue_notify(vdev, n) "vdev={vdev} n={n}"
    ours virtio_error(vdev, msg) "vdev={vdev} {msg}"         # `ours`: not in QEMU 7.2

A trace point is a module-level `Event` of a declared name; code guards emission with
`if EV.enabled:` so a disabled event costs one attribute read on the hot path:

    EV_NOTIFY = trace.Event("virtio_queue_notify")
    ...
    if EV_NOTIFY.enabled:
        EV_NOTIFY.emit(vdev="virtio-blk", n=0)

Every emit passes exactly the declared fields (a test checks each call site), so listeners
(device breakpoints, the Python API) can rely on them. `-trace help` reads the tables.

`-trace PATTERN`, `-trace enable=PATTERN`, `-trace events=FILE` enable events by glob pattern;
`-d guest_errors,...` enables log categories; `-D FILE` sends both to a file (default stderr).
"""

from __future__ import annotations

import fnmatch
import re
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple, TextIO

_events: dict[str, "Event"] = {}
_patterns: list[str] = []
_categories: set[str] = set()
_out: TextIO = sys.stderr
_listeners: list[Callable[[str, dict], None]] = []
# Patterns enabled for listeners only (device breakpoints, the Python API): such events reach
# add_listener() callbacks but are not printed.
_listen_patterns: list[str] = []

LOG_CATEGORIES = {
    "guest_errors": "report guest errors: bad register accesses, spec violations, unmapped accesses",
    "int": "show interrupts and exceptions as they are delivered",
    "in_asm": "show target assembly code for each translated block",
    "exec": "show the address of each executed block",
    "cpu": "show CPU registers before each executed block",
    "unimp": "log unimplemented functionality",
}


class Declaration(NamedTuple):
    """One line of a trace-events table."""
    name: str
    fields: tuple[str, ...]
    fmt: str
    ours: bool                    # an event of ours alone: QEMU 7.2 has none by this name
    table: str                    # the package whose table declares it ("machine/virtio")


_LINE = re.compile(r'(ours\s+)?([a-z][a-z0-9_]*)\(([^)]*)\)\s+"(.*)"')
_declarations: dict[str, Declaration] | None = None


def parse_table(text: str, table: str) -> dict[str, Declaration]:
    """The declarations of one trace-events file ('#' comments and blank lines skipped).
    ValueError for a line that is not a declaration, a name declared twice, or a format that
    uses a field the line does not declare."""
    out: dict[str, Declaration] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.fullmatch(line)
        if m is None:
            raise ValueError(f"{table}/trace-events:{n}: not a declaration: {line}")
        ours, name, fields, fmt = m.groups()
        names = tuple(f.strip() for f in fields.split(",") if f.strip())
        try:
            fmt.format(**{f: 0 for f in names})
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"{table}/trace-events:{n}: format of {name} does not fit its "
                             f"fields: {exc}") from None
        if name in out:
            raise ValueError(f"{table}/trace-events:{n}: {name} declared twice")
        out[name] = Declaration(name, names, fmt, bool(ours), table)
    return out


def declarations() -> dict[str, Declaration]:
    """Every declared event, from the trace-events file of each package (read once)."""
    global _declarations
    if _declarations is None:
        root = Path(__file__).resolve().parent
        found: dict[str, Declaration] = {}
        for path in sorted(root.rglob("trace-events")):
            table = path.parent.relative_to(root.parent).as_posix()
            for name, decl in parse_table(path.read_text(), table).items():
                if name in found:
                    raise ValueError(f"trace event {name} declared in {found[name].table} and {table}")
                found[name] = decl
        _declarations = found
    return _declarations


class Event:
    __slots__ = ("name", "fmt", "fields", "ours", "enabled", "printed")

    def __init__(self, name: str):
        if name in _events:
            raise ValueError(f"trace event {name} defined twice")
        decl = declarations().get(name)
        if decl is None:
            raise ValueError(f"trace event {name} is not declared in any trace-events file")
        self.name = name
        self.fmt = decl.fmt
        self.fields = decl.fields
        self.ours = decl.ours
        self.printed = _matches(name)
        self.enabled = self.printed or _listened(name)
        _events[name] = self

    def emit(self, **fields) -> None:
        if self.printed:
            text = self.fmt.format(**fields) if self.fmt else " ".join(f"{k}={v}" for k, v in fields.items())
            _out.write(f"{self.name} {text}\n")
            _out.flush()
        for fn in _listeners:
            fn(self.name, fields)


def _matches(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in _patterns)


def _listened(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in _listen_patterns)


def _refresh() -> None:
    for ev in _events.values():
        ev.printed = _matches(ev.name)
        ev.enabled = ev.printed or _listened(ev.name)


def enable(pattern: str) -> None:
    """Enable every event (present or defined later) whose name matches the glob `pattern`."""
    _patterns.append(pattern)
    _refresh()


def disable_all() -> None:
    _patterns.clear()
    _listen_patterns.clear()
    _categories.clear()
    _refresh()


def listen(pattern: str) -> None:
    """Enable the events matching `pattern` for listeners only (not printed). Pair each call
    with one unlisten(pattern)."""
    _listen_patterns.append(pattern)
    _refresh()


def unlisten(pattern: str) -> None:
    if pattern in _listen_patterns:
        _listen_patterns.remove(pattern)
        _refresh()


def events() -> dict[str, Event]:
    return dict(_events)


def help_text() -> str:
    """The `-trace help` listing, from the tables: one event per line, sorted, with its
    format; the events of ours alone (no QEMU 7.2 event has the name) say so."""
    lines = []
    for name, decl in sorted(declarations().items()):
        line = f"{name:<32} {decl.fmt}"
        lines.append(line + "   [ours: not in QEMU 7.2]" if decl.ours else line)
    return "\n".join(lines)


def add_listener(fn: Callable[[str, dict], None]) -> None:
    """fn(event_name, fields) is called for every emitted event (the Python API and device
    breakpoints use it). Events still have to be enabled to be emitted."""
    _listeners.append(fn)


def remove_listener(fn: Callable[[str, dict], None]) -> None:
    if fn in _listeners:
        _listeners.remove(fn)


def set_output(stream: TextIO) -> None:
    global _out
    _out = stream


def enable_category(name: str) -> None:
    if name not in LOG_CATEGORIES:
        raise ValueError(f"unknown log category '{name}'")
    _categories.add(name)


def category_enabled(name: str) -> bool:
    return name in _categories


def any_category_enabled(*names: str) -> bool:
    """True when at least one of the log categories `names` is on."""
    return any(name in _categories for name in names)


def output() -> TextIO:
    """Where the -d log and printed trace events go (stderr, or the -D file)."""
    return _out


def log(category: str, message: str) -> None:
    if category in _categories:
        _out.write(message.rstrip("\n") + "\n")
        _out.flush()


def guest_error(message: str) -> None:
    """A guest did something a real machine would ignore or fault on (QEMU's LOG_GUEST_ERROR)."""
    if "guest_errors" in _categories:
        _out.write(message.rstrip("\n") + "\n")
        _out.flush()


def timestamp_ns() -> int:
    return time.perf_counter_ns()
