"""Fuzz campaigns over the device path and the command line, for hours rather than CI's seconds.

The targets are the suite's own property tests (tests/test_virtio_fuzz.py, the packed ring's
tests/test_virtio_packed_fuzz.py, tests/test_cli.py, the snapshot loader's
tests/test_savevm_fuzz.py):
their invariants are the oracle (no exception escapes; guest RAM changes only in writable buffers
and the used ring; the image only where the backend was asked to write, never a read-only one;
every available request completed or the device in NEEDS_RESET; every bad argv one error line;
every snapshot file loaded or refused with one line, a refused one changing nothing).
Hypothesis turns each input buffer into a test case (`fuzz_one_input`), so a random-bytes loop or
a coverage-guided fuzzer (atheris, if installed) drives the same checks.

    python bench/fuzz.py --target ring --runs 1000000          # seeded random inputs
    python bench/fuzz.py --target all --seconds 600
    python bench/fuzz.py --target ring --atheris -- -max_total_time=3600   # coverage-guided

Prints executions per second and findings; each finding's input is saved under --findings
(default ./fuzz-findings) and replays with --replay FILE.

The ring and packed targets also have plain `random` generators beside their strategies
(`random_scenario` in the test modules): by default a campaign feeds those scenarios straight to
the test body, about twice the executions per second of Hypothesis's draws (`--hypothesis`
switches back). A finding is then saved as the 64-bit seed of its scenario (`.seed`), which
`--replay` rebuilds.
"""

from __future__ import annotations

import argparse
import atexit
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))


def _cli_target():
    """The command-line property test without its pytest fixture: argv in a directory holding a
    kernel and two images, as tests/test_cli.py's `files` fixture lays it out."""
    from hypothesis import HealthCheck, given, settings, strategies as st

    import test_cli

    workdir = Path(tempfile.mkdtemp(prefix="fuzz-cli-"))
    atexit.register(shutil.rmtree, workdir, True)      # the suite builds every target: no leftovers
    test_cli.multiboot_elf(workdir / "k.elf")
    (workdir / "d.img").write_bytes(bytes(1024 * 1024))
    (workdir / "e.img").write_bytes(bytes(4096))

    @settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(pairs=st.lists(st.tuples(test_cli._options, test_cli._values), max_size=4),
           tail=st.booleans())
    def cli(pairs, tail):
        old = os.getcwd()
        os.chdir(workdir)
        try:
            test_cli.test_any_argv_gives_a_config_or_a_one_line_error.hypothesis.inner_test(
                workdir, pairs, tail)
        finally:
            os.chdir(old)
    return cli


def targets() -> dict:
    import test_savevm_fuzz as sf
    import test_virtio_fuzz as vf
    import test_virtio_packed_fuzz as pf
    return {
        "ring": vf.test_random_descriptor_tables_never_escape_or_write_where_they_should_not,
        "packed": pf.test_random_packed_rings_never_escape_or_write_where_they_should_not,
        "registers": vf.test_random_register_traffic_never_raises,
        "cli": _cli_target(),
        "snapshot": sf.test_any_snapshot_bytes_load_or_are_refused_cleanly,
    }


def direct_generators() -> dict:
    """target -> (rng -> scenario): the plain-random twins of the targets' strategies."""
    import test_virtio_fuzz as vf
    import test_virtio_packed_fuzz as pf
    return {"ring": vf.random_scenario, "packed": pf.random_scenario}


def one_input(test):
    return test.hypothesis.fuzz_one_input


def one_seed(test, generator):
    """Runs the test body on the scenario `generator` builds from a seed."""
    inner = test.hypothesis.inner_test
    return lambda seed: inner(generator(random.Random(seed)))


def campaign(name: str, test, *, runs: int | None, seconds: float | None, seed: int,
             findings: Path, quiet: bool = False, generator=None) -> tuple[int, int, float]:
    """Feed seeded random buffers to `test` (or, with `generator`, the scenarios it builds from
    seeded 64-bit seeds); returns (executions, findings, seconds)."""
    rng = random.Random(seed)
    run_one = one_seed(test, generator) if generator else one_input(test)
    found = 0
    start = time.perf_counter()
    n = 0
    last_report = start
    while (runs is None or n < runs) and (seconds is None or time.perf_counter() - start < seconds):
        if generator:
            data = rng.getrandbits(64)
        else:
            data = rng.randbytes(rng.choice((16, 64, 256, 1024, 4096)))
        n += 1
        try:
            run_one(data)
        except Exception:
            found += 1
            findings.mkdir(parents=True, exist_ok=True)
            if generator:
                path = findings / f"{name}-{seed}-{n}.seed"
                path.write_text(f"{data}\n")
            else:
                path = findings / f"{name}-{seed}-{n}.bin"
                path.write_bytes(data)
            print(f"FINDING {path}\n{traceback.format_exc(limit=4)}", file=sys.stderr)
        now = time.perf_counter()
        if not quiet and now - last_report > 30:
            print(f"  {name}: {n} executions, {n / (now - start):.0f}/s, {found} findings", flush=True)
            last_report = now
    return n, found, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="all", help="ring, packed, registers, cli, snapshot or all (default all)")
    ap.add_argument("--runs", type=int, help="executions per target")
    ap.add_argument("--seconds", type=float, help="time per target")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--findings", type=Path, default=Path("fuzz-findings"))
    ap.add_argument("--replay", type=Path, help="run one saved input and show the failure")
    ap.add_argument("--atheris", action="store_true", help="coverage-guided with atheris (one target)")
    ap.add_argument("--hypothesis", action="store_true",
                    help="draw ring/packed inputs through Hypothesis, not the plain generators")
    ap.add_argument("rest", nargs="*", help="arguments passed to libFuzzer after --")
    args = ap.parse_args(argv)

    all_targets = targets()
    names = list(all_targets) if args.target == "all" else [args.target]
    for name in names:
        if name not in all_targets:
            ap.error(f"unknown target '{name}' ({', '.join(all_targets)}, all)")
    generators = {} if args.hypothesis else direct_generators()
    if args.replay:
        test = all_targets[names[0]]
        if args.replay.suffix == ".seed":
            one_seed(test, generators.get(names[0]) or direct_generators()[names[0]])(
                int(args.replay.read_text()))
        else:
            one_input(test)(args.replay.read_bytes())
        print("no failure")
        return 0
    if args.atheris:
        try:
            import atheris
        except ImportError:
            print("fuzz.py: --atheris needs `pip install atheris`", file=sys.stderr)
            return 1
        if len(names) != 1:
            ap.error("--atheris takes one --target")
        atheris.Setup([sys.argv[0], *args.rest], one_input(all_targets[names[0]]))
        atheris.Fuzz()
        return 0
    if args.runs is None and args.seconds is None:
        args.runs = 1000
    total_found = 0
    print(f"{'target':10} {'executions':>11} {'exec/s':>8} {'findings':>9}")
    for name in names:
        n, found, took = campaign(name, all_targets[name], runs=args.runs, seconds=args.seconds,
                                  seed=args.seed, findings=args.findings,
                                  generator=generators.get(name))
        total_found += found
        print(f"{name:10} {n:11d} {n / took:8.0f} {found:9d}", flush=True)
    return 1 if total_found else 0


if __name__ == "__main__":
    sys.exit(main())
