"""Every monitor command and every device breakpoint kind on the real board running the bundled
virtio-blk guest: the monitor console driven line by line as a user types (prompt, answer,
prompt), and device breakpoints through the Python API."""

from __future__ import annotations

import os
import re
import struct
import threading
import time

import pytest

from machine.api import Session
from machine.cli import parse_args
from machine.debug.target import STOP_DEVICE, STOP_EXITED

EXIT_DEV = ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
PROMPT = "(qemu) "


def guest_args(guest, tmp_path, tests: str) -> list[str]:
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4 << 20))
    return ["-kernel", str(guest), "-append", f"tests={tests}", "-serial", "none", "-display", "none",
            "-no-reboot", *EXIT_DEV, "-drive", f"file={img},format=raw,if=virtio"]


class Console:
    """`-monitor stdio -S` on pipes: the machine's loop in a thread, the test types."""

    def __init__(self, args: list[str]):
        from machine.debug.monitor import MonitorConsole
        from machine.debug.machine_target import MachineTarget
        from machine.debug.session import Debugger
        from machine.pc import Machine
        self.machine = Machine(parse_args(args))
        self.in_r, self.in_w = os.pipe()
        self.out_r, out_w = os.pipe()
        os.set_blocking(self.out_r, False)
        self.out = os.fdopen(out_w, "w")
        self.debugger = Debugger(MachineTarget(self.machine), self.machine,
                                 console=MonitorConsole(self.in_r, self.out), start_stopped=True)
        self.result: dict = {}
        self.text = ""
        self.thread = threading.Thread(target=lambda: self.result.setdefault("status", self.debugger.run()),
                                       daemon=True)
        self.thread.start()
        self.expect(PROMPT)

    def expect(self, marker: str, timeout: float = 30) -> str:
        """Everything printed until `marker` (inclusive)."""
        deadline = time.monotonic() + timeout
        while marker not in self.text:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {marker!r} in {self.text[-2000:]!r}")
            try:
                chunk = os.read(self.out_r, 65536)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            self.text += chunk.decode(errors="replace")
        head, _, self.text = self.text.partition(marker)
        return head + marker

    def cmd(self, line: str, until: str = PROMPT) -> str:
        os.write(self.in_w, (line + "\n").encode())
        return self.expect(until)

    def close(self):
        if self.thread.is_alive():
            self.debugger.quit_requested = True
            os.close(self.in_w)
            self.thread.join(10)
        else:
            os.close(self.in_w)
        self.out.close()
        for fd in (self.in_r, self.out_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self.machine.close()


@pytest.fixture
def console(guest, tmp_path):
    c = Console(guest_args(guest, tmp_path, "init,flush"))
    yield c
    c.close()


def test_monitor_commands_on_the_running_guest(console):
    c = console
    assert "info virtio-queue-element" in c.cmd("help")
    mtree = c.cmd("info mtree")
    assert ": pci-config" in mtree and ": rom" in mtree and "virtio-blk-pci" not in mtree, mtree
    assert "virtio-blk" in c.cmd("info virtio")

    # stop at feature negotiation, then look at the device as the driver set it up
    assert "Device breakpoint 1: virtio-blk features" in c.cmd("break virtio-blk features")
    c.cmd("c", until="FEATURES_OK written, status 0x0b")
    c.expect(PROMPT)
    status = c.cmd("info virtio-status virtio-blk")
    assert "status: 0x0b" in status and "FEATURES_OK" in status and "VERSION_1" in status, status
    assert "virtio-blk features" in c.cmd("info breakpoints")
    mtree = c.cmd("info mtree")                    # the firmware has placed the BARs by now
    assert re.search(r"^ +[0-9a-f]{16}-[0-9a-f]{16} \(prio 1, i/o\): virtio-blk-pci\.bar4$", mtree, re.M), mtree
    assert re.search(r"\(prio 0, i/o\): virtio-blk-pci\.bar0", mtree), mtree
    c.cmd("delete 1")
    assert "No device breakpoints." in c.cmd("info breakpoints")

    # on to the FLUSH: its chain is the element the device just took
    c.cmd("break virtio-blk request type=flush")
    c.cmd("cont", until="request flush")
    c.expect(PROMPT)
    qstat = c.cmd("info virtio-queue-status virtio-blk 0")
    last = int(re.search(r"last_avail_idx:\s+(\d+)", qstat).group(1))
    elem = c.cmd(f"info virtio-queue-element virtio-blk 0 {last - 1}")
    lens = [int(n) for n in re.findall(r"addr 0x[0-9a-f]+ len (\d+)", elem)]
    assert lens and lens[0] == 16 and lens[-1] == 1, elem           # header ... status byte
    assert "(write)" in elem, elem                                  # the status byte
    # the FLUSH header in guest memory: type 4, through x (virtual) and xp (physical)
    header = int(re.search(r"addr (0x[0-9a-f]+) len 16", elem).group(1), 16)
    assert c.cmd(f"xp /1xw {header:#x}").strip().splitlines()[0].endswith("0x00000004")
    assert c.cmd(f"x /1xw {header:#x}").strip().splitlines()[0].endswith("0x00000004")
    c.cmd("delete 2")

    # system_reset: the CPU is back at the reset vector; quit ends the machine
    c.cmd("system_reset")
    assert "EIP=0000fff0" in c.cmd("info registers")
    os.write(c.in_w, b"quit\n")
    c.thread.join(10)
    assert not c.thread.is_alive() and c.result["status"] == 0


def test_stop_cont_and_quit_while_running(guest, tmp_path):
    # enough tests that the guest is still running when the commands arrive (between slices)
    c = Console(guest_args(guest, tmp_path, "init,inflight,rw_sizes,segments,indirect"))
    try:
        c.cmd("cont")
        c.cmd("stop", until="stopped (interrupt) at 0x")
        c.expect(PROMPT)
        assert "EIP=" in c.cmd("info registers")
        c.cmd("c")
        os.write(c.in_w, b"quit\n")
        c.thread.join(20)
        assert not c.thread.is_alive()
        assert c.result["status"] == 0            # ended by quit, not by the guest's exit (1)
    finally:
        c.close()


# ------------------------------------------------------------------------------------------------
# device breakpoints, every kind, through the Python API
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def session(guest, tmp_path):
    s = Session.from_args(guest_args(guest, tmp_path, "init,flush,rw_sizes"))
    yield s
    s.close()


def test_status_features_notify_and_request_breakpoints_on_the_guest(session):
    s = session
    bp = s.break_on("virtio-blk status")
    stop = s.run()
    assert stop.kind == STOP_DEVICE and stop.message.endswith("status write 0x00")   # the reset
    assert s.virtio().status == 0
    stop = s.run()
    assert stop.message.endswith("status write 0x01") and s.virtio().status == 1     # ACKNOWLEDGE
    s.breakpoints.delete(bp.number)

    s.break_on("virtio-blk features")
    stop = s.run()
    assert stop.message.endswith("(FEATURES_OK written, status 0x0b)"), stop.message
    accepted = s.symbols.address("blk") + _features_offset(s)      # the driver's b->features
    assert struct.unpack("<Q", s.read(accepted, 8))[0] == s.virtio().guest_features
    s.breakpoints.clear()

    s.break_on("virtio-blk notify queue=0")
    stop = s.run()
    assert stop.message.endswith("queue notify, queue 0") and s.where().startswith("vpci_notify")
    s.breakpoints.clear()

    bp = s.break_on("virtio-blk request type=write sector=0-7")
    stop = s.run()
    m = re.search(r"request out sector (\d+)$", stop.message)
    assert stop.kind == STOP_DEVICE and m and 0 <= int(m.group(1)) <= 7, stop.message
    assert bp.hits == 1
    s.breakpoints.clear()
    assert s.run().kind == STOP_EXITED and s.exit_status == 1


def _features_offset(s) -> int:
    # struct virtio_blk: the accepted features follow the offered ones (see virtio_blk.h); find
    # them as the u64 right after device_features, which the device's host features bound.
    base = s.symbols.address("blk")
    host = s.virtio().host_features
    for off in range(0, 256, 4):
        dev, acc = struct.unpack("<QQ", s.read(base + off, 16))
        if dev == host and acc and acc & ~host == 0:
            return off + 8
    raise AssertionError("device_features not found in the guest's struct")


def test_needs_reset_breakpoint_when_the_driver_corrupts_its_ring(session):
    s = session
    s.break_on("virtio-blk notify queue=0")
    assert s.run().kind == STOP_DEVICE                    # the first kick: the ring is live
    s.breakpoints.clear()
    q = s.queues()[0]
    s.break_on("virtio-blk needs-reset")
    s.run_until("vq_kick")
    # the driver "publishes" far more buffers than the ring holds (VIRTIO 1.2 2.7.13.3 forbids it)
    s.write(q.avail_addr + 2, struct.pack("<H", (q.last_avail_idx + q.size + 1) & 0xFFFF))
    stop = s.run()
    assert stop.kind == STOP_DEVICE and "device needs reset" in stop.message, stop.message
    assert s.virtio().status & 0x40                       # DEVICE_NEEDS_RESET
