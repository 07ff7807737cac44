"""QEMU's drive error policies (-drive werror= / rerror=): a host I/O error is reported to the
guest (IOERR), ignored (OK), or pauses the machine (`stop`, and `enospc` for ENOSPC) until it
continues, when the failed request is retried. Errors come from blkdebug rules; the guest
self-test under werror=stop ends as on QEMU, with the same image."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

from machine.api import Session
from virtio_driver import S_IOERR, S_OK, T_FLUSH, T_IN, T_OUT, BlkRequests, Bench

QEMU = shutil.which("qemu-system-x86_64")


def rules(tmp_path, event="write_aio", errno=5, once=True, name="r.conf", iotype=None):
    p = tmp_path / name
    p.write_text(f'[inject-error]\nevent = "{event}"\nerrno = "{errno}"\n'
                 f'once = "{"on" if once else "off"}"\n' + (f'iotype = "{iotype}"\n' if iotype else ""))
    return p


def bench(tmp_path, **drive):
    b = Bench(tmp_path, disk_size=1 << 20, **drive).start()
    b.stops = []
    b.vdev.on_io_error = lambda: b.stops.append(True)
    return b


# ------------------------------------------------------------------ the device


@pytest.mark.parametrize("werror, errno, status", [
    ("report", 5, S_IOERR),
    ("enospc", 5, S_IOERR),            # enospc stops only on ENOSPC
    ("ignore", 5, S_OK),               # the guest is told it worked
    ("ignore", 28, S_OK),
])
def test_write_errors_are_reported_or_ignored(tmp_path, werror, errno, status):
    b = bench(tmp_path, blkdebug=rules(tmp_path, errno=errno), werror=werror)
    try:
        before = b.image()
        assert b.run(T_OUT, 0, out=b"w" * 512)[1] == status
        assert b.image() == before and b.stops == []       # the write never happened
    finally:
        b.close()


@pytest.mark.parametrize("werror, errno", [("stop", 5), ("enospc", 28)])
def test_a_stop_policy_parks_the_request_and_retries_it_when_the_machine_continues(tmp_path, werror, errno):
    b = bench(tmp_path, blkdebug=rules(tmp_path, errno=errno), werror=werror)
    try:
        vq = b.vqs[0]
        req = BlkRequests(vq).submit(T_OUT, 3, out=b"p" * 512)
        b.drv.kick(0)
        assert b.stops == [True] and vq.get_used() == []          # parked: no completion yet
        assert len(b.vdev.parked) == 1
        b.vdev.restart_parked()                                    # `cont`
        assert [h for h, _ in vq.get_used()] == [req.head]
        assert BlkRequests(vq).result(req)[1] == S_OK             # the rule fired once only
        assert b.image()[3 * 512:4 * 512] == b"p" * 512
    finally:
        b.close()


def test_read_errors_follow_rerror(tmp_path):
    b = bench(tmp_path, blkdebug=rules(tmp_path, event="read_aio", once=False), rerror="stop")
    try:
        BlkRequests(b.vqs[0]).submit(T_IN, 0, in_len=512)
        b.drv.kick(0)
        assert b.stops == [True] and b.vqs[0].get_used() == []
        b.vdev.restart_parked()                                    # fails again: parks again
        assert len(b.vdev.parked) == 1 and b.stops == [True, True]
    finally:
        b.close()
    b = bench(tmp_path, blkdebug=rules(tmp_path, event="read_aio", name="r2.conf"))
    try:
        assert b.run(T_IN, 0, in_len=512)[1] == S_IOERR            # rerror=report, the default
    finally:
        b.close()


def test_flush_errors_follow_werror(tmp_path):
    b = bench(tmp_path, blkdebug=rules(tmp_path, event="flush_to_disk"), werror="ignore")
    try:
        assert b.run(T_FLUSH)[1] == S_OK
    finally:
        b.close()


def test_a_reset_drops_parked_requests(tmp_path):
    b = bench(tmp_path, blkdebug=rules(tmp_path, once=False, iotype="write"), werror="stop")
    try:
        BlkRequests(b.vqs[0]).submit(T_OUT, 0, out=b"x" * 512)
        b.drv.kick(0)
        assert b.vdev.parked
        b.drv.set_status(0)
        assert b.vdev.parked == []
        b.vdev.restart_parked()                                    # nothing left to touch
        b.start()
        assert b.run(T_IN, 0, in_len=512)[1] == S_OK
    finally:
        b.close()


# ------------------------------------------------------------------ the machine


def test_werror_stop_pauses_the_machine_and_cont_finishes_the_guest(tmp_path, guest):
    img = tmp_path / "d.img"
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    r = rules(tmp_path)
    with Session.from_args(["-kernel", str(guest), "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                            "-drive", f"file=blkdebug:{r}:{img},format=raw,if=none,id=d0,werror=stop",
                            "-device", "virtio-blk-pci,drive=d0"]) as s:
        stop = s.run(timeout=120)
        assert stop.message == "io-error"
        assert s.monitor("info status") == "VM status: paused (io-error)\n"
        end = s.run(timeout=120)
        assert end.exit_status == 1                               # every self-test passed


@pytest.mark.parametrize("arg, message", [
    ("werror=bogus", "'bogus' invalid write error action"),
    ("rerror=enospc", "'enospc' invalid read error action"),
])
def test_bad_policies_are_one_line_as_qemu(tmp_path, arg, message):
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4096))
    r = subprocess.run([sys.executable, "-m", "machine", "-drive", f"file={img},format=raw,if=virtio,{arg}"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_pause_with_no_monitor_ends_with_status_1_and_says_why(tmp_path, guest):
    img = tmp_path / "d.img"
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    r = subprocess.run([sys.executable, "-m", "machine",
                        "-drive", f"file=blkdebug:{rules(tmp_path)}:{img},format=raw,if=virtio,werror=stop"],
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and "paused on an I/O error" in r.stderr, r.stderr


def _qemu_with_cont(cmd: list[str]) -> int:
    """Run QEMU with -monitor stdio; when `info status` says paused (io-error), `cont`."""
    proc = subprocess.Popen(cmd + ["-monitor", "stdio"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = b""
    deadline = time.monotonic() + 120                     # a hang guard, never the assertion
    try:
        while time.monotonic() < deadline:
            proc.stdin.write(b"info status\n")
            proc.stdin.flush()
            while b"VM status:" not in out:
                chunk = proc.stdout.read1(4096)
                if not chunk:
                    return proc.wait(timeout=60)
                out += chunk
            status_line = out[out.index(b"VM status:"):].split(b"\n", 1)[0]
            out = out[out.index(b"VM status:") + 10:]
            if b"io-error" in status_line:
                proc.stdin.write(b"cont\n")
                proc.stdin.flush()
                return proc.wait(timeout=120)
            time.sleep(0.2)
        raise AssertionError("QEMU never paused")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
def test_the_same_pause_and_retry_as_qemu(tmp_path, guest):
    r = rules(tmp_path)
    images = {}
    for who in ("qemu", "ours"):
        img = tmp_path / f"{who}.img"
        with open(img, "wb") as f:
            f.truncate(16 << 20)
        images[who] = img
    common = ["-display", "none", "-no-reboot", "-m", "128", "-kernel", str(guest), "-serial", "null",
              "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-device", "virtio-blk-pci,drive=d0"]
    qemu_status = _qemu_with_cont([QEMU, "-nodefaults", *common, "-drive",
                                   f"file=blkdebug:{r}:{images['qemu']},format=raw,if=none,id=d0,werror=stop"])
    with Session.from_args([*common, "-drive",
                            f"file=blkdebug:{r}:{images['ours']},format=raw,if=none,id=d0,werror=stop"]) as s:
        assert s.run(timeout=120).message == "io-error"
        ours_status = s.run(timeout=120).exit_status
    assert qemu_status == ours_status == 1
    assert images["qemu"].read_bytes() == images["ours"].read_bytes()


def test_a_parked_request_on_a_packed_ring_completes_on_cont(tmp_path):
    from test_virtio_packed import start
    b = Bench(tmp_path, disk_size=1 << 20, props={"packed": "on"},
              blkdebug=rules(tmp_path), werror="stop")
    try:
        ring = start(b)
        stops = []
        b.vdev.on_io_error = lambda: stops.append(True)
        req = BlkRequests(ring).submit(T_OUT, 5, out=b"k" * 512)
        b.drv.kick(0)
        assert stops == [True] and ring.get_used() == []
        b.vdev.restart_parked()
        assert [h for h, _ in ring.get_used()] == [req.head]
        assert b.image()[5 * 512:6 * 512] == b"k" * 512
    finally:
        b.close()
