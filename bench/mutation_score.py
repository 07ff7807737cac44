"""Mutation score per module from `mutmut results --all true` on stdin (bench/mutation.sh).

Counts checked mutants only ("not checked" ones have not run yet).
"""

import collections
import re
import sys


def main() -> None:
    import argparse
    argparse.ArgumentParser(description="Mutation score per module: reads `mutmut results --all "
                            "true` on stdin (bench/mutation.sh runs it).").parse_args()
    count: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in sys.stdin:
        name, _, status = line.strip().rpartition(": ")
        if not name or status == "not checked":
            continue
        # "machine.block.x_open_drive__mutmut_3", "machine.x86.deliver.xǁDeliveryǁdeliver__mutmut_1":
        # the module ends where mutmut's ".x_" / ".xǁ" prefix of the function begins
        module = re.split(r"\.x[_ǁ]", name, maxsplit=1)[0]
        count[module][status] += 1
    total: collections.Counter = collections.Counter()
    for module in sorted(count):
        c = count[module]
        total.update(c)
        others = "  ".join(f"{k} {v}" for k, v in sorted(c.items()) if k != "killed")
        print(f"{module:26} {c['killed']:5} / {sum(c.values()):5} killed   {others}")
    print(f"{'total':26} {total['killed']:5} / {sum(total.values()):5} killed")


if __name__ == "__main__":
    main()
