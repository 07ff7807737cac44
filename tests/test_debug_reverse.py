"""Reverse execution: gdb (batch mode) going backwards through the bundled virtio-blk guest -
reverse-stepi, reverse-continue to code and device breakpoints, the start of the history - and
the history itself driven from Python: re-executed states are the states a straight run has,
checkpoints share unchanged RAM, and a run that went back and forth leaves the image, the
console output and the instruction count of a straight run."""

from __future__ import annotations

import re
import shutil

import pytest

from machine.cli import parse_args
from test_debug_machine import Running, run_gdb

gdb_missing = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")

EXIT_DEV = ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
MARK = "@@"


def guest_args(guest, img, tests: str, serial: str = "none") -> list[str]:
    return ["-kernel", str(guest), "-append", f"tests={tests}", "-serial", serial,
            "-display", "none", "-no-reboot", *EXIT_DEV,
            "-drive", f"file={img},format=raw,if=virtio"]


def marked(*commands: str) -> list[str]:
    """gdb commands, each one's output preceded by a marker line (see sections())."""
    out = []
    for n, c in enumerate(commands):
        out += [f"echo {MARK}{n}\\n", c]
    return out


def sections(out: str) -> dict[int, str]:
    parts = re.split(rf"^{MARK}(\d+)$", out, flags=re.M)
    return {int(parts[i]): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


REGS = "info registers eax ecx edx ebx esp ebp esi edi eip eflags"


@gdb_missing
def test_reverse_stepi_and_reverse_continue_give_back_the_states_gdb_saw(guest, tmp_path):
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4 << 20))
    m = Running(guest_args(guest, img, "init,flush,get_id,rw_sizes"))
    try:
        out = run_gdb(guest, m.port, *marked(
            "reverse-stepi",                        # 0: nothing before the reset vector
            "break vpci_notify", "continue", "continue",
            REGS,                                   # 4: the second kick
            "stepi", REGS,                          # 6
            "stepi", REGS,                          # 8
            "stepi",
            "reverse-stepi", REGS,                  # 11 == 8
            "reverse-stepi", REGS,                  # 13 == 6
            "reverse-stepi", REGS,                  # 15 == 4
            "continue", REGS,                       # 17: the third kick
            "continue", REGS,                       # 19: the fourth
            "reverse-continue", REGS,               # 21 == 17
            "reverse-continue", REGS,               # 23 == 4
            "continue", REGS,                       # 25 == 17: forward again, the same
            "continue", REGS,                       # 27 == 19
            "delete", "continue"))
    finally:
        m.close()
    s = sections(out)
    assert "No more reverse-execution history." in s[0], out
    assert "Breakpoint 1, vpci_notify" in s[3], out
    regs = {n: re.findall(r"^(\w+)\s+(0x[0-9a-f]+)", s[n], re.M) for n in (4, 6, 8, 11, 13, 15, 17, 19, 21,
                                                                        23, 25, 27)}
    assert len(regs[4]) == 10 and regs[4] != regs[6] != regs[8]
    assert regs[11] == regs[8] and regs[13] == regs[6] and regs[15] == regs[4], out
    assert regs[17] != regs[4] and regs[19] != regs[17]
    assert regs[21] == regs[17] and regs[23] == regs[4], out
    assert regs[25] == regs[17] and regs[27] == regs[19], out
    assert "Breakpoint 1, vpci_notify" in s[20] and "Breakpoint 1, vpci_notify" in s[22], out
    assert "exited with code 01" in out, out
    assert m.result.get("status") == 1


def straight_run(guest, tmp_path, tests: str) -> tuple[int, bytes, bytes, int]:
    """(exit status, image, console output, instructions) of a run without a debugger."""
    from machine.pc import Machine
    img, log = tmp_path / "straight.img", tmp_path / "straight.log"
    img.write_bytes(bytes(4 << 20))
    machine = Machine(parse_args(guest_args(guest, img, tests, f"file:{log}")))
    try:
        status = machine.run()
        count = machine.instructions
    finally:
        machine.close()
    return status, img.read_bytes(), log.read_bytes(), count


@gdb_missing
def test_back_over_virtio_requests_to_the_last_flush_and_forward_again_is_a_straight_run(guest, tmp_path):
    tests = "init,flush,rw_sizes,get_id"
    status, image, output, count = straight_run(guest, tmp_path, tests)
    img, log = tmp_path / "d.img", tmp_path / "console.log"
    img.write_bytes(bytes(4 << 20))
    m = Running(guest_args(guest, img, tests, f"file:{log}"))
    try:
        out = run_gdb(guest, m.port, *marked(
            "break t_get_id", "continue",
            "monitor break virtio-blk request type=flush",
            "reverse-continue",                    # 3: back over the writes since the FLUSH
            "bt 2",
            "monitor delete 1",
            "reverse-finish", "reverse-stepi", "reverse-stepi",
            "delete", "continue"))
        assert m.status(60) == 1
    finally:
        m.close()
    s = sections(out)
    assert "Breakpoint 1, t_get_id" in s[1], out
    assert "device breakpoint 1 (virtio-blk request type=flush): request flush" in s[3], out
    assert "in vpci_notify" in s[4], out          # right after the guest's kick
    assert "exited with code 01" in out, out
    # The rewritten blocks were rolled back and written again as before; what the guest printed
    # was printed once; the run took as many instructions as without the debugger.
    assert img.read_bytes() == image and image != bytes(4 << 20)
    assert log.read_bytes() == output and b"ok 4 - get_id" in output
    assert m.machine.instructions == count and status == 1


# -- the history driven from Python ----------------------------------------------------------------

@pytest.fixture
def target(guest, tmp_path):
    from machine.debug.machine_target import MachineTarget
    from machine.pc import Machine
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4 << 20))
    machine = Machine(parse_args(guest_args(guest, img, "init,rw_sizes,pattern")))
    yield MachineTarget(machine)
    machine.close()


def test_a_point_inside_a_run_is_what_a_straight_run_reaches(target, guest, tmp_path):
    from machine.pc import Machine
    target.enable_reverse(interval=1_000_000, max_overhead=None)     # exactly every 1M
    stop = target.resume(lambda: None, 2_500_000)
    assert stop.kind == "limit" and target.machine.instructions == 2_500_000
    at = [c.at[0] for c in target.history.checkpoints]
    assert at == [0, 1_000_000, 2_000_000]            # periodic checkpoints
    # the second checkpoint keeps only the pages the guest changed; the rest are shared
    first, second = target.history.checkpoints[:2]
    assert second.new_bytes < target.machine.mem.size // 8
    assert sum(a is b for a, b in zip(first.pages, second.pages)) > len(first.pages) // 2
    target.reverse_step()
    regs = target.read_registers()
    assert target.machine.instructions == 2_499_999
    img = tmp_path / "other.img"
    img.write_bytes(bytes(4 << 20))
    plain = Machine(parse_args(guest_args(guest, img, "init,rw_sizes,pattern")))
    try:
        plain.run(max_instructions=2_499_999)
        assert plain.cpu.read_registers() == regs
        assert plain.clock.now == target.machine.clock.now
        assert bytes(plain.mem.buf) == bytes(target.machine.mem.buf)
    finally:
        plain.close()


def test_a_debugger_write_in_the_past_starts_a_new_future(target):
    target.enable_reverse(interval=1_000_000)
    target.resume(lambda: None, 1_500_000)
    target.reverse_step()
    target.reverse_step()
    assert target.machine.instructions == 1_499_998
    eax = target.read_registers()["eax"]
    target.write_register("eax", eax ^ 0x5A5A)
    history = target.history
    assert history.at_end and all(c.at[0] <= 1_499_998 for c in history.checkpoints)
    target.step()
    target.reverse_step()                            # back to the written state, not the old one
    assert target.read_registers()["eax"] == eax ^ 0x5A5A


def test_going_back_rolls_the_disk_back_and_forward_again_rewrites_it(guest, tmp_path):
    from elfsym import symbol
    from machine.debug.machine_target import MachineTarget
    from machine.pc import Machine
    tests = "init,rw_sizes,get_id"
    status, image, output, count = straight_run(guest, tmp_path, tests)
    img, log = tmp_path / "d.img", tmp_path / "console.log"
    img.write_bytes(bytes(4 << 20))
    machine = Machine(parse_args(guest_args(guest, img, tests, f"file:{log}")))
    try:
        target = MachineTarget(machine)
        target.enable_reverse(interval=100_000)
        writes, after = symbol(guest, "t_rw_sizes"), symbol(guest, "t_get_id")
        target.add_breakpoint(writes)
        assert target.resume(lambda: None).pc == writes
        before = img.read_bytes()
        target.add_breakpoint(after)
        assert target.resume(lambda: None).pc == after
        assert img.read_bytes() != before               # rw_sizes wrote the disk
        stop = target.reverse_continue()
        assert stop.kind == "breakpoint" and stop.pc == writes
        assert img.read_bytes() == before               # the disk as it was then
        target.remove_breakpoint(writes)
        target.remove_breakpoint(after)
        assert target.resume(lambda: None).kind == "exited"
        assert img.read_bytes() == image
        assert log.read_bytes() == output               # nothing printed twice
        assert machine.instructions == count
    finally:
        machine.close()


def test_a_machine_replaced_behind_the_history_starts_a_new_one(target):
    # `monitor loadvm` puts the whole machine elsewhere: the recorded calls no longer lead to
    # it, so the history starts again there rather than re-executing into another timeline.
    target.enable_reverse(interval=1_000_000)
    target.resume(lambda: None, 300_000)
    saved = target.machine.save_state()
    target.resume(lambda: None, 300_000)
    target.machine.load_state(saved)
    saved.release()
    stop = target.reverse_step()
    assert stop.extra.get("replaylog") == "begin" and target.machine.instructions == 300_000
    target.step()
    assert target.reverse_step().extra == {} and target.machine.instructions == 300_000


@gdb_missing
def test_the_history_is_kept_only_while_gdb_is_connected(guest, tmp_path):
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4 << 20))
    m = Running(guest_args(guest, img, "init"))
    try:
        target = m.debugger.target
        assert target.history is None                   # nothing recorded before gdb comes
        out = run_gdb(guest, m.port, "stepi", "reverse-stepi", "detach")
        assert "No more reverse-execution history" not in out, out
        assert m.status(60) == 1, out
        assert target.history is None                   # gdb detached: checkpoints freed
    finally:
        m.close()


def test_periodic_checkpoints_are_spaced_to_bound_their_cost(target):
    from machine.debug.reverse import History
    history = History(target)
    history._ran = [4_000_000, 0.2]                       # 20 M instructions/s
    history._stretch(0.1)                                  # a 0.1 s checkpoint: <= 25 % -> 8 M apart
    assert history._spacing == 8_000_000
    history._ran = [4_000_000, 0.2]
    history._stretch(0.001)                                # cheap: never closer than the interval
    assert history._spacing == history.interval
    history._ran = [4_000_000, 0.01]
    history._stretch(1.0)                                  # at most MAX_STRETCH intervals apart
    assert history._spacing == 10 * history.interval


@gdb_missing
def test_back_from_a_fatal_fault_and_into_it_again(hello):
    """A triple fault leaves a corpse gdb can look at; going back from it is how one finds the
    cause, and running forward again reaches the same fault."""
    m = Running(["-kernel", str(hello), "-serial", "none", "-display", "none", "-no-reboot",
                 *EXIT_DEV])
    try:
        out = run_gdb(hello, m.port, *marked(
            "break kmain", "continue", "delete",
            "stepi", "stepi", "p/x $pc",               # 5: two instructions into kmain
            "set var *(unsigned short *)$pc = 0x0b0f",  # ud2 there: no IDT, a triple fault
            "continue",                                 # 7
            "reverse-stepi", "p/x $pc",                 # 9: back at the ud2, before the fault
            "continue", "continue"))                    # 10: the same fault; 11: the end
        status = m.status()
    finally:
        m.close()
    s = sections(out)
    assert "Program received signal SIGSEGV" in s[7] and "triple fault" in s[7], out
    at_ud2 = re.search(r"\$1 = (0x[0-9a-f]+)", s[5]).group(1)
    assert re.search(r"\$2 = (0x[0-9a-f]+)", s[9]).group(1) == at_ud2, out   # the fault undone
    assert "Program received signal SIGSEGV" in s[10], out
    assert "exited with code 02" in s[11], out
    assert status == 2
