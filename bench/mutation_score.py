"""Mutation score per module from `mutmut results --all true` on stdin (bench/mutation.sh),
checked against the record of justified survivors (bench/mutation_survivors.toml).

Counts checked mutants only ("not checked" ones have not run yet). Per module: mutants killed
(by a failing test, a timeout or a crash), survivors the record justifies, and survivors it
does not (UNJUSTIFIED, named one by one). A name the record justifies that is no longer a
survivor (killed since, or gone from the code) is reported as stale. Exit status 1 when
anything is unjustified or stale, so the record stays exact.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import sys
import tomllib
from pathlib import Path

SURVIVORS = Path(__file__).resolve().parent / "mutation_survivors.toml"

# Why a surviving mutant may stay. Each entry in the record is "KEY: words about that mutant".
REASONS = {
    "equivalent": "the program behaves the same for every input the code can receive",
    "unreachable": "the changed code cannot run (the condition never holds where it is called)",
    "log-text": "only the text of a -d guest_errors / -d unimp message or a warning changes",
    "error-text": "only the text of an exception that no one shows changes",
    "debug-only": "only what a person reading the object in a debugger sees changes (__repr__)",
    "import-time": "the function runs while the module is imported, before mutmut turns a "
                   "mutant on (a table built at import): mutmut cannot test it",
    "needs-host-device": "observable only with a host block device, which no test opens",
    "timing": "changes only how work is split between calls, not what reaches the guest",
}
# mutmut's statuses that count as the tests noticing the change
KILLED = {"killed", "timeout", "segfault", "caught by type check"}
SURVIVED = {"survived", "no tests"}


def module_of(name: str) -> str:
    # "machine.block.x_open_drive__mutmut_3", "machine.x86.deliver.xǁDeliveryǁdeliver__mutmut_1":
    # the module ends where mutmut's ".x_" / ".xǁ" prefix of the function begins
    return re.split(r"\.x[_ǁ]", name, maxsplit=1)[0]


def parse_results(lines) -> dict[str, str]:
    """name -> status from `mutmut results --all true`; lines that are not results are skipped."""
    out = {}
    for line in lines:
        name, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            out[name] = status
    return out


def load_survivors(text: str) -> dict[str, str]:
    """name -> reason from the record; ValueError for a reason without a known key or words."""
    table = tomllib.loads(text).get("survivors", {})
    for name, reason in table.items():
        key, sep, words = str(reason).partition(":")
        if key not in REASONS or not sep or not words.strip():
            raise ValueError(f"{name}: reason {reason!r} is not 'KEY: words' with KEY one of "
                             f"{', '.join(REASONS)}")
    return dict(table)


@dataclasses.dataclass
class Score:
    killed: int = 0
    justified: int = 0
    checked: int = 0
    unjustified: list[str] = dataclasses.field(default_factory=list)
    stale: list[str] = dataclasses.field(default_factory=list)


def score(results: dict[str, str], survivors: dict[str, str]) -> dict[str, Score]:
    modules: dict[str, Score] = collections.defaultdict(Score)
    for name, status in sorted(results.items()):
        if status == "not checked":
            continue
        s = modules[module_of(name)]
        s.checked += 1
        if status in KILLED:
            s.killed += 1
        elif status in SURVIVED and name in survivors:
            s.justified += 1
        else:
            s.unjustified.append(f"{name}: {status}")
    for name in sorted(survivors):
        status = results.get(name)
        if status is None or status in KILLED:      # gone from the code, or killed since
            modules[module_of(name)].stale.append(f"{name}: {status or 'no such mutant'}")
    return dict(modules)


def report(modules: dict[str, Score], out=sys.stdout) -> bool:
    """Print the table and the names to look at; True when nothing is unjustified or stale."""
    print(f"{'module':28} {'killed':>6} / {'checked':<7} {'justified':>9} {'UNJUSTIFIED':>11} {'stale':>5}",
          file=out)
    total = Score()
    for module in sorted(modules):
        s = modules[module]
        print(f"{module:28} {s.killed:6} / {s.checked:<7} {s.justified:9} {len(s.unjustified):11} "
              f"{len(s.stale):5}", file=out)
        for field in ("killed", "justified", "checked"):
            setattr(total, field, getattr(total, field) + getattr(s, field))
        total.unjustified += s.unjustified
        total.stale += s.stale
    print(f"{'total':28} {total.killed:6} / {total.checked:<7} {total.justified:9} "
          f"{len(total.unjustified):11} {len(total.stale):5}", file=out)
    for title, names in (("UNJUSTIFIED survivors (kill them, or justify them in the record)",
                          total.unjustified),
                         ("stale entries in the record (no longer survivors)", total.stale)):
        if names:
            print(f"\n{title}:", file=out)
            for n in names:
                print(f"  {n}", file=out)
    return not total.unjustified and not total.stale


def main() -> None:
    import argparse
    p = argparse.ArgumentParser(description="Mutation score per module: reads `mutmut results --all "
                                "true` on stdin (bench/mutation.sh runs it) and checks the survivors "
                                "against the record of justified ones.")
    p.add_argument("--survivors", type=Path, default=SURVIVORS,
                   help="the record of justified survivors (default: %(default)s)")
    args = p.parse_args()
    try:
        survivors = load_survivors(args.survivors.read_text())
    except (OSError, ValueError, tomllib.TOMLDecodeError) as e:
        sys.exit(f"mutation_score: {args.survivors}: {e}")
    sys.exit(0 if report(score(parse_results(sys.stdin), survivors)) else 1)


if __name__ == "__main__":
    main()
