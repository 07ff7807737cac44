"""bench/mutation_score.py: the score per module from mutmut's results, and the record of
justified survivors (bench/mutation_survivors.toml) checked name by name."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
spec = importlib.util.spec_from_file_location("mutation_score", BENCH / "mutation_score.py")
ms = importlib.util.module_from_spec(spec)
sys.modules["mutation_score"] = ms          # dataclasses look their module up by name
spec.loader.exec_module(ms)

RESULTS = ("    machine.x86.deliver.xǁDeliveryǁdeliver__mutmut_1: killed\n"
           "    machine.x86.deliver.xǁDeliveryǁdeliver__mutmut_2: survived\n"
           "    machine.x86.deliver.xǁDeliveryǁdeliver__mutmut_3: timeout\n"
           "    machine.block.x_open_drive__mutmut_3: killed\n"
           "    machine.block.x_open_drive__mutmut_4: not checked\n"
           "    machine.block.x_open_drive__mutmut_5: no tests\n"
           "    machine.block.x_open_drive__mutmut_6: survived\n")


def run(results: str, record: str, tmp_path) -> subprocess.CompletedProcess:
    path = tmp_path / "survivors.toml"
    path.write_text(record)
    return subprocess.run([sys.executable, str(BENCH / "mutation_score.py"), "--survivors", str(path)],
                          input=results, capture_output=True, text=True, timeout=60)


def test_modules_are_named_before_mutmuts_function_prefix():
    # ".x_" (a function) or ".xǁ" (a method) follows the module: "machine.x86" must not end
    # the module name at its own ".x"
    assert ms.module_of("machine.x86.deliver.xǁDeliveryǁdeliver__mutmut_1") == "machine.x86.deliver"
    assert ms.module_of("machine.block.x_open_drive__mutmut_3") == "machine.block"
    assert ms.module_of("machine.virtio.pci.x__addr_half__mutmut_3") == "machine.virtio.pci"


def test_results_lines_are_parsed_and_other_lines_skipped():
    got = ms.parse_results(io.StringIO("Generating mutants\n" + RESULTS + "done: 3\n"))
    assert got["machine.block.x_open_drive__mutmut_5"] == "no tests"
    assert got["machine.x86.deliver.xǁDeliveryǁdeliver__mutmut_3"] == "timeout"
    assert len(got) == 7


def test_every_survivor_justified_scores_clean(tmp_path):
    record = ('[survivors]\n'
              '"machine.x86.deliver.xǁDeliveryǁdeliver__mutmut_2" = "equivalent: <q for <Q"\n'
              '"machine.block.x_open_drive__mutmut_5" = "needs-host-device: lseek of a block device"\n'
              '"machine.block.x_open_drive__mutmut_6" = "needs-host-device: SEEK_END"\n')
    r = run(RESULTS, record, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [line.split() for line in r.stdout.splitlines()]
    assert rows == [["module", "killed", "/", "checked", "justified", "UNJUSTIFIED", "stale"],
                    ["machine.block", "1", "/", "3", "2", "0", "0"],
                    ["machine.x86.deliver", "2", "/", "3", "1", "0", "0"],   # a timeout is a kill
                    ["total", "3", "/", "6", "3", "0", "0"]]


def test_unjustified_survivors_and_stale_entries_are_named_and_fail(tmp_path):
    record = ('[survivors]\n'
              '"machine.x86.deliver.xǁDeliveryǁdeliver__mutmut_1" = "equivalent: killed since"\n'
              '"machine.block.x_open_drive__mutmut_4" = "equivalent: not run yet, so not stale"\n'
              '"machine.block.x_gone__mutmut_1" = "equivalent: no longer in the code"\n'
              '"machine.block.x_open_drive__mutmut_5" = "needs-host-device: lseek"\n')
    r = run(RESULTS, record, tmp_path)
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert lines[1].split() == ["machine.block", "1", "/", "3", "1", "1", "1"]
    assert lines[2].split() == ["machine.x86.deliver", "2", "/", "3", "0", "1", "1"]
    tail = lines[lines.index("UNJUSTIFIED survivors (kill them, or justify them in the record):"):]
    assert tail == [
        "UNJUSTIFIED survivors (kill them, or justify them in the record):",
        "  machine.block.x_open_drive__mutmut_6: survived",
        "  machine.x86.deliver.xǁDeliveryǁdeliver__mutmut_2: survived",
        "",
        "stale entries in the record (no longer survivors):",
        "  machine.block.x_gone__mutmut_1: no such mutant",
        "  machine.x86.deliver.xǁDeliveryǁdeliver__mutmut_1: killed",
    ]


@pytest.mark.parametrize("reason", ["equivalent", "equivalent:", "equivalent:   ", "obvious: x", "x"])
def test_a_reason_needs_a_known_key_and_words_of_its_own(tmp_path, reason):
    r = run(RESULTS, f'[survivors]\n"machine.block.x_open_drive__mutmut_6" = "{reason}"\n', tmp_path)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("mutation_score: ") and "is not 'KEY: words'" in r.stderr
    assert r.stderr.count("\n") == 1


def test_a_broken_record_is_one_line_and_status_1(tmp_path):
    r = run(RESULTS, "[survivors\n", tmp_path)
    assert r.returncode == 1 and r.stdout == "" and r.stderr.count("\n") == 1
    assert r.stderr.startswith("mutation_score: ")


def test_the_projects_record_is_well_formed():
    survivors = ms.load_survivors(ms.SURVIVORS.read_text())
    assert survivors, "the record lists the justified survivors"
    assert all(ms.module_of(name).startswith("machine.") and "__mutmut_" in name for name in survivors)
