"""Reverse execution for the debugger: in-memory checkpoints plus deterministic re-execution.

While a debugger is attached, every call the debug target makes into the board's run loop is
recorded as a `Call` ('step': `Machine.step()`, 'run': `Machine.run(max_instructions)`) with
where it started and ended: (instructions retired, virtual clock). Checkpoints
(`Machine.save_state` without RAM, plus RAM kept here as pages shared with the previous
checkpoint, plus the disks' undo logs) are taken when the history starts, every `interval`
instructions while the guest runs, after every run that ended at a stop (a breakpoint or
watchpoint hit, a device breakpoint, ^C: such a state may lie after an interrupt delivery that
retired no instruction, so it is kept rather than re-derived) and whenever the debugger changes
the machine (a register or memory write: re-execution could not reproduce it).

A point of the history is (call index, instructions, clock): the state after the calls before
it and part of that call. Going to a point loads the last checkpoint before it and issues the
same calls again: virtual time comes from retired instructions, so the guest does exactly what
it did. A run is re-issued up to the instruction count it reached and then, while the CPU
halts, timer event by timer event up to the clock it reached (`run(max_instructions)` counts
those events too). Breakpoints are taken out of the CPU while re-executing.

* reverse-stepi goes to the last point with one instruction fewer: a call boundary when there
  is one (what the debugger saw after a step), else the first moment that count was reached
  inside a run.
* reverse-continue re-executes checkpoint interval after interval, newest first, with
  breakpoints, watchpoints and device breakpoints active, noting each hit; the last hit before
  the current point is reached by doing the same again up to that hit. With none left, the
  machine goes to the oldest checkpoint and the answer is "no more history".
* Going forward from a past point re-executes for real and drops the recorded future (a
  checkpoint first keeps the point itself). Console output is never sent twice: the bytes the
  guest wrote are counted along the history, and only those beyond what the host already got
  are passed on.

Memory: RAM pages unchanged since the previous checkpoint are shared (all-zero pages are one
page), so a checkpoint costs its changed pages; RAM is compared with the last checkpoint's
pages in place. The oldest checkpoints go when the pages kept pass `max_bytes` (the history
then starts later). Periodic checkpoints are spaced further apart (up to MAX_STRETCH
intervals) when comparing a big RAM would cost more than MAX_OVERHEAD of the running time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .target import (Stop, STOP_BREAKPOINT, STOP_DEVICE, STOP_LIMIT, STOP_STEP, STOP_WATCHPOINT)

PAGE = 4096
INTERVAL = 4_000_000           # instructions between checkpoints while the guest runs
NEAR = 200_000                 # a replay longer than this leaves a checkpoint this close behind
MAX_BYTES = 512 << 20          # RAM pages kept by all checkpoints before the oldest go
MAX_OVERHEAD = 0.25            # periodic checkpoints may cost this share of the running time...
MAX_STRETCH = 10               # ...by spacing them up to this many intervals apart
ZERO_PAGE = bytes(PAGE)        # untouched RAM: one shared page

HIT_KINDS = (STOP_BREAKPOINT, STOP_WATCHPOINT, STOP_DEVICE)


@dataclass
class Call:
    kind: str                  # 'step' | 'run'
    start: tuple[int, int]     # (instructions, clock) before
    end: tuple[int, int]       # (instructions, clock) after
    stop: str = ""             # why it ended (a Stop kind)


@dataclass
class Checkpoint:
    index: int                 # the call the machine was before (or inside)
    at: tuple[int, int]        # (instructions, clock)
    state: object              # savevm.MachineState without RAM (with the disks' undo logs)
    pages: tuple               # RAM, one bytes object per page (shared with other checkpoints)
    new_bytes: int             # bytes of pages this checkpoint added
    output: tuple              # bytes the guest had written to each console by then


class OutputGate:
    """The console output stream during a recorded session: counts what the guest writes along
    the history and passes on only what goes beyond what the host already received."""

    def __init__(self, inner):
        self.inner = inner
        self.produced = 0          # bytes written by the guest at this point of the history
        self.sent = 0              # bytes the host got

    def write(self, data) -> int:
        n = len(data)
        skip = min(n, max(0, self.sent - self.produced))
        self.produced += n
        if skip < n:
            self.inner.write(bytes(data[skip:]))
            self.sent = self.produced
        return n

    def flush(self) -> None:
        self.inner.flush()

    def __getattr__(self, name):
        return getattr(self.inner, name)


class History:
    """The recorded history of one machine under a debug target (`MachineTarget`)."""

    def __init__(self, target, interval: int = INTERVAL, max_bytes: int = MAX_BYTES,
                 max_overhead: float | None = MAX_OVERHEAD):
        self.target = target
        self.machine = target.machine
        self.interval = interval
        self.max_bytes = max_bytes
        self.max_overhead = max_overhead
        self._spacing = interval          # the interval stretched for big, slow-to-copy RAM
        self._ran = [0, 0.0]              # instructions run and host seconds since the last one
        self.calls: list[Call] = []
        self.checkpoints: list[Checkpoint] = []
        self.point: tuple[int, int, int] = (0, 0, 0)     # (call index, instructions, clock)
        self.replaying = False
        self._pages: tuple | None = None                 # RAM at the last checkpoint taken or loaded
        self._bytes = 0
        # Every console the guest writes to: the UART and the debug console (0x402).
        self.gates: list[tuple[object, OutputGate]] = []
        consoles = [getattr(self.machine, "uart", None)]
        consoles += [d for d in self.machine.devices.values() if type(d).__name__ == "DebugCon"]
        for dev in consoles:
            if dev is not None and dev not in [g[0] for g in self.gates] \
                    and getattr(dev, "output", None) is not None:
                gate = OutputGate(dev.output)
                dev.output = gate
                self.gates.append((dev, gate))

    # -- where we are ----------------------------------------------------------------------------
    def _now(self) -> tuple[int, int]:
        return (self.machine.instructions, self.machine.clock.now)

    @property
    def at_end(self) -> bool:
        return self.point[0] == len(self.calls)

    def start(self) -> None:
        """Begin the history here (a debugger attached or the machine was reset)."""
        self.clear()
        self.point = (0, *self._now())
        self._checkpoint()

    def close(self) -> None:
        """Free the checkpoints and stop counting console output."""
        self.clear()
        for dev, gate in self.gates:
            if dev.output is gate:
                dev.output = gate.inner

    def clear(self) -> None:
        for ck in self.checkpoints:
            ck.state.release()
        self.checkpoints.clear()
        self.calls.clear()
        self._pages = None
        self._bytes = 0

    # -- checkpoints -----------------------------------------------------------------------------
    def _capture_pages(self) -> tuple[tuple, int]:
        """RAM as pages, sharing every page equal to the previous checkpoint's. The comparison
        runs in place (mmap.find of a page in a window of its own size is one memcmp): no copy
        of RAM is made."""
        buf = self.machine.mem.buf
        size = len(buf)
        ref = self._pages
        if ref is None or len(ref) != -(-size // PAGE):
            pages = []
            new = 0
            for off in range(0, size, PAGE):
                page = buf[off:off + PAGE]
                if page == ZERO_PAGE:
                    page = ZERO_PAGE
                else:
                    new += len(page)
                pages.append(page)
            pages = tuple(pages)
        else:
            find = buf.find
            pages = list(ref)
            new = 0
            for n, page in enumerate(ref):
                off = n * PAGE
                if find(page, off, off + len(page)) != off:
                    pages[n] = buf[off:off + PAGE]
                    new += len(page)
            pages = tuple(pages)
        self._pages = pages
        return pages, new

    def _checkpoint(self) -> Checkpoint:
        """A checkpoint at the current point (replacing one already there)."""
        index, at = self.point[0], self.point[1:]
        keep = [c for c in self.checkpoints if (c.index, c.at) == (index, at)]
        for c in keep:
            c.state.release()
            self.checkpoints.remove(c)
        pages, new = self._capture_pages()
        from .. import savevm
        state = savevm.capture(self.machine, ram=False)
        ck = Checkpoint(index, at, state, pages, new, tuple(g.produced for _, g in self.gates))
        self.checkpoints.append(ck)
        self.checkpoints.sort(key=lambda c: (c.index, c.at))
        self._bytes += new
        while self._bytes > self.max_bytes and len(self.checkpoints) > 1:
            old = self.checkpoints.pop(0)
            old.state.release()
            self._bytes -= old.new_bytes
        return ck

    def _restore(self, ck: Checkpoint) -> None:
        from .. import savevm
        buf = self.machine.mem.buf
        find = buf.find
        for n, page in enumerate(ck.pages):          # only the pages that differ are written
            off = n * PAGE
            if find(page, off, off + len(page)) != off:
                buf[off:off + len(page)] = page
        self._pages = ck.pages                        # the next checkpoint compares with these
        savevm.apply(self.machine, ck.state)
        for (_, gate), produced in zip(self.gates, ck.output):
            gate.produced = produced
        self.target.state_changed()

    # -- recording (called by the target around each run-loop call) ------------------------------
    def _in_step(self) -> None:
        """The machine is where the history left it; else something replaced it behind the
        history's back (a monitor `loadvm`): the history starts again from here."""
        if self._now() != self.point[1:]:
            self.start()

    def before_forward(self) -> None:
        """The guest is about to run forward for real: from a past point, the recorded future
        goes (the point itself is kept as a checkpoint)."""
        self._in_step()
        if self.at_end:
            return
        index, instr, clock = self.point
        for c in [c for c in self.checkpoints if (c.index, c.at) > (index, (instr, clock))]:
            c.state.release()
            self.checkpoints.remove(c)
            self._bytes -= c.new_bytes
        call = self.calls[index]
        del self.calls[index:]
        if (instr, clock) != call.start:
            self.calls.append(Call(call.kind, call.start, (instr, clock)))
        self.point = (len(self.calls), instr, clock)
        self._checkpoint()

    def record(self, kind: str, start: tuple[int, int], stop_kind: str, seconds: float = 0.0) -> None:
        """A call into the run loop has been made (taking `seconds` of host time): note it,
        and checkpoint after a stop or when the interval since the last checkpoint has passed."""
        now = self._now()
        self.calls.append(Call(kind, start, now, stop_kind))
        self.point = (len(self.calls), *now)
        self._ran[0] += now[0] - start[0]
        self._ran[1] += seconds
        last = self.checkpoints[-1].at[0] if self.checkpoints else -self.interval
        if kind == "run" and stop_kind not in (STOP_LIMIT, STOP_STEP):
            self._checkpoint()
        elif now[0] - last >= self._spacing:
            t0 = time.perf_counter()
            self._checkpoint()
            self._stretch(time.perf_counter() - t0)

    def _stretch(self, cost: float) -> None:
        """Space periodic checkpoints so that taking them costs at most `max_overhead` of the
        time the guest runs (a big RAM takes long to compare): where they fall changes nothing
        the guest sees, only how far a reverse step may have to re-execute."""
        instructions, seconds = self._ran
        self._ran = [0, 0.0]
        if self.max_overhead is None or seconds <= 0 or instructions <= 0:
            return
        wanted = int(instructions / seconds * cost / self.max_overhead)
        self._spacing = min(self.interval * MAX_STRETCH, max(self.interval, wanted))

    def budget(self) -> int:
        """Instructions until the next periodic checkpoint (resume() runs in such chunks)."""
        last = self.checkpoints[-1].at[0] if self.checkpoints else 0
        return max(1, self._spacing - (self.machine.instructions - last))

    def modified(self) -> None:
        """The debugger changed registers or memory: re-execution cannot reproduce that, so the
        future goes and the changed state becomes a checkpoint."""
        self.before_forward()
        self._checkpoint()

    # -- re-execution ----------------------------------------------------------------------------
    def _checkpoint_for(self, index: int, at: tuple[int, int]) -> Checkpoint | None:
        best = None
        for c in self.checkpoints:
            if (c.index, c.at) <= (index, at):
                best = c
        return best

    def _run_to(self, instr: int, clock: int | None) -> None:
        """Inside a run: on to `instr` instructions (the first moment there), then while the CPU
        halts, event by event up to `clock`."""
        m = self.machine
        while m.instructions < instr:
            before = self._now()
            m.run(max_instructions=instr - m.instructions)
            if m.stop_reason is not None and m.stop_reason.kind not in ("limit", "interrupt"):
                break
            if self._now() == before:
                break
        while clock is not None and m.clock.now < clock and m._halted:
            m.run(max_instructions=1)
            if m.instructions != instr:
                break

    def _issue(self, call: Call, to: tuple[int, int | None]) -> None:
        m = self.machine
        if call.kind == "step" and self._now() == call.start:
            if to[0] >= call.end[0] and (to[1] is None or to[1] >= call.end[1]):
                m.step()
            return
        self._run_to(*to)

    def goto(self, index: int, instr: int, clock: int | None) -> None:
        """Become the machine at that point of the history (clock None: the first moment the
        call reached `instr`)."""
        key_clock = clock if clock is not None else -1
        ck = self._checkpoint_for(index, (instr, key_clock))
        if ck is None:
            ck = self.checkpoints[0]
            index, instr, clock = ck.index, *ck.at
        cpu_bps = self._lift_breakpoints()
        self.replaying = True
        try:
            self._restore(ck)
            k = ck.index
            while k < index:
                self._issue(self.calls[k], self.calls[k].end)
                k += 1
            if k < len(self.calls) and (instr, clock) != self._now():
                start_instr = self.machine.instructions
                if self.calls[k].kind == "run" and instr - start_instr > NEAR:
                    # Leave a checkpoint close behind the target: the next reverse step (gdb
                    # sends many in a row) re-executes little.
                    self._run_to(instr - NEAR // 2, None)
                    self.point = (k, *self._now())
                    self._checkpoint()
                self._issue(self.calls[k], (instr, clock))
        finally:
            self.replaying = False
            self._restore_breakpoints(cpu_bps)
        self.point = (index, *self._now())

    def _lift_breakpoints(self) -> list[int]:
        bps = sorted(self.target._breakpoints)
        for a in bps:
            self.machine.cpu.remove_breakpoint(a)
        return bps

    def _restore_breakpoints(self, bps: list[int]) -> None:
        for a in bps:
            self.machine.cpu.add_breakpoint(a)

    def begin_stop(self) -> Stop:
        self.goto(self.checkpoints[0].index, *self.checkpoints[0].at)
        return Stop(STOP_STEP, pc=self.target.pc(), extra={"replaylog": "begin"})

    # -- the reverse commands --------------------------------------------------------------------
    def reverse_step(self) -> Stop:
        self._in_step()
        index, instr, clock = self.point
        first = self.checkpoints[0]
        if (index, (instr, clock)) <= (first.index, first.at) or instr == 0:
            return self.begin_stop()
        target = instr - 1
        if self.point[1:] == self._now() and 0 < index <= len(self.calls):
            last = self.calls[index - 1]
            if last.start[0] == instr and last.stop not in ("", STOP_LIMIT, STOP_STEP) \
                    and (index - 1, last.start) >= (first.index, first.at):
                # The last run retired nothing yet changed the machine (a fatal fault, an
                # interrupt delivered before a breakpoint): going back undoes that first.
                self.goto(index - 1, *last.start)
                return Stop(STOP_STEP, pc=self.target.pc())
        # The last point before this one with one instruction fewer: a call boundary when one
        # is there, else the first moment inside a run.
        for i in range(min(index, len(self.calls) - 1), -1, -1):
            call = self.calls[i]
            hi = instr if i == index else call.end[0]
            if call.start[0] == target:
                if (i, call.start) < (first.index, first.at):
                    return self.begin_stop()
                self.goto(i, *call.start)
                return Stop(STOP_STEP, pc=self.target.pc())
            if call.start[0] < target <= hi:
                if (i, (target, 1 << 62)) < (first.index, first.at):
                    return self.begin_stop()
                self.goto(i, target, None)
                return Stop(STOP_STEP, pc=self.target.pc())
            if call.start[0] < target:
                break
        return self.begin_stop()

    def reverse_continue(self) -> Stop:
        """Back to the last breakpoint, watchpoint or device breakpoint hit before this point."""
        self._in_step()
        here = (self.point[0], self.point[1:])
        cks = [c for c in self.checkpoints if (c.index, c.at) < here]
        for n in range(len(cks) - 1, -1, -1):
            ck = cks[n]
            end = (cks[n + 1].index, cks[n + 1].at) if n + 1 < len(cks) else here
            hits = self._scan(ck, end, None)
            if hits:
                return self._scan(ck, end, hits)
        return self.begin_stop()

    def _scan(self, ck: Checkpoint, end: tuple, stop_at: int | None):
        """Re-execute from `ck` to `end` with every kind of breakpoint active. Counting hits
        (stop_at None): returns how many; else stops at hit number `stop_at` and returns it."""
        target = self.target
        self.replaying = True
        hits = 0
        try:
            self._restore(ck)
            target.refresh_watchpoints()
            if target.pc() in target._breakpoints and (ck.index, ck.at) != end:
                hits += 1
                if hits == stop_at:
                    self.point = (ck.index, *self._now())
                    return Stop(STOP_BREAKPOINT, pc=target.pc())
            k = ck.index
            self.replaying = "scan"
            while k < len(self.calls) and (k, self._now()) < end:
                call = self.calls[k]
                goal = call.end if k < end[0] else end[1]
                if call.kind == "step" and self._now() == call.start:
                    self.machine.step()
                    target.clear_pending()
                    if target.pc() in target._breakpoints or target.watch_changed():
                        if (k + 1, self._now()) < end:
                            hits += 1
                            if hits == stop_at:
                                self.point = (k + 1, *self._now())
                                return self._hit_stop()
                else:
                    while self.machine.instructions < goal[0]:
                        stop = target.resume(lambda: None, goal[0] - self.machine.instructions,
                                             record=False)
                        if stop.kind in HIT_KINDS:
                            hits += 1
                            if hits == stop_at:
                                self.point = (k, *self._now())
                                return stop
                        elif stop.kind != STOP_LIMIT:
                            break
                    self._run_to(goal[0], goal[1])
                if k == end[0] or self._now() != call.end:
                    break           # at the end, or (never expected) off the recorded path
                k += 1
            return hits
        finally:
            self.replaying = False

    def _hit_stop(self) -> Stop:
        pc = self.target.pc()
        if pc in self.target._breakpoints:
            return Stop(STOP_BREAKPOINT, pc=pc)
        addr, kind = self.target.last_watch
        return Stop(STOP_WATCHPOINT, pc=pc, addr=addr, watch_kind=kind)
