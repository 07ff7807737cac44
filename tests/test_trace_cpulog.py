"""-d in_asm, exec, cpu and int on the real board (the hello test kernel and the bundled guest),
written where -D / trace.set_output sends them."""

from __future__ import annotations

import io
import re
import sys

import pytest

from elfsym import symbol
from machine import trace
from machine.api import Session
from machine.cli import main as cli_main, parse_args
from machine.debug import cpulog

EXIT_DEV = ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]


@pytest.fixture
def log():
    out = io.StringIO()
    trace.set_output(out)
    yield out
    trace.set_output(sys.stderr)


def test_in_asm_exec_and_cpu_name_blocks_by_guest_symbol(hello, log):
    with Session.from_args(["-kernel", str(hello), "-d", "in_asm,exec", *EXIT_DEV]) as s:
        s.run_until("kmain")
        # -d cpu costs ~100 us a block: switch it on only from kmain (the firmware clears memory
        # with rep stosb, one block per byte).
        trace.enable_category("cpu")
        s.run(max_instructions=5000)
    text = log.getvalue()
    kmain, puts = symbol(hello, "kmain"), symbol(hello, "puts")
    found = re.search(rf"^IN: kmain\n(0x{kmain:08x} <kmain>: +55 +push ebp)$", text, re.M)
    assert found, text[-3000:]
    # each block's code is shown once, however often it runs
    assert text.count(f"\n0x{kmain:08x} <kmain>:") == 1
    assert f"0x{kmain + 1:08x} <kmain+0x1>:" in text
    assert re.search(rf"^0x[0-9a-f]{{8}} <kmain\+0x[0-9a-f]+>: +e8 [0-9a-f ]+ call {puts:#x} <puts>$", text, re.M)
    assert f"\nTrace 0: [00000000/{kmain:016x}] kmain\n" in text
    assert f"Trace 0: [00000000/{puts:016x}] puts\n" in text
    assert text.count(f"Trace 0: [00000000/{puts:016x}] puts\n") > 1      # every execution
    # the register dump before kmain's first block: the Multiboot magic in EAX
    dump = text[text.rindex(f"Trace 0: [00000000/{kmain:016x}] kmain"):]
    assert re.search(r"^EAX=2badb002 EBX=[0-9a-f]{8} ECX=[0-9a-f]{8} EDX=[0-9a-f]{8}$", dump, re.M)
    assert re.search(rf"^EIP={kmain:08x} EFL=[0-9a-f]{{8}} \[[-DOSZAPC]{{7}}\] CPL=0 II=0", dump, re.M)
    assert re.search(r"^CS =0008 00000000 ffffffff [0-9a-f]{8}$", dump, re.M)
    # the real-mode reset vector is 16-bit code
    assert "0x000ffff0:  ea" in text


def test_block_logs_cost_nothing_when_off(hello, log):
    from machine.pc import Machine
    m = Machine(parse_args(["-kernel", str(hello), "-serial", "none", "-display", "none", *EXIT_DEV]))
    try:
        assert not cpulog.wanted() and cpulog.attach(m) is None
        hooks = dict(m.cpu.uc._callbacks)
        assert m.run() == 1
        assert dict(m.cpu.uc._callbacks) == hooks               # no block hook appeared
    finally:
        m.close()
    assert log.getvalue() == ""


def test_block_log_can_be_removed(hello, log):
    from machine.pc import Machine
    m = Machine(parse_args(["-kernel", str(hello), "-serial", "none", "-display", "none", *EXIT_DEV]))
    try:
        trace.enable_category("exec")
        blog = cpulog.BlockLog(m.cpu, cpulog.load_symbols(hello))
        m.run(max_instructions=2000)
        blog.close()
        before = log.getvalue()
        assert before.count("Trace 0:") > 10
        assert m.run() == 1
        assert log.getvalue() == before                         # nothing after the hook went
    finally:
        m.close()


def test_int_logs_hardware_interrupts_like_qemu(guest, tmp_path, log):
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4 << 20))
    with Session.from_args(["-kernel", str(guest), "-append", "tests=init,interrupt", "-no-reboot",
                            "-drive", f"file={img},format=raw,if=virtio", "-d", "int",
                            *EXIT_DEV]) as s:
        assert s.run().exit_status == 1
    text = log.getvalue()
    # The PIC delivers the virtio IRQ (line 10 -> vector 0x2a with the guest's PIC bases).
    m = re.search(r"^Servicing hardware INT=0x2a\n( +\d+): v=2a e=0000 i=0 cpl=0 "
                  r"IP=0008:([0-9a-f]{8}) pc=\2 SP=0010:[0-9a-f]{8} EAX=[0-9a-f]{8}\n"
                  r"EAX=[0-9a-f]{8} ", text, re.M)
    assert m, text[:3000]
    assert "check_exception" not in text                      # no CPU exception in this run


def test_int_logs_cpu_exceptions_with_check_exception(hello, log):
    # ud2 at kmain: #UD (no IDT in this kernel) -> #GP for the missing gate -> #DF -> triple fault
    with Session.from_args(["-kernel", str(hello), "-no-reboot", "-d", "int", *EXIT_DEV]) as s:
        s.run_until("kmain")
        s.write("kmain", b"\x0f\x0b")
        stop = s.run()
    assert stop.kind == "fault"
    text = log.getvalue()
    assert "check_exception old: 0xffffffff new 0x6\n" in text, text[:2000]
    kmain = symbol(hello, "kmain")
    assert re.search(rf"^ +\d+: v=06 e=0000 i=0 cpl=0 IP=0008:{kmain:08x} pc={kmain:08x} ", text, re.M), text
    assert re.search(r"^ +\d+: v=0d e=0033 ", text, re.M), text        # IDT entry 6, IDT bit, EXT
    assert re.search(r"^ +\d+: v=08 ", text, re.M), text


def test_d_with_D_writes_the_file_through_the_command_line(hello, tmp_path, capsys):
    out = tmp_path / "log.txt"
    status = cli_main(["-kernel", str(hello), "-serial", "none", "-display", "none",
                       "-d", "in_asm", "-D", str(out), *EXIT_DEV])
    assert status == 1
    text = out.read_text()
    assert f"IN: kmain\n0x{symbol(hello, 'kmain'):08x} <kmain>:" in text
    assert "IN:" not in capsys.readouterr().err


def test_symbols_of_a_file_without_a_symbol_table(tmp_path):
    flat = tmp_path / "flat.bin"
    flat.write_bytes(b"\x90" * 64)
    assert cpulog.load_symbols(flat) is None
    assert cpulog.load_symbols(tmp_path / "missing.elf") is None
    assert cpulog.load_symbols(None) is None


def test_long_mode_int_and_register_dump_are_64_bit(tmp_path, log):
    from asm import LONG_MODE, PM32_PROLOGUE, build_machine
    trace.enable_category("int")
    trace.enable_category("cpu")
    m = build_machine(tmp_path, LONG_MODE + """
    main64:
        SETGATE64 0x40, h40
        SETGATE64 13, h_gp
        movabs $0x1122334455667788, %rbx
        int $0x40
        movabs $0x8000000000000000, %rax
        mov (%rax), %rbx               # non-canonical: #GP(0)
        EXIT 0
    h40:
        iretq
    h_gp:
        pop %rax
        addq $3, (%rsp)                # skip the 3-byte mov
        iretq
    """, prologue=PM32_PROLOGUE)
    try:
        assert m.run(2_000_000) == 1, m.stop_reason
        text = log.getvalue()
        h = r"[0-9a-f]{16}"
        line = re.search(rf"^ +\d+: v=40 e=0000 i=1 cpl=0 IP=[0-9a-f]{{4}}:{h} pc=({h}) "
                         rf"SP=[0-9a-f]{{4}}:{h} EAX={h}$", text, re.M)
        assert line, text[-3000:]
        assert m.mem.read(int(line.group(1), 16), 2) == b"\xcd\x40"     # pc names the `int $0x40`
    finally:
        m.close()
    i = text.index("check_exception old: 0xffffffff new 0xd\n")
    assert re.match(rf"check_exception old: 0xffffffff new 0xd\n +\d+: v=0d e=0000 i=0 ", text[i:])
    # the dump in long mode: 16 general registers of 16 digits, RIP/RFL
    assert re.search(rf"^RAX={h} RBX=1122334455667788 RCX={h} RDX={h}$", text, re.M)
    assert re.search(rf"^R8 ={h} R9 ={h} R10={h} R11={h}$", text, re.M)
    assert re.search(rf"^RIP={h} RFL=[0-9a-f]{{8}} \[[-DOSZAPC]{{7}}\] CPL=0 ", text, re.M)
    assert re.search(r"^EFER=0000000000000d00$|^EFER=0000000000000500$", text, re.M)
