"""Wall time from process start to the kernel's first instruction (bundled firmware + the hello
Multiboot test kernel), and the resident memory of an idle 128 MiB machine.

    python bench/boot_time.py

Runs each measurement in a fresh interpreter (the parent times from spawning it), so the
figure includes Python start-up, imports, building the board and the firmware's work.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import sys, struct
sys.path.insert(0, {root!r})
from machine.config import CharDev, MachineConfig
from machine.pc import Machine
kernel = {kernel!r}
entry = struct.unpack_from("<I", open(kernel, "rb").read(), 24)[0]
m = Machine(MachineConfig(kernel=kernel, serial=CharDev("null")))
m.cpu.add_breakpoint(entry)
m.run(200_000_000)
print("STOP", m.stop_reason.kind, hex(m.stop_reason.address), m.instructions, flush=True)
rss = [l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]
print("RSS_KB", rss, flush=True)
"""


def main() -> None:
    import argparse
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    sys.path.insert(0, str(ROOT))
    from machine.toolchain import ensure_built
    ensure_built("firmware", "out/bios.bin")
    kernel = str(ensure_built("tests/kernels", "out/hello.elf"))
    code = CHILD.format(root=str(ROOT), kernel=kernel)
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        first = proc.stdout.readline()
        t_entry = time.perf_counter() - t0
        rest = proc.stdout.read()
        proc.wait()
        runs.append((t_entry, first.strip(), rest.strip()))
    best = min(r[0] for r in runs)
    print(f"process start -> kernel entry: best {best * 1000:.0f} ms of {len(runs)} "
          f"({', '.join(f'{r[0] * 1000:.0f}' for r in runs)} ms)")
    print(f"stop: {runs[0][1]}")
    print(f"idle 128 MiB machine resident memory: {int(runs[0][2].split()[1]) / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
