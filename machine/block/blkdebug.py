"""Fault injection with QEMU's blkdebug rules: `-drive file=blkdebug:RULES:IMAGE,...`.

A driver's error paths are hard to reach on a healthy disk. A rules file (QEMU's -readconfig
syntax: `[section]` headers and `key = "value"` lines) makes chosen requests fail with a chosen
errno, which the device reports to the guest as it would a host I/O error:

    [inject-error]           # fail requests
    event = "read_aio"       # armed when this block-layer event happens (required)
    errno = "5"              # default EIO
    sector = "2048"          # only requests covering this sector (default: any)
    once = "on"              # only the first matching request (default off)
    immediately = "off"      # accepted; the guest sees the same failure either way
    iotype = "read"          # only this kind of request (read, write, write-zeroes, discard,
                             # flush, block-status); default all but block-status
    state = "2"              # only while the engine is in this state (default: any)

    [set-state]              # move the engine (which starts in state 1) to another state
    event = "write_aio"
    state = "1"
    new_state = "2"

    [delay]                  # OURS, not QEMU's: hold the completion of matching requests
    event = "read_aio"       # armed like inject-error (required); sector, iotype, once, state too
    latency-ns = "5000000"   # how long, in virtual time (required; QEMU's null-co calls its
                             # per-request delay latency-ns)

QEMU 7.2's blkdebug cannot delay a request (its way to slow requests down is `-drive
throttling.*` or the `null-co` driver's `latency-ns`, neither of which picks requests). A
`[delay]` rule lets a driver's timeout paths be tested: the request is carried out at once (its
data is in guest memory) but the device completes it (used element, interrupt) `latency-ns` of
virtual time later, so the same guest sees the same timeouts on every run. Delay rules are
armed and disarmed like inject-error rules but in a set of their own, so adding them to a rules
file changes nothing about which requests fail. A failed request can be delayed too.

The model is QEMU 7.2's, so the same rules fail the same guest requests on both:
- an *event* arms rules: every inject-error rule of that event whose state matches replaces the
  armed set (if there is one), and set-state rules pick the next state;
- every request is checked against the armed rules (the first one that covers its sector and
  kind fails it); `once` disarms and deletes the rule after it fires; armed rules stay armed.
- the events a raw image sees, in order: `none` once at open; a read: `read_aio`; a write:
  `write_aio`, `pwritev`, the check, `pwritev_done`; a write-zeroes: `pwritev`, `pwritev_zero`,
  the check, `pwritev_done`; a flush: `flush_to_os`, `flush_to_disk`, the check; a discard with
  discard=unmap: the check (with discard=ignore a discard never reaches the image).
Other event names of QEMU's list are accepted and never happen on a raw image, as in QEMU.
"""

from __future__ import annotations

import errno as errno_mod
import re
from dataclasses import dataclass, field
from pathlib import Path

from .raw import SECTOR, BlockBackend

IOTYPES = ("read", "write", "write-zeroes", "discard", "flush", "block-status")
DEFAULT_IOTYPES = frozenset(IOTYPES) - {"block-status"}

# QEMU 7.2's BlkdebugEvent names (most belong to image formats and never fire on raw).
EVENTS = frozenset("""
    l1_update l1_grow_alloc_table l1_grow_write_table l1_grow_activate_table l2_load l2_update
    l2_update_compressed l2_alloc_cow_read l2_alloc_write read_aio read_backing_aio
    read_compressed write_aio write_compressed vmstate_load vmstate_save cow_read cow_write
    reftable_load reftable_grow reftable_update refblock_load refblock_update refblock_update_part
    refblock_alloc refblock_alloc_hookup refblock_alloc_write refblock_alloc_write_blocks
    refblock_alloc_write_table refblock_alloc_switch_table cluster_alloc cluster_alloc_bytes
    cluster_free flush_to_os flush_to_disk pwritev_rmw_head pwritev_rmw_after_head
    pwritev_rmw_tail pwritev_rmw_after_tail pwritev pwritev_zero pwritev_done empty_image_prepare
    l1_shrink_write_table l1_shrink_free_l2_clusters cor_write cluster_alloc_space none
""".split())

_SECTION_KEYS = {
    "inject-error": {"event", "state", "iotype", "errno", "sector", "once", "immediately"},
    "set-state": {"event", "state", "new_state"},
    "delay": {"event", "state", "iotype", "sector", "once", "latency-ns"},      # ours
}


class RulesError(ValueError):
    """A rules file that QEMU would refuse; the message says where and why."""


@dataclass(eq=False)
class Rule:
    event: str
    state: int = 0                       # 0: any state
    # inject-error
    inject: bool = True
    errno: int = errno_mod.EIO
    offset: int = -1                     # byte offset of `sector`, -1 for any
    once: bool = False
    immediately: bool = False
    iotypes: frozenset = DEFAULT_IOTYPES
    # set-state
    new_state: int = 0
    # delay (ours): inject is False and delay_ns > 0
    delay_ns: int = 0

    def covers(self, offset: int, length: int, iotype: str) -> bool:
        if iotype not in self.iotypes:
            return False
        return self.offset == -1 or (length > 0 and offset <= self.offset < offset + length)


def _number(section: str, key: str, value: str) -> int:
    try:
        return int(value, 0)
    except ValueError:
        raise RulesError(f"[{section}] {key}: '{value}' is not a number") from None


def _bool(section: str, key: str, value: str) -> bool:
    if value in ("on", "yes", "true"):
        return True
    if value in ("off", "no", "false"):
        return False
    raise RulesError(f"[{section}] {key}: expects 'on' or 'off', not '{value}'")


_SECTION = re.compile(r'\[\s*([A-Za-z0-9_-]+)\s*(?:"[^"]*"\s*)?\]')
_KEY_VALUE = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*"([^"]*)"')


def parse_rules(text: str, name: str = "rules") -> list[Rule]:
    """Rules in file order. QEMU's syntax: values in double quotes, '#' comments."""
    sections: list[tuple[str, int, dict[str, str]]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _SECTION.fullmatch(line)
        if m:
            if m.group(1) not in _SECTION_KEYS:
                raise RulesError(f"{name}:{lineno}: unknown section [{m.group(1)}]")
            sections.append((m.group(1), lineno, {}))
            continue
        m = _KEY_VALUE.fullmatch(line)
        if not m:
            raise RulesError(f"{name}:{lineno}: parse error (expected [section] or key = \"value\")")
        if not sections:
            raise RulesError(f"{name}:{lineno}: no group defined")
        kind, _, keys = sections[-1]
        if m.group(1) not in _SECTION_KEYS[kind]:
            raise RulesError(f"{name}:{lineno}: Invalid parameter '{m.group(1)}' in [{kind}]")
        keys[m.group(1)] = m.group(2)

    rules = []
    for kind, lineno, keys in sections:
        event = keys.get("event")
        if event is None:
            raise RulesError(f"{name}:{lineno}: Missing event name for rule")
        if event not in EVENTS:
            raise RulesError(f"{name}:{lineno}: invalid event '{event}'")
        rule = Rule(event=event, state=_number(kind, "state", keys.get("state", "0")),
                    inject=kind == "inject-error")
        if kind == "set-state":
            rule.new_state = _number(kind, "new_state", keys.get("new_state", "0"))
        else:
            if kind == "delay":
                if "latency-ns" not in keys:
                    raise RulesError(f"{name}:{lineno}: [delay] needs latency-ns")
                rule.delay_ns = _number(kind, "latency-ns", keys["latency-ns"])
                if rule.delay_ns <= 0:
                    raise RulesError(f"{name}:{lineno}: [delay] latency-ns must be positive")
            else:
                rule.errno = _number(kind, "errno", keys.get("errno", str(errno_mod.EIO)))
            sector = _number(kind, "sector", keys.get("sector", "-1"))
            rule.offset = -1 if sector == -1 else sector * SECTOR
            rule.once = _bool(kind, "once", keys.get("once", "off"))
            rule.immediately = _bool(kind, "immediately", keys.get("immediately", "off"))
            if "iotype" in keys:
                if keys["iotype"] not in IOTYPES:
                    raise RulesError(f"{name}:{lineno}: invalid iotype '{keys['iotype']}'")
                rule.iotypes = frozenset({keys["iotype"]})
        rules.append(rule)
    return rules


def load_rules(path: str | Path) -> list[Rule]:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise RulesError(f"Could not read blkdebug config file '{path}': "
                         f"{getattr(e, 'strerror', None) or e}") from None
    return parse_rules(text, str(path))


@dataclass
class RuleEngine:
    """The state machine behind the rules: events arm them, requests are checked against them."""
    rules: list[Rule]
    state: int = 1
    armed: list[Rule] = field(default_factory=list)
    armed_delays: list[Rule] = field(default_factory=list)      # [delay] rules, armed alike
    delay_ns: int = 0               # what the requests checked since take_delay_ns() asked for

    def event(self, name: str) -> None:
        # QEMU walks each event's rules newest first, set-state rules before inject-error ones,
        # and pushes each armed rule to the front: the armed list ends up in file order.
        new_state = self.state
        fresh: list[Rule] | None = None
        fresh_delays: list[Rule] | None = None
        for rule in reversed(self.rules):
            if rule.event != name or (rule.state and rule.state != self.state):
                continue
            if rule.inject:
                fresh = [] if fresh is None else fresh
                fresh.insert(0, rule)
            elif rule.delay_ns:
                fresh_delays = [] if fresh_delays is None else fresh_delays
                fresh_delays.insert(0, rule)
            else:
                new_state = rule.new_state
        if fresh is not None:
            self.armed = fresh
        if fresh_delays is not None:
            self.armed_delays = fresh_delays
        self.state = new_state

    def check(self, offset: int, length: int, iotype: str) -> None:
        for rule in self.armed_delays:
            if rule.covers(offset, length, iotype):
                self.delay_ns = max(self.delay_ns, rule.delay_ns)
                if rule.once:
                    self.armed_delays.remove(rule)
                    self.rules.remove(rule)
                break
        for rule in self.armed:
            if rule.covers(offset, length, iotype):
                if not rule.errno:           # errno = "0": the rule matches and lets it through
                    return
                if rule.once:
                    self.armed.remove(rule)
                    self.rules.remove(rule)
                raise OSError(rule.errno, f"blkdebug: injected {errno_mod.errorcode.get(rule.errno, rule.errno)}")


class BlkDebug(BlockBackend):
    """A backend that fails requests as its rules say and passes the rest to `inner`."""

    def __init__(self, inner: BlockBackend, rules: list[Rule]):
        self.inner = inner
        self.engine = RuleEngine(list(rules))
        self.engine.event("none")

    # What the device reads of a backend, from the image underneath.
    size = property(lambda self: self.inner.size)
    read_only = property(lambda self: self.inner.read_only)
    discard_unmap = property(lambda self: self.inner.discard_unmap)
    cache = property(lambda self: self.inner.cache)
    filename = property(lambda self: self.inner.filename)

    def readv(self, offset: int, bufs: list[memoryview]) -> int:
        self.engine.event("read_aio")
        self.engine.check(offset, sum(len(b) for b in bufs), "read")
        return self.inner.readv(offset, bufs)

    def writev(self, offset: int, bufs: list[memoryview]) -> int:
        self.engine.event("write_aio")
        self.engine.event("pwritev")
        try:
            self.engine.check(offset, sum(len(b) for b in bufs), "write")
            return self.inner.writev(offset, bufs)
        finally:
            self.engine.event("pwritev_done")

    def write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        self.engine.event("pwritev")
        self.engine.event("pwritev_zero")
        try:
            self.engine.check(offset, length, "write-zeroes")
            self.inner.write_zeroes(offset, length, may_unmap)
        finally:
            self.engine.event("pwritev_done")

    def discard(self, offset: int, length: int) -> None:
        if self.inner.discard_unmap:
            self.engine.check(offset, length, "discard")
        self.inner.discard(offset, length)

    def flush(self) -> None:
        self.engine.event("flush_to_os")
        self.engine.event("flush_to_disk")
        self.engine.check(0, 0, "flush")
        self.inner.flush()

    def take_delay_ns(self) -> int:
        """How long the device holds the completion of the request just carried out ([delay]
        rules; 0 for none)."""
        ns, self.engine.delay_ns = self.engine.delay_ns, 0
        return ns

    def refresh_size(self) -> int:
        return self.inner.refresh_size()

    def resize(self, size: int) -> None:
        self.inner.resize(size)

    def close(self) -> None:
        self.inner.close()
