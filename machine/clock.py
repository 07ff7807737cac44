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
    __slots__ = ("clock", "callback", "deadline", "_seq", "name")

    def __init__(self, clock: "VirtualClock", callback: Callable[[], None], name: str = "timer"):
        self.clock = clock
        self.callback = callback
        self.deadline: int | None = None
        self._seq = -1
        self.name = name

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
    # Time, and every armed timer as (index in creation order, deadline) in firing order, so
    # timers due at the same instant still fire in the order they did (see `armed`).
    VMSTATE = vmstate.Description("clock", 1, (
        vmstate.Field("now", vmstate.U64),
        vmstate.Field("armed", vmstate.List(vmstate.Tuple(vmstate.U32, vmstate.U64), 1 << 16))))

    def __init__(self):
        self.now = 0                       # ns since power-on
        self._heap: list[tuple[int, int, Timer]] = []
        self._counter = itertools.count()
        self.timers: list[Timer] = []      # in creation order (the board builds the same list each time)

    def timer(self, callback: Callable[[], None], name: str = "timer") -> Timer:
        t = Timer(self, callback, name)
        self.timers.append(t)
        return t

    @property
    def armed(self) -> tuple:
        index = {id(t): i for i, t in enumerate(self.timers)}
        live = sorted((d, seq, t) for d, seq, t in self._heap if t._seq == seq)
        return tuple((index[id(t)], d) for d, _, t in live)

    @armed.setter
    def armed(self, items) -> None:
        for t in self.timers:
            t.cancel()
        self._heap.clear()
        for i, deadline in items:
            self.timers[i].arm(deadline)

    def vmstate_check(self, values: dict) -> None:
        seen = set()
        for i, deadline in values["armed"]:
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
