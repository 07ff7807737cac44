"""Virtual time.

The machine's clock is derived from retired guest instructions (and jumps forward when the CPU
halts), never from the host clock, so two runs of the same guest see the same times and give the
same output. Devices (PIT, RTC, LAPIC timer) arm `Timer`s on it; the run loop asks for the next
deadline to size its instruction slices and calls `advance_to()`.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Callable

from . import vmstate

NS_PER_SEC = 1_000_000_000


class Timer:
    __slots__ = ("clock", "callback", "deadline", "_seq", "name", "key")

    def __init__(self, clock: "VirtualClock", callback: Callable[[], None], name: str = "timer"):
        self.clock = clock
        self.callback = callback
        self.deadline: int | None = None
        self._seq = -1
        self.name = name
        self.key: str | None = None        # a one-shot timer's description, for snapshots

    def arm(self, deadline_ns: int) -> None:
        """(Re)arm to fire when virtual time reaches `deadline_ns` (absolute)."""
        self.deadline = int(deadline_ns)
        self._seq = next(self.clock._counter)
        heapq.heappush(self.clock._heap, (self.deadline, self._seq, self))

    def arm_in(self, delta_ns: int) -> None:
        self.arm(self.clock.now + max(0, int(delta_ns)))

    def cancel(self) -> None:
        self.deadline = None
        self._seq = -1

    @property
    def armed(self) -> bool:
        return self.deadline is not None


class VirtualClock:
    # Time, and every armed timer in firing order, so timers due at the same instant still fire
    # in the order they did (see `armed`): a device's timer by its index in creation order, a
    # one-shot timer (a bottom half) as -1 and its key, which `restore_oneshot` turns back
    # into its callback.
    VMSTATE = vmstate.Description("clock", 1, (
        vmstate.Field("now", vmstate.U64),
        vmstate.Field("armed", vmstate.List(vmstate.Tuple(vmstate.I64, vmstate.U64, vmstate.Str(64)), 1 << 16))))

    def __init__(self):
        self.now = 0                       # ns since power-on
        self._heap: list[tuple[int, int, Timer]] = []
        self._counter = itertools.count()
        self.timers: list[Timer] = []      # in creation order (the board builds the same list each time)
        # key -> callback of a one-shot timer being restored (None: not a valid key); the board's
        self.restore_oneshot: Callable[[str], Callable[[], None] | None] = lambda key: None

    def timer(self, callback: Callable[[], None], name: str = "timer") -> Timer:
        t = Timer(self, callback, name)
        self.timers.append(t)
        return t

    def oneshot(self, callback: Callable[[], None], deadline_ns: int, key: str | None = None) -> Timer:
        """A timer armed once and forgotten (not in `timers`): a bottom half. Only one with a
        `key` (see restore_oneshot) can be part of a snapshot."""
        t = Timer(self, callback, "oneshot")
        t.key = key
        t.arm(deadline_ns)
        return t

    def cancel_keyed(self, key: str) -> None:
        """Cancel the armed one-shot timer saved under `key`, if any."""
        for _, seq, t in self._heap:
            if t.key == key and t._seq == seq:
                t.cancel()

    @property
    def armed(self) -> tuple:
        index = {id(t): i for i, t in enumerate(self.timers)}
        out = []
        for d, seq, t in sorted((d, seq, t) for d, seq, t in self._heap if t._seq == seq):
            i = index.get(id(t))
            if i is None and t.key is None:
                raise vmstate.VMStateError(f"clock: timer '{t.name}' cannot be saved")
            out.append((-1, d, t.key) if i is None else (i, d, ""))
        return tuple(out)

    @armed.setter
    def armed(self, items) -> None:
        for t in self.timers:
            t.cancel()
        for _, _, t in self._heap:
            t.cancel()
        self._heap.clear()
        for i, deadline, key in items:
            if i >= 0:
                self.timers[i].arm(deadline)
            else:
                self.oneshot(self.restore_oneshot(key), deadline, key)

    def vmstate_check(self, values: dict) -> None:
        seen = set()
        for i, deadline, key in values["armed"]:
            if i < 0:
                if i != -1 or self.restore_oneshot(key) is None:
                    raise vmstate.VMStateError(f"clock: no one-shot timer '{key}' on this machine")
                continue
            if i >= len(self.timers) or i in seen:
                raise vmstate.VMStateError(f"clock: timer {i} does not exist or is armed twice")
            seen.add(i)

    def _prune(self) -> None:
        heap = self._heap
        while heap and heap[0][2]._seq != heap[0][1]:
            heapq.heappop(heap)            # cancelled or re-armed since this entry was pushed

    def next_deadline(self) -> int | None:
        self._prune()
        return self._heap[0][0] if self._heap else None

    def advance_to(self, ns: int) -> None:
        """Move time forward to `ns`, firing every timer whose deadline has passed, in order.
        Each callback runs with `now` equal to its own deadline (a periodic timer re-arming from
        `now` keeps its exact period), and time ends at `ns`."""
        heap = self._heap
        while True:
            self._prune()
            if not heap or heap[0][0] > ns:
                break
            deadline, _, t = heapq.heappop(heap)
            if deadline > self.now:
                self.now = deadline
            t.deadline = None
            t._seq = -1
            t.callback()
        if ns > self.now:
            self.now = ns

    def advance(self, delta_ns: int) -> None:
        self.advance_to(self.now + delta_ns)
