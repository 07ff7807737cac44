"""Guest instructions per second: a tight loop under Machine.run() against raw Unicorn running
the same code, both with no hooks and count=0 (the engine's ceiling) and with count>0 (the
instruction counting the run loop needs for virtual time), plus a RAM load/store loop.
Instruction rates are thread CPU time (the host's load does not count), and
Machine.run is measured in both clock modes: the exact mode (the default) and the fast mode
(-icount off). Then the cost of one exit to Python, per kind: RDTSC, an IN from an unclaimed port, an MMIO
read of an unassigned address (open bus), measured as thread CPU time per loop iteration (a
busy host's preemption does not count).

    python bench/cpu_speed.py [iterations]

Not a test: numbers depend on the host. The ratio is what matters.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from asm import COMMON_MACROS, PM32_PROLOGUE, PROGRAM_BASE, assemble, build_machine  # noqa: E402

LOOPS = {
    "alu": """
    main:
        mov $ITER, %ecx
    1:  add %eax, %ebx
        xor %ebx, %edx
        dec %ecx
        jnz 1b
        EXIT 0
    """,
    "ram": """
    main:
        mov $ITER, %ecx
    1:  mov 0x20000, %eax
        add $1, %eax
        mov %eax, 0x20000
        dec %ecx
        jnz 1b
        EXIT 0
    """,
}


LOOP_INSNS = {"alu": 4, "ram": 5}          # instructions per iteration of each loop

EXITS = {
    "none": "1:  nop\n",          # the baseline subtracted from the others
    "rdtsc": "1:  rdtsc\n",
    "in": "1:  in $0x80, %al\n",
    "mmio": "1:  mov 0xe0000000, %eax\n",
}


def exit_cost(kind: str, iters: int, runs: int = 3) -> float:
    """Thread CPU microseconds per loop iteration with `kind` in it (best of runs; the board's
    start-up is in each run, so compare against the "none" loop)."""
    src = f"""
    main:
        mov ${iters}, %ecx
    {EXITS[kind]}
        dec %ecx
        jnz 1b
        EXIT 0
    """
    best = float("inf")
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            m = build_machine(Path(tmp), src, prologue=PM32_PROLOGUE)
            t0 = time.thread_time()
            status = m.run()
            dt = time.thread_time() - t0
        assert status == 1, status
        best = min(best, dt)
    return best / iters * 1e6


def machine_rate(kind: str, iters: int, icount: bool = True) -> tuple[float, int]:
    """Guest instructions per second under Machine.run (the exact mode, or the fast mode with
    icount=False: there the machine's own count is an estimate, so the rate is computed from
    the loop's real instruction count) and the machine's instruction count."""
    src = LOOPS[kind].replace("ITER", str(iters))
    with tempfile.TemporaryDirectory() as tmp:
        m = build_machine(Path(tmp), src, prologue=PM32_PROLOGUE, icount=icount)
        t0 = time.thread_time()
        status = m.run()
        dt = time.thread_time() - t0
    assert status == 1, status
    return iters * LOOP_INSNS[kind] / dt, m.instructions


def raw_rate(kind: str, iters: int, count: int = 0) -> float:
    from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
    code = assemble(".code32\n" + LOOPS[kind].replace("ITER", str(iters))
                    .replace("EXIT 0", "hlt"), base=0x1000)
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x100000)
    uc.mem_write(0x1000, code)
    t0 = time.thread_time()
    uc.emu_start(0x1000, 0x100000, count=count)
    dt = time.thread_time() - t0
    return (iters * LOOP_INSNS[kind]) / dt


STRING_OPS = {
    "rep stosb": "mov $0x400000, %edi\n    mov $0x5a, %al\n    mov $SIZE, %ecx\n    rep stosb",
    "rep movsb": "mov $0x400000, %esi\n    mov $0x1000000, %edi\n    mov $SIZE, %ecx\n    rep movsb",
}


def string_op(kind: str, size: int, accel: bool) -> float:
    """Seconds of Machine.run for one `kind` over `size` bytes of RAM (plus the few start-up
    instructions), with the native rep string hook on or off."""
    src = f"main:\n    cld\n    {STRING_OPS[kind].replace('SIZE', str(size))}\n    EXIT 0\n"
    with tempfile.TemporaryDirectory() as tmp:
        m = build_machine(Path(tmp), src, prologue=PM32_PROLOGUE, ram_size=64 << 20)
        if m.cpu.rep_string is None:
            raise SystemExit("the native rep string helper could not be built")
        m.cpu.rep_string.set_enabled(accel)
        t0 = time.perf_counter()
        status = m.run()
        dt = time.perf_counter() - t0
    assert status == 1, status
    return dt


def host_copy(size: int) -> tuple[float, float]:
    buf = bytearray(32 << 20)
    t0 = time.perf_counter()
    buf[:size] = bytes(size)
    t1 = time.perf_counter()
    buf[16 << 20:(16 << 20) + size] = buf[:size]
    return t1 - t0, time.perf_counter() - t1


def main() -> None:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("iterations", nargs="?", type=int, default=20_000_000,
                        help="loop iterations of the ALU loop (default: %(default)s)")
    iters = parser.parse_args().iterations
    for kind in LOOPS:
        n = iters if kind == "alu" else iters // 4
        raw = raw_rate(kind, n)
        counted = raw_rate(kind, n, count=1 << 40)
        rate, count = machine_rate(kind, n)
        fast, estimate = machine_rate(kind, n, icount=False)
        print(f"{kind:4} loop: raw Unicorn {raw / 1e6:7.1f} M instr/s, with count>0 {counted / 1e6:6.1f} M/s")
        print(f"     Machine.run exact mode {rate / 1e6:7.1f} M/s (ratio to raw {rate / raw:.2f}; "
              f"{count} instructions counted)")
        print(f"     Machine.run -icount off {fast / 1e6:6.1f} M/s (ratio to raw {fast / raw:.2f}; "
              f"{estimate} estimated)")
    size = 4 << 20
    fill, copy = host_copy(size)
    for kind, host in (("rep stosb", fill), ("rep movsb", copy)):
        fast, slow = string_op(kind, size, True), string_op(kind, size, False)
        print(f"{kind} 4 MiB: {fast * 1e3:6.1f} ms with the native hook, {slow * 1e3:7.1f} ms element "
              f"by element ({slow / fast:.0f}x); host Python {host * 1e3:.1f} ms for the same bytes")
    n = max(iters // 20, 1000)
    base = exit_cost("none", n)
    for kind in EXITS:
        if kind != "none":
            print(f"exit {kind:5}: {exit_cost(kind, n) - base:6.2f} us CPU per exit ({n} iterations, "
                  f"minus a loop without the exit)")


if __name__ == "__main__":
    main()
