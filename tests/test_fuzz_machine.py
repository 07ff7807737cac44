"""Whole-machine robustness against an untrusted guest: random-but-plausible programs, hostile
targeted sequences and a soak of the bundled guest. Whatever the guest does, `run()` returns
(no Python exception, no hang), with one of the documented stop kinds, and the disk image only
changes where a write may reach it (a read-only or snapshot drive: never).

The property test is derandomized so the suite stays reproducible; FUZZ_EXAMPLES=N runs N
random examples instead (e.g. FUZZ_EXAMPLES=2000 for a longer hunt).
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import ops as fops
from fuzz import rig

BUDGET = 60_000                  # instructions per random program
WALL_LIMIT = 20                  # seconds: a run still going by then is a host hang

_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0"))
FUZZ_SETTINGS = settings(
    max_examples=_EXAMPLES or 40, deadline=None, derandomize=not _EXAMPLES, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture])


class HostHang(Exception):
    pass


@contextmanager
def wall_limit(seconds: int = WALL_LIMIT):
    """Turn a run that never returns into a test failure instead of a stuck suite."""
    def expire(_sig, _frame):
        raise HostHang(f"run() did not return within {seconds} s of host time")
    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_checked(m, budget: int = BUDGET) -> int:
    with wall_limit():
        status = m.run(max_instructions=budget)
    assert isinstance(status, int)
    assert m.stop_reason is not None and m.stop_reason.kind in rig.STOP_KINDS, m.stop_reason
    return status


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    return path, rig.make_image(path)


# ------------------------------------------------------------------------------------------
# 1. random programs
# ------------------------------------------------------------------------------------------

@FUZZ_SETTINGS
@given(data=st.data())
def test_random_guest_programs_never_break_the_host(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("fuzz")
    path = tmp / "disk.img"
    before = rig.make_image(path)
    readonly = data.draw(st.booleans(), label="readonly")
    snapshot = not readonly and data.draw(st.integers(0, 4), label="snapshot") == 0
    props = data.draw(st.fixed_dictionaries({}, optional={
        "num-queues": st.sampled_from(["1", "2", "4"]),
        "queue-size": st.sampled_from(["2", "16", "256", "1024"]),
        "disable-legacy": st.sampled_from(["on", "off"]),
        "disable-modern": st.sampled_from(["off", "off", "on"]),
    }), label="props")
    if props.get("disable-legacy") == "on" and props.get("disable-modern") == "on":
        del props["disable-modern"]
    payload = b"".join(data.draw(fops.programs(), label="program"))
    m = rig.build(tmp, payload, readonly=readonly, snapshot=snapshot, device_props=props)
    try:
        fops.write_rings(m, data.draw(fops.ring_layouts(), label="rings"))
        run_checked(m)
    finally:
        m.close()
    after = path.read_bytes()
    assert len(after) == len(before), "the image changed size"
    if readonly or snapshot:
        assert after == before, "a read-only/snapshot image was written"
