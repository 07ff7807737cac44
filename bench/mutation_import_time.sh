#!/bin/sh
# The mutants bench/mutation_survivors.toml records as "import-time": functions that run while
# their module is imported (a register table built at import), before mutmut turns a mutant on
# in its forked test runs, so mutmut reports them as survivors. Here each one is planted before
# the import instead (MUTANT_UNDER_TEST set for a fresh pytest in mutants/) and must make the
# tests fail. Run after bench/mutation.sh (it needs mutants/).
#
#   bench/mutation_import_time.sh               # every import-time entry of the record
#   bench/mutation_import_time.sh NAME...       # only these
set -eu
cd "$(dirname "$0")/.."
unset PYTHONPATH
[ -d mutants ] || { echo "mutation_import_time: no mutants/ (run bench/mutation.sh first)" >&2; exit 1; }
if [ "$#" -eq 0 ]; then
    set -- $(python3 -c '
import tomllib
with open("bench/mutation_survivors.toml", "rb") as f:
    table = tomllib.load(f)["survivors"]
print(" ".join(n for n, r in table.items() if r.startswith("import-time:")))')
fi
tests=$(python3 -c '
import tomllib
with open("pyproject.toml", "rb") as f:
    print(" ".join(tomllib.load(f)["tool"]["mutmut"]["pytest_add_cli_args_test_selection"]))')
survived=0
for name in "$@"; do
    if (cd mutants && MUTANT_UNDER_TEST="$name" python3 -m pytest -x -q -p no:cacheprovider \
            -p no:randomly -o addopts= $tests >/dev/null 2>&1); then
        echo "survived  $name"
        survived=$((survived + 1))
    else
        echo "killed    $name"
    fi
done
echo "$# planted at import, $survived survived"
[ "$survived" -eq 0 ]
