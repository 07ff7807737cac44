"""Machine snapshots (machine/savevm.py): save the whole machine mid-run, run to the end, load,
run to the end again: the same serial output, instruction count and disk image."""

from __future__ import annotations

import hashlib

import pytest

from machine.api import Session
from machine.testing import Boot


def _session(guest, img, *extra):
    return Session.from_args(["-kernel", str(guest), "-drive", f"file={img},format=raw,if=virtio",
                              "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-display", "none",
                              *extra])


def _to_end(s):
    start = len(s._tap.data)
    stop = s.run(max_instructions=200_000_000)
    s.finished = False
    return (stop.kind, stop.exit_status, bytes(s._tap.data[start:]), s.machine.instructions)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("point", [400_000, 6_000_000])
def test_save_run_load_run_is_exact(guest, tmp_path, point):
    """The guest's self-test writes its disk: after loading, RAM *and* disk are as at the save,
    and the rest of the run repeats exactly."""
    img = Boot.image(tmp_path / "d.img", 4 << 20)
    with _session(guest, img) as s:
        s.run(max_instructions=point)
        assert s.machine.instructions == point
        state = s.machine.save_state()
        first = _to_end(s)
        image = _digest(img)
        assert first[0] == "exited" and first[1] == 1 and b"not ok" not in first[2]
        s.machine.load_state(state)
        assert s.machine.instructions == point
        assert _to_end(s) == first
        assert _digest(img) == image


def test_state_survives_encoding(guest, tmp_path):
    img = Boot.image(tmp_path / "d.img", 4 << 20)
    with _session(guest, img) as s:
        s.run(max_instructions=3_000_000)
        state = s.machine.save_state()
        blob = s.machine.encode_state(state)
        first = _to_end(s)
        decoded = s.machine.decode_state(blob)
        decoded.undo, decoded._journals = state.undo, state._journals     # the disks' logs are in memory here
        s.machine.load_state(decoded)
        assert _to_end(s) == first
