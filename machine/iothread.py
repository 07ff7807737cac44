"""I/O threads: QEMU's `-object iothread,id=ID`. A device given `iothread=ID` executes its
requests here, so they overlap with guest execution (and the CPU thread parses the next request
while this thread moves the data of the last one).

Who touches what. The CPU thread (the run loop, device callbacks) owns Unicorn, device
registers, the used rings, interrupts and the virtual clock. A worker runs only the `work()`
callables it is given: they move bytes between a backend and guest RAM through host offsets the
CPU thread already checked, and return a result. The CPU thread picks results up with `poll()`
(the run loop calls it between slices; a device's kick calls `settle()`, which polls too) and
runs each job's `done(result)` there, in the order the jobs were submitted; after a batch, each
owner's `io_batch_done()` runs once (one interrupt for many completions). So a completion's data and status bytes are in RAM before `done` puts
the used entry there, and the used entry before the used index: the guest, which only runs on
the CPU thread, sees them in that order.

One worker per thread, first in first out, as a QEMU iothread is one thread: a FLUSH submitted
after writes runs after them, and a backend (a snapshot overlay, blkdebug's rule engine) is
never entered by two threads at once. A device may also run native workers for the thread (the
virtio-blk I/O lane, machine/virtio/blk_fast.py), never beside this worker's jobs for the same
device; they end with it (`on_close`).
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from time import monotonic_ns
from threading import Event   # by name: trace tables read `X.Event(...)` as a trace event
from typing import Any, Callable, Protocol


# QEMU's iothread properties: polling and batching knobs of its event loop. poll-max-ns is the
# worker's polling window (below); the others are accepted and checked.
PROPERTIES = ("poll-max-ns", "poll-grow", "poll-shrink", "aio-max-batch")
# After its last job the worker looks for the next one for this long before it sleeps, as QEMU's
# iothread polls its handlers for up to poll-max-ns (same default): waking a sleeping thread
# costs the submitting CPU thread tens of microseconds on a busy host (the woken thread preempts
# it, then waits for the GIL it holds), more than a 4 KiB read. The look gives the GIL up
# between two checks (os.sched_yield), so the CPU thread's hooks are not held up.
POLL_MAX_NS = 32_768
STEAL_NS = 50_000        # a job the worker has not started after this long runs on the CPU thread


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
        self.poll_ns = poll_ns                   # the worker's polling window (0: sleep at once)
        self._jobs: deque = deque()              # (owner, work, done, submitted ns), FIFO
        # A token wakes a sleeping worker (a SimpleQueue is C, the cheapest hand-over). Only
        # when it sleeps: a wake-up costs the submitter dearly on a busy host (the woken thread
        # preempts it, then waits for the GIL it holds).
        self._tokens: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = False                       # the worker is about to sleep or sleeps
        # Held while a job is taken and run and its result queued: one job at a time, in
        # order, whichever thread runs it (see run_stale).
        self._run_lock = threading.Lock()
        self._results: deque = deque()           # (owner, done, result), in submission order
        self._finished = Event()                 # set after each append to _results
        self._thread: threading.Thread | None = None
        self._closed = False
        self.in_flight = 0
        # on_pending(): called on the CPU thread when settle() leaves jobs in flight (the board
        # ends a long slice, so the next ones are short and the completions seen soon).
        self.on_pending: Callable[[], None] | None = None
        self._closers: list[Callable[[], None]] = []   # native workers of this thread (on_close)

    # -- the CPU thread ---------------------------------------------------------------------------
    def submit(self, owner: Owner, work: Callable[[], Any], done: Callable[[Any], None],
               wake: bool = True) -> None:
        """Run work() on the worker; done(result) later runs on the CPU thread (poll/drain).
        `wake=False`: leave a sleeping worker asleep for now (settle() wakes it, unless the job
        ran here by then)."""
        if self._closed:
            raise RuntimeError(f"iothread {self.id} is closed")
        if self._thread is None:
            # Started on first use, daemon: a backend stuck in the kernel must not keep the
            # process alive after the machine is gone.
            self._thread = threading.Thread(target=self._worker, name=f"iothread-{self.id}", daemon=True)
            self._thread.start()
        self.in_flight += 1
        self._jobs.append((owner, work, done, monotonic_ns()))
        if wake:
            self._wake()

    def _wake(self) -> None:
        if self._idle and self._jobs:            # read after the append: see _worker
            self._idle = False
            self._tokens.put(None)

    def settle(self, wait_s: float | None) -> int:
        """At the end of a kick, on the CPU thread (inside the device's callback): complete
        what has finished. With `wait_s` (the driver polls the used ring rather than wait for an
        interrupt) and nothing finished, see that the oldest job finishes now: run it here if
        the worker has not started it (a lone job then needs no hand-over at all), else wait
        for it up to `wait_s`, and complete it. A polling guest waits for that request next;
        found done, it needs no slice boundary to see it (each costs more than a 4 KiB read).
        Jobs the worker finishes meanwhile complete at the next kick or slice boundary. Then
        the worker is woken for what is left, and if anything is, `on_pending` runs. Returns
        how many completed."""
        n = self.poll()
        if not n and wait_s is not None and self.in_flight:
            if not self.run_stale(0, limit=1):
                self.wait(wait_s)
            n = self.poll()
        self._wake()
        if self.in_flight and self.on_pending is not None:
            self.on_pending()
        return n

    def run_stale(self, age_ns: int, limit: int | None = None) -> int:
        """Run here the jobs the worker has left waiting for `age_ns` or more (at most `limit`
        of them): on a loaded host a woken thread may wait milliseconds for a core, while the
        CPU thread would only spin the guest's polling loop. Only when the worker is not inside
        a job, and in order, so jobs still run one at a time in submission order. Returns how
        many ran here."""
        jobs = self._jobs
        try:
            oldest = jobs[0][3]
        except IndexError:                       # none waiting (or the worker just took it)
            return 0
        if monotonic_ns() - oldest < age_ns:
            return 0
        if not self._run_lock.acquire(blocking=False):
            return 0                             # the worker is running one: it is not stalled
        n = 0
        try:
            while jobs and (limit is None or n < limit):
                self._run_one(jobs.popleft())
                n += 1
        finally:
            self._run_lock.release()
        if n:
            self._finished.set()
        return n

    @property
    def ready(self) -> bool:
        """Has a job finished whose done() has not run yet?"""
        return bool(self._results)

    @property
    def running(self) -> bool:
        """Is a job being run right now?"""
        return self._run_lock.locked()

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
                self.run_stale(0)                # whatever the worker has not started, now
                self.wait(0.01)
            self.poll()

    def on_close(self, fn: Callable[[], None]) -> None:
        """Call fn() when this thread closes: native workers a device runs for it (the
        virtio-blk I/O lane, blk_fast.py), which end with it."""
        self._closers.append(fn)

    def close(self) -> None:
        """Drain, then end the worker (and the native workers of on_close)."""
        self.drain()
        self._closed = True
        closers, self._closers = self._closers, []
        for fn in closers:
            fn()
        if self._thread is not None:
            self._tokens.put(None)               # a spare token is harmless: see _worker
            self._thread.join()
            self._thread = None

    # -- either thread, under the run lock -----------------------------------------------------------
    def _run_one(self, job) -> None:
        owner, work, done, _t = job
        try:
            result = work()
        except BaseException as e:               # noqa: BLE001 - handed to the CPU thread
            result = _Failure(e)
        self._results.append((owner, done, result))

    # -- the worker -------------------------------------------------------------------------------
    def _worker(self) -> None:
        tokens, jobs, lock, finished = self._tokens, self._jobs, self._run_lock, self._finished
        poll_ns, clock, yield_ = self.poll_ns, monotonic_ns, os.sched_yield
        last = clock()                           # when the worker last had work
        while True:
            if not jobs and not self._closed and clock() - last < poll_ns:
                yield_()                         # polling: no token needed, the GIL is let go
                continue
            # Say "idle" before looking at the queue: a job appended before the look is seen,
            # one appended after it finds the flag set and sends a token.
            self._idle = True
            if not jobs:
                if self._closed:
                    return
                tokens.get()
                last = clock()
                continue
            self._idle = False
            with lock:
                if jobs:                         # else the CPU thread ran it (run_stale)
                    self._run_one(jobs.popleft())
            finished.set()
            last = clock()
