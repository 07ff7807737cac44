"""Machine snapshots (machine/savevm.py, machine/savevm_store.py): save the whole machine at a
point P, run to the end (serial output O, instruction count N, image hash H); load, run to the
end again: O, N and H again. At points that stress different state: early and late in the
bundled guest's self-test, between a kick and the interrupt of its completion, with the packed
ring and MSI-X, in real mode inside SeaBIOS, and inside Linux. Named snapshots in files, the
monitor's commands and -loadvm, and snapshots the machine must refuse without changing."""

from __future__ import annotations

import hashlib
import re
import struct
import sys
import zlib
from pathlib import Path

import pytest

from machine import savevm
from machine.api import Session, SnapshotError
from machine.testing import Boot, boot  # noqa: F401  (the fixture)
from machine.vmstate import VMStateError

BIOS = Path("/usr/share/seabios/bios.bin")
EXIT = ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
BUDGET = 400_000_000            # instructions: a guard, never reached by a passing guest


def _guest_session(guest, img, *extra, append=None):
    args = ["-kernel", str(guest), "-display", "none", *EXIT, *extra]
    if not any(a.startswith("virtio-blk-pci") for a in extra):
        args += ["-drive", f"file={img},format=raw,if=virtio"]
    if append:
        args += ["-append", append]
    return Session.from_args(args)


def _digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _to_end(s, img):
    """Run to the guest's exit: (stop kind, exit status, serial since now, instructions, image)."""
    start = len(s._tap.data)
    stop = s.run(max_instructions=BUDGET)
    return stop.kind, stop.exit_status, bytes(s._tap.data[start:]), s.machine.instructions, _digest(img)


def _exact_from_here(s, img):
    """Save here, run to the end, load, run to the end: the same both times. Returns the end."""
    state = s.save_state()
    first = _to_end(s, img)
    s.load_state(state)
    # Everything the snapshot holds reads back as saved (registers, devices, timers, RAM).
    again = s.save_state(disks=False)
    assert [(x.name, x.instance_id, x.values) for x in again.sections] == \
        [(x.name, x.instance_id, x.values) for x in state.sections]
    assert _to_end(s, img) == first
    state.release()
    return first


@pytest.mark.parametrize("point", [400_000, 6_000_000])
def test_save_run_load_run_is_exact(guest, tmp_path, point):
    """The guest's self-test writes its disk: after loading, RAM *and* disk are as at the save."""
    img = Boot.image(tmp_path / "d.img", 4 << 20)
    with _guest_session(guest, img) as s:
        s.run(max_instructions=point)
        assert s.machine.instructions == point
        kind, status, out, _, _ = _exact_from_here(s, img)
        assert (kind, status) == ("exited", 1) and b"not ok" not in out and out


def test_between_a_kick_and_its_interrupt(guest, tmp_path):
    """Stopped right after a notify: the request is done, its interrupt not yet taken."""
    img = Boot.image(tmp_path / "d.img", 4 << 20)
    with _guest_session(guest, img) as s:
        s.break_on("virtio-blk notify")
        m = s.machine
        for _ in range(400):       # the guest polls some requests; find one whose interrupt waits
            stop = s.run(max_instructions=BUDGET)
            assert stop.kind == "device", stop
            if m._interrupt_source() is not None:
                break
        assert m._interrupt_source() is not None        # a completion interrupt is pending
        s.breakpoints.clear()
        kind, status, out, _, _ = _exact_from_here(s, img)
        assert (kind, status) == ("exited", 1) and b"not ok" not in out


def test_packed_ring_with_msix(guest, tmp_path):
    img = Boot.image(tmp_path / "d.img", 4 << 20)
    with _guest_session(guest, img, "-drive", f"file={img},format=raw,if=none,id=d0",
                        "-device", "virtio-blk-pci,drive=d0,packed=on,num-queues=4",
                        append="ring=packed irq=msix expect_queues=4") as s:
        s.break_on("virtio-blk notify")
        for _ in range(5):
            assert s.run(max_instructions=BUDGET).kind == "device"
        s.breakpoints.clear()
        vdev = s.machine.drives["d0"][1]
        assert all(q.packed for q in vdev.queues) and vdev.transport.msix.enabled
        kind, status, out, _, _ = _exact_from_here(s, img)
        assert (kind, status) == ("exited", 1) and b"not ok" not in out


@pytest.mark.skipif(not BIOS.exists(), reason=f"SeaBIOS is not installed ({BIOS} absent)")
def test_in_real_mode_inside_seabios(tmp_path):
    from test_seabios_boot import make_image, sector
    img = make_image(tmp_path / "boot.img", sector("mbr"))
    with Session.from_args(["-bios", str(BIOS), "-drive", f"file={img},format=raw,if=virtio",
                            "-display", "none", *EXIT]) as s:
        # SeaBIOS runs its POST in 32-bit mode; the boot sector's int 13h/10h/16h/1Ah calls run
        # its real-mode handlers (F segment). Find the CPU in one of those.
        cpu = s.machine.cpu
        s.run(max_instructions=5_000_000)
        while not (cpu.mode == "real" and 0xF0000 <= cpu.linear_pc() < 0x100000):
            assert s.run(max_instructions=1_000).kind == "limit"
        kind, status, out, _, _ = _exact_from_here(s, img)
        assert (kind, status) == ("exited", 33) and b"MBR: all passed" in out


def test_inside_linux(tmp_path):
    """One Linux boot (about a minute): saved once init runs and drives the disk."""
    import linux_guest as lg
    try:
        kernel = lg.fetch_kernel()
    except lg.Unavailable as exc:
        pytest.skip(f"Debian's cloud kernel cannot be had here: {exc}")
    from building import built
    init = built("tests/linux", "out/init")
    try:
        initrd = lg.build_initramfs(kernel, init, tmp_path / "initrd.cpio")
    except lg.Unavailable as exc:
        pytest.skip(f"cannot build the initramfs: {exc}")
    disk = lg.make_disk(tmp_path / "disk.img")
    with Session.from_args(lg.command_line(kernel, initrd, disk)) as s:
        assert s.run_until_serial("ok 8", max_instructions=20_000_000_000).kind != "exited"
        kind, status, out, _, _ = _exact_from_here(s, disk)
        assert (kind, status) == ("exited", lg.EXIT_PASS) and b"not ok" not in out, out[-2000:]


# ------------------------------------------------------------------------------------------
# named snapshots in files
# ------------------------------------------------------------------------------------------

def test_savevm_loadvm_by_name_across_processes(guest, tmp_path, boot):
    img = Boot.image(tmp_path / "d.img", 4 << 20)
    with _guest_session(guest, img) as s:
        assert s.monitor("info snapshots") == "There is no snapshot available.\n"
        s.run(max_instructions=2_000_000)
        assert s.monitor("savevm early") == ""
        s.run(max_instructions=3_000_000)
        info = s.savevm("late")
        assert (info.id, info.icount) == (2, 5_000_000)
        listing = s.monitor("info snapshots").splitlines()
        assert listing[:2] == ["List of snapshots present on all disks:",
                               "ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT"]
        assert listing[2].startswith("--        early            ") and listing[2].endswith("    2000000")
        end = _to_end(s, img)                       # from "late"
        assert s.monitor("loadvm early") == ""
        assert s.machine.instructions == 2_000_000
        from_early = _to_end(s, img)
        assert from_early[3:] == end[3:] and from_early[2].endswith(end[2])
    # A new process: -loadvm starts from the snapshot, with the disk as it was then.
    run = boot("-kernel", guest, "-drive", f"file={img},format=raw,if=virtio", *EXIT,
               "-display", "none", "-loadvm", "late")
    assert run.exit_status == 1 and run.serial_bytes == end[2], run
    assert _digest(img) == end[4]
    with _guest_session(guest, img) as s:
        assert s.monitor("delvm early") == "" and s.monitor("delvm nosuch") == ""
        assert [i.name for i in s.snapshots()] == ["late"]
        s.loadvm("late")
        assert _to_end(s, img) == end


def test_missing_name_and_no_disk_say_what_qemu_says(guest, tmp_path, boot):
    img = Boot.image(tmp_path / "d.img", 4 << 20)
    with _guest_session(guest, img) as s:
        s.run(max_instructions=100_000)
        before = s.registers
        assert s.monitor("loadvm nosuch") == "Error: Snapshot 'nosuch' does not exist in one or more devices\n"
        with pytest.raises(SnapshotError):
            s.loadvm("nosuch")
        assert s.registers == before
    with Session.from_args(["-kernel", str(guest), "-display", "none", *EXIT]) as s:
        assert s.monitor("savevm x") == "Error: no block device can store vmstate for snapshot\n"
        assert s.monitor("info snapshots") == "no block device can store vmstate for snapshot\n"
    run = boot("-kernel", guest, "-drive", f"file={img},format=raw,if=virtio", *EXIT,
               "-display", "none", "-loadvm", "nosuch")
    assert run.exit_status == 1
    assert run.stderr.strip() == "machine: Snapshot 'nosuch' does not exist in one or more devices"


# ------------------------------------------------------------------------------------------
# bad snapshots: one clear error, the machine unchanged
# ------------------------------------------------------------------------------------------

def _fingerprint(m) -> tuple:
    state = m.save_state(disks=False)
    return tuple((s.name, s.instance_id, s.values if s.name != "ram" else _ram_digest(s.values))
                 for s in state.sections)


def _ram_digest(chunks) -> bytes:
    h = hashlib.sha256()
    for off, data in chunks:
        h.update(off.to_bytes(8, "little") + data)
    return h.digest()


def _reencode(blob: bytes, edit) -> bytes:
    """blob with edit(body) applied and the checksum made right again."""
    body = edit(bytearray(blob[:-4]))
    return bytes(body) + struct.pack("<I", zlib.crc32(body))


@pytest.fixture
def small(guest, tmp_path):
    img = Boot.image(tmp_path / "d.img", 1 << 20)
    with _guest_session(guest, img, "-m", "16") as s:
        s.run(max_instructions=1_000_000)
        state = s.save_state(disks=False)
        blob = s.machine.encode_state(state)
        s.run(max_instructions=200_000)
        yield s, blob


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b[:len(b) // 2], "checksum mismatch"),
    (lambda b: b[:40] + bytes([b[40] ^ 1]) + b[41:], "checksum mismatch"),
    (lambda b: b"not a snapshot at all" + b, "bad magic"),
    (lambda b: _reencode(b, lambda body: body[:8] + struct.pack("<I", 2) + body[12:]),
     "format version 2 is newer than this build supports (1)"),
    (lambda b: b[:-4] + b"\0\0\0\0", "checksum"),
])
def test_bad_files_are_refused_and_change_nothing(small, mutate, message):
    s, blob = small
    before = _fingerprint(s.machine)
    with pytest.raises(VMStateError, match=re.escape(message)):
        s.machine.load_state(s.machine.decode_state(mutate(blob)))
    assert _fingerprint(s.machine) == before


def _section_payload_offset(blob: bytes, wanted: str) -> tuple[int, int]:
    pos = 16
    while True:
        n = blob[pos]
        name = blob[pos + 1:pos + 1 + n].decode()
        inst, ver, size = struct.unpack_from("<IIQ", blob, pos + 1 + n)
        if name == wanted:
            return pos + 1 + n, size
        pos += 1 + n + 16 + size


def test_a_future_section_version_is_refused(small):
    s, blob = small
    off, _ = _section_payload_offset(blob, "pit")
    bad = _reencode(blob, lambda body: body[:off + 4] + struct.pack("<I", 9) + body[off + 8:])
    with pytest.raises(VMStateError, match="section 'pit' has version 9, newer than this build supports"):
        s.machine.decode_state(bad)


def test_another_configuration_is_refused(guest, tmp_path, small):
    s, blob = small
    img = Boot.image(tmp_path / "other.img", 1 << 20)
    with _guest_session(guest, img, "-m", "32") as other:
        with pytest.raises(VMStateError, match="the snapshot has 16 MiB of RAM, this machine 32 MiB"):
            other.machine.decode_state(blob)
    with _guest_session(guest, tmp_path / "other.img", "-m", "16", "-drive",
                        f"file={Boot.image(tmp_path / 'two.img', 1 << 20)},format=raw,if=virtio") as other:
        before = _fingerprint(other.machine)
        with pytest.raises(VMStateError, match="other drives|does not|has no section"):
            other.machine.load_state(other.machine.decode_state(blob))
        assert _fingerprint(other.machine) == before


def test_impossible_device_values_are_refused(small):
    """A well-formed file whose values no device can hold (a PIT count of 0, a queue outside
    RAM): refused in the check, before anything changes."""
    s, blob = small
    state = s.machine.decode_state(blob)
    pit = state.section("pit").values
    pit["channels"] = ({**pit["channels"][0], "n": 0},) + pit["channels"][1:]
    before = _fingerprint(s.machine)
    with pytest.raises(VMStateError, match="pit: channel 0"):
        s.machine.load_state(state)
    assert _fingerprint(s.machine) == before


def test_a_failing_apply_puts_everything_back(small, monkeypatch):
    s, blob = small
    state = s.machine.decode_state(blob)
    before = _fingerprint(s.machine)
    real_apply = savevm.vmstate.apply
    calls = []

    def flaky(obj, desc, values):
        calls.append(desc.name)
        if desc.name == "clock" and calls.count("clock") == 1:
            raise OSError(5, "Input/output error")
        return real_apply(obj, desc, values)
    monkeypatch.setattr(savevm.vmstate, "apply", flaky)
    with pytest.raises(VMStateError, match="unchanged: .*Input/output error"):
        s.machine.load_state(state)
    assert _fingerprint(s.machine) == before


def test_through_gdbs_monitor(guest, tmp_path):
    """gdb: `monitor savevm`, run on, `monitor loadvm`, and gdb (its register cache flushed)
    is back where the snapshot was; the guest then runs to its exit as before."""
    import shutil
    if shutil.which("gdb") is None:
        pytest.skip("gdb is not installed")
    from test_debug_machine import Running, run_gdb
    img = Boot.image(tmp_path / "d.img", 4 << 20)
    m = Running(["-kernel", str(guest), "-drive", f"file={img},format=raw,if=virtio",
                 "-display", "none", "-serial", "none", *EXIT])
    try:
        out = run_gdb(guest, m.port, "break vblk_init", "continue", "p/x $pc",
                      "monitor savevm at-init", "monitor info snapshots",
                      "delete", "stepi 500", "p/x $pc",
                      "monitor loadvm at-init", "maint flush register-cache", "p/x $pc",
                      "continue")
    finally:
        m.close()
    pcs = re.findall(r"^\$\d+ = (0x[0-9a-f]+)$", out, re.M)
    assert len(pcs) == 3 and pcs[0] == pcs[2] != pcs[1], out
    assert "at-init" in out and "ICOUNT" in out, out
    assert "exited with code 01" in out, out


def test_a_resized_disk_comes_back_with_its_size(guest, tmp_path):
    img = Boot.image(tmp_path / "d.img", 4 << 20)
    with _guest_session(guest, img) as s:
        s.run(max_instructions=1_000_000)
        state = s.save_state()
        before = _digest(img)
        assert s.monitor("block_resize virtio0 8M") == ""
        assert img.stat().st_size == 8 << 20
        s.load_state(state)
        assert img.stat().st_size == 4 << 20 and _digest(img) == before
        assert s.machine.drives["virtio0"][1].capacity == (4 << 20) // 512


def test_a_snapshot_drive_cannot_hold_named_snapshots(guest, tmp_path):
    img = Boot.image(tmp_path / "d.img", 4 << 20)
    with _guest_session(guest, img, "-snapshot") as s:
        assert s.monitor("savevm x") == "Error: Device 'virtio0' is writable but does not support snapshots\n"
        s.run(max_instructions=2_000_000)
        state = s.save_state()             # in memory it works: the overlay is rolled back too
        end = _to_end(s, img)
        s.load_state(state)
        assert _to_end(s, img) == end


@pytest.mark.parametrize("ring", ["split", "packed"])
def test_parked_requests_of_a_werror_stop_pause(guest, tmp_path, ring):
    """Paused on an I/O error (werror=stop) with a request parked: the snapshot keeps it (as
    parsed: a packed ring's chain cannot be found again by its buffer id), and continuing after
    loadvm retries it as continuing the first time did."""
    from test_block_error_policy import rules
    img = Boot.image(tmp_path / "d.img", 16 << 20)
    packed = ring == "packed"
    with Session.from_args(["-kernel", str(guest), *EXIT, "-display", "none",
                            "-drive", f"file=blkdebug:{rules(tmp_path)}:{img},format=raw,if=none,id=d0,werror=stop",
                            "-device", "virtio-blk-pci,drive=d0" + (",packed=on" if packed else ""),
                            *(["-append", "ring=packed"] if packed else [])]) as s:
        assert s.run(max_instructions=BUDGET).message == "io-error"
        vdev = s.machine.drives["d0"][1]
        parked = [(q.index, req) for q, req in vdev.parked]
        assert parked
        state = s.save_state()
        first = _to_end(s, img)
        s.load_state(state)
        assert [(q.index, req) for q, req in vdev.parked] == parked
        assert s.monitor("info status") == "VM status: paused (io-error)\n"
        assert _to_end(s, img) == first and first[:2] == ("exited", 1)


def test_a_pending_bottom_half_is_saved_by_its_queue(guest, tmp_path):
    """A virtio-blk queue's bottom half (bounded work per notify) is state: saved as
    'virtio-blk0/0', restored as a one-shot timer that resumes that queue; one without a key
    cannot be saved."""
    img = Boot.image(tmp_path / "d.img", 4 << 20)
    with _guest_session(guest, img) as s:
        m = s.machine
        s.run(max_instructions=1_000_000)
        resumed = []
        vdev = m.drives["virtio0"][1]
        vdev.resume_queue = lambda q: resumed.append(q.index)
        vdev.defer(lambda: None, 0)
        state = s.machine.decode_state(s.machine.encode_state(s.save_state(disks=False)))
        assert [a for a in state.section("clock").values["armed"] if a[0] == -1] == \
            [(-1, m.clock.now + 1000, "virtio-blk0/0")]
        s.run(max_instructions=100_000)            # the original fires, then is gone
        s.load_state(state)
        s.run(max_instructions=100_000)
        assert resumed == [0]                      # the restored one resumed queue 0
        m.bottom_half(lambda: None)
        with pytest.raises(VMStateError, match="cannot be saved"):
            s.save_state()


def test_a_held_completion_is_saved_and_comes_back(guest, tmp_path):
    """A blkdebug [delay] rule holds a read's completion; a state saved while it is held brings
    it back on load, at the same virtual time, and the run ends as the first did."""
    img = Boot.image(tmp_path / "d.img", 4 << 20)
    rules = tmp_path / "slow.conf"
    rules.write_text('[delay]\nevent = "read_aio"\nlatency-ns = "200000"\n')
    with _guest_session(guest, img, "-drive", f"file=blkdebug:{rules}:{img},format=raw,if=none,id=d0",
                        "-device", "virtio-blk-pci,drive=d0") as s:
        vdev = s.machine.devices["virtio-blk0"].vdev
        while not vdev.delayed:
            assert s.run(max_instructions=20_000).kind == "limit"
        held = list(vdev.delayed)
        state = s.save_state()
        data = savevm.encode(s.machine, state)                  # the timer has a key: it can be saved
        assert savevm.decode(s.machine, data).sections[-1].values == state.sections[-1].values
        first = _to_end(s, img)
        s.load_state(state)
        assert vdev.delayed == held
        assert _to_end(s, img) == first
        assert first[:2] == ("exited", 1) and b"not ok" not in first[2]
        state.release()
