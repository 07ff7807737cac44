"""The fuzz campaign runner (bench/fuzz.py): a short fixed-seed run of every target finds nothing,
and a finding is reported, saved and replayable."""

import importlib.util
from pathlib import Path

from hypothesis import given, settings, strategies as st

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_fuzz", ROOT / "bench" / "fuzz.py")
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)


def test_a_short_fixed_seed_campaign_of_every_target_finds_nothing(tmp_path):
    for name, test in fuzz.targets().items():
        n, found, _ = fuzz.campaign(name, test, runs=60, seconds=None, seed=7,
                                    findings=tmp_path, quiet=True)
        assert (n, found) == (60, 0), name
    assert not any(tmp_path.iterdir())


@settings(database=None, deadline=None)
@given(st.binary(min_size=1))
def planted(data):
    assert data[0] != 0x42, "planted bug"


def test_a_finding_is_counted_saved_and_replays(tmp_path):
    n, found, _ = fuzz.campaign("planted", planted, runs=3000, seconds=None, seed=3,
                                findings=tmp_path, quiet=True)
    saved = sorted(tmp_path.iterdir())
    assert n == 3000 and found == len(saved) > 0
    try:
        fuzz.one_input(planted)(saved[0].read_bytes())
    except AssertionError as e:
        assert "planted bug" in str(e)
    else:
        raise AssertionError("the saved input does not reproduce the finding")
