"""Warnings QEMU gives (or that save a user from thinking the machine hangs): one line each on
stderr at start, the run going on as asked."""

from __future__ import annotations

import pytest

from machine import cli


def warnings_of(argv: list[str]) -> list[str]:
    return cli.parse_args(argv).warnings


def test_an_unknown_exact_trace_event_is_warned_about(tmp_path):
    events = tmp_path / "events.txt"
    events.write_text("# comment\nvirtio_blk_nosuch\n")
    found = warnings_of(["-trace", "virtio_nosuch", "-trace", "virtio_*", "-trace",
                         "nosuch_*", "-trace", "pci_set_irq", "-trace", f"events={events}"])
    assert found == ["-trace virtio_nosuch: warning: trace event 'virtio_nosuch' does not exist "
                     "(see -trace help)",
                     "-trace virtio_blk_nosuch: warning: trace event 'virtio_blk_nosuch' does "
                     "not exist (see -trace help)"]


def test_a_drive_without_format_is_warned_about(tmp_path):
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(512))
    (w,) = warnings_of(["-drive", f"file={disk},if=virtio"])
    assert w.startswith(f"-drive file={disk},if=virtio: warning: no format= given")
    assert warnings_of(["-drive", f"file={disk},format=raw,if=virtio"]) == []


@pytest.mark.parametrize("argv, slow", [(["-d", "in_asm"], "in_asm"),
                                        (["-d", "exec,int"], "exec"),
                                        (["-d", "in_asm", "-d", "exec,cpu"], "in_asm,exec,cpu"),
                                        (["-d", "int,guest_errors"], None)])
def test_slow_log_items_are_warned_about_in_one_line(argv, slow):
    found = warnings_of(argv)
    if slow is None:
        assert found == []
    else:
        (w,) = found
        assert f"warning: {slow} log every " in w and "slower" in w, w


def test_main_prints_each_warning_once_on_stderr_and_runs(hello, capsys):
    status = cli.main(["-kernel", str(hello), "-trace", "nosuch", "-no-reboot",
                       "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
    assert status == 1                                  # the hello kernel exits with 0
    err = capsys.readouterr().err.splitlines()
    assert err == ["machine: -trace nosuch: warning: trace event 'nosuch' does not exist "
                   "(see -trace help)"]


def test_the_first_software_watchpoint_warns_once(hello, capsys, monkeypatch):
    import machine.debug.machine_target as target
    from machine.api import Session
    monkeypatch.setattr(target, "_watch_warned", False)
    with Session.from_args(["-kernel", str(hello)]) as s:
        s.run_until("kmain")
        assert s.target.add_watchpoint(0x1000, 4, "watch")
        assert s.target.add_watchpoint(0x2000, 4, "watch")
    err = capsys.readouterr().err
    assert err.count("warning: watchpoints single-step the guest") == 1, err
