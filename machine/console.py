"""The host terminal behind `-serial stdio`: QEMU's console habits.

On a terminal, the machine puts stdin in raw mode (keys reach the guest one by one, unechoed;
output keeps its newline translation) and reads QEMU's escape key, Ctrl-A:

    Ctrl-A h    print the escapes        Ctrl-A x    end the machine (exit status 0)
    Ctrl-A Ctrl-A   send one Ctrl-A to the guest

With `-serial stdio` Ctrl-C still ends the machine (QEMU's stdio chardev default, signal=on);
with `-nographic` it goes to the guest, as on QEMU's multiplexed console. The terminal's
settings are restored on every way out: a normal exit, an error, Ctrl-A x, a signal that ends
the machine (SIGINT, SIGTERM, SIGHUP: cli.main turns them into exceptions, so `finally` runs).
When stdin is not a terminal (a pipe, a file, a test) nothing changes and Ctrl-A is a byte.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

CTRL_A = 0x01
HELP = ("\r\nC-a h    print this help\r\n"
        "C-a x    exit the machine\r\n"
        "C-a C-a  send C-a to the guest\r\n")


class UserQuit(Exception):
    """The user ended the machine (Ctrl-A x, monitor `quit`, gdb `kill`): QEMU exits 0,
    whatever the guest was doing."""

    def __init__(self, status: int = 0):
        super().__init__(status)
        self.status = status


class EscapeFilter:
    """Takes the Ctrl-A escapes out of the bytes typed for the guest. `write` shows the help."""

    def __init__(self, write: Callable[[str], None]):
        self.write = write
        self.escaped = False          # the previous byte was Ctrl-A (a key pair can span reads)

    def __call__(self, data: bytes) -> bytes:
        out = bytearray()
        for byte in data:
            if self.escaped:
                self.escaped = False
                if byte == CTRL_A:
                    out.append(CTRL_A)
                elif byte in b"xX":
                    self.write("\r\nmachine: terminated by C-a x\r\n")
                    raise UserQuit(0)
                elif byte in b"hH?":
                    self.write(HELP)
                # any other key after Ctrl-A does nothing, as in QEMU
            elif byte == CTRL_A:
                self.escaped = True
            else:
                out.append(byte)
        return bytes(out)


class Terminal:
    """Raw mode on stdin for the life of a `with` block, when stdin is a terminal."""

    def __init__(self, fd: int | None = None, pass_ctrl_c: bool = False):
        self.fd = fd
        self.pass_ctrl_c = pass_ctrl_c
        self.saved = None

    @property
    def active(self) -> bool:
        return self.saved is not None

    def __enter__(self) -> "Terminal":
        try:
            if self.fd is None:
                self.fd = sys.stdin.fileno()     # no fileno (a test's stdin): not a terminal
            if not os.isatty(self.fd):
                return self
            import termios
            self.saved = termios.tcgetattr(self.fd)
        except (OSError, ValueError):
            return self
        import termios
        import tty
        tty.setraw(self.fd, termios.TCSANOW)
        attrs = termios.tcgetattr(self.fd)
        attrs[1] |= termios.OPOST             # keep "\n" -> "\r\n" for the guest's output
        if not self.pass_ctrl_c:
            attrs[3] |= termios.ISIG           # Ctrl-C (and Ctrl-\) still signal the machine
        termios.tcsetattr(self.fd, termios.TCSANOW, attrs)
        return self

    def __exit__(self, *exc) -> bool:
        if self.saved is not None:
            import termios
            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
            except (OSError, termios.error):
                pass
            self.saved = None
        return False
