"""The Python API (machine.api.Session) on the bundled virtio-blk guest."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from machine.api import ElfSymbols, Session, SessionError
from machine.debug.target import (STOP_BREAKPOINT, STOP_DEVICE, STOP_EXITED, STOP_LIMIT,
                                  STOP_STEP, STOP_WATCHPOINT)


@pytest.fixture
def session(guest, tmp_path):
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4 << 20))
    s = Session.from_args(["-kernel", str(guest), "-append", "tests=init,flush,get_id",
                           "-drive", f"file={img},format=raw,if=virtio", "-no-reboot",
                           "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
    yield s
    s.close()


def test_run_to_symbols_device_events_serial_and_exit(session):
    s = session
    stop = s.run_until("vblk_init")
    assert stop.kind == STOP_BREAKPOINT and s.where() == "vblk_init"
    assert s.registers["eip"] == s.symbols.address("vblk_init")
    assert s.read_u8("initialised") == 0

    bp = s.break_on("virtio-blk request type=flush")
    stop = s.run()
    assert stop.kind == STOP_DEVICE and stop.message.endswith("request flush")
    assert bp.hits == 1
    assert s.where().startswith("vpci_notify")            # right after the guest's kick
    assert s.read_u8("initialised") == 1
    q = s.queues("virtio-blk")[0]
    assert q.enabled and q.used_idx == q.last_avail_idx >= 1
    assert s.virtio().status & 0x4                         # DRIVER_OK
    state = s.virtio_state("virtio-blk")
    assert state.started and not state.broken and state.queues[0].used_idx == q.used_idx
    assert "last_avail_idx:" in s.monitor("info virtio-queue-status virtio-blk 0")

    pc = s.pc
    stop = s.run_until_serial("ok 1 - init")              # printed already: found at once
    assert stop.kind == STOP_DEVICE and s.pc == pc
    stop = s.run_until_serial("ok 2 - flush")
    assert stop.kind == STOP_DEVICE and s.serial.endswith("ok 2 - flush")
    stop, event = s.run_until_event("virtio_queue_notify", n=0)
    assert event == {"vdev": "virtio-blk", "n": 0, "event": "virtio_queue_notify"}
    assert s.step(2).kind == STOP_STEP

    stop = s.run()
    assert stop.kind == STOP_EXITED and s.exit_status == 1   # all passed: (0 << 1) | 1
    assert "ok 3 - get_id" in s.serial and "# 0 of 3 tests failed" in s.serial
    with pytest.raises(SessionError):
        s.run()


def test_instruction_budget_and_write_watchpoints_see_cpu_and_device_writes(session):
    s = session
    stop = s.run(max_instructions=1000)
    assert stop.kind == STOP_LIMIT and s.exit_status is None
    s.run_until("t_flush")
    # t_flush's static request is one of these; its header is the first one written.
    reqs = [s.symbols.address(n) for n in s.symbols.symbols if n.startswith("req.")]
    for addr in reqs:
        assert s.target.add_watchpoint(addr, 16, "watch")
    stop = s.target.resume(lambda: None)
    assert stop.kind == STOP_WATCHPOINT and stop.addr in reqs
    assert s.where().startswith("vblk_submit")
    for addr in reqs:
        s.target.remove_watchpoint(addr, 16, "watch")
    status = stop.addr + 16                                   # vblk_req.status, after the header
    assert s.target.add_watchpoint(status, 1, "watch")
    for _ in range(3):                                        # the guest may preset it first
        stop = s.target.resume(lambda: None)
        assert stop.kind == STOP_WATCHPOINT
        if s.where().startswith("vpci_notify"):
            break
    assert s.where().startswith("vpci_notify")                # the device's DMA, during the kick
    assert s.read_u8(status) == 0                             # VIRTIO_BLK_S_OK
    s.target.remove_watchpoint(status, 1, "watch")
    with pytest.raises(SessionError):
        s.run_until("no_such_function")


@pytest.mark.skipif(shutil.which("nm") is None, reason="binutils nm is not installed")
def test_elf_symbols_agree_with_nm(guest):
    syms = ElfSymbols.from_file(guest)
    out = subprocess.run(["nm", str(guest)], stdout=subprocess.PIPE, text=True).stdout
    checked = 0
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "TtDdBb" and parts[2] in ("kmain", "vblk_init", "blk", "initialised"):
            assert syms.address(parts[2]) == int(parts[0], 16)
            checked += 1
    assert checked == 4
    assert syms.lookup(syms.address("kmain") + 3) == "kmain+0x3"


def test_read_and_access_watchpoints_decode_the_instruction(session):
    s = session
    s.run_until("t_flush")
    start = s.pc
    addr = s.symbols.address("initialised")
    assert s.target.add_watchpoint(addr, 1, "rwatch")
    stop = s.target.resume(lambda: None)
    assert stop.kind == STOP_WATCHPOINT and stop.watch_kind == "rwatch" and stop.addr == addr
    assert s.where().startswith("t_flush") and s.pc != start     # stopped after the reading insn
    s.target.remove_watchpoint(addr, 1, "rwatch")
    ptr = s.symbols.address("B")
    assert s.target.add_watchpoint(ptr, 4, "awatch")
    stop = s.target.resume(lambda: None)
    assert stop.kind == STOP_WATCHPOINT and stop.watch_kind == "awatch" and stop.addr == ptr
    s.target.remove_watchpoint(ptr, 4, "awatch")
    assert s.run().exit_status == 1                              # and on to a normal exit


def test_no_options_boot_the_bundled_self_test(guest):
    with Session.from_args([]) as s:
        image = s._temp_image
        assert image is not None and image.exists()
        stop = s.run_until_serial("ok 1 - init")
        assert stop.kind == STOP_DEVICE and re.search(r"^1\.\.\d+\r?$", s.serial, re.M)
        assert s.symbols.address("kmain") > 0
    assert not image.exists()


def test_a_device_breakpoint_hit_while_single_stepping_is_reported_by_that_step(session):
    s = session
    s.run_until("vpci_notify")
    s.break_on("virtio-blk notify queue=0")
    for _ in range(200):
        stop = s.step()
        if stop.kind != STOP_STEP:
            break
    assert stop.kind == STOP_DEVICE and stop.message.endswith("queue notify, queue 0")
    assert s.where().startswith("vpci_notify")
    stop = s.run_until("vpci_notify")                     # nothing stale left behind
    assert stop.kind == STOP_BREAKPOINT


def test_run_until_serial_gives_up_after_its_wall_clock_timeout(tmp_path):
    """A guest that never prints: the wait ends after `timeout` seconds with a "timeout" stop,
    and the machine can run on."""
    import time as _time

    from asm import rom_image
    from machine.debug.target import STOP_INTERRUPT
    rom = tmp_path / "spin.bin"
    rom.write_bytes(rom_image("reset:\n    jmp reset\n"))
    with Session.from_args(["-bios", str(rom)]) as s:
        started = _time.monotonic()
        stop = s.run_until_serial("never printed", timeout=0.5)
        took = _time.monotonic() - started
        assert stop.kind == STOP_INTERRUPT and stop.message == "timeout", stop
        assert 0.5 <= took < 30
        assert s.run(max_instructions=1000).kind == "limit"     # still usable
