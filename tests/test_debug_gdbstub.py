"""The gdb stub's packet handling over a real socket, against the fake target."""

from __future__ import annotations

import socket
import threading

import pytest

from machine.debug.gdbstub import (I386_REGS, PacketReader, checksum, escape_binary,
                                   parse_gdb_address, unescape_binary)
from test_debug_fakes import COUNTER, EXIT, FAULT, INC, KICK, LOAD, LOOP, NOP, serve_fake


class RspClient:
    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.ack = True

    def _read_packet(self) -> bytes:
        while True:
            start = self.buf.find(b"$")
            end = self.buf.find(b"#", start + 1) if start >= 0 else -1
            if start >= 0 and end >= 0 and len(self.buf) >= end + 3:
                payload = self.buf[start + 1:end]
                assert int(self.buf[end + 1:end + 3], 16) == checksum(payload)
                self.buf = self.buf[end + 3:]
                if self.ack:
                    self.sock.sendall(b"+")
                return payload
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.buf += data

    def send(self, payload: bytes | str) -> None:
        if isinstance(payload, str):
            payload = payload.encode()
        self.sock.sendall(b"$" + payload + b"#%02x" % checksum(payload))
        if self.ack:
            while not self.buf.startswith(b"+"):
                self.buf += self.sock.recv(1)
            self.buf = self.buf[1:]

    def ask(self, payload) -> bytes:
        self.send(payload)
        return self.reply()

    def reply(self) -> bytes:
        """The next packet that is not console output; O packets are collected."""
        self.console = b""
        while True:
            pkt = self._read_packet()
            if pkt.startswith(b"O") and pkt != b"OK":
                self.console += bytes.fromhex(pkt[1:].decode())
                continue
            return pkt

    def close(self):
        self.sock.close()


PROGRAM = bytes([NOP, NOP, INC, NOP, LOAD, NOP, KICK, NOP, EXIT])


@pytest.fixture
def session():
    target, dbg, port, thread, result = serve_fake(PROGRAM)
    client = RspClient(port)
    yield target, client, dbg, result, thread
    client.close()
    thread.join(5)


def test_handshake_target_description_and_registers(session):
    target, c, *_ = session
    sup = c.ask("qSupported:multiprocess+;swbreak+;hwbreak+;qRelocInsn+")
    assert b"qXfer:features:read+" in sup and b"QStartNoAckMode+" in sup
    assert c.ask("QStartNoAckMode") == b"OK"
    c.ack = False
    xml = b""
    while True:
        part = c.ask(f"qXfer:features:read:target.xml:{len(xml):x},200")
        xml += unescape_binary(part[1:])
        if part[:1] == b"l":
            break
    assert b"<architecture>i386</architecture>" in xml and b"org.gnu.gdb.i386.core" in xml
    assert xml.count(b"<reg ") == len(I386_REGS) == 32
    assert c.ask("?").startswith(b"T05")
    g = bytes.fromhex(c.ask("g").decode())
    assert len(g) == 176                                  # 16x4 + 8x10 + 8x4: what gdb's i386 expects
    assert int.from_bytes(g[32:36], "little") == 0x1000   # eip
    assert int.from_bytes(g[16:20], "little") == 0x8000   # esp
    assert c.ask("p8") == (0x1000).to_bytes(4, "little").hex().encode()
    assert c.ask("P0=78563412") == b"OK"
    assert target.regs["eax"] == 0x12345678
    assert c.ask("qfThreadInfo") == b"m1" and c.ask("qsThreadInfo") == b"l"
    assert c.ask("qAttached") == b"1" and c.ask("qC") == b"QC1"
    assert c.ask("qTStatus") == b""                       # unknown packets: empty reply
    assert c.ask("vMustReplyEmpty") == b""


def test_memory_read_write_and_refusals(session):
    target, c, *_ = session
    assert c.ask("m1000,4") == bytes(PROGRAM[:4]).hex().encode()
    assert c.ask("M3000,4:deadbeef") == b"OK"
    assert target.mem[0x3000:0x3004] == bytes.fromhex("deadbeef")
    data = bytes([0x23, 0x24, 0x7D, 0x2A, 0x00])          # bytes that must be escaped in X
    assert c.ask(b"X3010,5:" + escape_binary(data)) == b"OK"
    assert bytes(target.mem[0x3010:0x3015]) == data
    assert c.ask("mf000,4") == b"E14"                     # MMIO/unmapped: refused, no side effect
    assert c.ask("Mf000,1:00") == b"E14"
    assert c.ask("mzz") == b"E01"                         # malformed: error, the stub survives


def test_breakpoint_continue_step_and_exit(session):
    target, c, dbg, result, thread = session
    assert c.ask("Z0,1003,1") == b"OK"
    assert c.ask("vCont?").startswith(b"vCont")
    assert c.ask("vCont;c") == b"T05swbreak:;thread:01;"
    assert target.regs["eip"] == 0x1003
    assert c.ask("vCont;s:1;c") == b"T05thread:01;"       # a step
    assert target.regs["eip"] == 0x1004
    assert c.ask("z0,1003,1") == b"OK" and not target.breakpoints
    assert c.ask("Z1,1005,1") == b"OK"
    assert c.ask("c") == b"T05hwbreak:;thread:01;"
    c.send("P0=07000000")                                 # exit status 7
    assert c.reply() == b"OK"
    assert c.ask("z1,1005,1") == b"OK"
    assert c.ask("c") == b"W07"                           # the guest's own exit reaches gdb
    thread.join(5)
    assert result["status"] == 7


def test_watchpoints_report_the_data_address(session):
    target, c, *_ = session
    assert c.ask(f"Z2,{COUNTER:x},4") == b"OK"
    assert c.ask("c") == f"T05watch:{COUNTER:x};thread:01;".encode()
    assert target.mem[COUNTER] == 1
    assert c.ask(f"z2,{COUNTER:x},4") == b"OK"
    assert c.ask(f"Z3,{COUNTER:x},4") == b"OK"
    assert c.ask("c") == f"T05rwatch:{COUNTER:x};thread:01;".encode()
    assert target.regs["eip"] == 0x1005


def test_device_stop_reaches_gdb_with_a_console_message(session):
    target, c, dbg, *_ = session
    target.on_kick = lambda: dbg._device_hit(None, "device breakpoint 1 (virtio-blk notify): queue notify, queue 0")
    assert c.ask("c") == b"T05thread:01;"
    assert b"queue notify, queue 0" in c.console
    assert target.regs["eip"] == 0x1007


def test_monitor_through_qrcmd(session):
    target, c, dbg, *_ = session
    reply = c.ask("qRcmd," + "info registers".encode().hex())
    assert reply == b"OK"
    assert b"EIP=00001000" in c.console
    c.ask("qRcmd," + "break virtio-blk request type=flush".encode().hex())
    assert b"Device breakpoint 1" in c.console
    c.ask("qRcmd," + "info breakpoints".encode().hex())
    assert b"virtio-blk request type=flush" in c.console


def test_ctrl_c_interrupts_a_running_guest_and_kill_ends_it():
    target, dbg, port, thread, result = serve_fake(bytes([NOP, NOP, LOOP]))
    c = RspClient(port)
    c.send("c")
    c.sock.sendall(b"\x03")
    assert c.reply() == b"T02thread:01;"
    assert target.executed > 0
    c.send("vKill;1")
    assert c.reply() == b"OK"
    thread.join(5)
    assert not thread.is_alive() and result["status"] == 0


def test_fatal_fault_is_reported_then_ends_the_machine():
    target, dbg, port, thread, result = serve_fake(bytes([NOP, FAULT]))
    c = RspClient(port)
    assert c.ask("c") == b"T0bthread:01;"
    assert b"triple fault" in c.console
    assert c.ask("g")                                     # the corpse can be inspected
    assert c.ask("c") == b"W02"
    thread.join(5)
    assert result["status"] == 2


def test_attach_to_a_running_guest_stops_it_and_detach_resumes():
    target, dbg, port, thread, _ = serve_fake(bytes([NOP, NOP, LOOP]), start_stopped=False)
    c = RspClient(port)
    assert c.ask("?").startswith(b"T02")                  # stopped by the attach
    before = target.executed
    assert c.ask("g")
    assert target.executed == before                     # really stopped while gdb looks
    assert c.ask("D") == b"OK"
    c.close()
    for _ in range(200):
        if target.executed > before:
            break
        threading.Event().wait(0.01)
    assert target.executed > before                      # running again after detach
    dbg.quit_requested = True
    thread.join(5)
    assert not thread.is_alive()


def test_packet_reader_splits_packets_interrupts_and_bad_checksums():
    r = PacketReader()
    ev = r.feed(b"+$g#67\x03$m0,4#fd$x#00")
    assert ev == [("ack", b"+"), ("packet", b"g"), ("interrupt", b""), ("packet", b"m0,4"), ("bad", b"")]
    assert r.feed(b"$qC#") == [] and r.feed(b"b4") == [("packet", b"qC")]


def test_gdb_address_syntax():
    assert parse_gdb_address("tcp::1234") == ("127.0.0.1", 1234)
    assert parse_gdb_address("tcp:0.0.0.0:4321") == ("0.0.0.0", 4321)
    assert parse_gdb_address("1234") == ("127.0.0.1", 1234)
    with pytest.raises(ValueError):
        parse_gdb_address("tcp::notaport")


def test_single_step_skips_interrupt_handlers_unless_asked(session):
    target, c, *_ = session
    assert c.ask("qqemu.sstepbits") == b"ENABLE=1,NOIRQ=2,NOTIMER=4"
    assert c.ask("qqemu.sstep") == b"7"
    assert c.ask("vCont;s:1") == b"T05thread:01;"
    assert c.ask("Qqemu.sstep=1") == b"OK"                 # gdb: maint packet Qqemu.sstep=1
    assert c.ask("s") == b"T05thread:01;"
    assert target.step_irqs == [False, True]


def test_reverse_packets_only_for_a_target_that_can_go_back():
    from machine.debug.gdbstub import GdbStub
    from machine.debug.target import STOP_STEP, Stop

    class Target:
        arch = "i386"

    stub = GdbStub(Target())
    sent: list = []
    stub.send = sent.append
    stub.handle_packet(b"qSupported:swbreak+")
    assert "Reverse" not in sent[-1]
    assert stub.handle_packet(b"bs") is None and sent[-1] == ""       # unsupported: empty reply
    Target.reverse_step = Target.reverse_continue = lambda self: None
    stub.handle_packet(b"qSupported:swbreak+")
    assert sent[-1].endswith(";ReverseStep+;ReverseContinue+")
    assert stub.handle_packet(b"bs").kind == "reverse-step" and stub.waiting
    assert stub.handle_packet(b"bc").kind == "reverse-continue"
    begin = Stop(STOP_STEP, extra={"replaylog": "begin"})           # gdb: no more history
    assert stub.stop_reply(begin) == "T05replaylog:begin;thread:01;"
