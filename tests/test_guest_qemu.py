"""The guest virtio-blk driver and self-test (guest/out/guest.elf) on QEMU's virtio-blk-pci, the
reference our own device follows: every TAP line must be `ok`, the isa-debug-exit status must
say "all passed", and the image must hold the data pattern the guest documents (guest/pattern.h)
afterwards. Covers the transitional, modern-only, legacy-only, read-only and multiqueue
configurations, the legacy interface forced on a transitional device, small queues and the
benchmark's output format."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from guest_pattern import pattern_sector

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")

SECTOR = 512
IMAGE_BYTES = 4 << 20
TEST_REGION = 2048          # sectors the self-test leaves holding the pattern (guest/main.c)
SERIAL = "SER123"
PASSED, FAILED = 1, 3       # QEMU exit status for isa-debug-exit values 0 and 1
WAIT_LIMIT = 60.0           # seconds; a guard against a hung QEMU, never an assertion

TAP_RE = re.compile(r"^(not ok|ok) (\d+) - (\S+)(?: # (.*))?$")


def run_guest(guest: Path, image: Path, append: str, device_props: str = "",
              drive_opts: str = "") -> tuple[int, list[str]]:
    cmd = [QEMU, "-nodefaults", "-display", "none", "-no-reboot", "-m", "128",
           "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
           "-kernel", str(guest), "-append", append,
           "-drive", f"file={image},format=raw,if=none,id=d0{drive_opts}",
           "-device", f"virtio-blk-pci,drive=d0,serial={SERIAL}{device_props}"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=WAIT_LIMIT)
    lines = proc.stdout.decode("utf-8", "replace").replace("\r", "").splitlines()
    return proc.returncode, lines


def assert_all_ok(status: int, lines: list[str]) -> dict[str, str | None]:
    """Every planned TAP test reported ok, in order; returns name -> directive (e.g. SKIP)."""
    out = "\n".join(lines)
    plans = [l for l in lines if re.fullmatch(r"1\.\.\d+", l)]
    assert len(plans) == 1, out
    planned = int(plans[0][3:])
    results = [TAP_RE.match(l) for l in lines if TAP_RE.match(l)]
    assert [int(m.group(2)) for m in results] == list(range(1, planned + 1)), out
    failed = [m.group(0) for m in results if m.group(1) == "not ok"]
    assert not failed, out
    assert status == PASSED, out
    return {m.group(3): m.group(4) for m in results}


def blank_image(path: Path) -> Path:
    with open(path, "wb") as f:
        f.truncate(IMAGE_BYTES)
    return path


def assert_pattern_written(image: Path) -> None:
    data = image.read_bytes()
    for lba in range(TEST_REGION):
        assert data[lba * SECTOR:(lba + 1) * SECTOR] == pattern_sector(lba), f"sector {lba}"
    last = IMAGE_BYTES // SECTOR - 1        # the out_of_range test's boundary write
    assert data[last * SECTOR:] == pattern_sector(last)
    # nothing the tests do touches the middle of the disk
    assert data[TEST_REGION * SECTOR:last * SECTOR].count(0) == (last - TEST_REGION) * SECTOR


@pytest.mark.parametrize("props, transport, options", [
    ("", "modern", ""),                               # transitional: modern when offered
    (",disable-legacy=on", "modern", ""),             # modern-only (1af4:1042)
    (",disable-modern=on", "legacy", ""),             # legacy-only
    # modern without the optional ring features: NO_NOTIFY / NO_INTERRUPT flags, direct chains
    (",disable-legacy=on", "modern", "event_idx=0 indirect=0"),
])
def test_guest_passes_and_leaves_the_pattern(guest, tmp_path, props, transport, options):
    image = blank_image(tmp_path / "disk.img")
    status, lines = run_guest(guest, image, f"expect_serial={SERIAL} expect_ro=0 "
                              f"expect_sectors={IMAGE_BYTES // SECTOR} {options}", props)
    results = assert_all_ok(status, lines)
    assert len(results) == 15 and results["read_only"] is None
    assert any(l.startswith(f"# transport={transport} ") for l in lines)
    assert_pattern_written(image)


def test_guest_multiqueue_uses_every_queue(guest, tmp_path):
    image = blank_image(tmp_path / "disk.img")
    status, lines = run_guest(guest, image, f"expect_queues=4 expect_serial={SERIAL}",
                              ",num-queues=4")
    assert_all_ok(status, lines)
    assert "# multiqueue: device has 4 request queues, using 4" in lines
    assert_pattern_written(image)


def test_guest_legacy_interface_of_a_transitional_device(guest, tmp_path):
    """transport=legacy on a device that also has the modern interface, without the optional
    ring features: NO_NOTIFY / NO_INTERRUPT flags instead of event indices, direct chains."""
    image = blank_image(tmp_path / "disk.img")
    status, lines = run_guest(guest, image, "transport=legacy event_idx=0 indirect=0")
    results = assert_all_ok(status, lines)
    assert results["indirect"].startswith("SKIP")
    assert any(l.startswith("# transport=legacy ") for l in lines)
    assert_pattern_written(image)


def test_guest_small_queue(guest, tmp_path):
    """An 8-entry queue: long chains do not fit, indirect tables still do; the queue fills."""
    image = blank_image(tmp_path / "disk.img")
    status, lines = run_guest(guest, image, "queue_size=8 tests=rw_sizes,segments,indirect,"
                              "inflight,interrupt,pattern rw_max_kib=64")
    results = assert_all_ok(status, lines)
    assert set(results) == {"init", "rw_sizes", "segments", "indirect", "inflight",
                            "interrupt", "pattern"}
    assert any("queue_size=8" in l for l in lines)


def test_guest_read_only_disk(guest, tmp_path):
    image = tmp_path / "ro.img"
    image.write_bytes(b"".join(pattern_sector(lba) for lba in range(IMAGE_BYTES // SECTOR)))
    before = image.read_bytes()
    status, lines = run_guest(guest, image, "expect_ro=1", drive_opts=",readonly=on")
    results = assert_all_ok(status, lines)
    assert results["read_only"] is None                 # ran, not skipped
    assert image.read_bytes() == before


def test_guest_reports_failure_status(guest, tmp_path):
    """A wrong expectation must fail the run: `not ok` and exit status 3."""
    image = blank_image(tmp_path / "disk.img")
    status, lines = run_guest(guest, image, "tests=get_id expect_serial=WRONG")
    assert status == FAILED
    assert any(l.startswith("not ok 2 - get_id # serial") for l in lines), "\n".join(lines)
    status, lines = run_guest(guest, image, "tests=flush,flsh")        # a misspelt test name
    assert status == FAILED
    assert 'Bail out! unknown test "flsh" in tests=' in lines, "\n".join(lines)


def test_guest_benchmark_lines(guest, tmp_path):
    image = blank_image(tmp_path / "disk.img")
    status, lines = run_guest(guest, image, "mode=bench bench_mib=2 bench_ops=64")
    out = "\n".join(lines)
    assert status == PASSED, out
    bench = [l for l in lines if l.startswith("bench ")]
    assert re.fullmatch(r"bench clock=tsc tsc_khz=\d+", bench[0]), out
    runs = [re.fullmatch(r"bench (\w+) bs=(\d+) qd=(\d+) bytes=(\d+) ops=(\d+) ticks=(\d+)", l)
            for l in bench[1:-1]]
    assert all(runs), out
    seen = {(m.group(1), int(m.group(2)), int(m.group(3))) for m in runs}
    assert seen == {(op, bs, qd) for op in ("seqwrite", "seqread") for bs in (65536, 1048576)
                    for qd in (1, 16)} | {("randread", 4096, 1), ("randread", 4096, 16)}
    for m in runs:
        assert int(m.group(4)) == int(m.group(2)) * int(m.group(5))
        if m.group(1) != "randread":
            assert int(m.group(4)) == 2 << 20
    assert bench[-1] == "bench done status=ok"
