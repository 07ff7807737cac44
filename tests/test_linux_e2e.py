"""Linux's own virtio_pci + virtio_blk drive our disk: Debian 12's cloud kernel boots with
QEMU's command line (-kernel bzImage -initrd -append, no extra kernel parameters), its init
(tests/linux/init.c) loads the virtio modules and checks size, serial (GET_ID), block size and
read-only flag, O_DIRECT reads of a host pattern, writes, FLUSH, WRITE_ZEROES and DISCARD byte
for byte, and reports TAP on the console. The same options run on QEMU, and the image is checked
from the host afterwards. Each configuration is a separate test so xdist spreads the boots
(about 1-2 G instructions each on our machine) over the workers.

The kernel package comes from apt (cached, see linux_guest.py); the tests skip, saying why,
where it cannot be had."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import linux_guest as lg

QEMU = shutil.which("qemu-system-x86_64")
ROOT = Path(__file__).resolve().parent.parent
OUR_LIMIT = 900.0           # seconds; a guard against a hung run, never an assertion
QEMU_LIMIT = 120.0
TAP_RE = re.compile(r"^(not ok|ok) (\d+) - (.*)$")

# id: (virtio-blk-pci properties, -drive properties, logical block size, read-only, rebind)
MODES = {
    "transitional": ("", "", 512, False, True),
    "modern": ("disable-legacy=on", "", 512, False, False),
    "legacy": ("disable-modern=on", "", 512, False, False),
    "readonly": ("", "readonly=on", 512, True, False),
    "num-queues": ("num-queues=4", "", 512, False, False),
    "lbs4096": ("logical_block_size=4096,physical_block_size=4096", "", 4096, False, False),
    "intx": ("vectors=0", "", 512, False, False),
    "packed": ("packed=on", "", 512, False, False),
}
VIRTIO_F_RING_PACKED = 34
# The configuration booted in the exact clock mode (the default, every instruction counted); the
# others boot with -icount off, the fast mode (about 3x faster here: these tests check I/O, not
# instruction counts), so the suite's Linux boots stay affordable. The gdb test below boots in
# the exact mode too (an attached debugger holds it).
EXACT_MODE = "transitional"
# The TAP lines every run prints, by mode (tests/linux/init.c).
EXPECTED_TESTS = {"transitional": 17, "readonly": 8}


@pytest.fixture(scope="module")
def kernel() -> lg.Kernel:
    try:
        return lg.fetch_kernel()
    except lg.Unavailable as exc:
        pytest.skip(f"Debian's cloud kernel cannot be had here: {exc}")


@pytest.fixture(scope="module")
def initrd(kernel, tmp_path_factory) -> Path:
    from building import built
    init = built("tests/linux", "out/init")     # a missing tool skips; our compile error fails
    try:
        return lg.build_initramfs(kernel, init, tmp_path_factory.mktemp("linux") / "initrd.cpio")
    except lg.Unavailable as exc:
        pytest.skip(f"cannot build the initramfs: {exc}")


def tap(output: str) -> list[tuple[bool, int, str]]:
    return [(m.group(1) == "ok", int(m.group(2)), m.group(3))
            for m in map(TAP_RE.match, output.splitlines()) if m]


def run(program: list[str], kernel: lg.Kernel, initrd: Path, disk: Path, mode: str,
        limit: float, extra: tuple[str, ...] = ()) -> tuple[int, str]:
    props, drive_props, lbs, ro, rebind = MODES[mode]
    args = lg.command_line(kernel, initrd, disk, props, drive_props, lbs, ro, rebind) + list(extra)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(program + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, text=True, errors="replace", timeout=limit,
                          env=env, cwd=ROOT)
    return proc.returncode, proc.stdout


def check_run(status: int, output: str, disk: Path, mode: str) -> None:
    results = tap(output)
    failed = [f"{n} - {what}" for good, n, what in results if not good]
    tail = "\n".join(output.splitlines()[-25:])
    assert not failed, f"failed: {failed}\n{tail}"
    assert len(results) == EXPECTED_TESTS.get(mode, 14), tail
    assert f"1..{len(results)}" in output
    assert status == lg.EXIT_PASS, f"exit status {status}\n{tail}"
    assert lg.disk_problems(disk, MODES[mode][3]) == []
    check_transport(output, mode)


def check_transport(output: str, mode: str) -> None:
    """Linux's virtio_pci uses MSI-X by default, INTx through the IOAPIC with vectors=0, and
    negotiates the packed ring with packed=on (init.c reports what it negotiated)."""
    irqs = [l[len("# irq: "):] for l in output.splitlines() if l.startswith("# irq: ")]
    features = [l[len("# virtio features: "):] for l in output.splitlines()
                if l.startswith("# virtio features: ")]
    assert irqs and features, output[-2000:]
    if mode == "intx":
        assert any("IO-APIC" in l for l in irqs) and not any("MSI" in l for l in irqs), irqs
    else:
        assert any("PCI-MSI" in l and "-req" in l for l in irqs), irqs
    packed = features[0][VIRTIO_F_RING_PACKED] == "1"
    assert packed == (mode == "packed"), features


@pytest.mark.parametrize("mode", list(MODES))
def test_linux_virtio_blk_on_our_machine(kernel, initrd, tmp_path, mode):
    disk = lg.make_disk(tmp_path / "disk.img")
    clock = () if mode == EXACT_MODE else ("-icount", "off")
    status, output = run([sys.executable, "-m", "machine"], kernel, initrd, disk, mode, OUR_LIMIT,
                         clock)
    check_run(status, output, disk, mode)


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
@pytest.mark.parametrize("mode", list(MODES))
def test_linux_virtio_blk_on_qemu(kernel, initrd, tmp_path, mode):
    disk = lg.make_disk(tmp_path / "disk.img")
    status, output = run([QEMU], kernel, initrd, disk, mode, QEMU_LIMIT)
    check_run(status, output, disk, mode)


@pytest.mark.parametrize("program", ["ours", "qemu"])
@pytest.mark.parametrize("end", ["poweroff", "reboot"])
def test_linux_poweroff_and_reboot_end_the_machine(kernel, initrd, tmp_path, program, end):
    """`poweroff` goes through ACPI S5 (the DSDT's \\_S5, PM1a_CNT), `reboot` through the FADT's
    reset register (or 0xCF9, the keyboard controller): under -no-reboot both end the machine
    with status 0, on ours as on QEMU, after the init's checks passed."""
    if program == "qemu" and QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    disk = lg.make_disk(tmp_path / "disk.img")
    args = lg.command_line(kernel, initrd, disk, end=end)
    cmd = [sys.executable, "-m", "machine"] if program == "ours" else [QEMU]
    if program == "ours":
        args += ["-icount", "off"]          # the fast mode: these check the end, not counts
    proc = subprocess.run(cmd + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, text=True, errors="replace",
                          timeout=OUR_LIMIT if program == "ours" else QEMU_LIMIT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)
    results = tap(proc.stdout)
    tail = "\n".join(proc.stdout.splitlines()[-25:])
    assert results and all(good for good, _, _ in results), tail
    assert "# all passed" in proc.stdout, tail
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{tail}"
    assert lg.disk_problems(disk, False) == []


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
def test_gdb_and_device_breakpoints_on_a_running_linux_kernel(kernel, initrd, tmp_path):
    """A driver author's session on the real driver: a device breakpoint on Linux's first FLUSH
    stops the machine inside the kernel; gdb attaches with the x86-64 description, reads the
    registers, decodes and steps kernel code and asks the monitor about the device; after
    `detach` Linux carries on and every check of its init still passes. Trace events see the
    same requests."""
    import io
    import threading
    import time

    from machine import trace
    from machine.cli import parse_args
    from machine.config import CharDev
    from machine.debug.session import attach_debugger
    from machine.debug.target import STOP_DEVICE
    from machine.pc import Machine

    disk = lg.make_disk(tmp_path / "disk.img")
    serial = tmp_path / "serial.txt"
    config = parse_args(lg.command_line(kernel, initrd, disk, rebind=True))
    config.serial = CharDev("file", str(serial))
    config.gdb = "tcp:127.0.0.1:0"
    m = Machine(config)
    dbg = attach_debugger(m, config)
    assert "Device breakpoint 1" in dbg.monitor.execute("break virtio-blk request type=flush")
    events = io.StringIO()
    trace.set_output(events)
    trace.enable("virtio_blk_req_complete")
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("status", dbg.run()), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + OUR_LIMIT
        while getattr(dbg.gdb.last_stop, "kind", None) != STOP_DEVICE:
            assert thread.is_alive() and time.monotonic() < deadline, serial.read_text()[-2000:]
            time.sleep(0.2)
        out = subprocess.run(
            ["gdb", "-batch", "-nx", "-ex", "set confirm off", "-ex", "set pagination off",
             "-ex", f"target remote 127.0.0.1:{dbg.gdb.port}",
             "-ex", "show architecture", "-ex", "info registers rip cs",
             "-ex", "x/i $pc", "-ex", "stepi", "-ex", "info registers rip",
             "-ex", "monitor info virtio",
             "-ex", "monitor info virtio-status 0",
             "-ex", "monitor info virtio-queue-status 0 0",
             "-ex", "monitor delete 1", "-ex", "detach"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120).stdout
        thread.join(OUR_LIMIT)
    finally:
        dbg.quit_requested = True
        thread.join(10)
        m.close()
        trace.disable_all()
        trace.set_output(sys.stderr)

    assert "i386:x86-64" in out, out
    rips = [int(v, 16) for v in re.findall(r"^rip\s+(0x[0-9a-f]+)", out, re.M)]
    assert len(rips) == 2 and all(r >= 0xFFFF800000000000 for r in rips), out   # kernel text
    assert rips[1] != rips[0], out                                               # stepi moved
    assert re.search(r"^cs\s+0x10\s", out, re.M), out                            # __KERNEL_CS
    assert re.search(r"=> 0xffff[0-9a-f]+.*:\s+\S+", out), out
    assert "[virtio-blk]" in out and "DRIVER_OK" in out and "FLUSH: Flush command supported" in out, out
    assert re.search(r"last_avail_idx:\s+\d+", out), out
    output = serial.read_text()
    check_run(result.get("status"), output, disk, "transitional")
    flushes = re.findall(r"virtio_blk_req_complete .*type=4 .*status=0", events.getvalue())
    assert flushes, events.getvalue()[-2000:]
