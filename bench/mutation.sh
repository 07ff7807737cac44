#!/bin/sh
# Mutation score and branch coverage of the device path: machine/virtio/, machine/block/,
# machine/irq.py and machine/x86/deliver.py ([tool.mutmut] in pyproject.toml lists the files
# and the fast unit tests each mutant runs against).
#
#   bench/mutation.sh                         # coverage report, then every mutant in scope
#   bench/mutation.sh 'machine.virtio.queue.*'   # coverage, then only the mutants named
#   JOBS=2 bench/mutation.sh                  # more workers (default 1: a shared 2-core host)
#
# Slow (40-150 mutants a minute on one core), so not part of the default suite. Results
# accumulate in mutants/ (git-ignored); `mutmut results` lists survivors, `mutmut show NAME`
# shows one, `mutmut run NAME...` runs some again. Every survivor must be killed or recorded,
# with its reason, in bench/mutation_survivors.toml: the last step fails on a survivor missing
# there and on an entry that no longer survives. Needs `pip install -e '.[test,mutation]'`.
set -eu
cd "$(dirname "$0")/.."
# mutmut runs the tests against its mutated copy in mutants/: a PYTHONPATH pointing at this
# tree would put the unmutated package first and every mutant would survive.
unset PYTHONPATH

tests=$(python3 -c '
import tomllib
with open("pyproject.toml", "rb") as f:
    print(" ".join(tomllib.load(f)["tool"]["mutmut"]["pytest_add_cli_args_test_selection"]))')

echo "== branch coverage of the device path (the same tests mutmut runs)"
PYTHONPATH=. python3 -m pytest -q -p no:cacheprovider -o addopts= \
    --cov=machine.virtio --cov=machine.block --cov=machine.irq --cov=machine.x86.deliver \
    --cov-branch --cov-report=term-missing:skip-covered $tests

echo "== mutation testing"
if [ "$#" -eq 0 ]; then
    set -- 'machine.virtio.*' 'machine.block.*' 'machine.irq.*' 'machine.x86.deliver.*'
fi
mutmut run --max-children "${JOBS:-1}" "$@"

echo "== import-time mutants of the record, planted before the import"
import_time=0
bench/mutation_import_time.sh || import_time=$?

echo "== score per module, survivors checked against bench/mutation_survivors.toml"
mutmut results --all true 2>/dev/null | python3 bench/mutation_score.py
exit "$import_time"
