"""Trace events under QEMU's names, and QEMU's `-d` log categories.

A trace point is a module-level `Event`; code guards emission with `if EV.enabled:` so a disabled
event costs one attribute read on the hot path:

    EV_NOTIFY = trace.Event("virtio_queue_notify", "vdev={vdev} n={n}")
    ...
    if EV_NOTIFY.enabled:
        EV_NOTIFY.emit(vdev="virtio-blk", n=0)

`-trace PATTERN`, `-trace enable=PATTERN`, `-trace events=FILE` enable events by glob pattern;
`-d guest_errors,...` enables log categories; `-D FILE` sends both to a file (default stderr).
"""

from __future__ import annotations

import fnmatch
import sys
import time
from typing import Callable, TextIO

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


class Event:
    __slots__ = ("name", "fmt", "enabled", "printed")

    def __init__(self, name: str, fmt: str = ""):
        if name in _events:
            raise ValueError(f"trace event {name} defined twice")
        self.name = name
        self.fmt = fmt
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


def all_events() -> dict[str, Event]:
    """Every event the machine defines, whether or not its module has been loaded yet (for
    `-trace help`): imports each module of the `machine` package that may define some."""
    import importlib
    import pkgutil

    import machine
    for info in pkgutil.walk_packages(machine.__path__, "machine."):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except Exception:           # a module that cannot load here defines nothing we can list
            continue
    return events()


def help_text() -> str:
    """The `-trace help` listing: one event name per line, sorted, with its format."""
    return "\n".join(f"{name:<32} {ev.fmt}".rstrip() for name, ev in sorted(all_events().items()))


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
