"""`python -m machine` with no arguments: the bundled virtio-blk self-test guest on a fresh image,
its TAP report on stdout, and status 0 when it passes."""

import re
from pathlib import Path

import pytest

from building import built
from machine.testing import boot  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bundled_guest():
    return built("guest", "out/guest.elf")


def tap_plan(serial: str) -> int:
    m = re.search(r"^1\.\.(\d+)\s*$", serial, re.MULTILINE)
    assert m, f"no TAP plan in:\n{serial}"
    return int(m.group(1))


def test_no_arguments_runs_the_self_test_and_exits_0(boot, bundled_guest):
    run = boot(timeout=240)
    assert run.exit_status == 0, run
    planned = tap_plan(run.serial)
    assert planned > 0
    assert len(re.findall(r"^ok \d+", run.serial, re.MULTILINE)) == planned, run
    assert not re.search(r"^not ok", run.serial, re.MULTILINE), run


def test_explicit_debug_exit_keeps_qemu_status(boot, bundled_guest, tmp_path):
    """With the isa-debug-exit given by the user, the status is QEMU's: 1 for a pass. The
    -append reaches the bundled guest (here: run only the flush test)."""
    disk = boot.image(tmp_path / "d.img", size="64M")
    run = boot("-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-append", "tests=flush",
               "-drive", f"file={disk},format=raw,if=virtio", timeout=240)
    assert run.exit_status == 1, run
    assert re.search(r"^ok \d+ - flush", run.serial, re.MULTILINE), run
    assert not re.search(r"^ok \d+ - pattern", run.serial, re.MULTILINE), run
