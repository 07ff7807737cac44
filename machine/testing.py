"""A pytest plugin for testing your own guest on this machine in a few lines.

Enable it with `pytest_plugins = ["machine.testing"]` in your top-level conftest.py (or install
the package: it registers itself as a `pytest11` plugin). Then:

    def test_my_guest(boot, tmp_path):
        disk = boot.image(tmp_path / "d.img", size="16M")
        run = boot("-kernel", "my.elf", "-drive", f"file={disk},format=raw,if=virtio",
                   "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", timeout=60)
        assert run.host_error is None, run.host_error
        assert run.guest_status == 0 and "ok 1" in run.serial
        assert disk.read_bytes()[:4] == b"TEST"

Each boot is a separate process running `python -m machine ARGS...` (so a crashing or hanging
guest cannot take the test run with it); a boot that outlives its timeout is killed and the test
fails with the tail of its output. `run.serial` is what the machine wrote to stdout, i.e. COM1
with the default `-serial stdio`. For a guest that keeps running, `boot.start(...)` returns a
handle with `wait_for(text, timeout)`, `send(text)`, `wait(timeout)` and `kill()`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import pytest

from machine.cli import parse_size

PACKAGE_PARENT = Path(__file__).resolve().parent.parent
TAIL = 2000          # characters of output quoted when a boot fails
HOST_ERROR_PREFIX = "machine: "                       # cli.PROG: every host-input error line
HOST_SIGNAL_PREFIX = "machine: terminating on signal"


def _tail(text: str) -> str:
    return text if len(text) <= TAIL else "..." + text[-TAIL:]


def _text(data: bytes) -> str:
    """Serial bytes as text: UTF-8 (undecodable bytes replaced) with CR LF read as LF, since
    guests send CR LF for a terminal and tests want to write "ok 1\n"."""
    return data.decode("utf-8", "replace").replace("\r\n", "\n")


@dataclass
class MachineRun:
    """A finished boot."""
    args: list[str]
    exit_status: int
    serial: str          # stdout as text: COM1 under -serial stdio (the default)
    stderr: str
    serial_bytes: bytes = b""     # stdout exactly as the machine wrote it

    @property
    def host_error(self) -> str | None:
        """The machine's own error line when it refused to run (bad option, missing image,
        compile error, ...: status 1, as in QEMU), else None. A guest passing through
        isa-debug-exit also gives status 1; this tells the two apart: host errors are the
        lines the machine prints as `machine: ...` on stderr."""
        if self.exit_status != 1:
            return None
        for line in self.stderr.splitlines():
            if line.startswith(HOST_ERROR_PREFIX) and not line.startswith(HOST_SIGNAL_PREFIX):
                return line[len(HOST_ERROR_PREFIX):]
        return None

    @property
    def guest_status(self) -> int | None:
        """The value the guest wrote to isa-debug-exit (exit status (v << 1) | 1), or None when
        the run ended any other way (a host error, a fault, a reset under -no-reboot)."""
        if self.exit_status & 1 and self.host_error is None:
            return self.exit_status >> 1
        return None

    def __str__(self) -> str:
        return (f"machine {' '.join(self.args)} -> exit status {self.exit_status}\n"
                f"--- serial ---\n{_tail(self.serial)}\n--- stderr ---\n{_tail(self.stderr)}")


class RunningMachine:
    """A machine process still running; its output is collected by two reader threads."""

    def __init__(self, command: list[str], args: list[str], env: dict[str, str],
                 cwd: str | os.PathLike | None):
        self.args = args
        self._out = bytearray()
        self._err = bytearray()
        self._cond = threading.Condition()
        # A session of its own, so a timeout kills the machine and anything it started (make).
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, cwd=cwd,
                                     start_new_session=True)
        self._readers = [threading.Thread(target=self._pump, args=(self.proc.stdout, self._out),
                                          daemon=True),
                         threading.Thread(target=self._pump, args=(self.proc.stderr, self._err),
                                          daemon=True)]
        for t in self._readers:
            t.start()

    def _pump(self, stream, buf: bytearray) -> None:
        while True:
            chunk = stream.read1(65536)
            if not chunk:
                break
            with self._cond:
                buf += chunk
                self._cond.notify_all()
        stream.close()
        with self._cond:
            self._cond.notify_all()

    @property
    def serial(self) -> str:
        with self._cond:
            return _text(bytes(self._out))

    @property
    def serial_bytes(self) -> bytes:
        with self._cond:
            return bytes(self._out)

    @property
    def stderr(self) -> str:
        with self._cond:
            return _text(bytes(self._err))

    @property
    def exit_status(self) -> int | None:
        return self.proc.poll()

    def _describe(self, what: str) -> str:
        return (f"{what}: machine {' '.join(self.args)}\n--- serial (tail) ---\n"
                f"{_tail(self.serial)}\n--- stderr (tail) ---\n{_tail(self.stderr)}")

    def send(self, text: str | bytes) -> None:
        """Type into COM1 (stdin under -serial stdio)."""
        data = text.encode() if isinstance(text, str) else text
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def wait_for(self, text: str, timeout: float = 30) -> str:
        """Wait until the serial output contains `text`; returns the output so far. Fails the
        test if the machine exits first or `timeout` seconds pass (the machine keeps running)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (found := text in _text(bytes(self._out))):
                if self.proc.poll() is not None and not any(t.is_alive() for t in self._readers):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.2))
        if not found:
            status = self.proc.poll()
            why = (f"machine exited with status {status} before printing {text!r}"
                   if status is not None else f"{text!r} not seen within {timeout} s")
            pytest.fail(self._describe(why), pytrace=False)
        return self.serial

    def wait(self, timeout: float = 60) -> MachineRun:
        """Wait for the machine to exit; kill it and fail the test after `timeout` seconds."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(self._describe(f"machine did not exit within {timeout} s (killed)"),
                        pytrace=False)
        for t in self._readers:
            t.join(5)
        return MachineRun(self.args, self.proc.returncode, self.serial, self.stderr,
                          self.serial_bytes)

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass


class Boot:
    """The `boot` fixture: `boot(*args, timeout=60)` runs the machine to completion."""

    def __init__(self, program: Sequence[str] | None = None, cwd: str | os.PathLike | None = None):
        # `program` is the command before the options; tests of this plugin swap in a stand-in.
        self.program = list(program) if program else [sys.executable, "-m", "machine"]
        self.cwd = cwd
        self._running: list[RunningMachine] = []

    def _env(self, extra: dict[str, str] | None) -> dict[str, str]:
        env = dict(os.environ)
        # The machine package must import in the child even when it is not installed.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_PARENT),
                                                        env.get("PYTHONPATH")) if p)
        env.update(extra or {})
        return env

    def start(self, *args: str | os.PathLike, env: dict[str, str] | None = None) -> RunningMachine:
        """Start the machine and return at once; the fixture kills it at teardown if needed."""
        argv = [os.fspath(a) for a in args]
        handle = RunningMachine(self.program + argv, argv, self._env(env), self.cwd)
        self._running.append(handle)
        return handle

    def __call__(self, *args: str | os.PathLike, timeout: float = 60,
                 input: str | bytes | None = None, env: dict[str, str] | None = None) -> MachineRun:
        """Run the machine with these options until it exits; fail the test after `timeout`
        seconds. `input` is typed into COM1 (stdin), then stdin is closed."""
        handle = self.start(*args, env=env)
        try:
            if input is not None:
                handle.send(input)
            handle.proc.stdin.close()
        except BrokenPipeError:
            pass                      # the machine already exited; wait() reports it
        return handle.wait(timeout)

    @staticmethod
    def image(path: str | os.PathLike, size: str | int = "16M", data: bytes = b"") -> Path:
        """Create a raw disk image of `size` (bytes, or QEMU's suffixes: "16M", "1G"), sparse,
        starting with `data`. Returns its path."""
        nbytes = size if isinstance(size, int) else parse_size(str(size), default_unit=1)
        if nbytes % 512:
            raise ValueError(f"image size {nbytes} is not a multiple of 512")
        if len(data) > nbytes:
            raise ValueError("data is larger than the image")
        path = Path(path)
        with open(path, "wb") as f:
            f.write(data)
            f.truncate(nbytes)
        return path

    def close(self) -> None:
        for handle in self._running:
            handle.kill()
        self._running.clear()


@pytest.fixture
def boot() -> Iterator[Boot]:
    """Boot this machine with QEMU-style options; see machine.testing."""
    b = Boot()
    yield b
    b.close()
