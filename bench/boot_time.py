"""Wall time from process start to the kernel's first instruction (bundled firmware + the hello
Multiboot test kernel), and the resident memory of an idle 128 MiB machine.

    python bench/boot_time.py [runs] [--no-bytecode-cache]

One cold run first (empty bytecode cache, see machine/bytecode.py), then `runs` warm ones; wall
times are from spawning the interpreter, CPU time is the child's own (less sensitive to a
loaded host).

Runs each measurement in a fresh interpreter (the parent times from spawning it), so the
figure includes Python start-up, imports, building the board and the firmware's work.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import sys, struct, time
sys.path.insert(0, {root!r})
from machine.config import CharDev, MachineConfig
from machine.pc import Machine
kernel = {kernel!r}
entry = struct.unpack_from("<I", open(kernel, "rb").read(), 24)[0]
m = Machine(MachineConfig(kernel=kernel, serial=CharDev("null")))
m.run(1)                                         # the first guest instruction (the reset vector)
print("FIRST", m.stop_reason.kind, m.instructions, time.time(), time.process_time(), flush=True)
m.cpu.add_breakpoint(entry)
m.run(200_000_000)
print("STOP", m.stop_reason.kind, hex(m.stop_reason.address), m.instructions, time.time(), flush=True)
rss = [l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]
print("RSS_KB", rss, flush=True)
"""


def one_run(code: str, env: dict) -> tuple[float, float, float, str, str, float]:
    """(to first instruction, to kernel entry, child CPU seconds, stop line, rss line, child
    CPU seconds up to the first instruction)."""
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    first = proc.stdout.readline().split()
    stop = proc.stdout.readline().split()
    rest = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if first[:3] != ["FIRST", "limit", "1"] or stop[:2] != ["STOP", "breakpoint"]:
        raise SystemExit(f"unexpected child output: {first} {stop} {rest}")
    return (float(first[3]) - t0, float(stop[4]) - t0, usage.ru_utime + usage.ru_stime,
            " ".join(stop[:4]), rest.strip(), float(first[4]))


def main() -> None:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="?", type=int, default=5, help="warm runs (default 5)")
    ap.add_argument("--no-bytecode-cache", action="store_true",
                    help="MACHINE_BYTECODE_CACHE=0 in the children (for the comparison)")
    opts = ap.parse_args()
    use_cache = not opts.no_bytecode_cache
    runs_n = opts.runs
    sys.path.insert(0, str(ROOT))
    from machine.toolchain import ensure_built
    ensure_built("firmware", "out/bios.bin")
    kernel = str(ensure_built("tests/kernels", "out/hello.elf"))
    code = CHILD.format(root=str(ROOT), kernel=kernel)
    print(f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, MACHINE_BYTECODE_CACHE=cache if use_cache else "0")
        cold = one_run(code, env)                  # fills the package's bytecode cache
        runs = [one_run(code, env) for _ in range(runs_n)]
    for label, i in (("first guest instruction", 0), ("kernel entry", 1)):
        vals = sorted(r[i] for r in runs)
        print(f"process start -> {label}: best {vals[0] * 1000:.0f} ms, median "
              f"{vals[len(vals) // 2] * 1000:.0f} ms of {len(vals)}; cold cache {cold[i] * 1000:.0f} ms")
    first_cpu = sorted(r[5] for r in runs)
    print(f"child CPU time (user+sys) up to the first guest instruction: best "
          f"{first_cpu[0] * 1000:.0f} ms, median {first_cpu[len(first_cpu) // 2] * 1000:.0f} ms")
    cpu = sorted(r[2] for r in runs)
    print(f"child CPU time (user+sys, whole run): best {cpu[0] * 1000:.0f} ms, median "
          f"{cpu[len(cpu) // 2] * 1000:.0f} ms")
    print(f"stop: {runs[0][3]}")
    print(f"idle 128 MiB machine resident memory: {int(runs[0][4].split()[1]) / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
