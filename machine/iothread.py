"""I/O threads: QEMU's `-object iothread,id=ID`. A device given `iothread=ID` executes its
requests here, so they overlap with guest execution (and the CPU thread parses the next request
while this thread moves the data of the last one).

Who touches what. The CPU thread (the run loop, device callbacks) owns Unicorn, device
registers, the used rings, interrupts and the virtual clock. A worker runs only the `work()`
callables it is given: they move bytes between a backend and guest RAM through host offsets the
CPU thread already checked, and return a result. The CPU thread picks results up with `poll()`
(the run loop calls it between slices) and runs each job's `done(result)` there, in the order
the jobs were submitted; after a batch, each owner's `io_batch_done()` runs once (one interrupt
for many completions). So a completion's data and status bytes are in RAM before `done` puts
the used entry there, and the used entry before the used index: the guest, which only runs on
the CPU thread, sees them in that order.

One worker per thread, first in first out, as a QEMU iothread is one thread: a FLUSH submitted
after writes runs after them, and a backend (a snapshot overlay, blkdebug's rule engine) is
never entered by two threads at once.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from threading import Event   # by name: trace tables read `X.Event(...)` as a trace event
from typing import Any, Callable, Protocol


# QEMU's iothread properties: adaptive polling and batching knobs of its event loop. Here
# poll-max-ns is how long the CPU thread waits for a completion right after handing an idle
# thread a request (a guest at one request in flight waits for it anyway: the CPU thread waiting
# costs less than running its polling loop); the others are accepted and checked.
PROPERTIES = ("poll-max-ns", "poll-grow", "poll-shrink", "aio-max-batch")
POLL_MAX_NS = 32768                              # QEMU's default


class Owner(Protocol):
    def io_batch_done(self) -> None: ...


class _Failure:
    """An exception raised by work(): re-raised on the CPU thread by poll() (a bug in a device
    model must not vanish with a worker)."""
    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


class IoThread:
    """One worker thread and its queues. `in_flight`: jobs submitted whose `done` has not run
    yet (the CPU thread's count)."""

    def __init__(self, ident: str, poll_ns: int = POLL_MAX_NS):
        self.id = ident
        self.poll_ns = poll_ns
        # Jobs go through a SimpleQueue (C, the cheapest hand-over that wakes a sleeping
        # worker); results come back on a deque, with an Event for a CPU thread that sleeps.
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._results: deque = deque()           # (owner, done, result), appended by the worker
        self._finished = Event()                 # set after each append to _results
        self._thread: threading.Thread | None = None
        self._closed = False
        self.in_flight = 0
        # on_busy(): called on the CPU thread when a job is submitted with none in flight (the
        # board ends the current slice so the next ones are short and completions seen soon).
        self.on_busy: Callable[[], None] | None = None

    # -- the CPU thread ---------------------------------------------------------------------------
    def submit(self, owner: Owner, work: Callable[[], Any], done: Callable[[Any], None]) -> None:
        """Run work() on the worker; done(result) later runs on the CPU thread (poll/drain)."""
        if self._closed:
            raise RuntimeError(f"iothread {self.id} is closed")
        if self._thread is None:
            # Started on first use, daemon: a backend stuck in the kernel must not keep the
            # process alive after the machine is gone.
            self._thread = threading.Thread(target=self._worker, name=f"iothread-{self.id}", daemon=True)
            self._thread.start()
        self.in_flight += 1
        self._jobs.put((owner, work, done))
        if self.in_flight == 1 and self.on_busy is not None:
            self.on_busy()

    def poll(self) -> int:
        """Run the done() of every finished job, in submission order, then each owner's
        io_batch_done(). Returns how many completed."""
        results = self._results
        if not results:                  # a plain read: the worker only ever appends
            return 0
        owners: list = []
        n = 0
        try:
            while results:
                owner, done, result = results.popleft()
                self.in_flight -= 1
                n += 1
                if isinstance(result, _Failure):
                    raise result.error
                done(result)
                if owner not in owners:
                    owners.append(owner)
        finally:
            for owner in owners:
                owner.io_batch_done()
        return n

    def wait(self, timeout: float | None) -> None:
        """Block until a job finishes (or `timeout` seconds pass); at once if one already has
        or none is in flight."""
        finished = self._finished
        finished.clear()
        if self._results or not self.in_flight:  # checked after clear(): no wake-up is lost
            return
        finished.wait(timeout)

    def drain(self) -> None:
        """Wait until every submitted job is finished and its done() has run: nothing of this
        thread is in flight afterwards (reset, stop, snapshot, close)."""
        while self.in_flight:
            if len(self._results) < self.in_flight:
                self.wait(None)
            self.poll()

    def close(self) -> None:
        """Drain, then end the worker."""
        self.drain()
        self._closed = True
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    # -- the worker -------------------------------------------------------------------------------
    def _worker(self) -> None:
        jobs, results, finished = self._jobs, self._results, self._finished
        while True:
            job = jobs.get()
            if job is None:
                return
            owner, work, done = job
            try:
                result = work()
            except BaseException as e:       # noqa: BLE001 - handed to the CPU thread
                result = _Failure(e)
            results.append((owner, done, result))
            finished.set()
