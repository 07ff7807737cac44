"""How a machine ends when the user ends it: SIGTERM and SIGHUP clean up the temporary image as
SIGINT does; monitor `quit` and gdb `kill` exit 0 as QEMU does, also for the bundled self-test."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def machine_process(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, TMPDIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, "-m", "machine", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)


def wait_for_image(tmp_path: Path, proc: subprocess.Popen, timeout: float = 60) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        images = list(tmp_path.glob("machine-*.img"))
        if images and proc.poll() is None:
            return images[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the temporary image never appeared")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_terminating_signal_removes_the_temporary_image(tmp_path, guest, signum):
    # -S with the monitor on stdio: the bundled run waits, stopped, for a command.
    proc = machine_process(tmp_path, "-S", "-monitor", "stdio")
    wait_for_image(tmp_path, proc)
    time.sleep(0.3)                  # into the monitor's wait (a signal earlier works too)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    assert f"terminating on signal {int(signum)}" in err.decode(), err
    assert proc.returncode == 128 + signum      # the self-test did not pass
    assert list(tmp_path.glob("machine-*.img")) == []
    assert b"Traceback" not in err


@pytest.mark.parametrize("part", range(3))
def test_a_signal_at_any_time_of_the_start_ends_the_run_the_same_way(tmp_path, guest, part):
    """SIGINT from the temporary image's creation on, through imports (a KeyboardInterrupt
    passing through exec() made CPython end the process by the signal instead of our status),
    the start-up self-tests (a failing probe reported as a wrong Unicorn) and the finalizers of
    scratch engines (an exception dropped with no report, the signal lost): always the message,
    status 130 and no image left."""
    for k in range(7):
        delay = 0.0125 * (3 * k + part)
        run_dir = tmp_path / str(k)
        run_dir.mkdir()
        proc = machine_process(run_dir, "-S", "-monitor", "stdio")
        wait_for_image(run_dir, proc)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert (proc.returncode, err.decode()) == (130, "machine: terminating on signal 2\n"), delay
        assert list(run_dir.glob("machine-*.img")) == []


def test_a_signal_ends_a_qemu_style_run_with_status_0_as_qemu(tmp_path, hello):
    proc = machine_process(tmp_path, "-kernel", str(hello), "-S", "-monitor", "stdio")
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "terminating on signal 15" in err.decode(), err


def test_monitor_quit_exits_0_on_the_bundled_run(tmp_path, guest):
    proc = machine_process(tmp_path, "-S", "-monitor", "stdio")
    out, err = proc.communicate(b"quit\n", timeout=60)
    assert proc.returncode == 0, err
    assert list(tmp_path.glob("machine-*.img")) == []


def test_gdb_kill_exits_0_on_the_bundled_run(guest, monkeypatch, capsys):
    import machine.debug.session as session
    from machine import cli
    real_attach = session.attach_debugger
    replies = []

    def attach(machine, config):
        config.gdb = "tcp:127.0.0.1:0"           # any free port
        debugger = real_attach(machine, config)

        def gdb_client():
            with socket.create_connection(("127.0.0.1", debugger.gdb.port), timeout=10) as s:
                s.sendall(b"$?#3f")
                # The ack '+' and the stop reply may come in separate segments: read up to the
                # reply's checksum.
                got = b""
                while not re.search(rb"\$[^#]*#..", got):
                    chunk = s.recv(100)
                    if not chunk:
                        break
                    got += chunk
                replies.append(got)
                s.sendall(b"+$k#6b")
                time.sleep(0.2)
        threading.Thread(target=gdb_client, daemon=True).start()
        return debugger
    monkeypatch.setattr(session, "attach_debugger", attach)
    assert cli.main(["-S"]) == 0
    assert replies and (b"$S05" in replies[0] or b"$T05" in replies[0]), replies


DROPPED_SIGNAL = """
import os, signal, sys, time
from machine import cli

class Finalized:
    def __del__(self):
        # The signal's handler runs here, inside a finalizer: Python prints and drops what it
        # raises (a Unicorn hook, a ctypes callback, is the same case).
        os.kill(os.getpid(), signal.{name})

def run_machine(config, escapes):
    Finalized()
    time.sleep(20)              # a machine that would go on for a long time
    return 0

cli.run_machine = run_machine
sys.exit(cli.main(["-kernel", sys.argv[1], "-display", "none"]))
"""


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_dropped_inside_a_finalizer_still_ends_the_run(hello, name):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", DROPPED_SIGNAL.format(name=name), str(hello)],
                          capture_output=True, text=True, env=env, timeout=60)
    signum = int(getattr(signal, name))
    assert f"terminating on signal {signum}" in proc.stderr, proc.stderr
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert time.monotonic() - started < 15                 # not after the 20 s run
