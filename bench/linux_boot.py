"""Debian 12's cloud kernel running the virtio-blk end-to-end init (tests/linux/init.c) on this
machine and on QEMU TCG, in one run, with the same options: wall time from spawn to the init's
last TAP line, and (ours) guest instructions and where the time goes.

    python bench/linux_boot.py             # one run each
    python bench/linux_boot.py --no-qemu   # ours only
    python bench/linux_boot.py --profile   # plus a cProfile of ours: the top host functions
    python bench/linux_boot.py --mode fast # ours in the fast mode only (-icount off)

Ours runs in both clock modes by default: the exact mode (the default, every instruction
counted) and the fast mode (-icount off).

Needs apt (the kernel package is fetched and cached as the tests do, see tests/linux_guest.py).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import linux_guest as lg                          # noqa: E402
from machine.toolchain import ensure_built        # noqa: E402

LAST_LINE = "# all passed"


def timed(cmd: list[str], env=None) -> tuple[float, float | None, int, str]:
    """(seconds to the last line, seconds to exit, exit status, output)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, cwd=ROOT)
    out = []
    at_last = None
    for raw in proc.stdout:
        line = raw.decode(errors="replace")
        out.append(line)
        if at_last is None and line.startswith(LAST_LINE):
            at_last = time.monotonic() - start
    status = proc.wait()
    return at_last, time.monotonic() - start, status, "".join(out)


def ours_in_process(args: list[str], profile: bool) -> tuple[float, float, int, int, str]:
    """Run ours in this process (COM1 discarded): wall time and this process's CPU time to
    exit, instructions (an estimate in the fast mode), status and an optional profile."""
    from machine.api import Session
    import cProfile
    import pstats
    prof = cProfile.Profile() if profile else None
    start, cpu = time.monotonic(), time.process_time()
    with Session.from_args(args) as s:
        if prof:
            prof.enable()
        stop = s.run()
        if prof:
            prof.disable()
        wall, cpu = time.monotonic() - start, time.process_time() - cpu
        report = ""
        if prof:
            import io
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
            report = buf.getvalue()
        return wall, cpu, s.machine.instructions, stop.exit_status, report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--mode", choices=("both", "exact", "fast"), default="both",
                    help="our clock mode(s): exact (default -icount shift=0), fast (-icount off)")
    opts = ap.parse_args()
    try:
        kernel = lg.fetch_kernel()
    except lg.Unavailable as exc:
        print(f"cannot get the kernel: {exc}")
        return 1
    init = ensure_built("tests/linux", "out/init")
    work = Path(tempfile.mkdtemp(prefix="linux-bench-"))
    try:
        initrd = lg.build_initramfs(kernel, init, work / "initrd.cpio")
        rows, notes = [], []
        for mode in ("exact", "fast"):
            if opts.mode not in ("both", mode):
                continue
            disk = lg.make_disk(work / f"ours-{mode}.img")
            quiet = lg.command_line(kernel, initrd, disk)
            quiet[quiet.index("-serial") + 1] = "null"
            if mode == "fast":
                quiet += ["-icount", "off"]
            wall, cpu, instructions, status, report = ours_in_process(quiet, opts.profile)
            name = f"ours {mode}"
            rows.append((name, None, wall, status, lg.disk_problems(disk, False)))
            what = "guest instructions" if mode == "exact" else "estimated instructions (block sizes)"
            notes.append(f"{name}: {instructions:,} {what} in {wall:.1f} s wall, "
                         f"{cpu:.1f} s CPU ({instructions / wall / 1e6:.1f} M/s)")
            if report:
                notes.append(report)
        qemu = shutil.which("qemu-system-x86_64")
        if qemu and not opts.no_qemu:
            disk = lg.make_disk(work / "qemu.img")
            last_q, total_q, status_q, _ = timed([qemu] + lg.command_line(kernel, initrd, disk))
            rows.append(("qemu", last_q, total_q, status_q, lg.disk_problems(disk, False)))
        print(f"kernel {kernel.version}, initramfs {initrd.stat().st_size} bytes, "
              f"same options on both")
        print(f"{'':10} {'to init done':>13} {'to exit':>9} {'status':>7}  image")
        for name, last, total, status, problems in rows:
            shown = f"{last:10.1f} s" if last is not None else "-"
            print(f"{name:10} {shown:>13} {total:7.1f} s {status:7d}  "
                  f"{'ok' if not problems else problems}")
        for note in notes:
            print(note)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
