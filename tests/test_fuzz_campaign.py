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
    generators = fuzz.direct_generators()
    for name, test in fuzz.targets().items():
        n, found, _ = fuzz.campaign(name, test, runs=60, seconds=None, seed=7,
                                    findings=tmp_path, quiet=True)
        assert (n, found) == (60, 0), name
        if name in generators:                      # the default, plain-random campaign too
            n, found, _ = fuzz.campaign(name, test, runs=60, seconds=None, seed=7,
                                        findings=tmp_path, quiet=True, generator=generators[name])
            assert (n, found) == (60, 0), name
    assert not any(tmp_path.iterdir())


def test_plain_random_scenarios_stay_within_the_strategies_bounds():
    """bench/fuzz.py's generators draw what the Hypothesis strategies draw: same sizes, values
    from the same sets, and every kind of value shows up."""
    import random
    import test_virtio_fuzz as vf
    import test_virtio_packed_fuzz as pf

    rng = random.Random(5)
    flags, outside, avail = set(), 0, set()
    for _ in range(400):
        descs, indirect, heads, avail_idx, headers, features, read_only, legacy = vf.random_scenario(rng)
        assert 1 <= len(descs) <= vf.QSIZE and len(indirect) <= 6 and 1 <= len(heads) <= vf.QSIZE
        assert 1 <= len(headers) <= 8 and all(len(h) == 16 for h in headers) and 0 <= features <= 3
        assert avail_idx in (len(heads), 0, vf.QSIZE + 3, 0xFFFF) and all(0 <= h <= vf.QSIZE + 1 for h in heads)
        for addr, length, f, nxt in descs + indirect:
            assert 0 <= f <= 7 and 0 <= length < 2**32 and 0 <= nxt <= vf.QSIZE + 2
            zone = vf.W_ZONE if f & 2 else vf.R_ZONE
            assert addr in vf.OUTSIDE or (zone[0] <= addr < zone[1] and addr % 16 == 0)
            flags.add(f)
            outside += addr in vf.OUTSIDE
        avail.add(avail_idx == len(heads))
        assert isinstance(read_only, bool) and isinstance(legacy, bool)
    assert flags == set(range(8)) and outside and avail == {True, False}

    bits = set()
    for _ in range(400):
        descs, indirect, headers, features, (off_wrap, ev_flags), read_only = pf.random_scenario(rng)
        assert 1 <= len(headers) <= 8 and len(indirect) <= 6 and 0 <= features <= 3
        assert 0 <= off_wrap <= 0xFFFF and 0 <= ev_flags <= 3
        for addr, length, kind, bid, wrap_bits in descs + indirect:
            assert 0 <= kind <= 7 and 0 <= bid <= pf.RING + 2 and wrap_bits in pf.WRAP_BITS
            bits.add(wrap_bits)
    assert bits == set(pf.WRAP_BITS)


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


def test_a_plain_random_finding_is_saved_as_its_seed_and_replays(tmp_path):
    gen = lambda rng: rng.randbytes(4)                # noqa: E731 - the planted test's input
    n, found, _ = fuzz.campaign("planted", planted, runs=3000, seconds=None, seed=3,
                                findings=tmp_path, quiet=True, generator=gen)
    saved = sorted(tmp_path.iterdir())
    assert n == 3000 and found == len(saved) > 0 and all(p.suffix == ".seed" for p in saved)
    try:
        fuzz.one_seed(planted, gen)(int(saved[0].read_text()))
    except AssertionError as e:
        assert "planted bug" in str(e)
    else:
        raise AssertionError("the saved seed does not reproduce the finding")
