"""CPU time per virtio-blk notify: the device path's cost without the host's scheduling noise.

Runs the bundled guest in this process (`mode=bench`, small span, many requests) with a timer
around `ModernBar.write` that reads the thread's CPU clock, so time the process spends
preempted by other work on a busy host does not count (wall-clock figures on a shared 2-vCPU
host swing by ±30 %). Compare two trees by running each tree's copy of this script.

Kicks the native notify front serves alone (machine/virtio/blk_fast.py) never reach
`ModernBar.write`: the per-notify figure is then that of the few that do (the first of each
stretch between two CPU callbacks, and those that need an interrupt), and the whole-request
figure is the one to compare.

It also prints the whole request's CPU time: the thread CPU time of a run with `--ops` requests
per queue depth minus that of a run with `--ops / 10`, per extra request. That includes the CPU
side (the guest's instructions under Unicorn, the MMIO exit, code invalidation at callback
exit), which the notify figure leaves out.

    python bench/notify_cpu.py [--ops 20000] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def one_run(ops: int, image: Path) -> tuple[int, float, float]:
    from machine.virtio import pci
    calls, spent = 0, 0.0
    clock = time.thread_time
    orig = pci.ModernBar.write

    def timed(*args):
        nonlocal calls, spent
        t = clock()
        try:
            return orig(*args)
        finally:
            calls += 1
            spent += clock() - t
    pci.ModernBar.write = timed
    start = clock()
    try:
        from machine.cli import main
        main(["-kernel", str(ROOT / "guest/out/guest.elf"), "-m", "128", "-no-reboot",
              "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-serial", "null",
              "-append", f"mode=bench bench_mib=1 bench_ops={ops}",
              "-drive", f"file={image},format=raw,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0"])
    finally:
        pci.ModernBar.write = orig
    return calls, spent, clock() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=20000, help="random reads per queue depth")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    from machine.toolchain import ensure_built
    ensure_built("guest", "out/guest.elf")
    with tempfile.TemporaryDirectory(prefix="notify-cpu-") as tmp:
        image = Path(tmp) / "disk.img"
        with open(image, "wb") as f:
            f.truncate(1 << 20)
        per, whole = [], []
        small = max(args.ops // 10, 1)
        for _ in range(args.runs):
            calls, spent, total = one_run(args.ops, image)
            base_calls, _, base_total = one_run(small, image)
            per.append(spent / max(calls, 1) * 1e6)
            # The guest makes `ops` random reads at each of its two queue depths.
            whole.append((total - base_total) / (2 * (args.ops - small)) * 1e6)
            print(f"{calls} notifies reached Python, {per[-1]:.1f} us CPU each; whole request "
                  f"{whole[-1]:.1f} us CPU", flush=True)
    print(f"median {statistics.median(per):.1f} us CPU per notify that reached Python, "
          f"{statistics.median(whole):.1f} us CPU per whole request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
