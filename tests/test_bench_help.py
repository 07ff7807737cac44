"""Every benchmark answers --help with its usage at once (and does not start measuring)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_help(script):
    run = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: "), run.stdout


def test_mutation_score_names_each_module():
    # mutmut's names put ".x_" (a function) or ".xǁ" (a method) after the module: "machine.x86"
    # must not end the module name at its own ".x"
    results = ("    machine.x86.deliver.xǁDeliveryǁdeliver__mutmut_1: killed\n"
               "    machine.x86.deliver.xǁDeliveryǁdeliver__mutmut_2: survived\n"
               "    machine.block.x_open_drive__mutmut_3: killed\n"
               "    machine.block.x_open_drive__mutmut_4: not checked\n")
    run = subprocess.run([sys.executable, str(BENCH / "mutation_score.py")], input=results,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    rows = [line.split() for line in run.stdout.splitlines()]
    assert rows == [["machine.block", "1", "/", "1", "killed"],
                    ["machine.x86.deliver", "1", "/", "2", "killed", "survived", "1"],
                    ["total", "2", "/", "3", "killed"]]
