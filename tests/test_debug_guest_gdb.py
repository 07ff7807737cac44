"""gdb (batch mode) against the bundled virtio-blk guest: the session a driver developer has -
break at the driver's init, step over feature negotiation, print what was negotiated from the
driver's own variables, watch the used index the driver tracks, continue to the exit; and ^C."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess

import pytest

from test_debug_machine import Running, gdb_args, run_gdb

pytestmark = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")

EXIT_DEV = ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]


def start(guest, tmp_path, tests: str) -> Running:
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4 << 20))
    return Running(["-kernel", str(guest), "-append", f"tests={tests}", "-serial", "none",
                    "-display", "none", "-no-reboot", *EXIT_DEV,
                    "-drive", f"file={img},format=raw,if=virtio"])


def test_break_at_init_step_over_negotiation_print_features_watch_used_index(guest, tmp_path):
    m = start(guest, tmp_path, "init,flush")
    try:
        out = run_gdb(guest, m.port,
                      "break vblk_init", "continue",
                      "break vpci_set_driver_features", "continue",
                      "finish",                                   # the driver's features written
                      "p/x blk.features",
                      "next", "next", "next",                     # over FEATURES_OK and its check
                      "monitor info virtio-status virtio-blk",
                      "delete",
                      "finish",                                   # out of vblk_init: queues set up
                      "p blk.nvqs",
                      "p blk.vqs[0]->last_used_idx",
                      "watch -l blk.vqs[0]->last_used_idx",
                      "continue",                                 # the FLUSH completes
                      "bt 2",
                      "delete",
                      "continue")
    finally:
        m.close()
    assert "Breakpoint 1, vblk_init (b=0x" in out and "<blk>" in out, out
    assert "Breakpoint 2, vpci_set_driver_features (vp=" in out, out
    # `finish` returned into vblk_init right after the call: the FEATURES_OK step is next
    assert re.search(r"^vblk_init \(.*\) at virtio_blk\.c:\d+\n\d+\t    if \(vp->modern\) \{$", out, re.M), out
    # the features the driver accepted, from its variable, are what the device was told
    accepted = int(re.search(r"^\$1 = (0x[0-9a-f]+)$", out, re.M).group(1), 16)
    assert accepted >> 32 & 1 and accepted >> 9 & 1                     # VERSION_1, FLUSH
    assert f"Guest features: 0x{accepted:016x}" in out, out
    # stepped past the FEATURES_OK write: the device shows it (not yet DRIVER_OK)
    assert re.search(r"status: 0x0b\n\s+ACKNOWLEDGE, DRIVER, FEATURES_OK\n", out), out
    assert "in t_init () at selftest.c" in out and "Value returned is $2 = 0" in out, out
    assert "$3 = 1" in out and "$4 = 0" in out, out                     # one queue, nothing used
    assert "Hardware watchpoint 3: -location blk.vqs[0]->last_used_idx" in out, out
    assert re.search(r"Old value = 0\nNew value = 1\n", out), out
    assert "vq_get_used" in out and "vblk_reap" in out, out             # the driver reaping
    assert "exited with code 01" in out, out                            # self-test passed
    assert m.result.get("status") == 1


def test_ctrl_c_stops_the_running_guest_and_it_resumes_to_a_clean_exit(guest, tmp_path):
    m = start(guest, tmp_path, "init,flush")
    try:
        proc = subprocess.Popen(gdb_args(guest, m.port,
                                         "break vblk_init", "continue",
                                         "set $orig = *(unsigned short *)$pc",
                                         "set var *(unsigned short *)$pc = 0xfeeb",  # jmp .
                                         "delete", "continue",
                                         "p $pc == vblk_init",
                                         "set var *(unsigned short *)$pc = $orig",
                                         "continue"),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if not m.wait_spinning(60):                 # until the guest spins in its `jmp .`
            proc.kill()
            pytest.fail("the guest never reached its loop")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        m.close()
    assert "Program received signal SIGINT" in out, out
    assert "vblk_init (" in out.split("Program received signal SIGINT", 1)[1], out
    assert "$1 = 1" in out, out                       # stopped in the loop it was given
    assert "exited with code 01" in out, out          # and the restored driver finished its tests
    assert m.result.get("status") == 1
