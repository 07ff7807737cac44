"""A GDB remote serial protocol stub, single-threaded, over a `DebugTarget`.

The stub never runs the guest itself: the debug loop (`target.Debugger`) asks it what to do
while the guest is stopped (`on_readable`, which handles packets until gdb resumes, steps,
detaches or kills) and polls it between instruction slices while the guest runs (`poll`, a
`select` with timeout 0 that notices ^C and new connections). With no debugger configured
nothing of this exists, so an undebugged machine pays nothing.

Protocol choices, for gdb 13 against an ELF32 guest:
* the target description follows the guest's mode when gdb connects: i386 (eax..gs, st0-7 and
  the x87 control registers: a 176-byte `g` reply) outside long mode, x86-64 (rax..r15, rip,
  eflags, selectors, x87) in long mode; sending QEMU's x86-64 description to an ELF32 session
  makes gdb reject it;
* stop replies carry `swbreak:`/`hwbreak:`/`watch:` so gdb never has to guess the PC;
* `qRcmd` (gdb's `monitor`) output travels in `O` packets, as does the message of a device
  breakpoint or a fatal guest fault;
* QEMU's `qqemu.sstep` packets select whether a single step may enter an interrupt handler
  (default: no, as QEMU);
* with a target that can go back (`reverse_step`/`reverse_continue`: the machine's history,
  recorded while gdb is connected, debug/reverse.py), `bs` and `bc` run it backwards (ReverseStep+/ReverseContinue+ in
  qSupported); at the start of the history the stop reply carries `replaylog:begin`, which gdb
  reports as "No more reverse-execution history".
"""

from __future__ import annotations

import select
import socket
import struct
from dataclasses import dataclass
from typing import Callable

from .target import (DebugAccessError, Stop, STOP_BREAKPOINT, STOP_DEVICE, STOP_EXITED,
                     STOP_FAULT, STOP_INTERRUPT, STOP_WATCHPOINT)

SIGINT = 2
SIGTRAP = 5
SIGSEGV = 11

# QEMU's single-step flags (gdb: `maintenance packet Qqemu.sstep=N`).
SSTEP_ENABLE, SSTEP_NOIRQ, SSTEP_NOTIMER = 1, 2, 4

# (name, size in bytes) in gdb's i386 register numbering.
I386_REGS: list[tuple[str, int]] = (
    [(n, 4) for n in ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags",
                      "cs", "ss", "ds", "es", "fs", "gs")]
    + [(f"st{i}", 10) for i in range(8)]
    + [(n, 4) for n in ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")]
)
# gdb's amd64 numbering (its 64bit-core.xml): 64-bit GPRs and RIP, 32-bit EFLAGS and selectors.
AMD64_REGS: list[tuple[str, int]] = (
    [(n, 8) for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp")]
    + [(f"r{i}", 8) for i in range(8, 16)] + [("rip", 8)]
    + [(n, 4) for n in ("eflags", "cs", "ss", "ds", "es", "fs", "gs")]
    + I386_REGS[16:]
)
REGISTERS = {"i386": I386_REGS, "x86-64": AMD64_REGS}
_FPU_DEFAULTS = {"fctrl": 0x37F, "ftag": 0xFFFF}

_EFLAGS_BITS = [("CF", 0), ("", 1), ("PF", 2), ("AF", 4), ("ZF", 6), ("SF", 7), ("TF", 8),
                ("IF", 9), ("DF", 10), ("OF", 11), ("NT", 14), ("RF", 16), ("VM", 17),
                ("AC", 18), ("VIF", 19), ("VIP", 20), ("ID", 21)]


def _target_xml(arch: str) -> str:
    flags = "".join(f'<field name="{n}" start="{b}" end="{b}"/>' for n, b in _EFLAGS_BITS)
    types = {"eip": "code_ptr", "esp": "data_ptr", "ebp": "data_ptr", "eflags": "i386_eflags",
             "rip": "code_ptr", "rsp": "data_ptr", "rbp": "data_ptr"}
    regs = []
    for num, (name, size) in enumerate(REGISTERS[arch]):
        if size == 10:
            regs.append(f'<reg name="{name}" bitsize="80" type="i387_ext" regnum="{num}"/>')
        elif name.startswith("f"):
            regs.append(f'<reg name="{name}" bitsize="32" type="int" group="float" regnum="{num}"/>')
        else:
            default = "int64" if size == 8 else "int32"
            regs.append(f'<reg name="{name}" bitsize="{8 * size}" type="{types.get(name, default)}" '
                        f'regnum="{num}"/>')
    gdb_arch = "i386:x86-64" if arch == "x86-64" else "i386"
    return ('<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd">'
            f'<target version="1.0"><architecture>{gdb_arch}</architecture>'
            '<feature name="org.gnu.gdb.i386.core">'
            f'<flags id="i386_eflags" size="4">{flags}</flags>'
            + "".join(regs) + "</feature></target>")


TARGET_XML = {arch: _target_xml(arch) for arch in REGISTERS}


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def escape_binary(data: bytes) -> bytes:
    out = bytearray()
    for b in data:
        if b in (0x23, 0x24, 0x7D, 0x2A):       # '#', '$', '}', '*'
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape_binary(data: bytes) -> bytes:
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == 0x7D:
            nxt = next(it, None)
            if nxt is None:
                break
            out.append(nxt ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


@dataclass
class Action:
    """What gdb asked for while the guest was stopped."""
    kind: str                   # 'continue' | 'step' | 'reverse-step' | 'reverse-continue' |
                                # 'detach' | 'kill'
    irqs: bool = False          # a step that may enter an interrupt handler


class PacketReader:
    """Splits the byte stream from gdb into packets and ^C interrupts (sans I/O)."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        """Returns events: ('packet', payload), ('bad', b'') for a checksum mismatch,
        ('interrupt', b''), ('ack', b'+'|b'-')."""
        self.buf += data
        events: list[tuple[str, bytes]] = []
        while self.buf:
            c = self.buf[0]
            if c == 0x03:
                events.append(("interrupt", b""))
                del self.buf[0]
            elif c in (0x2B, 0x2D):                 # '+' '-'
                events.append(("ack", bytes((c,))))
                del self.buf[0]
            elif c == 0x24:                         # '$'
                end = self.buf.find(b"#")
                if end < 0 or len(self.buf) < end + 3:
                    break
                payload = bytes(self.buf[1:end])
                try:
                    ok = int(self.buf[end + 1:end + 3], 16) == checksum(payload)
                except ValueError:
                    ok = False
                del self.buf[:end + 3]
                events.append(("packet", payload) if ok else ("bad", b""))
            else:
                del self.buf[0]                     # line noise between packets
        return events


class GdbStub:
    def __init__(self, target, monitor: Callable[[str], str] | None = None,
                 host: str = "127.0.0.1", port: int = 1234):
        self.target = target
        self.monitor = monitor              # monitor(command_line) -> output text
        self.host, self.port = host, port
        self.listener: socket.socket | None = None
        self.conn: socket.socket | None = None
        self.reader = PacketReader()
        self.ack_mode = True
        self.waiting = False                # gdb resumed the guest and awaits a stop reply
        self.sstep_flags = SSTEP_ENABLE | SSTEP_NOIRQ | SSTEP_NOTIMER
        self.last_stop: Stop = Stop(STOP_INTERRUPT)
        self._sw_breaks: set[int] = set()
        self._hw_breaks: set[int] = set()
        self._watches: set[tuple[int, int, str]] = set()
        self._last_sent = b""
        self._interrupt_seen = False
        self._arch: str | None = None       # register layout of the gdb session (see _session_arch)

    # -- sockets ----------------------------------------------------------------------------------
    def listen(self) -> int:
        """Bind and listen; returns the port (useful with port 0)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(1)
        sock.setblocking(False)
        self.listener = sock
        self.port = sock.getsockname()[1]
        return self.port

    def close(self) -> None:
        self._drop_client()
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    @property
    def has_client(self) -> bool:
        return self.conn is not None

    def fds(self) -> list[socket.socket]:
        return [s for s in (self.conn, self.listener) if s is not None]

    def _accept(self) -> bool:
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, OSError):
            return False
        if self.conn is not None:                   # one debugger at a time, as QEMU
            conn.close()
            return False
        conn.setblocking(True)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = conn
        self.reader = PacketReader()
        self.ack_mode = True
        self.waiting = False
        return True

    def _drop_client(self) -> None:
        """gdb went away (detach, kill or a closed socket): forget its breakpoints, as QEMU."""
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
        self.conn = None
        self.waiting = False
        for addr in list(self._sw_breaks | self._hw_breaks):
            self.target.remove_breakpoint(addr)
        for w in list(self._watches):
            self.target.remove_watchpoint(*w)
        self._sw_breaks.clear()
        self._hw_breaks.clear()
        self._watches.clear()

    def _recv(self) -> bytes | None:
        try:
            data = self.conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError:
            return None
        return data or None

    def send(self, payload: str | bytes) -> None:
        if self.conn is None:
            return
        if isinstance(payload, str):
            payload = payload.encode("latin-1")
        frame = b"$" + payload + b"#" + b"%02x" % checksum(payload)
        self._last_sent = frame
        try:
            self.conn.sendall(frame)
        except OSError:
            self._drop_client()

    def _console(self, text: str) -> None:
        """Text for gdb's console, in O packets (kept well under PacketSize)."""
        data = text.encode("utf-8", "replace")
        for i in range(0, len(data), 1000):
            self.send(b"O" + data[i:i + 1000].hex().encode())

    # -- while the guest runs ---------------------------------------------------------------------
    def poll(self) -> str | None:
        """Between slices: 'interrupt' on ^C, 'attach' when a debugger connects, else None."""
        fds = self.fds()
        if not fds:
            return None
        readable, _, _ = select.select(fds, [], [], 0)
        if not readable:
            return None
        return self._running_input(readable)

    def _running_input(self, readable) -> str | None:
        if self.listener in readable and self._accept():
            return "attach"
        if self.conn is not None and self.conn in readable:
            data = self._recv()
            if data is None:
                self._drop_client()
                return None
            for kind, _ in self.reader.feed(data):
                if kind == "interrupt":
                    return "interrupt"
            # gdb sends nothing else while it waits for a stop in all-stop mode; whatever it
            # sent is dropped rather than answered out of turn.
        return None

    # -- reporting a stop -------------------------------------------------------------------------
    def stop_reply(self, stop: Stop) -> str:
        if stop.extra.get("replaylog") == "begin":
            return f"T{SIGTRAP:02x}replaylog:begin;thread:01;"
        if stop.kind == STOP_EXITED:
            return "W%02x" % ((stop.exit_status or 0) & 0xFF)
        if stop.kind == STOP_INTERRUPT:
            return f"T{SIGINT:02x}thread:01;"
        if stop.kind == STOP_FAULT:
            return f"T{SIGSEGV:02x}thread:01;"
        if stop.kind == STOP_WATCHPOINT:
            return f"T{SIGTRAP:02x}{stop.watch_kind or 'watch'}:{stop.addr:x};thread:01;"
        if stop.kind == STOP_BREAKPOINT:
            if stop.pc in self._hw_breaks and stop.pc not in self._sw_breaks:
                return f"T{SIGTRAP:02x}hwbreak:;thread:01;"
            return f"T{SIGTRAP:02x}swbreak:;thread:01;"
        return f"T{SIGTRAP:02x}thread:01;"

    def report_stop(self, stop: Stop) -> None:
        """Tell a waiting gdb why the guest stopped (with the message in its console first)."""
        self.last_stop = stop
        if self.conn is None or not self.waiting:
            return
        self.waiting = False
        if stop.message and stop.kind in (STOP_DEVICE, STOP_FAULT, STOP_EXITED):
            self._console(stop.message.rstrip("\n") + "\n")
        self.send(self.stop_reply(stop))
        if stop.kind == STOP_EXITED:
            self._drop_client()

    def report_exit(self, stop: Stop) -> None:
        """The machine is going away: a waiting gdb gets W, an idle one just loses the link."""
        if self.conn is not None:
            if self.waiting:
                self.report_stop(stop)
            else:
                self._drop_client()

    # -- while the guest is stopped ---------------------------------------------------------------
    def on_readable(self, readable) -> Action | None:
        """Handle whatever arrived on our sockets while the guest is stopped. Returns an Action
        when gdb resumes, steps, detaches or kills."""
        if self.listener in readable:
            self._accept()
        if self.conn is None or self.conn not in readable:
            return None
        data = self._recv()
        if data is None:
            self._drop_client()
            return Action("detach")
        for kind, payload in self.reader.feed(data):
            if kind == "bad":
                self._raw(b"-")
            elif kind == "ack" and payload == b"-" and self._last_sent:
                self._raw(self._last_sent)
            elif kind == "packet":
                if self.ack_mode:
                    self._raw(b"+")
                action = self.handle_packet(payload)
                if action is not None:
                    return action
            # ^C while already stopped: nothing to do (gdb gets its stop when it resumes).
        return None

    def _raw(self, data: bytes) -> None:
        try:
            self.conn.sendall(data)
        except OSError:
            self._drop_client()

    def handle_packet(self, pkt: bytes) -> Action | None:
        """Answer one packet; returns an Action for the packets that give the CPU back."""
        try:
            return self._dispatch(pkt)
        except DebugAccessError:
            self.send("E14")
        except (ValueError, IndexError, KeyError, struct.error):
            self.send("E01")
        return None

    def _dispatch(self, pkt: bytes) -> Action | None:
        if not pkt:
            self.send("")
            return None
        cmd = chr(pkt[0])
        body = pkt[1:]
        text = body.decode("latin-1")
        if cmd == "?":
            self.send(self.stop_reply(self.last_stop) if self.last_stop.kind != STOP_EXITED
                      else f"T{SIGTRAP:02x}thread:01;")
        elif cmd == "g":
            self.send(self._read_all_registers())
        elif cmd == "G":
            self._write_all_registers(bytes.fromhex(text))
            self.send("OK")
        elif cmd == "p":
            self.send(self._read_register(int(text, 16)))
        elif cmd == "P":
            num, value = text.split("=")
            self._write_register(int(num, 16), bytes.fromhex(value))
            self.send("OK")
        elif cmd == "m":
            addr, length = (int(x, 16) for x in text.split(","))
            length = min(length, 0x1000)
            self.send(self.target.read_memory(addr, length).hex())
        elif cmd == "M":
            where, hexdata = text.split(":", 1)
            addr, length = (int(x, 16) for x in where.split(","))
            data = bytes.fromhex(hexdata)
            if length:
                self.target.write_memory(addr, data[:length])
            self.send("OK")
        elif cmd == "X":
            colon = body.index(b":")
            addr, length = (int(x, 16) for x in body[:colon].decode().split(","))
            data = unescape_binary(body[colon + 1:])
            if length:
                self.target.write_memory(addr, data[:length])
            self.send("OK")
        elif cmd in "Zz":
            self._breakpoint_packet(cmd == "Z", text)
        elif cmd == "c":
            self._set_pc(text)
            return self._resume(Action("continue"))
        elif cmd == "C":
            self._set_pc(text.partition(";")[2])
            return self._resume(Action("continue"))
        elif cmd == "s":
            self._set_pc(text)
            return self._resume(self._step_action())
        elif cmd == "S":
            self._set_pc(text.partition(";")[2])
            return self._resume(self._step_action())
        elif cmd == "b" and text in ("s", "c") and self._can_reverse():
            return self._resume(Action("reverse-step" if text == "s" else "reverse-continue"))
        elif cmd == "H" or cmd == "T":
            self.send("OK")
        elif cmd == "D":
            self.send("OK")
            self._drop_client()
            return Action("detach")
        elif cmd == "k":
            self._drop_client()
            return Action("kill")
        elif cmd == "v":
            return self._v_packet(text)
        elif cmd == "q":
            self._query(text)
        elif cmd == "Q":
            self._set(text)
        else:
            self.send("")
        return None

    def _resume(self, action: Action) -> Action:
        self.waiting = True
        return action

    def _can_reverse(self) -> bool:
        return callable(getattr(self.target, "reverse_step", None))

    def _step_action(self) -> Action:
        return Action("step", irqs=not (self.sstep_flags & SSTEP_NOIRQ))

    def _set_pc(self, text: str) -> None:
        if text:
            self.target.write_register("eip", int(text, 16))

    def _v_packet(self, text: str) -> Action | None:
        if text == "MustReplyEmpty":
            self.send("")
        elif text == "Cont?":
            self.send("vCont;c;C;s;S")
        elif text.startswith("Cont;"):
            # Single thread: the first action is the one that applies to us.
            first = text[5:].split(";")[0]
            kind = first[:1]
            if kind in ("s", "S"):
                return self._resume(self._step_action())
            if kind in ("c", "C"):
                return self._resume(Action("continue"))
            self.send("E01")
        elif text.startswith("Kill"):
            self.send("OK")
            self._drop_client()
            return Action("kill")
        else:
            self.send("")
        return None

    def _query(self, text: str) -> None:
        name, _, args = text.partition(":")
        if name == "Supported":
            self._arch = None               # a new gdb session: the guest's mode decides again
            self.send("PacketSize=4000;qXfer:features:read+;QStartNoAckMode+;"
                      "swbreak+;hwbreak+;vContSupported+"
                      + (";ReverseStep+;ReverseContinue+" if self._can_reverse() else ""))
        elif name == "Xfer" and args.startswith("features:read:"):
            annex, _, span = args[len("features:read:"):].partition(":")
            xml = TARGET_XML[self._session_arch()]
            if annex != "target.xml":
                self.send("E00")
                return
            off, length = (int(x, 16) for x in span.split(","))
            chunk = xml.encode()[off:off + length]
            more = off + length < len(xml.encode())
            self.send((b"m" if more else b"l") + escape_binary(chunk))
        elif name == "Attached":
            self.send("1")
        elif name == "C":
            self.send("QC1")
        elif name == "fThreadInfo":
            self.send("m1")
        elif name == "sThreadInfo":
            self.send("l")
        elif name == "Symbol":
            self.send("OK")
        elif text.startswith("Rcmd,"):
            command = bytes.fromhex(text[5:]).decode("utf-8", "replace")
            output = self.monitor(command) if self.monitor else "monitor commands are not available\n"
            if output:
                self._console(output if output.endswith("\n") else output + "\n")
            self.send("OK")
        elif name == "qemu.sstepbits":
            self.send("ENABLE=%x,NOIRQ=%x,NOTIMER=%x" % (SSTEP_ENABLE, SSTEP_NOIRQ, SSTEP_NOTIMER))
        elif name == "qemu.sstep":
            self.send("%x" % self.sstep_flags)
        else:
            self.send("")

    def _set(self, text: str) -> None:
        if text == "StartNoAckMode":
            self.send("OK")
            self.ack_mode = False
        elif text.startswith("qemu.sstep="):
            self.sstep_flags = int(text.split("=")[1], 16)
            self.send("OK")
        else:
            self.send("")

    def _breakpoint_packet(self, insert: bool, text: str) -> None:
        fields = text.split(";")[0].split(",")
        kind, addr, length = int(fields[0]), int(fields[1], 16), int(fields[2], 16)
        if kind in (0, 1):
            mine = self._sw_breaks if kind == 0 else self._hw_breaks
            other = self._hw_breaks if kind == 0 else self._sw_breaks
            if insert:
                if addr not in mine and addr not in other:
                    self.target.add_breakpoint(addr)
                mine.add(addr)
            else:
                if addr in mine:
                    mine.discard(addr)
                    if addr not in other:
                        self.target.remove_breakpoint(addr)
            self.send("OK")
        elif kind in (2, 3, 4):
            w = (addr, length, ("watch", "rwatch", "awatch")[kind - 2])
            if insert:
                if w not in self._watches:
                    if not self.target.add_watchpoint(*w):
                        self.send("")          # unsupported: gdb falls back or says so
                        return
                    self._watches.add(w)
            elif w in self._watches:
                self._watches.discard(w)
                self.target.remove_watchpoint(*w)
            self.send("OK")
        else:
            self.send("")

    # -- registers --------------------------------------------------------------------------------
    def _session_arch(self) -> str:
        """The register layout of this gdb session: chosen from the guest's mode when gdb first
        asks (x86-64 in long mode, i386 otherwise) and kept, as gdb keeps the description."""
        arch = self._arch
        if arch is None:
            arch = self._arch = getattr(self.target, "arch", "i386")
            if arch not in REGISTERS:
                arch = self._arch = "i386"
        return arch

    def _reg_values(self) -> list[bytes]:
        regs = self.target.read_registers()
        out = []
        for name, size in REGISTERS[self._session_arch()]:
            value = regs.get(name)
            if value is None and name[0] == "e":
                value = regs.get("r" + name[1:])        # a CPU layer that names 64-bit registers
            if value is None:
                value = _FPU_DEFAULTS.get(name, 0)
            out.append((value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
        return out

    def _read_all_registers(self) -> str:
        return b"".join(self._reg_values()).hex()

    def _read_register(self, num: int) -> str:
        if num >= len(REGISTERS[self._session_arch()]):
            return "E45"
        return self._reg_values()[num].hex()

    def _write_register(self, num: int, data: bytes) -> None:
        layout = REGISTERS[self._session_arch()]
        if num >= len(layout):
            raise DebugAccessError(f"no register {num}")
        name, size = layout[num]
        if len(data) != size:
            raise ValueError("bad register size")
        value = int.from_bytes(data, "little")
        current = self._reg_values()[num]
        if current != data:
            self.target.write_register(name, value)

    def _write_all_registers(self, data: bytes) -> None:
        current = self._reg_values()
        pos = 0
        for num, (name, size) in enumerate(REGISTERS[self._session_arch()]):
            chunk = data[pos:pos + size]
            pos += size
            if len(chunk) == size and chunk != current[num]:
                self.target.write_register(name, int.from_bytes(chunk, "little"))


def parse_gdb_address(spec: str) -> tuple[str, int]:
    """'tcp::1234' / 'tcp:HOST:PORT' / ':1234' / '1234' -> (host, port); QEMU's -gdb syntax.
    An empty host means loopback (QEMU listens on all interfaces; we are more careful)."""
    s = spec
    if s.startswith("tcp:"):
        s = s[4:]
    host, sep, port = s.rpartition(":")
    if not sep:
        host, port = "", s
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"-gdb {spec}: expected tcp:HOST:PORT")
    return (host or "127.0.0.1"), int(port)
