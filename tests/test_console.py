"""The console on a terminal: raw mode while the machine runs, QEMU's Ctrl-A escapes, and the
terminal's settings back as they were on every way out."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from asm import rom_image
from machine.console import EscapeFilter, UserQuit

ROOT = Path(__file__).resolve().parent.parent


def test_escape_filter_takes_out_the_escapes():
    shown = []
    f = EscapeFilter(shown.append)
    assert f(b"ab\x01\x01c") == b"ab\x01c"               # C-a C-a: one C-a for the guest
    assert f(b"d\x01") == b"d" and f(b"hx") == b"x"       # a pair split over two reads
    assert "C-a x" in shown[0]
    assert f(b"\x01zq") == b"q"                           # an unknown escape does nothing
    with pytest.raises(UserQuit) as info:
        f(b"k\x01x")
    assert info.value.status == 0


@pytest.fixture
def spinning_rom(tmp_path):
    rom = tmp_path / "spin.bin"
    rom.write_bytes(rom_image("reset:\n    jmp reset\n"))
    return rom


def on_a_terminal(tmp_path, *args):
    """The machine with stdin, stdout and stderr on a pseudo-terminal; returns (proc, master,
    slave) with the slave's settings as they were before the start."""
    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                                    os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "machine", *args], stdin=slave, stdout=slave,
                            stderr=slave, env=env, cwd=tmp_path, start_new_session=True)
    return proc, master, slave


def read_until(master: int, text: bytes, timeout: float = 60) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen and time.monotonic() < deadline:
        if select.select([master], [], [], 0.1)[0]:
            try:
                seen += os.read(master, 4096)
            except OSError:
                break
    return seen


def wait_raw(slave: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while termios.tcgetattr(slave)[3] & termios.ICANON:
        assert time.monotonic() < deadline, "the terminal never went raw"
        time.sleep(0.05)


def test_ctrl_a_h_shows_help_and_ctrl_a_x_exits_0_restoring_the_terminal(tmp_path, spinning_rom):
    proc, master, slave = on_a_terminal(tmp_path, "-bios", str(spinning_rom))
    before = termios.tcgetattr(slave)
    try:
        wait_raw(slave)
        raw = termios.tcgetattr(slave)
        assert not raw[3] & termios.ECHO and raw[3] & termios.ISIG and raw[1] & termios.OPOST
        os.write(master, b"\x01h")
        assert b"C-a x    exit the machine" in read_until(master, b"exit the machine")
        os.write(master, b"\x01x")
        assert proc.wait(timeout=60) == 0
        assert termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_restores_the_terminal(tmp_path, spinning_rom, signum):
    proc, master, slave = on_a_terminal(tmp_path, "-bios", str(spinning_rom))
    before = termios.tcgetattr(slave)
    try:
        wait_raw(slave)
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == 0                      # QEMU's status for a signal
        assert termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)


def test_nographic_passes_ctrl_c_to_the_guest(tmp_path, spinning_rom):
    proc, master, slave = on_a_terminal(tmp_path, "-bios", str(spinning_rom), "-nographic")
    try:
        wait_raw(slave)
        assert not termios.tcgetattr(slave)[3] & termios.ISIG
        os.write(master, b"\x01x")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)
