"""End to end on this machine: the bundled virtio-blk guest driver (guest/out/guest.elf) boots on
real image files, runs its self-test over every transport and drive configuration a user is
likely to type, and the host then checks the image byte by byte against the pattern the guest
documents (guest/pattern.h, guest/main.c). Also: a failing run's exit status, two machines
on one writable image (the lock), and the very same command line on qemu-system-x86_64, which
must print the same TAP lines and leave a byte-identical image.

Each boot is a real `python -m machine` process (the `boot` fixture), as a user would run it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from machine.testing import Boot, MachineRun, boot  # noqa: F401  (the fixture)

from guest_pattern import pattern_sector

SECTOR = 512
IMAGE_BYTES = 4 << 20
IMAGE_SECTORS = IMAGE_BYTES // SECTOR
TEST_REGION = 2048          # sectors the self-test leaves holding the pattern (guest/main.c)
SERIAL = "SER123"
PASSED, FAILED = 1, 3       # isa-debug-exit status for guest values 0 and 1: (v << 1) | 1
TIMEOUT = 60                # seconds; a guard against a hung machine, never an assertion
ALL_TESTS = ["init", "config", "rw_sizes", "segments", "indirect", "inflight", "flush", "get_id",
             "out_of_range", "unsupported", "read_only", "reset", "multiqueue", "interrupt",
             "pattern"]

TAP_RE = re.compile(r"^(not ok|ok) (\d+) - (\S+)(?: # (.*))?$")
QEMU = shutil.which("qemu-system-x86_64")


# --------------------------------------------------------------------------- the data pattern

def blank_image(path: Path) -> Path:
    return Boot.image(path, IMAGE_BYTES)


def pattern_image(path: Path) -> Path:
    return Boot.image(path, IMAGE_BYTES, b"".join(pattern_sector(lba)
                                                  for lba in range(IMAGE_SECTORS)))


_REGION_PATTERN = b"".join(pattern_sector(lba) for lba in range(TEST_REGION))


def assert_pattern_written(image: Path, last_sector: bool = True) -> None:
    """What a passing self-test leaves on a blank writable disk: the pattern over the first
    2048 sectors and, when the out_of_range test ran, on the last one (its boundary write);
    zeroes everywhere else."""
    data = image.read_bytes()
    assert len(data) == IMAGE_BYTES
    if data[:len(_REGION_PATTERN)] != _REGION_PATTERN:
        bad = next(lba for lba in range(TEST_REGION) if data[lba * SECTOR:(lba + 1) * SECTOR]
                   != _REGION_PATTERN[lba * SECTOR:(lba + 1) * SECTOR])
        pytest.fail(f"{image.name}: sector {bad} does not hold the pattern")
    last = IMAGE_SECTORS - 1
    expected_last = pattern_sector(last) if last_sector else bytes(SECTOR)
    assert data[last * SECTOR:] == expected_last, "last sector"
    assert data[TEST_REGION * SECTOR:last * SECTOR].count(0) == (last - TEST_REGION) * SECTOR


# --------------------------------------------------------------------------- running the guest

@pytest.fixture(scope="module")
def bytecode_env(tmp_path_factory) -> dict[str, str]:
    """Lets every machine process after the first reuse compiled bytecode (kept outside the
    source tree), even where the environment turns bytecode writing off: a fifth of a boot."""
    return {"PYTHONDONTWRITEBYTECODE": "",
            "PYTHONPYCACHEPREFIX": str(tmp_path_factory.mktemp("pycache"))}


@pytest.fixture
def run_machine(boot, bytecode_env):
    """`run_machine(*args)`: boot this machine to completion; returns the MachineRun."""
    def run(*args) -> MachineRun:
        return boot(*args, timeout=TIMEOUT, env=bytecode_env)
    return run


def guest_args(guest: Path, image: Path, append: str, device_props: str = "",
               drive_opts: str = "", serial: str | None = SERIAL) -> list[str]:
    """The guest's documented command line (guest/README.md), valid for this machine and for
    QEMU alike: explicit kernel, isa-debug-exit, and a -drive/-device pair."""
    device = "virtio-blk-pci,drive=d0" + (f",serial={serial}" if serial else "") + device_props
    return ["-kernel", str(guest), "-append", append, "-display", "none", "-serial", "stdio",
            "-no-reboot", "-m", "128", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-drive", f"file={image},format=raw,if=none,id=d0{drive_opts}", "-device", device]


def tap(output: str) -> list[str]:
    """The TAP lines (plan and results) of a run, in order; diagnostics dropped."""
    lines = output.replace("\r", "").splitlines()
    return [l for l in lines if TAP_RE.match(l) or re.fullmatch(r"1\.\.\d+", l)]


def results(run: MachineRun) -> dict[str, str | None]:
    """Asserts a complete TAP report with every planned test `ok`; returns name -> directive."""
    lines = tap(run.serial)
    assert lines and re.fullmatch(r"1\.\.\d+", lines[0]), run
    planned = int(lines[0][3:])
    found = [TAP_RE.match(l) for l in lines[1:]]
    assert [int(m.group(2)) for m in found] == list(range(1, planned + 1)), run
    assert not [m.group(0) for m in found if m.group(1) == "not ok"], run
    return {m.group(3): m.group(4) for m in found}


def diagnostics(run: MachineRun, prefix: str) -> list[str]:
    return [l for l in run.serial.replace("\r", "").splitlines() if l.startswith(prefix)]


# --------------------------------------------------------------------------- transports

def test_default_run_on_an_image_file(run_machine, guest, tmp_path):
    """The user's first command: no -kernel, the bundled guest on their image through
    `if=virtio` (a transitional device); the default run maps "all passed" to status 0."""
    image = blank_image(tmp_path / "disk.img")
    run = run_machine("-drive", f"file={image},format=raw,if=virtio",
                      "-append", f"expect_ro=0 expect_sectors={IMAGE_SECTORS}")
    assert run.exit_status == 0, run
    res = results(run)
    assert list(res) == ALL_TESTS and res["read_only"] is None, run      # expect_ro=0 ran
    assert diagnostics(run, "# virtio: ")[0].split()[3] == "1af4:1001", run    # transitional
    assert diagnostics(run, "# transport=modern "), run
    assert_pattern_written(image)


@pytest.mark.parametrize("props, append, pci_id, transport", [
    ("", "", "1af4:1001", "modern"),                                   # transitional
    (",disable-legacy=on", "", "1af4:1042", "modern"),                # modern-only
    (",disable-modern=on", "", "1af4:1001", "legacy"),                # legacy-only
    ("", "transport=legacy", "1af4:1001", "legacy"),                  # legacy forced
], ids=["transitional", "modern-only", "legacy-only", "forced-legacy"])
def test_transports(run_machine, guest, tmp_path, props, append, pci_id, transport):
    image = blank_image(tmp_path / "disk.img")
    run = run_machine(*guest_args(guest, image, f"expect_serial={SERIAL} expect_ro=0 "
                                  f"expect_sectors={IMAGE_SECTORS} {append}", props))
    assert run.exit_status == PASSED, run
    res = results(run)
    assert list(res) == ALL_TESTS, run
    assert res["read_only"] is None and res["indirect"] is None, run   # both ran
    assert diagnostics(run, "# virtio: ")[0].split()[3] == pci_id, run
    assert diagnostics(run, f"# transport={transport} "), run
    assert_pattern_written(image)


def test_multiqueue(run_machine, guest, tmp_path):
    image = blank_image(tmp_path / "disk.img")
    run = run_machine(*guest_args(guest, image, "tests=multiqueue,pattern expect_queues=4",
                                  ",num-queues=4"))
    assert run.exit_status == PASSED, run
    assert list(results(run)) == ["init", "multiqueue", "pattern"], run
    assert "# multiqueue: device has 4 request queues, using 4" in diagnostics(run, "# multi"), run
    assert "queues=4" in diagnostics(run, "# transport=")[0].split(), run
    assert_pattern_written(image, last_sector=False)


def test_every_self_test_passes_with_requests_on_an_io_thread(run_machine, guest, tmp_path):
    """iothread=: requests run on an I/O thread and complete from the run loop; the whole
    self-test (polled and interrupt-driven completions, many in flight, four queues, FLUSH)
    passes as in the default mode."""
    image = blank_image(tmp_path / "disk.img")
    args = guest_args(guest, image, f"expect_serial={SERIAL} expect_ro=0 expect_sectors={IMAGE_SECTORS}",
                      ",iothread=io0,num-queues=4")
    run = run_machine("-object", "iothread,id=io0", *args)
    assert run.exit_status == PASSED, run
    assert list(results(run)) == ALL_TESTS, run
    assert_pattern_written(image)


# --------------------------------------------------------------------------- drive options

def test_serial_property_reaches_get_id(run_machine, guest, tmp_path):
    image = blank_image(tmp_path / "disk.img")
    run = run_machine(*guest_args(guest, image, "tests=get_id expect_serial=ABC-42_x",
                                  serial="ABC-42_x"))
    assert run.exit_status == PASSED, run
    assert list(results(run)) == ["init", "get_id"], run
    assert '# serial="ABC-42_x"' in diagnostics(run, "# serial="), run


def test_read_only_drive(run_machine, guest, tmp_path):
    """readonly=on: the guest sees VIRTIO_BLK_F_RO, its write fails with IOERR, every read
    returns the pattern, and the image is byte-identical afterwards."""
    image = pattern_image(tmp_path / "ro.img")
    before = image.read_bytes()
    run = run_machine(*guest_args(guest, image, "expect_ro=1", drive_opts=",readonly=on"))
    assert run.exit_status == PASSED, run
    res = results(run)
    assert res["read_only"] is None, run                 # ran, not skipped
    assert "ro=1" in diagnostics(run, "# capacity=")[0].split(), run
    assert image.read_bytes() == before


@pytest.mark.parametrize("how", [("-snapshot",), ()], ids=["-snapshot", "snapshot=on"])
def test_snapshot_leaves_the_image_unchanged(run_machine, guest, tmp_path, how):
    """The guest writes and reads back through the overlay (so it passes, writes visible to
    itself) while the image file keeps every byte."""
    image = Boot.image(tmp_path / "disk.img", IMAGE_BYTES, b"\xA5" * (3 << 20))
    before = image.read_bytes()
    opts = "" if how else ",snapshot=on"
    run = run_machine(*how, *guest_args(guest, image, "tests=rw_sizes,out_of_range,pattern",
                                        drive_opts=opts))
    assert run.exit_status == PASSED, run
    assert list(results(run)) == ["init", "rw_sizes", "out_of_range", "pattern"], run
    assert image.read_bytes() == before


def test_cache_writethrough(run_machine, guest, tmp_path):
    image = blank_image(tmp_path / "disk.img")
    run = run_machine(*guest_args(guest, image, "tests=rw_sizes,flush,out_of_range,pattern",
                                  drive_opts=",cache=writethrough"))
    assert run.exit_status == PASSED, run
    assert list(results(run)) == ["init", "rw_sizes", "flush", "out_of_range", "pattern"], run
    assert_pattern_written(image)


# --------------------------------------------------------------------------- failures

def test_failing_run_gives_status_3(run_machine, guest, tmp_path):
    image = blank_image(tmp_path / "disk.img")
    run = run_machine(*guest_args(guest, image, "tests=get_id expect_serial=wrong"))
    assert run.exit_status == FAILED, run
    assert [l.split(" #")[0] for l in tap(run.serial)] == ["1..2", "ok 1 - init",
                                                           "not ok 2 - get_id"], run


def test_queue_too_small_for_a_request_fails_init_clearly(run_machine, guest, tmp_path):
    """A ring of 2 cannot hold a 3-descriptor request: the driver says so instead of timing out."""
    image = blank_image(tmp_path / "disk.img")
    run = run_machine(*guest_args(guest, image, "tests=flush queue_size=2"))
    assert run.exit_status == FAILED, run
    assert "not ok 1 - init # queue size below 3 cannot hold a request" in run.serial, run


def test_failing_default_run_gives_status_1(run_machine, tmp_path):
    """The bundled default run maps the guest's failure to status 1 (and success to 0)."""
    image = blank_image(tmp_path / "disk.img")
    run = run_machine("-drive", f"file={image},format=raw,if=virtio",
                      "-append", "tests=get_id expect_serial=wrong")
    assert run.exit_status == 1, run
    assert any(l.startswith("not ok 2 - get_id") for l in tap(run.serial)), run


def test_second_machine_on_a_locked_image(boot, bytecode_env, run_machine, guest, tmp_path):
    """While one machine holds a writable image, a second one on it refuses to start: one
    clear line on stderr, status 1, no guest output; once the first is gone, it runs."""
    image = blank_image(tmp_path / "disk.img")
    # Stopped before the first instruction, its monitor on stdio (so COM1 goes elsewhere).
    first = boot.start("-S", "-monitor", "stdio", "-serial", "null", "-kernel", guest,
                       "-drive", f"file={image},format=raw,if=virtio", env=bytecode_env)
    first.wait_for("(qemu)")           # built: the image is open and locked
    second = run_machine(*guest_args(guest, image, ""))
    assert second.exit_status == 1, second
    err = second.stderr.strip()
    assert len(err.splitlines()) == 1, second
    assert err.startswith("machine: ") and "lock" in err and str(image) in err, second
    assert "1.." not in second.serial, second
    first.send("quit\n")
    first.wait(TIMEOUT)
    assert image.read_bytes().count(0) == IMAGE_BYTES      # the stopped guest never ran
    third = run_machine(*guest_args(guest, image, "tests=pattern"))
    assert third.exit_status == PASSED, third


# --------------------------------------------------------------------------- against QEMU

@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
@pytest.mark.parametrize("props, append", [
    ("", f"expect_serial={SERIAL}"),
    # modern without the optional ring features: NO_NOTIFY / NO_INTERRUPT flags, direct chains
    (",disable-legacy=on,num-queues=4", "expect_queues=4 event_idx=0 indirect=0"),
    ("", "transport=legacy event_idx=0 indirect=0"),
], ids=["transitional", "modern-mq-plain-rings", "forced-legacy"])
def test_same_command_line_on_qemu(boot, bytecode_env, guest, tmp_path, props, append):
    """QEMU's virtio-blk-pci is the reference: the same options give the same TAP lines, the
    same exit status and a byte-identical image. (Both run at once: separate images.)"""
    ours_img = blank_image(tmp_path / "ours.img")
    qemu_img = blank_image(tmp_path / "qemu.img")
    running = boot.start(*guest_args(guest, ours_img, append, props), env=bytecode_env)
    running.proc.stdin.close()
    cmd = [QEMU, *guest_args(guest, qemu_img, append, props)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, timeout=TIMEOUT)
    ours = running.wait(TIMEOUT)
    qemu_out = proc.stdout.decode("utf-8", "replace")
    assert proc.returncode == PASSED, qemu_out
    assert ours.exit_status == PASSED, ours
    assert tap(ours.serial) == tap(qemu_out), f"{ours}\n--- QEMU ---\n{qemu_out}"
    assert len(tap(qemu_out)) == len(ALL_TESTS) + 1
    assert ours_img.read_bytes() == qemu_img.read_bytes()


def run_both(boot, bytecode_env, guest, tmp_path, props, append):
    """The same guest command line on this machine and on QEMU, at once: (ours, QEMU's output,
    QEMU's status, our image, QEMU's image)."""
    ours_img = blank_image(tmp_path / "ours.img")
    qemu_img = blank_image(tmp_path / "qemu.img")
    running = boot.start(*guest_args(guest, ours_img, append, props), env=bytecode_env)
    running.proc.stdin.close()
    proc = subprocess.run([QEMU, *guest_args(guest, qemu_img, append, props)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=TIMEOUT)
    ours = running.wait(TIMEOUT)
    return ours, proc.stdout.decode("utf-8", "replace"), proc.returncode, ours_img, qemu_img


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
@pytest.mark.parametrize("props, append, vectors", [
    ("", "irq=msix", 2),                                              # QEMU's default: queues + 1
    (",num-queues=4", "irq=msix expect_queues=4", 5),
    (",num-queues=4,vectors=3", "irq=msix expect_queues=4", 3),       # queues share entries
    (",disable-modern=on", "irq=msix", 2),                            # legacy header grows to 24
    ("", "irq=msix transport=legacy event_idx=0", 2),
], ids=["default", "mq", "mq-shared-vectors", "legacy-only", "forced-legacy"])
def test_msix_mode_on_ours_and_on_qemu(boot, bytecode_env, guest, tmp_path, props, append, vectors):
    """The guest's MSI-X mode (irq=msix): its interrupt test completes by MSI-X messages through
    the local APIC, on this machine and unchanged on QEMU, with the same TAP lines and image."""
    ours, qemu_out, qemu_status, ours_img, qemu_img = run_both(boot, bytecode_env, guest, tmp_path,
                                                               props, f"expect_serial={SERIAL} {append}")
    assert qemu_status == PASSED, qemu_out
    assert ours.exit_status == PASSED, ours
    assert tap(ours.serial) == tap(qemu_out), f"{ours}\n--- QEMU ---\n{qemu_out}"
    line = f"# interrupt: by MSI-X, {vectors} vectors"
    assert line in ours.serial and line in qemu_out, f"{ours}\n--- QEMU ---\n{qemu_out}"
    assert ours_img.read_bytes() == qemu_img.read_bytes()


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
def test_msix_mode_without_msix_fails_init_on_both(boot, bytecode_env, guest, tmp_path):
    ours, qemu_out, qemu_status, _, _ = run_both(boot, bytecode_env, guest, tmp_path, ",vectors=0", "irq=msix")
    why = "# virtio: irq=msix asked for, but the device has no MSI-X capability"
    assert qemu_status == FAILED and ours.exit_status == FAILED, f"{ours}\n--- QEMU ---\n{qemu_out}"
    assert why in ours.serial and why in qemu_out


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
@pytest.mark.parametrize("props, append", [
    (",packed=on", "ring=packed"),
    (",packed=on,num-queues=4", "ring=packed irq=msix expect_queues=4"),
    (",packed=on,disable-legacy=on", "ring=packed event_idx=0 indirect=0"),   # ENABLE/DISABLE flags
    (",packed=on,queue-size=16", "ring=packed"),                              # many laps of the ring
], ids=["packed", "packed-mq-msix", "packed-plain", "packed-small-ring"])
def test_packed_ring_mode_on_ours_and_on_qemu(boot, bytecode_env, guest, tmp_path, props, append):
    """The guest's packed-ring mode (ring=packed, the device's packed=on): the same TAP lines,
    the same negotiated features and a byte-identical image here and on QEMU."""
    ours, qemu_out, qemu_status, ours_img, qemu_img = run_both(boot, bytecode_env, guest, tmp_path,
                                                               props, f"expect_serial={SERIAL} {append}")
    assert qemu_status == PASSED, qemu_out
    assert ours.exit_status == PASSED, ours
    assert tap(ours.serial) == tap(qemu_out), f"{ours}\n--- QEMU ---\n{qemu_out}"
    features = [l for l in qemu_out.replace("\r", "").splitlines() if l.startswith("# transport=")]
    assert features and features[0] in ours.serial and " accepted=5" in features[0], features
    assert ours_img.read_bytes() == qemu_img.read_bytes()


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
def test_packed_ring_mode_without_packed_on_fails_init_on_both(boot, bytecode_env, guest, tmp_path):
    ours, qemu_out, qemu_status, _, _ = run_both(boot, bytecode_env, guest, tmp_path, "", "ring=packed")
    why = "VIRTIO_F_RING_PACKED was not negotiated"
    assert qemu_status == FAILED and ours.exit_status == FAILED, f"{ours}\n--- QEMU ---\n{qemu_out}"
    assert why in ours.serial and why in qemu_out
