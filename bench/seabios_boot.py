"""Wall time from process start to a boot sector's first instruction under real SeaBIOS, on this
machine and on qemu-system-x86_64 with the same options, in one run.

    python bench/seabios_boot.py [--runs N] [--qemu PATH] [--no-qemu] [--bios PATH]

The boot sector (tests/mbr/first.S) exits through isa-debug-exit as its very first instruction,
so "process start -> exit" is "process start -> MBR". Both emulators get the command line of
the SeaBIOS boot tests:

    -bios bios.bin -drive file=IMG,format=raw,if=virtio -nographic
    -device isa-debug-exit,iobase=0xf4,iosize=0x04

(QEMU then also has its default VGA and NIC with their option ROMs, as that command gives it.)
Ours runs in the exact clock mode (the default) and in the fast mode (-icount off, "ours-fast").
A second line for each runs the board in-process (no interpreter start-up or imports) and shows
where the time goes: building the board, then SeaBIOS's instructions and the virtual time they
took.

The same command with a 64 KiB ROM whose reset vector exits at once, in place of SeaBIOS, times
each emulator's start-up (process start -> first instruction); "SeaBIOS -> MBR" is the
difference of the two best times: the firmware's own run, start-up left out.
Figures are host-dependent: compare the two emulators in the same run.
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
EXIT_OK = 33


def timed(cmd: list[str]) -> tuple[float, int]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != EXIT_OK:
        sys.exit(f"{cmd[0]} exited {proc.returncode}, not {EXIT_OK}: {proc.stderr.strip()[-300:]}")
    return elapsed, proc.returncode


def in_process(args: list[str]) -> str:
    from machine.cli import parse_args
    from machine.pc import Machine
    t0 = time.perf_counter()
    m = Machine(parse_args(args + ["-serial", "null"]))
    t1 = time.perf_counter()
    status = m.run()
    t2 = time.perf_counter()
    m.close()
    if status != EXIT_OK:
        sys.exit(f"in-process run exited {status}")
    return (f"in-process: build {1000 * (t1 - t0):.0f} ms + run {1000 * (t2 - t1):.0f} ms; "
            f"{m.instructions / 1e6:.2f} M instructions, {m.clock.now / 1e6:.1f} ms virtual time")


def summary(name: str, times: list[float], what: str = "MBR") -> str:
    return (f"{name:<9} process start -> {what}: best {1000 * min(times):.0f} ms of {len(times)} "
            f"({', '.join(f'{1000 * t:.0f}' for t in times)} ms)")


def exit_rom() -> bytes:
    """64 KiB of BIOS whose reset vector writes 0x10 to isa-debug-exit (exit status 33)."""
    rom = bytearray(b"\xf4" * 0x10000)
    rom[0xFFF0:0xFFF5] = bytes.fromhex("b010e6f4f4")      # mov $0x10, %al; out %al, $0xf4; hlt
    return bytes(rom)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--bios", default="/usr/share/seabios/bios.bin")
    ap.add_argument("--qemu", default=shutil.which("qemu-system-x86_64"))
    ap.add_argument("--no-qemu", action="store_true")
    opts = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from machine.toolchain import ensure_built
    if not Path(opts.bios).exists():
        sys.exit(f"{opts.bios} not found (install the seabios package)")
    mbr = ensure_built("tests/mbr", "out/first.bin").read_bytes()
    with tempfile.TemporaryDirectory(prefix="seabios-bench-") as tmp:
        img = Path(tmp) / "boot.img"
        with open(img, "wb") as f:
            f.write(mbr)
            f.truncate(8 << 20)
        args = ["-bios", opts.bios, "-drive", f"file={img},format=raw,if=virtio", "-nographic",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
        rom = Path(tmp) / "exit.bin"
        rom.write_bytes(exit_rom())
        bare = ["-bios", str(rom)] + args[2:]

        def both(cmd: list[str], name: str) -> tuple[float, float]:
            """(best process start -> MBR, best process start -> first instruction)"""
            mbr = [timed(cmd + args)[0] for _ in range(opts.runs)]
            first = [timed(cmd + bare)[0] for _ in range(opts.runs)]
            print(summary(name, mbr))
            print(summary("", first, "first instruction"))
            return min(mbr), min(first)
        ours = both([sys.executable, "-m", "machine"], "ours")
        print(" " * 9 + in_process(args))
        fast = both([sys.executable, "-m", "machine", "-icount", "off"], "ours-fast")
        print(" " * 9 + in_process(args + ["-icount", "off"]) + " (estimated)")
        if opts.qemu and not opts.no_qemu:
            qemu = both([opts.qemu], "qemu")
            print(f"process start -> MBR: ours / qemu {ours[0] / qemu[0]:.1f}x, "
                  f"ours-fast / qemu {fast[0] / qemu[0]:.1f}x")
            q = qemu[0] - qemu[1]
            print(f"SeaBIOS -> MBR (start-up left out): ours {1000 * (ours[0] - ours[1]):.0f} ms, "
                  f"ours-fast {1000 * (fast[0] - fast[1]):.0f} ms, qemu {1000 * q:.0f} ms: "
                  f"ours / qemu {(ours[0] - ours[1]) / q:.1f}x, "
                  f"ours-fast / qemu {(fast[0] - fast[1]) / q:.1f}x")
        else:
            print("qemu     not measured (not installed or --no-qemu)")


if __name__ == "__main__":
    main()
