"""Guest block I/O on this machine against QEMU TCG, in one run: the bundled guest's `mode=bench`
(sequential writes and reads of 64 KiB and 1 MiB requests, random 4 KiB reads, one request at a
time and 16 in flight) on both emulators with the same guest, the same options and same-sized
fresh images, plus the host's own page-cache bandwidth on the same file system as the ceiling,
and the wall time of a boot-initialise-exit run with no I/O (`tests=init`).

    python bench/guest_io.py [--mib 256] [--ops 4096] [--runs 1] [--boot-runs 5] [--quick]
                             [--dir DIR] [--qemu PATH | --no-qemu] [--raw] [--iothread]
                             [--icount off]

`--iothread` adds two columns: both emulators again with `-object iothread,id=io0` and the
device's `iothread=io0` (requests on an I/O thread); the target check then reads their ratio.
`--boot-runs 0` skips the boot timing. `--icount off` runs ours in its fast mode (QEMU's TCG
counts no instructions either); by default ours runs in its exact, deterministic mode.

Not a test: the figures depend on the host and its load; the ratio ours/QEMU, measured in the
same run on the same host, is what matters. Every figure is host wall time (see `phase_times`):
the guest's own TSC ticks are printed as a cross-check only, because this machine's TSC is
virtual (1 GHz of retired instructions), so ticks measure guest instructions, not elapsed time.

To time the I/O alone, both emulators run a copy of the guest built with one change: bench.c
prints a "# bench mark" line just before each of its two TSC reads, so the host sees when a
case's requests start and end. Without it, the host could only time from one result line to
the next, which also counts the guest zeroing its buffers (heap_alloc's `rep stosb`, up to 16
MiB per case) before the clock starts. `--pristine` runs the unchanged guest that way.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine.toolchain import ensure_built  # noqa: E402

MiB = 1 << 20
RAM = "128"
TIMEOUT = 3600                   # seconds: a guard against a hung emulator

BENCH_RE = re.compile(r"bench (\w+) bs=(\d+) qd=(\d+) bytes=(\d+) ops=(\d+) ticks=(\d+)")
CLOCK_RE = re.compile(r"bench clock=tsc tsc_khz=(\d+)")
MARK = "# bench mark"
# The wrapper the marked guest copy uses instead of rdtsc() in bench.c (see the module comment).
MARK_WRAPPER = (
    "\nstatic uint64_t bench_marked_rdtsc(void)\n"
    "{\n"
    "    kprintf(\"" + MARK + "\\n\");\n"
    "    return rdtsc();\n"
    "}\n")
# The order the guest runs its cases in (guest/bench.c).
CASES = [(op, bs, qd) for op in ("seqwrite", "seqread") for bs in (65536, MiB) for qd in (1, 16)]
CASES += [("randread", 4096, 1), ("randread", 4096, 16)]
# Targets, as ratio ours / QEMU: (op, bs, qd or None for every depth) -> minimum.
TARGETS = {("seqwrite", MiB, None): 1.0, ("seqread", MiB, None): 1.0,
           ("randread", 4096, 1): 2.0}


# --------------------------------------------------------------------------- running a guest

@dataclass
class Phase:
    op: str
    bs: int
    qd: int
    nbytes: int
    ops: int
    ticks: int
    wall: float                  # host seconds the requests took
    setup: float                 # host seconds from the previous case to the first request


@dataclass
class GuestRun:
    status: int
    total: float                 # seconds from spawn to exit
    tsc_khz: int = 0
    calibration: float = 0.0     # seconds the guest spent measuring its TSC against the PIT
    phases: dict[tuple[str, int, int], Phase] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)
    stderr: str = ""


def phase_times(lines: list[tuple[float, str]]) -> tuple[dict, int, float]:
    """Turns timestamped serial lines into phases. With the marked guest, a case's requests
    run between its two "# bench mark" lines. Without marks, the host can only time from the
    previous result line to this one (the guest starts the next case right after printing),
    which includes setting up the case. Host wall time is what is reported: it is the one
    clock both emulators share."""
    phases: dict[tuple[str, int, int], Phase] = {}
    tsc_khz, calibration, prev, virtio_at = 0, 0.0, None, None
    marks: list[float] = []
    for t, line in lines:
        if line == MARK:
            marks.append(t)
            continue
        if line.startswith("# virtio: "):
            virtio_at = t
        m = CLOCK_RE.fullmatch(line)
        if m:
            tsc_khz = int(m.group(1))
            if virtio_at is not None:
                calibration = t - virtio_at
        m = BENCH_RE.fullmatch(line)
        if m and prev is not None:
            op, bs, qd, nbytes, ops, ticks = m.group(1), *map(int, m.groups()[1:])
            if len(marks) >= 2:
                wall, setup = marks[-1] - marks[-2], marks[-2] - prev
            else:
                wall, setup = t - prev, 0.0
            phases[(op, bs, qd)] = Phase(op, bs, qd, nbytes, ops, ticks, wall, setup)
        if line.startswith("bench ") or line.startswith("# bench span="):
            prev = t
            marks.clear()
    return phases, tsc_khz, calibration


def read_lines(fd: int) -> list[tuple[float, str]]:
    """Every line from `fd` until EOF, each stamped with the host time its newline arrived
    (unbuffered reads: a buffered reader would stamp lines of one chunk alike)."""
    lines: list[tuple[float, str]] = []
    pending = b""
    while True:
        chunk = os.read(fd, 65536)
        now = time.perf_counter()
        if not chunk:
            break
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            lines.append((now, raw.decode("utf-8", "replace").rstrip("\r")))
    if pending:
        lines.append((time.perf_counter(), pending.decode("utf-8", "replace")))
    return lines


def run_guest(cmd: list[str], env: dict[str, str] | None = None) -> GuestRun:
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                env=env, bufsize=0)
        lines = read_lines(proc.stdout.fileno())
        status = proc.wait(TIMEOUT)
        total = time.perf_counter() - t0
        err.seek(0)
        errors = err.read().decode("utf-8", "replace")
    phases, tsc_khz, calibration = phase_times(lines)
    out = [l for _, l in lines] + ([f"[stderr] {errors.strip()}"] if errors.strip() else [])
    return GuestRun(status, total, tsc_khz, calibration, phases, out, errors)


def guest_options(guest: Path, image: Path, append: str, iothread: bool = False) -> list[str]:
    """The options both emulators get (QEMU also gets -nodefaults -accel tcg). `iothread`: the
    device runs its requests on an I/O thread (-object iothread, iothread=) on both."""
    return ["-display", "none", "-serial", "stdio", "-no-reboot", "-m", RAM,
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-kernel", str(guest), "-append", append,
            *(["-object", "iothread,id=io0"] if iothread else []),
            "-drive", f"file={image},format=raw,if=none,id=d0",
            "-device", "virtio-blk-pci,drive=d0" + (",iothread=io0" if iothread else "")]


class Emulators:
    """How to start each emulator. Ours runs the interpreter directly (not through a shell
    shim) with compiled bytecode cached outside the tree, as an installed package would."""

    def __init__(self, qemu: str | None, workdir: Path, icount: str | None = None):
        self.qemu = qemu
        self.ours_options = ["-icount", icount] if icount else []
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), self.env.get("PYTHONPATH"))
                                                 if p)
        self.env["PYTHONDONTWRITEBYTECODE"] = ""
        self.env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")

    def names(self, iothread: bool = False) -> list[str]:
        base = ["ours"] + (["qemu"] if self.qemu else [])
        return base + [f"{n}-io" for n in base] if iothread else base

    def run(self, name: str, options: list[str]) -> GuestRun:
        if name.split("-")[0] == "ours":
            return run_guest([sys.executable, "-m", "machine", *self.ours_options, *options], self.env)
        return run_guest([self.qemu, "-nodefaults", "-accel", "tcg", *options])


def build_marked_guest(workdir: Path) -> Path | None:
    """A copy of guest/ whose bench.c prints a mark before each TSC read (see the module
    comment), built with the guest's own Makefile; None if bench.c no longer fits the edit."""
    src = ROOT / "guest"
    dst = workdir / "guest"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("out"))
    bench_c = dst / "bench.c"
    text = bench_c.read_text()
    anchor = '#include "selftest.h"\n'
    if anchor not in text or text.count("rdtsc()") < 2:
        return None
    head, tail = text.split(anchor, 1)
    bench_c.write_text(head + anchor + MARK_WRAPPER + tail.replace("rdtsc()", "bench_marked_rdtsc()"))
    proc = subprocess.run(["make", "-C", str(dst), "out/guest.elf"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        print(f"building the marked guest failed:\n{proc.stdout}", file=sys.stderr)
        return None
    return dst / "out" / "guest.elf"


def fresh_image(path: Path, nbytes: int) -> Path:
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(nbytes)
    return path


# --------------------------------------------------------------------------- the host ceiling

def host_ceiling(path: Path, span: int, ops: int) -> dict[tuple[str, int], float]:
    """The host's own page-cache bandwidth on a file of the same size in the same directory:
    pwritev/preadv loops from Python with the guest's request sizes; bytes/s, or requests/s
    for the random 4 KiB reads. One request at a time: it is the ceiling for either depth."""
    fresh_image(path, span)
    fd = os.open(path, os.O_RDWR)
    result: dict[tuple[str, int], float] = {}
    try:
        for bs in (65536, MiB):
            buf = bytearray(os.urandom(bs))
            n = span // bs
            t0 = time.perf_counter()
            for i in range(n):
                os.pwritev(fd, [buf], i * bs)
            result[("seqwrite", bs)] = n * bs / (time.perf_counter() - t0)
        for bs in (65536, MiB):
            buf = bytearray(bs)
            n = span // bs
            t0 = time.perf_counter()
            for i in range(n):
                os.preadv(fd, [buf], i * bs)
            result[("seqread", bs)] = n * bs / (time.perf_counter() - t0)
        buf = bytearray(4096)
        rng = random.Random(1)
        slots = span // 4096
        offsets = [rng.randrange(slots) * 4096 for _ in range(ops)]
        t0 = time.perf_counter()
        for off in offsets:
            os.preadv(fd, [buf], off)
        result[("randread", 4096)] = ops / (time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return result


# --------------------------------------------------------------------------- reporting

def rate(phase: Phase) -> float | None:
    """MB/s (10^6 bytes) for sequential cases, IOPS for random ones; host wall time. None when
    the case was too short to time (both marks arrived in one read)."""
    if phase.wall <= 0:
        return None
    if phase.op == "randread":
        return phase.ops / phase.wall
    return phase.nbytes / phase.wall / 1e6


def tick_rate(phase: Phase, tsc_khz: int) -> float | None:
    """The same figure by the guest's own TSC, or None if it could not calibrate."""
    if not tsc_khz or not phase.ticks:
        return None
    secs = phase.ticks / (tsc_khz * 1000.0)
    return phase.ops / secs if phase.op == "randread" else phase.nbytes / secs / 1e6


def target_for(op: str, bs: int, qd: int) -> float | None:
    return TARGETS.get((op, bs, qd), TARGETS.get((op, bs, None)))


def fmt(value: float | None, width: int = 9) -> str:
    if value is None:
        return "-".rjust(width)
    return (f"{value:.0f}" if value >= 100 else f"{value:.2f}").rjust(width)


def print_table(results: dict[str, list[GuestRun]], ceiling: dict, emulators: list[str]) -> None:
    """One row per case: each emulator's median, then ours/qemu (and, with --iothread, ours-io
    over qemu-io: both with an I/O thread), the target check on the last ratio, the host."""
    pairs = [(o, q) for o, q in (("ours", "qemu"), ("ours-io", "qemu-io"))
             if o in emulators and q in emulators]
    heads = "".join(f"{n:>10}" for n in emulators) + "".join(f"{o + '/' + q:>16}"
                                                            for o, q in pairs)
    print()
    print(f"{'case':<22}{'unit':>5}{heads}  {'target':<10}"
          f"{'host':>10}   (host wall time; median of {len(results['ours'])} run(s))")
    for op, bs, qd in CASES:
        values = {}
        for name in emulators:
            got = [rate(run.phases[(op, bs, qd)]) for run in results[name]
                   if (op, bs, qd) in run.phases]
            got = [r for r in got if r is not None]
            values[name] = statistics.median(got) if got else None
        ratios = [values[o] / values[q] if values[o] and values[q] else None for o, q in pairs]
        ratio = ratios[-1] if ratios else None
        target = target_for(op, bs, qd)
        mark = ""
        if target is not None and ratio is not None:
            mark = "ok" if ratio >= target else "MISS"
        host = ceiling.get((op, bs))
        if host is not None and op != "randread":
            host /= 1e6
        unit = "IOPS" if op == "randread" else "MB/s"
        label = f"{op} {bs // 1024 if bs < MiB else bs // MiB}{'K' if bs < MiB else 'M'} qd={qd}"
        goal = f">={target:g} {mark}" if target else ""
        cells = "".join(fmt(values[n], 10) for n in emulators) + "".join(fmt(r, 16) for r in ratios)
        print(f"{label:<22}{unit:>5}{cells}  {goal:<10}{fmt(host, 10)}")


def print_clock_check(results: dict[str, list[GuestRun]]) -> None:
    """Guest TSC time against host wall time over all cases of the first run."""
    print()
    print("guest clock vs host wall time (sum over the cases of the first run):")
    for name, runs in results.items():
        run = runs[0]
        if not run.phases:
            continue
        wall = sum(p.wall for p in run.phases.values())
        ticks = sum(p.ticks for p in run.phases.values())
        guest = ticks / (run.tsc_khz * 1000.0) if run.tsc_khz else float("nan")
        setup = sum(p.setup for p in run.phases.values())
        print(f"  {name:<7} tsc_khz={run.tsc_khz:<8} guest {guest:7.3f} s  host {wall:7.3f} s  "
              f"guest/host {guest / wall:5.2f} | host time outside the requests: TSC "
              f"calibration {run.calibration:5.2f} s, buffer set-up {setup:5.2f} s, "
              f"whole run {run.total:6.2f} s")


# --------------------------------------------------------------------------- where the time goes

# Host-side work timed by wrapping these methods (--breakdown): (module, class, method, label).
# The wrappers cost about a microsecond per call; a missing name is skipped.
BREAKDOWN_POINTS = [
    ("machine.virtio.pci", "ModernBar", "write", "modern BAR write: the whole notify path"),
    ("machine.virtio.pci", "LegacyBar", "write", "legacy BAR write: the whole notify path"),
    ("machine.virtio.blk", "VirtioBlk", "handle_queue", "  virtio-blk handle_queue"),
    ("machine.virtio.blk_fast", "FastPath", "serve", "    native request path (walk, I/O, used ring)"),
    ("machine.block.raw", "RawImage", "readv", "    preadv into guest RAM"),
    ("machine.block.raw", "RawImage", "writev", "    pwritev from guest RAM"),
    ("machine.cpu", "Cpu", "_on_host_write", "    host-write bookkeeping (note the range)"),
    ("unicorn", "Uc", "ctl_remove_cache", "    translated-code invalidation (binding)"),
    ("machine.cpu", "Cpu", "_drop_code_in", "  translated-code invalidation at callback exit"),
    ("machine.memory", "IoSpace", "read", "port IN, every device"),
    ("machine.memory", "IoSpace", "write", "port OUT, every device"),
]


def breakdown_child(argv: list[str]) -> int:
    """Runs this machine in this process, as `python -m machine ARGV` would, with the methods
    of BREAKDOWN_POINTS wrapped by timers; prints "# breakdown calls seconds label" lines on
    stderr at the end."""
    import importlib
    totals: dict[str, list] = {}
    clock = time.perf_counter

    def wrap(cls, name: str, label: str) -> None:
        orig = getattr(cls, name)
        cell = totals.setdefault(label, [0, 0.0])

        def timed(*a, **k):
            t = clock()
            try:
                return orig(*a, **k)
            finally:
                cell[0] += 1
                cell[1] += clock() - t
        setattr(cls, name, timed)

    for module, cls_name, method, label in BREAKDOWN_POINTS:
        try:
            cls = getattr(importlib.import_module(module), cls_name)
            getattr(cls, method)
        except (ImportError, AttributeError):
            continue
        wrap(cls, method, label)
    from machine.cli import main as machine_main
    status = machine_main(argv)
    for label, (calls, secs) in totals.items():
        print(f"# breakdown {calls} {secs:.6f} {label}", file=sys.stderr)
    return status


def run_breakdown(emus: Emulators, guest: Path, workdir: Path, mib: int, ops: int) -> None:
    image = fresh_image(workdir / "breakdown.img", mib * MiB)
    options = guest_options(guest, image, f"mode=bench bench_mib={mib} bench_ops={ops}")
    run = run_guest([sys.executable, str(Path(__file__).resolve()), "--breakdown-child",
                     *emus.ours_options, *options], emus.env)
    image.unlink()
    print(f"\nthis machine, one run with timers around the device path ({run.total:.2f} s):")
    for (op, bs, qd), p in run.phases.items():
        print(f"  {op:<9} bs={bs:<8} qd={qd:<3} {p.wall:7.3f} s  {p.wall / p.ops * 1e6:8.1f} us "
              f"per request  (buffer set-up before it {p.setup:.3f} s)")
    print(f"  TSC calibration (guest spinning on port 0x61): {run.calibration:.2f} s")
    requests = sum(p.ops for p in run.phases.values())
    print(f"  {'':<46}{'calls':>10}{'seconds':>10}{'us/call':>10}{'us/request':>12}")
    for line in run.stderr.splitlines():
        m = re.fullmatch(r"# breakdown (\d+) ([\d.]+) (.*)", line)
        if m and int(m.group(1)):
            calls, secs, label = int(m.group(1)), float(m.group(2)), m.group(3)
            print(f"  {label:<46}{calls:>10}{secs:>10.3f}{secs / calls * 1e6:>10.2f}"
                  f"{secs / requests * 1e6:>12.2f}")
    print(f"  ({requests} requests in all; us/request spreads each total over all of them)")


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=256, help="span of the sequential runs (MiB)")
    ap.add_argument("--ops", type=int, default=4096, help="random 4 KiB reads per depth")
    ap.add_argument("--runs", type=int, default=1, help="I/O runs per emulator (median)")
    ap.add_argument("--boot-runs", type=int, default=5, help="boot-init-exit runs (median)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: --mib 16 --ops 512 --runs 1 --boot-runs 3")
    ap.add_argument("--dir", type=Path, default=None,
                    help="where the images go (default: a temporary directory)")
    ap.add_argument("--qemu", default=shutil.which("qemu-system-x86_64"),
                    help="the QEMU binary (default: qemu-system-x86_64 on PATH)")
    ap.add_argument("--no-qemu", action="store_true", help="run this machine only")
    ap.add_argument("--raw", action="store_true", help="print every guest's bench lines")
    ap.add_argument("--pristine", action="store_true",
                    help="run the unchanged guest, timing from one result line to the next")
    ap.add_argument("--iothread", action="store_true",
                    help="also run both emulators with the device's requests on an I/O thread "
                         "(-object iothread,id=io0 and iothread=io0): columns ours-io, qemu-io")
    ap.add_argument("--icount", default=None,
                    help="this machine's -icount: 'off' runs it in the fast mode, as QEMU runs TCG "
                         "without -icount (default: the exact mode, deterministic)")
    ap.add_argument("--breakdown", action="store_true",
                    help="also run this machine once with timers around the device path")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--breakdown-child"]:
        return breakdown_child(argv[1:])
    args = ap.parse_args(argv)
    if args.quick:
        args.mib, args.ops, args.runs, args.boot_runs = 16, 512, 1, 3
    qemu = None if args.no_qemu else args.qemu
    if qemu is None and not args.no_qemu:
        print("qemu-system-x86_64 not found: measuring this machine only", file=sys.stderr)

    guest = ensure_built("guest", "out/guest.elf")
    workdir = Path(tempfile.mkdtemp(prefix="guest-io-", dir=args.dir))
    emus = Emulators(qemu, workdir, args.icount)
    names = emus.names(args.iothread)
    image_bytes = args.mib * MiB
    try:
        print(f"# guest I/O: span {args.mib} MiB, {args.ops} random reads, {args.runs} run(s); "
              f"images in {workdir}")
        ceiling = host_ceiling(workdir / "ceiling.img", image_bytes, args.ops)
        bench_guest = None if args.pristine else build_marked_guest(workdir)
        if bench_guest is None:
            bench_guest = guest
            print("# timing from result line to result line: each figure includes the case's "
                  "buffer set-up")

        # Boot-initialise-exit with no I/O. One unmeasured run each first: bytecode, page cache.
        init_image = fresh_image(workdir / "init.img", 64 * MiB)
        boot_times: dict[str, list[float]] = {n: [] for n in emus.names()}
        for i in range(args.boot_runs + 1 if args.boot_runs else 0):
            for name in emus.names():
                run = emus.run(name, guest_options(guest, init_image, "tests=init"))
                if run.status != 1:
                    print(f"{name}: boot-init-exit run failed (status {run.status}):\n"
                          + "\n".join(run.output), file=sys.stderr)
                    return 1
                if i:
                    boot_times[name].append(run.total)

        append = f"mode=bench bench_mib={args.mib} bench_ops={args.ops}"
        results: dict[str, list[GuestRun]] = {n: [] for n in names}
        for i in range(args.runs):
            for name in names:
                image = fresh_image(workdir / f"{name}.img", image_bytes)
                run = emus.run(name, guest_options(bench_guest, image, append, name.endswith("-io")))
                if args.raw:
                    print(f"--- {name} run {i + 1} ({run.total:.2f} s)")
                    print("\n".join(l for l in run.output if "bench" in l))
                if run.status != 1 or len(run.phases) != len(CASES):
                    print(f"{name}: bench run failed (status {run.status}):\n"
                          + "\n".join(run.output), file=sys.stderr)
                    return 1
                results[name].append(run)
                image.unlink()

        print_table(results, ceiling, names)
        print()
        if not args.boot_runs:
            print_clock_check(results)
            return 0
        line = "boot-init-exit (tests=init), wall seconds, median of %d:" % args.boot_runs
        med = {n: statistics.median(t) for n, t in boot_times.items()}
        parts = [f"{n} {med[n]:.3f} s" for n in emus.names()]
        if "qemu" in med:
            ratio = med["qemu"] / med["ours"]
            parts.append(f"qemu/ours {ratio:.2f} (target >= 1: {'ok' if ratio >= 1 else 'MISS'})")
        print(line, "  ".join(parts))
        print_clock_check(results)
        if args.breakdown:
            run_breakdown(emus, bench_guest, workdir, args.mib, args.ops)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
